"""Training entry point: ``elastic-lab train`` and ``torchrun -m elastic_lab.train``.

Modes: ``fixed`` (phi = 1), ``multiscale`` (phi ~ U[tau_min, tau_max] per batch) and ``elastic``
(phi from the ScalePredictor, trained jointly with the scale and distribution losses).
Checkpoints (``RUN/checkpoint.pt``) are written atomically at the end of every epoch and every
``--checkpoint-every`` pools; ``--resume`` continues from the last one with the same data
order (a function of seed and epoch) and per-step randomness (a function of seed and step).

From Python: ``train(TrainConfig(...))`` (config.py); the command line only builds that config
(:func:`config_from_args`). This module wires data, model, criterion, optimiser and
checkpoints; the epoch itself is engine.train_one_epoch.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from .analysis import predictor_fidelity
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import BATCHING, TrainConfig, TrainOptions
from .data.coco import CocoDetection, collate_fn
from .data.sampler import PoolSampler
from .distributed import init_from_env
from .engine import StepPolicy, TrainState, lr_factor, train_one_epoch
from .models.build import ModelOptions, build_model
from .models.criterion import ElasticLossOptions, SetCriterion, build_criterion
from .models.detr import DetrOptions
from .models.predictor_trunk import NORMS, TRUNKS
from .predictor_pretrain import PretrainOptions, cached_warm_start, warm_start_key
from .run_log import MetricsLog, truncate_metrics
from .runtime import add_device_arguments, resolve_device, split_paths

__all__ = ["TrainConfig", "TrainOptions", "add_arguments", "config_from_args", "main", "train"]


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
    p.add_argument("--backbone-norm", choices=NORMS, default=None,
                   help="the detector backbone's normalisation (default: batch, frozen with "
                        "ImageNet weights; group: the same in training and inference)")
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
    p.add_argument("--predictor-trunk", choices=TRUNKS, default="resnet18",
                   help="the scale predictor's trunk (to stride 16)")
    p.add_argument("--predictor-norm", choices=NORMS, default="batch",
                   help="normalisation in the predictor's trunk (group: the same in training "
                        "and inference)")
    p.add_argument("--predictor-size-bins", type=int, default=0,
                   help="> 0: the predictor's dense size head (size map) with that many bins")
    p.add_argument("--anchor-cells", type=float, default=None,
                   help="side of the detector's grid anchors in feature cells (a pixel size); "
                        "default: 0.1 of the image")
    p.add_argument("--fixed-phi", type=float, default=1.0,
                   help="fixed mode: train (and by default test) at this scale factor")
    p.add_argument("--fixed-phi-steps", type=int, default=0,
                   help="elastic: the detector sees phi = 1 for these first steps")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="elastic: steps of the predictor's warm start on its own losses")
    p.add_argument("--pretrain-batch-size", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=5e-4)
    p.add_argument("--warm-start-cache", default=None,
                   help="folder where predictor warm starts are kept; runs with the same "
                        "predictor, loss, warm-start options, seed and data reuse them")
    p.add_argument("--probe-images", type=int, default=64,
                   help="elastic: validation images whose predictor fidelity is logged")
    p.add_argument("--batching", choices=BATCHING, default="grouped",
                   help="grouped: each step a batch of similar processed size; mixed: each "
                        "step a random sample of the pool, run in parts of similar size "
                        "(elastic: the size follows the content)")
    p.add_argument("--pool-batches", type=int, default=48,
                   help="batches loaded together and grouped by processed size")
    p.add_argument("--warmup-epochs", type=int, default=0,
                   help="elastic: epochs with random phi for the detector")
    p.add_argument("--explore-noise", type=float, default=0.0, help="elastic: noise std on u")
    p.add_argument("--hflip", type=float, default=0.0,
                   help="probability of flipping a training image horizontally (DETR: 0.5)")
    p.add_argument("--no-scale-loss", action="store_true", help="ablation: drop L_scale")
    p.add_argument("--no-distribution-loss", action="store_true", help="ablation: drop L_dist")
    p.add_argument("--distribution-loss", choices=["beta-w1", "budget", "balance"],
                   default="beta-w1",
                   help="beta-w1: the paper's target from the per-bin losses; budget: a target "
                        "whose mean detector cost is --compute-budget (ours); balance: DyRA's")
    p.add_argument("--compute-budget", type=float, default=0.8,
                   help="budget: mean detector cost relative to phi = 1")
    p.add_argument("--boundary-small", type=float, default=None,
                   help="b_s in pixels at the processed size (default 32 * base-size / 800: "
                        "COCO's small/medium side at COCO's base size, scaled to ours)")
    p.add_argument("--boundary-large", type=float, default=None,
                   help="b_l in pixels (default 96 * base-size / 800)")
    p.add_argument("--lambda-scale", type=float, default=1.0, help="weight of L_scale")
    p.add_argument("--lambda-dist", type=float, default=1.0, help="weight of L_dist")
    p.add_argument("--lambda-size-map", type=float, default=1.0, help="weight of the size map")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=1, help="pools between checkpoints")
    p.add_argument("--max-bad-steps", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_device_arguments(p)



def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run an ``elastic-lab train`` command line describes."""
    detr = DetrOptions(backbone=args.backbone, backbone_weights=args.backbone_weights,
                       d_model=args.hidden_dim, num_encoder_layers=args.enc_layers,
                       num_decoder_layers=args.dec_layers, num_queries=args.num_queries,
                       return_layer=args.return_layer, freeze_stem=args.freeze_stem,
                       anchor_cells=args.anchor_cells, norm=args.backbone_norm)
    model = ModelOptions(mode=args.mode, base_size=args.base_size, max_size=args.max_size,
                         tau_min=args.tau_min, tau_max=args.tau_max, thumb_size=args.thumb_size,
                         predictor_weights=args.backbone_weights,
                         predictor_trunk=args.predictor_trunk, predictor_norm=args.predictor_norm,
                         predictor_size_bins=args.predictor_size_bins, fixed_phi=args.fixed_phi,
                         detr=detr)
    train_opts = TrainOptions(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        lr_backbone=args.lr_backbone, warmup_steps=args.warmup_steps, lr_drop=args.lr_drop,
        seed=args.seed, pool_batches=args.pool_batches, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, warmup_epochs=args.warmup_epochs,
        explore_noise=args.explore_noise, hflip=args.hflip, max_bad_steps=args.max_bad_steps,
        lambda_scale=args.lambda_scale, lambda_dist=args.lambda_dist,
        lambda_size_map=args.lambda_size_map, fixed_phi_steps=args.fixed_phi_steps,
        pretrain_steps=args.pretrain_steps, pretrain_batch_size=args.pretrain_batch_size,
        pretrain_lr=args.pretrain_lr, probe_images=args.probe_images, batching=args.batching)
    loss = ElasticLossOptions.for_base_size(
        args.base_size, args.boundary_small, args.boundary_large,
        distribution=args.distribution_loss, compute_budget=args.compute_budget,
        use_scale_loss=not args.no_scale_loss,
        use_distribution_loss=not args.no_distribution_loss)
    return TrainConfig(data=args.data, out=args.out, model=model, train=train_opts, loss=loss,
                       split=args.split, device=args.device, amp=args.amp, workers=args.workers,
                       resume=args.resume, max_minutes=args.max_minutes,
                       warm_start_cache=args.warm_start_cache)


