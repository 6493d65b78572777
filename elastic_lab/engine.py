"""One training epoch (:func:`train_one_epoch`) over pools of images, and its steps.

A *pool* is ``pool_batches`` batches loaded together (data/sampler.py). In elastic mode phi
comes from the predictor, predicted once for the pool without gradient (phi is detached
anyway), and the predictor runs again with gradient on each step for the scale loss.

How a pool becomes steps (``StepPolicy.batching``):

- ``grouped``: each step is a batch of images of similar processed size, so padding stays
  small. Where the size does not depend on the content (fixed and multi-scale modes) such a
  batch is a random mix of scenes.
- ``mixed``: each step is a random sample of the pool, run as *parts* of similar processed
  size whose gradients add up to one update, with DETR's box normaliser taken over the whole
  step. In elastic mode the size follows the content (small objects: large φ), so a grouped
  batch holds one kind of scene: with a normalised (clipped) update per step, eight images
  of three large objects then weigh as much as eight of twenty tiny ones. Mixed steps give
  every object the weight it has in fixed-mode training, at the cost of smaller parts.

Where a run stands is a :class:`TrainState`, saved with every checkpoint: the data order is a
function of (seed, epoch) and every random draw of a step a function of (seed, step), so a
resumed run continues exactly where the checkpoint was written, mid-pool included.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .config import TrainOptions
from .data.sampler import group_by_size, shard
from .distributed import all_finite, world_mean
from .models.criterion import SetCriterion, step_num_boxes
from .models.elastic_detr import ElasticDETR
from .resize import phi_from_u
from .run_log import MetricsLog, batch_stats, elastic_extra
from .runtime import autocast_context

MAX_PART_PADDING = 0.2  # a mixed step's parts: at most this fraction of a part is padding
Plan = list[tuple[list[int], Tensor | None]]  # per batch: (positions in the pool, phi [b] or None)


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive non-finite losses."""


@dataclass
class TrainState:
    """Where a run stands. ``epoch``, ``next_pool``, ``step``, ``pending_plan`` and the wall
    seconds spent on the run so far (:meth:`elapsed`) go into every checkpoint; ``total_steps``
    (where the run stops), ``bad_steps`` (consecutive non-finite losses) and ``done`` live only
    as long as the process. ``seconds`` counts the earlier sessions of a resumed run, so a
    session killed without warning loses only the time since its last checkpoint, which its
    resumption trains again and counts."""

    epoch: int = 0
    next_pool: int = 0                 # first pool of ``epoch`` not trained yet
    step: int = 0                      # optimisation steps done
    pending_plan: Plan | None = None   # the untrained rest of pool ``next_pool``'s plan
    total_steps: int = 0
    bad_steps: int = 0
    done: bool = False
    seconds: float = 0.0               # wall seconds of the run's earlier sessions
    started: float = field(default_factory=time.perf_counter)  # this session's start

    def elapsed(self) -> float:
        """Wall seconds of the run so far: the earlier sessions and this one."""
        return self.seconds + time.perf_counter() - self.started

    def to_checkpoint(self) -> dict:
        """The checkpoint entries: epoch, next_pool, step, pending_plan (plain lists), seconds
        (:meth:`elapsed`)."""
        pending = None
        if self.pending_plan:
            pending = [[pos, phi.tolist() if phi is not None else None]
                       for pos, phi in self.pending_plan]
        return {"epoch": self.epoch, "next_pool": self.next_pool, "step": self.step,
                "pending_plan": pending, "seconds": round(self.elapsed(), 3)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, total_steps: int) -> TrainState:
        pending = None
        if ckpt.get("pending_plan"):
            pending = [(pos, torch.tensor(phi) if phi is not None else None)
                       for pos, phi in ckpt["pending_plan"]]
        return cls(epoch=ckpt["epoch"], next_pool=ckpt["next_pool"], step=ckpt["step"],
                   pending_plan=pending, total_steps=total_steps,
                   done=ckpt["step"] >= total_steps, seconds=float(ckpt.get("seconds", 0.0)))


