"""Warm start of the scale predictor on its own losses, before joint training (ours).

The scale loss depends only on the ground truth and the boundaries, not on the detector, so
the predictor can learn its targets without running the detector: thousands of cheap steps
(the predictor costs ~3 % of the detector) on random batches of the training images. Joint
training then starts with a predictor whose φ already follows object size, so the detector is
trained at the scales it will be tested at from the first step.

Every sample is augmented the way that teaches scale: a random crop (a zoom-in: the same
objects become larger relative to the image, so their sides at the base size grow and the
target φ falls) and a horizontal flip. Boxes are cropped with torchvision's box ops and kept
when at least half of each box stays visible. Deterministic in the seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .models.predictor_criterion import predictor_losses
from .size_map import size_bin_edges

__all__ = ["PretrainOptions", "cached_warm_start", "pretrain_predictor", "random_zoom",
           "warm_start_key"]


@dataclass
class PretrainOptions:
    """Predictor warm start (``--predictor-pretrain-steps`` and friends)."""

    steps: int = 0               # 0: no warm start
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    crop_prob: float = 0.5       # probability of a random zoom-in crop per sample
    min_crop: float = 0.5        # smallest crop side as a fraction of the image side
    hflip: float = 0.5
    log_every: int = 100


def random_zoom(image: Tensor, target: dict, g: torch.Generator, crop_prob: float,
                min_crop: float, hflip: float) -> tuple[Tensor, dict]:
    """Random horizontal flip and zoom-in crop of one sample.

    image: [3, H, W]; target: "boxes" [N, 4] normalised cxcywh, "orig_size" (h, w), ...
    Returns the new image and a target whose "boxes" and "orig_size" describe it.
    """
    boxes = target["boxes"]
    h, w = image.shape[-2:]
    if float(torch.rand((), generator=g)) < hflip:
        image = image.flip(-1)
        boxes = boxes.clone()
        boxes[:, 0] = 1.0 - boxes[:, 0]
    if float(torch.rand((), generator=g)) < crop_prob:
        frac = min_crop + (1.0 - min_crop) * float(torch.rand((), generator=g))
        aspect = math.exp(0.15 * (2 * float(torch.rand((), generator=g)) - 1))
        ch = max(16, min(h, round(h * frac)))
        cw = max(16, min(w, round(w * frac * aspect)))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
        image = image[:, y0:y0 + ch, x0:x0 + cw]
        xyxy = box_convert(boxes * torch.tensor([w, h, w, h]), "cxcywh", "xyxy")
        cut = xyxy - torch.tensor([x0, y0, x0, y0], dtype=xyxy.dtype)
        cut = torch.stack([cut[:, 0].clamp(0, cw), cut[:, 1].clamp(0, ch),
                           cut[:, 2].clamp(0, cw), cut[:, 3].clamp(0, ch)], dim=1)
        keep = box_area(cut) >= 0.5 * box_area(xyxy).clamp_min(1e-6)
        boxes = box_convert(cut[keep], "xyxy", "cxcywh") / torch.tensor([cw, ch, cw, ch])
        h, w = ch, cw
    return image, {**target, "boxes": boxes, "orig_size": torch.tensor([h, w])}


def pretrain_predictor(model, dataset, opts: PretrainOptions, loss_opts, seed: int = 0,
                       log_path: str | Path | None = None, progress: bool = True,
                       on_log: Callable[[int], dict] | None = None) -> list[dict]:
    """Train ``model.predictor`` alone on loss_scale (+ loss_size_map) for ``opts.steps``.

    Args:
        model: an elastic ElasticDETR (its predictor, base size, τ range and γ are used).
        dataset: the training CocoDetection.
        loss_opts: the run's ElasticLossOptions (b_s, b_l, k, empty_target).
        log_path: append one JSON row per ``opts.log_every`` steps there ("phase": "pretrain").
        on_log: called with the step at every logged row; its keys are added to the row (e.g.
            the predictor's fidelity on held-out images). The predictor is in eval mode then.
    Returns the logged rows.
    """
    predictor = model.predictor
    if predictor is None or opts.steps <= 0:
        return []
    device = next(predictor.parameters()).device
    g = torch.Generator().manual_seed(seed * 7_919 + 5)
    edges = size_bin_edges(model.base_size, predictor.size_bins) if predictor.size_bins else None
    params = [p for p in predictor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, opts.warmup_steps)))
    predictor.train()
    rows, window = [], []
    for step in tqdm(range(1, opts.steps + 1), desc="predictor warm start",
                     disable=not progress, dynamic_ncols=True):
        picks = torch.randint(0, len(dataset), (opts.batch_size,), generator=g).tolist()
        images, targets = [], []
        for i in picks:
            image, target = random_zoom(*dataset[i], g, opts.crop_prob, opts.min_crop,
                                        opts.hflip)
            images.append(image.to(device))
            targets.append(target)
        out = predictor(images)
        losses, _ = predictor_losses(out, targets, model.base_size, model.max_size,
                                     model.log_gamma, loss_opts.b_s, loss_opts.b_l, loss_opts.k,
                                     loss_opts.empty_target, edges)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        window.append({k: float(v.detach()) for k, v in losses.items()})
        if step % opts.log_every == 0 or step == opts.steps:
            row = {"phase": "pretrain", "step": step,
                   **{k: sum(r[k] for r in window) / len(window) for k in window[0]},
                   "lr": optimizer.param_groups[0]["lr"]}
            if on_log is not None:
                predictor.eval()
                row.update(on_log(step))
                predictor.train()
            rows.append(row)
            window = []
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def warm_start_key(model_options: dict, loss_options: dict, opts: PretrainOptions, seed: int,
                   ann_file: str | Path) -> str:
    """A name for a warm start: everything it depends on (the predictor and resize options, the
    scale-loss options, the warm-start options, the seed, the training annotations' path, size
    and modification time), hashed."""
    ann = Path(ann_file).resolve()
    keep = ("base_size", "max_size", "tau_min", "tau_max", "thumb_size", "predictor_d_model",
            "predictor_layers", "predictor_weights", "predictor_trunk", "predictor_norm",
            "predictor_size_bins")
    stat = ann.stat()
    key = {"model": {k: model_options[k] for k in keep},
           "loss": {k: loss_options[k] for k in ("b_s", "b_l", "k", "empty_target")},
           "warm_start": {k: v for k, v in vars(opts).items() if k != "log_every"},
           "seed": seed, "data": [str(ann), stat.st_size, stat.st_mtime_ns]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_warm_start(model, dataset, opts: PretrainOptions, loss_opts, seed: int, key: str,
                      cache: str | Path | None, log_path: str | Path | None = None,
                      progress: bool = True) -> bool:
    """:func:`pretrain_predictor`, or load the warm start of the same ``key`` from ``cache``.

    Runs that share everything the warm start depends on (e.g. the ablations of a benchmark)
    train it once. The predictor's weights go to ``cache/KEY.pt`` and the log rows to
    ``cache/KEY.jsonl`` (copied to ``log_path``). Returns True when the cache was used.
    """
    if cache is not None:
        weights, rows = Path(cache) / f"{key}.pt", Path(cache) / f"{key}.jsonl"
        if weights.is_file():
            model.predictor.load_state_dict(load_checkpoint(weights)["model"])
            if log_path is not None and rows.is_file():
                shutil.copyfile(rows, log_path)
            return True
    pretrain_predictor(model, dataset, opts, loss_opts, seed, log_path, progress)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        save_checkpoint(weights, {"model": model.predictor.state_dict(), "key": key})
        if log_path is not None and Path(log_path).is_file():
            shutil.copyfile(log_path, rows)
    return False