def param_groups(model: torch.nn.Module, lr: float, lr_backbone: float) -> list[dict]:
    """Backbones (detector and predictor trunks) get ``lr_backbone``; the rest ``lr``."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if ".backbone." in f".{name}" or ".trunk." in f".{name}" else rest).append(p)
    return [{"params": rest, "lr": lr}, {"params": backbone, "lr": lr_backbone}]


def save_run_checkpoint(path: Path, state: TrainState, *, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler,
                        criterion: SetCriterion, model_opts: ModelOptions, opts: TrainOptions,
                        loss_opts: ElasticLossOptions, categories: list[dict],
                        enabled: bool = True) -> None:
    """Save a resumable checkpoint (rank 0 only: ``enabled``): weights, optimiser, scheduler,
    the TrainState (a pending plan when saved mid-pool), options, categories, bin EMA, RNG."""
    if not enabled:
        return
    save_checkpoint(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), **state.to_checkpoint(),
        "model_options": model_opts.to_dict(), "train_options": asdict(opts),
        "loss_options": asdict(loss_opts), "categories": categories,
        "bin_ema": criterion.bin_ema.state_dict() if criterion.bin_ema is not None else None,
        "rng": rng_state()})


def train(config: TrainConfig) -> Path:
    """Run (or resume) the training run ``config``; returns its checkpoint path.

    ``config`` is not modified. Under torchrun every process calls this with the same config.
    """
    rank, world, local_rank = init_from_env()
    device = resolve_device(config.device, local_rank)
    out_dir = Path(config.out)
    ckpt_path = out_dir / "checkpoint.pt"
    model_opts, opts = copy.deepcopy(config.model), copy.deepcopy(config.train)
    loss_opts = copy.deepcopy(config.loss_options())
    ckpt = None
    if config.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        model_opts = ModelOptions.from_dict(ckpt["model_options"])
        opts = TrainOptions(**ckpt["train_options"])
        if config.train.max_steps is not None:
            opts.max_steps = config.train.max_steps
        opts.epochs = max(opts.epochs, config.train.epochs)
        loss_opts = ElasticLossOptions(**ckpt["loss_options"])
    torch.manual_seed(opts.seed)
    image_dir, ann_file = split_paths(config.data, config.split)
    dataset = CocoDetection(image_dir, ann_file, categories=ckpt["categories"] if ckpt else None)
    model = build_model(model_opts, len(dataset.categories)).to(device)
    elastic = model_opts.mode == "elastic"
    criterion = build_criterion(len(dataset.categories), model_opts.detr.num_decoder_layers,
                                loss_opts if elastic else None, opts.lambda_scale,
                                opts.lambda_dist,
                                opts.lambda_size_map if model_opts.predictor_size_bins else None)
    optimizer = torch.optim.AdamW(param_groups(model, opts.lr, opts.lr_backbone or opts.lr),
                                  weight_decay=opts.weight_decay)
    opts.pool_batches = max(1, min(opts.pool_batches, len(dataset) // opts.batch_size))
    sampler = PoolSampler(len(dataset), opts.batch_size, opts.pool_batches, opts.seed, rank, world)
    total = opts.max_steps or len(sampler) * opts.pool_batches * opts.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opts.warmup_steps, total, opts.lr_drop))
    state = TrainState(total_steps=total)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if elastic and ckpt.get("bin_ema") is not None:
            criterion.bin_ema.load_state_dict(ckpt["bin_ema"])
        state = TrainState.from_checkpoint(ckpt, total)
        set_rng_state(ckpt["rng"])
        if rank == 0:
            truncate_metrics(out_dir / "metrics.jsonl", state.step)
    ddp_model = None
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "options.json").write_text(json.dumps(
            {"model": model_opts.to_dict(), "train": asdict(opts), "loss": asdict(loss_opts),
             "data": str(config.data), "world_size": world}, indent=2))
    save = functools.partial(save_run_checkpoint, ckpt_path, model=model, optimizer=optimizer,
                             scheduler=scheduler, criterion=criterion, model_opts=model_opts,
                             opts=opts, loss_opts=loss_opts, categories=dataset.categories,
                             enabled=rank == 0)
    if elastic and ckpt is None and opts.pretrain_steps > 0 and loss_opts.use_scale_loss:
        # a fresh run: warm start the predictor first (L_scale: not for the no-scale-loss run)
        out_dir.mkdir(parents=True, exist_ok=True)
        warm = PretrainOptions(steps=opts.pretrain_steps, batch_size=opts.pretrain_batch_size,
                               lr=opts.pretrain_lr)
        key = warm_start_key(model_opts.to_dict(), asdict(loss_opts), warm, opts.seed, ann_file)
        cached_warm_start(model, dataset, warm, loss_opts, opts.seed, key,
                          config.warm_start_cache if rank == 0 else None,
                          out_dir / "pretrain.jsonl" if rank == 0 else None, rank == 0)
        if world > 1:  # every rank starts from rank 0's warm start
            for p in model.predictor.state_dict().values():
                dist.broadcast(p, 0)
    probe = fidelity_probe(model, config, loss_opts, opts.probe_images, ckpt) if elastic else None
    deadline = time.perf_counter() + 60 * config.max_minutes if config.max_minutes else None
    log = MetricsLog(out_dir / "metrics.jsonl", rank == 0, total, state.step,
                     f"train {model_opts.mode}")
    model.train()
    criterion.train()
    state.done = state.step >= total
    while state.epoch < opts.epochs and not state.done:
        sampler.set_epoch(state.epoch, state.next_pool)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                             collate_fn=collate_fn, num_workers=config.workers)
        policy = StepPolicy(model_opts.mode, model_opts.tau_min, model_opts.tau_max,
                            random_phi=elastic and state.epoch < opts.warmup_epochs,
                            explore_noise=opts.explore_noise, fixed_phi=model_opts.fixed_phi,
                            fixed_phi_steps=opts.fixed_phi_steps, batching=opts.batching)
        train_one_epoch(model, criterion, optimizer, scheduler, loader, state, opts, policy, log,
                        save, device, config.amp, scaler, deadline, ddp_model, rank, world,
                        probe)
        if not state.done:
            state.epoch, state.next_pool = state.epoch + 1, 0
            save(state)
            state.done = state.step >= total
    log.close()
    if world > 1:
        dist.barrier()
    return ckpt_path


def fidelity_probe(model, config: TrainConfig, loss_opts: ElasticLossOptions, num_images: int,
                   ckpt: dict | None):
    """A callable giving the predictor's fidelity (analysis.predictor_fidelity) on the first
    ``num_images`` validation images, or None when the data has no "val" split."""
    try:
        image_dir, ann_file = split_paths(config.data, "val")
    except FileNotFoundError:
        return None
    if num_images <= 0 or not ann_file.exists():
        return None
    probe_set = CocoDetection(image_dir, ann_file, categories=ckpt["categories"] if ckpt else None)
    indices = range(min(num_images, len(probe_set)))

    def probe() -> dict:
        was_training = model.training
        model.eval()
        f = predictor_fidelity(model, probe_set, asdict(loss_opts), indices=indices)
        model.train(was_training)
        row = {f"fidelity_{k}": f[k] for k in ("pearson_u", "mae_u", "sd_u", "mean_phi",
                                               "mean_phi_star")}
        row["fidelity_phi_by_regime"] = {r: [v["phi"], v["phi_star"]]
                                         for r, v in f.get("by_regime", {}).items()}
        return row

    return probe


def run(args: argparse.Namespace) -> int:
    """CLI entry: train and print where the checkpoint is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("once", category=UserWarning)
        path = train(config_from_args(args))
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