@dataclass
class StepPolicy:
    """How phi is chosen for the detector in each mode (docs/method.md §5)."""

    mode: str                       # fixed | multiscale | elastic
    tau_min: float = 0.5
    tau_max: float = 1.5
    random_phi: bool = False        # elastic warm-up: detector sees phi ~ U[tau_min, tau_max]
    explore_noise: float = 0.0      # elastic: std of Gaussian noise on u
    fixed_phi: float = 1.0          # fixed mode: the scale every image is trained at
    fixed_phi_steps: int = 0        # elastic: pools planned before this step use phi = 1
    batching: str = "grouped"       # grouped | mixed (see the module docstring)


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Run a train-mode module without updating its batch-norm running statistics."""
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in saved:
            m.momentum = mom


def hflip_pool(images: list[Tensor], targets: list[dict], prob: float, seed: int, epoch: int,
               pool: int) -> tuple[list[Tensor], list[dict]]:
    """DETR's random horizontal flip, applied to each image of a pool with probability ``prob``.

    images: [3, H, W] each (unpadded); targets: "boxes" [N, 4] normalised cxcywh (cx -> 1 - cx).
    The draws depend only on (seed, epoch, pool), so a resumed run flips the same images.
    """
    if prob <= 0:
        return images, targets
    g = torch.Generator().manual_seed(seed * 7_919 + epoch * 1_000_003 + pool * 104_729 + 2)
    flips = (torch.rand(len(images), generator=g) < prob).tolist()
    out_images, out_targets = [], []
    for image, target, flip in zip(images, targets, flips):
        if flip:
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, 0] = 1.0 - boxes[:, 0]
            target = {**target, "boxes": boxes}
        out_images.append(image)
        out_targets.append(target)
    return out_images, out_targets


def scale_sample(num_images: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Pool positions of the images the predictor learns from at ``step``: a random sample of
    the pool (a function of seed and step), because the detector's batches hold images of
    similar size, and a batch of similar images gives the predictor (and the distribution
    loss, which compares a batch's distribution of scales with a target) a one-sided signal."""
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 3)
    return torch.randperm(num_images, generator=g)[:batch_size].tolist()


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, global step): exact resume needs no RNG state."""
    return torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)


def plan_pool(model: ElasticDETR, images: list[Tensor], batch_size: int, policy: StepPolicy,
              seed: int, step: int) -> Plan:
    """Split a pool into steps (grouped by processed size, or random samples with
    ``policy.batching == "mixed"``) and choose the detector's phi of every image.

    Returns [(positions in the pool, phi [b] or None)] in training order.
    """
    n = len(images)
    orig = [tuple(im.shape[-2:]) for im in images]
    g = step_generator(seed, step)
    if policy.mode == "elastic" and step < policy.fixed_phi_steps:
        phi = torch.ones(n)  # the detector first learns at phi = 1; the predictor learns anyway
    elif policy.mode == "elastic" and not policy.random_phi:
        with frozen_bn_stats(model.predictor), torch.no_grad():
            u = model.predictor(images)["u"].float().cpu()
        if policy.explore_noise > 0:
            u = (u + policy.explore_noise * torch.randn(n, generator=g)).clamp(0, 1)
        phi = model.phi_from_u(u)
    elif policy.mode == "fixed":
        phi = torch.full((n,), float(policy.fixed_phi))
    else:  # multiscale, or elastic warm-up: uniform draws
        phi = phi_from_u(torch.rand(n, generator=g), policy.tau_min, policy.tau_max)
    if policy.batching == "mixed":  # random samples; train_step splits them into parts
        order = torch.randperm(n, generator=g).tolist()
        return [(order[k:k + batch_size], phi[order[k:k + batch_size]])
                for k in range(0, n, batch_size)]
    if policy.mode == "multiscale":  # one phi per batch (grouped by shape at phi = 1)
        batches = group_by_size(model.sizes(orig, torch.ones(n)), batch_size)
        plan = [(b, phi[i].repeat(len(b))) for i, b in enumerate(batches)]
    else:
        plan = [(b, phi[b]) for b in group_by_size(model.sizes(orig, phi), batch_size)]
    return [plan[i] for i in torch.randperm(len(plan), generator=g).tolist()]


def train_step(model: nn.Module, criterion: SetCriterion, optimizer: torch.optim.Optimizer,
               images: list[Tensor], targets: list[dict], phi: Tensor | None, clip_norm: float,
               scaler=None, autocast=None, scale_images: list[Tensor] | None = None,
               scale_targets: list[dict] | None = None, parts: list[list[int]] | None = None
               ) -> tuple[dict[str, float], dict] | None:
    """One optimisation step; returns (loss values, outputs) or None when the loss is not finite.

    The loss is Σ_k losses[k]·criterion.weight_dict[k]. ``parts`` (positions into ``images``)
    run one after the other and their gradients add up to the step's (a mixed step: see the
    module docstring); every detection term is normalised by the boxes of the whole step, so
    the parts sum to the loss of one batch. Default: one part. In elastic mode the step's
    matches are folded into the per-bin loss EMA first (criterion.fold_bin_losses), so that the
    distribution loss reads an EMA that includes them. With ``scale_images`` the predictor's
    losses (L_scale, L_dist, size map) are computed on those images and ``scale_targets``, in
    the last part. Under DDP the parts before the last accumulate without synchronising.
    Outputs: the last part's, with "phi" and "image_sizes" of every image and, for several
    parts, "part_sizes" (the processed sizes of each part, for the padding statistics).
    """
    autocast = autocast or contextlib.nullcontext()
    parts = parts or [list(range(len(images)))]
    net = getattr(model, "module", model)  # the ElasticDETR under a DDP wrapper
    log_gamma = getattr(net, "log_gamma", None)
    track_bins = criterion.bin_ema is not None and log_gamma is not None
    num_boxes = step_num_boxes(targets)
    weights = criterion.weight_dict
    optimizer.zero_grad(set_to_none=True)
    bins, sums, done = torch.zeros(2, 3), {}, torch.zeros(())
    phis, sizes = [], []
    for j, part in enumerate(parts):
        last = j == len(parts) - 1
        quiet = model.no_sync() if hasattr(model, "no_sync") and not last \
            else contextlib.nullcontext()
        part_images, part_targets = [images[i] for i in part], [targets[i] for i in part]
        part_phi = None if phi is None else phi[part]
        with quiet:
            with autocast:
                if last and scale_images is None:
                    outputs = model(part_images, part_phi)
                else:  # the predictor runs once per step, in the last part
                    outputs = model(part_images, part_phi,
                                    scale_images=scale_images if last else [])
                indices = criterion.matcher(outputs, part_targets)
                if track_bins:
                    bins += criterion.matched_bin_losses(outputs, part_targets, indices,
                                                         log_gamma)
                    if last:
                        criterion.fold_bin_losses(bins)
                losses = criterion(outputs, part_targets, indices,
                                   scale_targets if last else None, num_boxes)
            total = sum(losses[k].float() * weights[k] for k in losses if k in weights)
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + v.detach().float()
            phis.append(outputs["phi"])
            sizes.append(outputs["image_sizes"])
            if not last:
                done = done + total.detach()
                (scaler.scale(total) if scaler is not None else total).backward()
    if not all_finite(done + total.detach()):
        optimizer.zero_grad(set_to_none=True)
        return None
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    names = sorted(sums)
    flat = world_mean(torch.stack([sums[k] for k in names] + [done + total.detach()]))
    values = dict(zip(names + ["loss"], flat.tolist()))
    if len(parts) > 1:
        outputs = {**outputs, "phi": torch.cat(phis), "image_sizes": torch.cat(sizes),
                   "part_sizes": [s.tolist() for s in sizes]}
    return values, outputs


def check_finite(values: dict | None, bad_steps: int, max_bad_steps: int, step: int) -> int:
    """Count consecutive non-finite steps; warn on each, raise after ``max_bad_steps``."""
    if values is not None:
        return 0
    bad_steps += 1
    warnings.warn(f"non-finite loss at step {step}: step skipped ({bad_steps} in a row)",
                  RuntimeWarning, stacklevel=2)
    if bad_steps >= max_bad_steps:
        raise TrainingDiverged(
            f"{bad_steps} consecutive non-finite losses (last at step {step}); lower the "
            "learning rate or check the data")
    return bad_steps


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, drop_at: float | None
              ) -> float:
    """Linear warm-up, then constant; x0.1 after ``drop_at`` (a fraction of total steps)."""
    f = min(1.0, (step + 1) / max(1, warmup_steps))
    if drop_at is not None and total_steps and step >= math.floor(drop_at * total_steps):
        f *= 0.1
    return f


def log_interval(log: MetricsLog, state: TrainState, model: ElasticDETR, criterion: SetCriterion,
                 optimizer: torch.optim.Optimizer,
                 probe: Callable[[], dict] | None = None) -> dict | None:
    """Write the metrics row of the steps since the last one (see run_log.MetricsLog); ``probe``
    adds its keys (e.g. the predictor's fidelity on fixed validation images)."""
    extra = {"step": state.step, "epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"]}
    if criterion.elastic is not None:
        extra.update(elastic_extra(model, criterion))
    if probe is not None and log.enabled:
        extra.update(probe())
    return log.flush(extra)


