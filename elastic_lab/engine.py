"""One training pass over a pool of images, and the per-step bookkeeping.

A *pool* is ``pool_batches`` batches loaded together (data/sampler.py). The pool's images are
grouped by processed size so padding stays small; in elastic mode the sizes come from the
predictor's phi, predicted once for the pool without gradient (phi is detached anyway), and
the predictor runs again with gradient on each batch for the scale loss.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .data.sampler import group_by_size
from .distributed import all_finite, world_gather, world_mean
from .models.elastic_detr import ElasticDETR
from .resize import padding_ratio


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive non-finite losses."""


@dataclass
class StepPolicy:
    """How phi is chosen for the detector in each mode (method.md §5)."""

    mode: str                       # fixed | multiscale | elastic
    tau_min: float = 0.5
    tau_max: float = 1.5
    random_phi: bool = False        # elastic warm-up: detector sees phi ~ U[tau_min, tau_max]
    explore_noise: float = 0.0      # elastic: std of Gaussian noise on u


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


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, global step): exact resume needs no RNG state."""
    return torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)


def plan_pool(model: ElasticDETR, images: list[Tensor], batch_size: int, policy: StepPolicy,
              seed: int, step: int) -> list[tuple[list[int], Tensor | None]]:
    """Group a pool into batches and choose each batch's phi.

    Returns [(positions in the pool, phi [b] or None)] in training order.
    """
    n = len(images)
    orig = [tuple(im.shape[-2:]) for im in images]
    g = step_generator(seed, step)
    if policy.mode == "elastic" and not policy.random_phi:
        with frozen_bn_stats(model.predictor), torch.no_grad():
            u = model.predictor(images)["u"].float().cpu()
        if policy.explore_noise > 0:
            u = (u + policy.explore_noise * torch.randn(n, generator=g)).clamp(0, 1)
        phi = model.phi_from_u(u)
    elif policy.mode == "fixed":
        phi = torch.ones(n)
    else:  # multiscale, or elastic warm-up: uniform draws
        phi = policy.tau_min + (policy.tau_max - policy.tau_min) * torch.rand(n, generator=g)
    if policy.mode == "multiscale":  # one phi per batch (grouped by shape at phi = 1)
        batches = group_by_size(model.sizes(orig, torch.ones(n)), batch_size)
        plan = [(b, phi[i].repeat(len(b))) for i, b in enumerate(batches)]
    else:
        plan = [(b, phi[b]) for b in group_by_size(model.sizes(orig, phi), batch_size)]
    return [plan[i] for i in torch.randperm(len(plan), generator=g).tolist()]


def train_step(model: nn.Module, criterion: nn.Module, weights: dict[str, float],
               optimizer: torch.optim.Optimizer, images: list[Tensor], targets: list[dict],
               phi: Tensor | None, clip_norm: float, scaler=None, autocast=None
               ) -> tuple[dict[str, float], dict] | None:
    """One optimisation step; returns (loss values, outputs) or None when the loss is not finite."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        outputs = model(images, phi)
        losses = criterion(outputs, targets)
    total = sum(losses[k].float() * weights[k] for k in losses if k in weights)
    if not all_finite(total):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.zero_grad(set_to_none=True)
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
    names = sorted(losses)
    flat = world_mean(torch.stack([losses[k].detach().float() for k in names] + [total.detach()]))
    values = dict(zip(names + ["loss"], flat.tolist()))
    return values, outputs


def batch_stats(outputs: dict) -> dict[str, float]:
    """Per-batch numbers for metrics.jsonl (over the global batch under torchrun): phi
    statistics, padding ratio and processed pixels."""
    phi = world_gather(outputs["phi"].float().reshape(-1))
    pad = world_mean(torch.tensor([padding_ratio(
        [tuple(s) for s in outputs["image_sizes"].tolist()])]))
    pixels = outputs["image_sizes"].prod(1).sum().float().cpu().reshape(1)
    stats = {"phi_mean": float(phi.mean()), "phi_std": float(phi.std()) if len(phi) > 1 else 0.0,
             "phi_min": float(phi.min()), "phi_max": float(phi.max()),
             "padding_ratio": float(pad), "pixels": float(world_gather(pixels).sum()),
             "padded_pixels": float(world_gather(pixels).sum()) / max(1e-9, 1 - float(pad))}
    if "scale" in outputs:
        stats["u_values"] = world_gather(outputs["scale"]["u"].detach().float()).tolist()
    return stats


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
