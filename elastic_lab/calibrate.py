"""Calibrate a trained detector's per-scale batch-norm statistics (models/scale_norm.py) [ours].

``elastic-lab calibrate --checkpoint RUN/checkpoint.pt --data DIR --out RUN/calibrated.pt``
rebuilds the model with ``scale_stats_bins`` bins and fills each bin's statistics by running
the backbone, in training-mode normalisation, over unlabelled training images at that bin's φ,
batched by processed size as training batches them. Which images a bin sees:

- elastic models: the images whose *predicted* φ falls in the bin, at that φ (the mix of
  content and scale the bin meets at test time); a bin with fewer than ``bin_images`` of them
  is topped up with other images resized to the bin's centre;
- models without a predictor (multi-scale, fixed): ``bin_images`` images at the bin's centre.

No weight changes; the labels are not read. The statistics are averages of per-batch
statistics (momentum None), i.e. of what training normalised with.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data.coco import CocoDetection
from .export import KEEP
from .models.build import ModelOptions, build_model
from .models.elastic_detr import ElasticDETR
from .models.scale_norm import scale_norms
from .recipes import CALIBRATION_BIN_IMAGES as BIN_IMAGES
from .recipes import CALIBRATION_IMAGES, SCALE_STATS_BINS
from .resize import pad_batch, resize_image
from .runtime import add_device_arguments, resolve_device, split_paths


def _bin_members(model: ElasticDETR, dataset, idx: list[int], bin_images: int, batch_size: int,
                 rng: np.random.Generator) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """Per bin, the (item, φ) pairs it is calibrated on, and how many are the model's own."""
    centres = scale_norms(model.detector)[0].scale_centres.tolist()
    members: list[list[tuple[int, float]]] = [[] for _ in centres]
    if model.predictor is not None:
        norm = scale_norms(model.detector)[0]
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            phi = model.predict_phi([dataset[i][0] for i in chunk])
            for i, p, b in zip(chunk, phi.tolist(), norm.bin_of(phi).tolist()):
                members[b].append((i, p))
    own = [len(m) for m in members]
    for b, centre in enumerate(centres):
        if len(members[b]) < bin_images:
            taken = {i for i, _ in members[b]}
            others = [i for i in idx if i not in taken]
            extra = rng.choice(len(others), min(bin_images - len(members[b]), len(others)),
                               replace=False)
            members[b] += [(others[j], centre) for j in extra.tolist()]
    return members, own


@torch.no_grad()
def calibrate_scale_stats(model: ElasticDETR, dataset, num_images: int = CALIBRATION_IMAGES,
                          bin_images: int = BIN_IMAGES, batch_size: int = 8, seed: int = 0,
                          progress: bool = False) -> dict:
    """Fill every ScaleBatchNorm2d's per-bin statistics from ``dataset`` (items (image [3, H, W]
    in [0, 1], target); targets unused). Returns a summary: bin centres, images per bin (and
    how many were the model's own choice). The running statistics are left as they were."""
    norms = scale_norms(model.detector)
    if not norms:
        raise ValueError("the model has no per-scale statistics (model option scale_stats_bins)")
    if len(dataset) == 0:
        raise ValueError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), min(num_images, len(dataset)), replace=False).tolist()
    was_training = model.training
    model.eval()
    members, own = _bin_members(model, dataset, idx, bin_images, batch_size, rng)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
              m.momentum) for m in norms]
    device = next(model.parameters()).device
    bar = tqdm(total=sum(len(m) for m in members), desc="calibrate scale statistics",
               disable=not progress, dynamic_ncols=True)
    try:
        for b, pairs in enumerate(members):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a plain average of the batches' statistics
                m.train()
            resized = [resize_image(dataset[i][0].to(device), p, model.base_size,
                                    model.max_size, model.stride) for i, p in pairs]
            order = sorted(range(len(resized)), key=lambda j: resized[j].shape[-2:].numel())
            for k in range(0, len(order), batch_size):
                batch, mask = pad_batch([resized[j] for j in order[k:k + batch_size]],
                                        model.stride)
                model.detector.backbone(batch, mask)
                bar.update(len(order[k:k + batch_size]))
            for m in norms:
                m.scale_mean[b].copy_(m.running_mean)
                m.scale_var[b].copy_(m.running_var)
    finally:
        bar.close()
        for m, (mean, var, count, momentum) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
            m.eval()
        model.train(was_training)
    return {"centres": [round(c, 4) for c in norms[0].scale_centres.tolist()],
            "images": [len(m) for m in members], "own_phi_images": own,
            "num_images": len(idx), "seed": seed}


def calibrate_checkpoint(src: str | Path, data: str | Path, out: str | Path,
                         bins: int = SCALE_STATS_BINS, split: str = "train",
                         num_images: int = CALIBRATION_IMAGES, bin_images: int = BIN_IMAGES,
                         device: str = "cpu", progress: bool = False) -> Path:
    """Write ``out``: the model of ``src`` with ``bins`` calibrated per-scale statistics (the
    inference part of the checkpoint, as export.py keeps it, plus ``calibration``)."""
    ckpt = load_checkpoint(src)
    if "model" not in ckpt or "model_options" not in ckpt or "categories" not in ckpt:
        raise CheckpointError(f"{src}: not a model checkpoint")
    opts = replace(ModelOptions.from_dict(ckpt["model_options"]), scale_stats_bins=bins)
    model = build_model(opts, len(ckpt["categories"]))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    stray = [k for k in missing if not k.rsplit(".", 1)[-1].startswith("scale_")]
    if stray or unexpected:
        raise CheckpointError(f"{src}: weights do not fit the stored options "
                              f"(missing {stray[:3]}, unexpected {unexpected[:3]})")
    model = model.float().to(resolve_device(device))
    dataset = CocoDetection(*split_paths(data, split), categories=ckpt["categories"])
    summary = calibrate_scale_stats(model, dataset, num_images, bin_images, progress=progress)
    summary.update(split=split, source=str(src))
    payload = {k: ckpt[k] for k in KEEP if k in ckpt}
    payload.update(model={k: v.cpu() for k, v in model.state_dict().items()},
                   model_options=opts.to_dict(), calibration=summary)
    return save_checkpoint(out, payload)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="trained model (RUN/checkpoint.pt)")
    p.add_argument("--data", required=True, help="COCO-format set with a train split")
    p.add_argument("--out", required=True, help="calibrated checkpoint to write")
    p.add_argument("--split", default="train", help="images to calibrate on (labels unused)")
    p.add_argument("--bins", type=int, default=SCALE_STATS_BINS,
                   help="φ bins, evenly spaced over [τmin, τmax]")
    p.add_argument("--images", type=int, default=CALIBRATION_IMAGES,
                   help="images drawn from the split")
    p.add_argument("--bin-images", type=int, default=BIN_IMAGES,
                   help="fewest images per bin (topped up at the bin's centre)")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    out = calibrate_checkpoint(args.checkpoint, args.data, args.out, args.bins, args.split,
                               args.images, args.bin_images, args.device, progress=True)
    summary = load_checkpoint(out)["calibration"]
    print(f"{out}: bins at φ {summary['centres']}, images per bin {summary['images']}")
    return 0