def train_one_epoch(model: ElasticDETR, criterion: SetCriterion, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    loader: Iterable[tuple[list[Tensor], list[dict]]], state: TrainState,
                    opts: TrainOptions, policy: StepPolicy, log: MetricsLog,
                    save: Callable[[TrainState], None], device: torch.device, amp: bool = False,
                    scaler: torch.amp.GradScaler | None = None, deadline: float | None = None,
                    ddp_model: nn.Module | None = None, rank: int = 0, world: int = 1,
                    probe: Callable[[], dict] | None = None) -> None:
    """Train the pools of ``state.epoch`` from ``state.next_pool`` on.

    ``loader`` yields pools (images [3, H, W] each, targets) starting at that pool; a pending
    plan of an interrupted pool is finished first. Every batch of a plan is one step
    (:func:`train_step`; under torchrun each rank trains its share of the batch through
    ``ddp_model``). Stops when ``state.step`` reaches ``state.total_steps`` or the wall clock
    passes ``deadline`` (``time.perf_counter()``): then the rest of the pool's plan is saved
    with the checkpoint and ``state.done`` is set. Calls ``save(state)`` at pool boundaries every
    ``opts.checkpoint_every`` pools; writes a metrics row every ``opts.log_every`` steps and
    after the last step of the run.
    """
    train_model = ddp_model or model
    for pool_idx, (images, targets) in enumerate(loader, start=state.next_pool):
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        images, targets = hflip_pool(images, targets, opts.hflip, opts.seed, state.epoch, pool_idx)
        plan = state.pending_plan or plan_pool(model, images, opts.batch_size, policy, opts.seed,
                                               state.step)
        state.pending_plan = None
        for b, (positions, phi) in enumerate(plan):
            if deadline is not None and time.perf_counter() > deadline:
                state.total_steps = state.step
            if state.step >= state.total_steps:
                state.next_pool, state.pending_plan, state.done = pool_idx, plan[b:], True
                if log.pending:
                    log_interval(log, state, model, criterion, optimizer, probe)
                save(state)
                return
            mine = shard(list(range(len(positions))), rank, world)  # this rank's share
            step_images = [images[positions[i]] for i in mine]
            step_targets = [targets[positions[i]] for i in mine]
            step_phi = None if phi is None else phi[mine]
            scale_images = scale_targets = parts = None
            if policy.batching == "mixed":  # a random sample: the predictor learns from it too
                sizes = model.sizes([tuple(im.shape[-2:]) for im in step_images],
                                    torch.ones(len(mine)) if step_phi is None else step_phi)
                parts = group_by_size(sizes, len(sizes), MAX_PART_PADDING)
                if policy.mode == "elastic":
                    scale_images, scale_targets = step_images, step_targets
            elif policy.mode == "elastic":  # the predictor learns from a random sample
                sample = shard(scale_sample(len(images), len(positions), opts.seed, state.step),
                               rank, world)
                scale_images = [images[i] for i in sample]
                scale_targets = [targets[i] for i in sample]
            result = train_step(train_model, criterion, optimizer, step_images, step_targets,
                                step_phi, opts.clip_norm, scaler, autocast_context(device, amp),
                                scale_images, scale_targets, parts)
            state.bad_steps = check_finite(result, state.bad_steps, opts.max_bad_steps,
                                           state.step)
            scheduler.step()
            state.step += 1
            if result is None:  # skipped: no row (all ranks skip together)
                log.add(len(positions), None)
                continue
            values, outputs = result
            log.add(len(positions), {**values, **batch_stats(outputs)})
            if state.step % opts.log_every == 0 or state.step >= state.total_steps:
                log_interval(log, state, model, criterion, optimizer, probe)
        state.next_pool = pool_idx + 1
        if state.next_pool % opts.checkpoint_every == 0:
            save(state)
    if log.pending and (state.epoch == opts.epochs - 1 or state.step >= state.total_steps):
        log_interval(log, state, model, criterion, optimizer, probe)  # the run ends with this epoch
