"""Training entry point: ``elastic-lab train`` and ``torchrun -m elastic_lab.train``.

Modes: ``fixed`` (phi = 1), ``multiscale`` (phi ~ U[tau_min, tau_max] per batch) and ``elastic``
(phi from the ScalePredictor, trained jointly with the scale and distribution losses).
Checkpoints (``RUN/checkpoint.pt``) are written atomically at the end of every epoch and every
``--checkpoint-every`` pools; ``--resume`` continues from the last one with the same data
order (a function of seed and epoch) and per-step randomness (a function of seed and step).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data.coco import CocoDetection, collate_fn
from .data.sampler import PoolSampler, shard
from .distribution_loss import fit_beta_moments, target_beta
from .engine import (
    StepPolicy,
    batch_stats,
    check_finite,
    hflip_pool,
    lr_factor,
    plan_pool,
    train_step,
)
from .models.build import ModelOptions, build_model
from .models.criterion import ElasticLossOptions, SetCriterion, weight_dict
from .models.detr import DetrOptions
from .models.matcher import HungarianMatcher
from .runtime import add_device_arguments, autocast_context, resolve_device, split_paths


@dataclass
class TrainOptions:
    """Optimisation settings of a run (stored in the checkpoint)."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    lr_backbone: float | None = None
    weight_decay: float = 1e-4
    clip_norm: float = 0.1
    warmup_steps: int = 100
    lr_drop: float | None = None
    seed: int = 0
    pool_batches: int = 48
    log_every: int = 10
    checkpoint_every: int = 1
    warmup_epochs: int = 0
    explore_noise: float = 0.0
    hflip: float = 0.0               # probability of a horizontal flip per training image
    max_bad_steps: int = 5
    lambda_scale: float = 1.0
    lambda_dist: float = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``elastic-lab train``."""
    p.add_argument("--data", required=True, help="COCO-format folder (images/, annotations/)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.jsonl)")
    p.add_argument("--mode", choices=["fixed", "multiscale", "elastic"], default="fixed")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--base-size", type=int, default=256, help="short side at phi = 1")
    p.add_argument("--max-size", type=int, default=None, help="long-side cap at phi = 1")
    p.add_argument("--tau-min", type=float, default=0.5)
    p.add_argument("--tau-max", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-backbone", type=float, default=None, help="default: --lr")
    p.add_argument("--lr-drop", type=float, default=None,
                   help="fraction of --max-steps after which the lr is divided by 10")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--backbone-weights", default=None,
                   help="'imagenet' for torchvision's ImageNet weights (detector and predictor)")
    p.add_argument("--freeze-stem", action="store_true",
                   help="freeze the backbone's conv1 and layer1 (DETR's choice; faster on CPU)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (and checkpoint) after this much training time")
    p.add_argument("--return-layer", default="layer3", choices=["layer2", "layer3", "layer4"],
                   help="ResNet stage the transformer reads: stride 8 / 16 / 32")
    p.add_argument("--num-queries", type=int, default=30)
    p.add_argument("--dec-layers", type=int, default=3)
    p.add_argument("--enc-layers", type=int, default=2)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--thumb-size", type=int, default=64, help="predictor thumbnail long side")
    p.add_argument("--pool-batches", type=int, default=48,
                   help="batches loaded together and grouped by processed size")
    p.add_argument("--warmup-epochs", type=int, default=0,
                   help="elastic: epochs with random phi for the detector")
    p.add_argument("--explore-noise", type=float, default=0.0, help="elastic: noise std on u")
    p.add_argument("--hflip", type=float, default=0.0,
                   help="probability of flipping a training image horizontally (DETR: 0.5)")
    p.add_argument("--no-scale-loss", action="store_true", help="ablation: drop L_scale")
    p.add_argument("--no-distribution-loss", action="store_true", help="ablation: drop L_dist")
    p.add_argument("--distribution-loss", choices=["beta-w1", "balance"], default="beta-w1")
    p.add_argument("--boundary-small", type=float, default=None,
                   help="b_s in pixels at the processed size (default 32 * base-size / 800: "
                        "COCO's small/medium side at COCO's base size, scaled to ours)")
    p.add_argument("--boundary-large", type=float, default=None,
                   help="b_l in pixels (default 96 * base-size / 800)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=1, help="pools between checkpoints")
    p.add_argument("--max-bad-steps", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_device_arguments(p)


def options_from_args(args: argparse.Namespace) -> tuple[ModelOptions, TrainOptions,
                                                         ElasticLossOptions]:
    """Split the command line into model, optimisation and loss options."""
    if not 0.0 <= args.hflip <= 1.0:
        raise ValueError(f"--hflip is a probability in [0, 1], got {args.hflip}")
    detr = DetrOptions(backbone=args.backbone, backbone_weights=args.backbone_weights,
                       d_model=args.hidden_dim, num_encoder_layers=args.enc_layers,
                       num_decoder_layers=args.dec_layers, num_queries=args.num_queries,
                       return_layer=args.return_layer, freeze_stem=args.freeze_stem)
    model = ModelOptions(mode=args.mode, base_size=args.base_size, max_size=args.max_size,
                         tau_min=args.tau_min, tau_max=args.tau_max, thumb_size=args.thumb_size,
                         predictor_weights=args.backbone_weights, detr=detr)
    train = TrainOptions(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         lr=args.lr, lr_backbone=args.lr_backbone, warmup_steps=args.warmup_steps,
                         lr_drop=args.lr_drop, seed=args.seed, pool_batches=args.pool_batches,
                         log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                         warmup_epochs=args.warmup_epochs, explore_noise=args.explore_noise,
                         hflip=args.hflip, max_bad_steps=args.max_bad_steps)
    b_s = args.boundary_small if args.boundary_small is not None else 32.0 * args.base_size / 800
    b_l = args.boundary_large if args.boundary_large is not None else 96.0 * args.base_size / 800
    loss = ElasticLossOptions(b_s=b_s, b_l=b_l,
                              distribution=args.distribution_loss,
                              use_scale_loss=not args.no_scale_loss,
                              use_distribution_loss=not args.no_distribution_loss)
    return model, train, loss


def _distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def param_groups(model: torch.nn.Module, lr: float, lr_backbone: float) -> list[dict]:
    """Backbones (detector and predictor trunks) get ``lr_backbone``; the rest ``lr``."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if ".backbone." in f".{name}" or ".trunk." in f".{name}" else rest).append(p)
    return [{"params": rest, "lr": lr}, {"params": backbone, "lr": lr_backbone}]


class MetricsLog:
    """Averages step values over ``every`` steps and appends them to metrics.jsonl (rank 0)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def flush(self, extra: dict) -> dict | None:
        if not self.rows:
            return None
        keys = [k for k in self.rows[-1] if isinstance(self.rows[-1][k], float)]
        out = {k: sum(r.get(k, 0.0) for r in self.rows) / len(self.rows) for k in keys}
        # padding over the interval: padded pixels / all processed pixels (not a mean of ratios)
        out["padding_ratio"] = 1 - sum(r["pixels"] for r in self.rows) / sum(
            r["padded_pixels"] for r in self.rows)
        out["phi_min"] = min(r["phi_min"] for r in self.rows)
        out["phi_max"] = max(r["phi_max"] for r in self.rows)
        u = [v for r in self.rows for v in r.get("u_values", [])]
        if len(u) > 2:
            a, b = fit_beta_moments(torch.tensor(u))
            out["u_beta_alpha"], out["u_beta_beta"] = float(a), float(b)
        out.update(extra)
        self.rows = []
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(out) + "\n")
        return out


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) a training run; returns the checkpoint path."""
    rank, world, local_rank = _distributed()
    device = resolve_device(args.device, local_rank)
    out_dir = Path(args.out)
    ckpt_path = out_dir / "checkpoint.pt"
    model_opts, opts, loss_opts = options_from_args(args)
    state = None
    if args.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path)
        model_opts = ModelOptions.from_dict(state["model_options"])
        opts = TrainOptions(**state["train_options"])
        if args.max_steps is not None:
            opts.max_steps = args.max_steps
        opts.epochs = max(opts.epochs, args.epochs)
        loss_opts = ElasticLossOptions(**state["loss_options"])
    torch.manual_seed(opts.seed)
    image_dir, ann_file = split_paths(args.data, args.split)
    dataset = CocoDetection(image_dir, ann_file,
                            categories=state["categories"] if state else None)
    model = build_model(model_opts, len(dataset.categories)).to(device)
    elastic = model_opts.mode == "elastic"
    criterion = SetCriterion(len(dataset.categories), HungarianMatcher(),
                             elastic=loss_opts if elastic else None)
    weights = weight_dict(model_opts.detr.num_decoder_layers, elastic,
                          scale=opts.lambda_scale, dist_w=opts.lambda_dist)
    optimizer = torch.optim.AdamW(param_groups(model, opts.lr, opts.lr_backbone or opts.lr),
                                  weight_decay=opts.weight_decay)
    opts.pool_batches = max(1, min(opts.pool_batches, len(dataset) // opts.batch_size))
    sampler = PoolSampler(len(dataset), opts.batch_size, opts.pool_batches, opts.seed, rank, world)
    steps_per_epoch = len(sampler) * opts.pool_batches
    total = opts.max_steps or steps_per_epoch * opts.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opts.warmup_steps, total, opts.lr_drop))
    epoch, start_pool, step = 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if elastic and state.get("bin_ema") is not None:
            criterion.bin_ema.load_state_dict(state["bin_ema"])
        epoch, start_pool, step = state["epoch"], state["next_pool"], state["step"]
        set_rng_state(state["rng"])
        if rank == 0:
            truncate_metrics(out_dir / "metrics.jsonl", step)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    log = MetricsLog(out_dir / "metrics.jsonl", rank == 0)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "options.json").write_text(json.dumps(
            {"model": model_opts.to_dict(), "train": asdict(opts), "loss": asdict(loss_opts),
             "data": str(args.data), "world_size": world}, indent=2))

    def checkpoint(epoch_: int, next_pool: int, pending: list | None = None) -> None:
        """Save at a pool boundary, or mid-pool with the rest of that pool's plan."""
        if rank != 0:
            return
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch_, "next_pool": next_pool,
            "pending_plan": [[pos, phi.tolist() if phi is not None else None]
                             for pos, phi in pending] if pending else None,
            "step": step, "model_options": model_opts.to_dict(), "train_options": asdict(opts),
            "loss_options": asdict(loss_opts), "categories": dataset.categories,
            "bin_ema": criterion.bin_ema.state_dict() if elastic else None, "rng": rng_state()})

    pending = None
    if state is not None and state.get("pending_plan"):
        pending = [(pos, torch.tensor(phi) if phi is not None else None)
                   for pos, phi in state["pending_plan"]]
    bad, t_log, n_img = 0, time.perf_counter(), 0
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    bar = tqdm(total=total, initial=step, desc=f"train {model_opts.mode}", disable=rank != 0,
               dynamic_ncols=True)
    model.train()
    criterion.train()
    done = step >= total
    while epoch < opts.epochs and not done:
        sampler.set_epoch(epoch, start_pool)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                             collate_fn=collate_fn, num_workers=args.workers)
        policy = StepPolicy(model_opts.mode, model_opts.tau_min, model_opts.tau_max,
                            random_phi=elastic and epoch < opts.warmup_epochs,
                            explore_noise=opts.explore_noise)
        for pool_idx, (images, targets) in enumerate(loader, start=start_pool):
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
            images, targets = hflip_pool(images, targets, opts.hflip, opts.seed, epoch, pool_idx)
            plan = pending or plan_pool(model, images, opts.batch_size, policy, opts.seed, step)
            pending = None
            for b, (positions, phi) in enumerate(plan):
                if deadline is not None and time.perf_counter() > deadline:
                    total = step
                if step >= total:
                    checkpoint(epoch, pool_idx, plan[b:])
                    done = True
                    break
                mine = shard(list(range(len(positions))), rank, world)  # this rank's share
                result = train_step(train_model, criterion, weights, optimizer,
                                    [images[positions[i]] for i in mine],
                                    [targets[positions[i]] for i in mine],
                                    None if phi is None else phi[mine], opts.clip_norm,
                                    scaler, autocast_context(device, args.amp))
                bad = check_finite(result, bad, opts.max_bad_steps, step)
                scheduler.step()
                step += 1
                n_img += len(positions)
                bar.update(1)
                if result is None:
                    continue
                values, outputs = result
                log.add({**values, **batch_stats(outputs)})
                if step % opts.log_every == 0:
                    extra = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                             "images_per_s": n_img / (time.perf_counter() - t_log)}
                    if elastic:
                        extra.update(elastic_extra(model, criterion, loss_opts))
                    row = log.flush(extra)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", phi=f"{row['phi_mean']:.2f}")
                    t_log, n_img = time.perf_counter(), 0
            if done:
                break
            if (pool_idx + 1) % opts.checkpoint_every == 0:
                checkpoint(epoch, pool_idx + 1)
        if not done:
            epoch, start_pool = epoch + 1, 0
            checkpoint(epoch, 0)
            done = step >= total
    bar.close()
    if world > 1:
        dist.barrier()
    return ckpt_path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows written after the checkpoint a run resumes from (a killed run's tail)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def elastic_extra(model, criterion: SetCriterion, loss_opts: ElasticLossOptions) -> dict:
    """gamma, boundaries in pixels, per-bin localization losses and the target Beta."""
    gamma = float(model.log_gamma.detach().exp())
    extra = {"gamma": gamma, "boundary_small_px": loss_opts.b_s * gamma,
             "boundary_large_px": loss_opts.b_l * gamma}
    ema = criterion.bin_ema.value
    if ema is not None:
        extra["bin_loc_loss"] = [float(v) for v in ema]
        a, b = target_beta(ema, loss_opts.concentration)
        extra["target_alpha"], extra["target_beta"] = float(a), float(b)
    return extra


def run(args: argparse.Namespace) -> int:
    """CLI entry: train and print where the checkpoint is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("once", category=UserWarning)
        path = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elastic-lab train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
