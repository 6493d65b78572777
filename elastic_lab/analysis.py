"""Analysis of the seed experiments: phi vs object size, compute saved against a baseline's
Pareto front, and per-image scale sweeps (used by ``eval``, the notebooks and the benchmark)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torchvision.ops import box_convert, box_iou

from .data.image import image_tensor
from .data.synth import EXAMPLE_SIZE, render_scene
from .flops import FlopTable
from .resize import base_size_scale


def median_object_sides(dataset, base_size: int | None = None,
                        max_size: int | None = None) -> np.ndarray:
    """Median object side sqrt(w·h) per image of a CocoDetection, in item order: [N] float64.

    In original pixels, or at the base resolution (φ = 1) when ``base_size`` is given.
    Crowd boxes and categories outside the dataset's mapping are ignored; images without
    objects get NaN.
    """
    out = np.full(len(dataset), np.nan)
    for i, image_id in enumerate(dataset.ids):
        sides = [math.sqrt(max(a["bbox"][2], 0.0) * max(a["bbox"][3], 0.0))
                 for a in dataset.coco.imgToAnns.get(image_id, [])
                 if not a.get("iscrowd", 0) and a["category_id"] in dataset.cat_id_to_label]
        if sides:
            info = dataset.coco.imgs[image_id]
            factor = 1.0 if base_size is None else base_size_scale(
                int(info["height"]), int(info["width"]), base_size, max_size)
            out[i] = float(np.median(sides)) * factor
    return out


@torch.no_grad()
def phi_object_size_table(model, dataset, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Seed experiment 1: per image, the predicted φ next to its objects' median side.

    Runs only the scale predictor (no detector). Returns columns of equal length N:
    "image_id", "phi", "median_side" (px at the base resolution, NaN without objects),
    "num_objects", "regime" (the synthetic set's image record field, "" when absent).
    """
    device = next(model.parameters()).device
    phis = []
    for start in range(0, len(dataset), batch_size):
        images = [dataset[i][0].to(device) for i in range(start, min(start + batch_size,
                                                                    len(dataset)))]
        phis.append(model.predict_phi(images).reshape(-1))
    records = [dataset.coco.imgs[i] for i in dataset.ids]
    return {
        "image_id": np.array(dataset.ids),
        "phi": torch.cat(phis).double().numpy() if phis else np.zeros(0),
        "median_side": median_object_sides(dataset, model.base_size, model.max_size),
        "num_objects": np.array([sum(not a.get("iscrowd", 0)
                                     for a in dataset.coco.imgToAnns.get(r["id"], []))
                                 for r in records]),
        "regime": np.array([str(r.get("regime", "")) for r in records]),
    }


def phi_on_generated_scenes(model, regimes: Sequence[str], per_regime: int, seed: int = 0,
                            size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Predicted φ on ``per_regime`` freshly rendered synthetic scenes of each regime.

    One scene per regime is an anecdote; this is the quick check that φ follows the regime
    (scenes drawn from (seed, 7920, regime index, k), so not the bundled examples; ``size`` =
    (width, height), default ``EXAMPLE_SIZE``). Runs only the scale predictor. Returns columns
    of length len(regimes)·per_regime: "regime", "phi", "median_side" (px at the base
    resolution, NaN for scenes without objects).
    """
    width, height = size or EXAMPLE_SIZE
    to_base = base_size_scale(height, width, model.base_size, model.max_size)
    device = next(model.parameters()).device
    names, phis, sides = [], [], []
    for r, regime in enumerate(regimes):
        images = []
        for k in range(per_regime):
            image, anns = render_scene(np.random.default_rng([seed, 7920, r, k]), regime,
                                       (width, height))
            images.append(image_tensor(image).to(device))
            s = [math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns]
            sides.append(float(np.median(s)) * to_base if s else math.nan)
            names.append(regime)
        phis.append(model.predict_phi(images).reshape(-1))
    return {"regime": np.array(names), "phi": torch.cat(phis).double().numpy(),
            "median_side": np.array(sides)}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman ρ over the pairs where both are finite; NaN for < 3 pairs or a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def pareto_front(points: Sequence[Mapping], x: str = "gflops") -> list[int]:
    """Indices of the non-dominated points (lower ``x`` and higher "ap" are better), sorted by x.

    A point is dominated when another is at least as good in both and strictly better in one.
    """
    xs = np.array([float(p[x]) for p in points])
    ys = np.array([float(p["ap"]) for p in points])
    keep = []
    for i in range(len(points)):
        better_eq = (xs <= xs[i]) & (ys >= ys[i])
        strictly = (xs < xs[i]) | (ys > ys[i])
        if not np.any(better_eq & strictly):
            keep.append(i)
    return sorted(keep, key=lambda i: (xs[i], -ys[i]))


def compare_to_baseline(baseline: Sequence[Mapping], ap: float, gflops: float) -> dict:
    """A model at (ap, gflops) against a baseline evaluated at several scales.

    The baseline's Pareto front (points {"ap", "gflops"}) is read as a piecewise-linear curve.
    Returns {"baseline_ap_at_equal_gflops" (clamped at the ends), "ap_gain",
    "baseline_gflops_at_equal_ap" (None when the baseline never reaches ``ap``),
    "compute_saved" = 1 − gflops / that (None likewise), "extrapolated" (gflops outside the
    baseline's range)}.
    """
    front = [baseline[i] for i in pareto_front(baseline, "gflops")]
    g = np.array([float(p["gflops"]) for p in front])
    a = np.maximum.accumulate(np.array([float(p["ap"]) for p in front]))
    ap_equal = float(np.interp(gflops, g, a))
    if ap > a[-1]:
        needed = None
    elif ap <= a[0]:
        needed = float(g[0])
    else:
        j = int(np.argmax(a >= ap))  # first front point at or above ap; a[j-1] < ap <= a[j]
        needed = float(g[j - 1] + (ap - a[j - 1]) / (a[j] - a[j - 1]) * (g[j] - g[j - 1]))
    return {"baseline_ap_at_equal_gflops": ap_equal, "ap_gain": float(ap) - ap_equal,
            "baseline_gflops_at_equal_ap": needed,
            "compute_saved": None if needed is None else 1.0 - float(gflops) / needed,
            "extrapolated": bool(gflops < g[0] or gflops > g[-1])}


@torch.no_grad()
def image_scale_sweep(model, dataset, index: int, scales: Sequence[float],
                      threshold: float = 0.3, flops=None, iou: float = 0.5) -> dict:
    """Item ``index`` of a CocoDetection detected at each forced φ in ``scales``.

    Returns {"phi": [...], "mean_score" (of detections ≥ threshold; 0 when none),
    "num_detections", "recall" (ground-truth objects matched by a same-class detection ≥
    threshold with IoU ≥ ``iou``; NaN without objects), "gflops" (detector at that size),
    "predicted_phi" (the model's own choice: a float), "image_id"}.
    """
    image, target = dataset[index]
    device = next(model.parameters()).device
    x = image.to(device)
    flops = flops or FlopTable(model)
    h, w = target["orig_size"].tolist()
    gt = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
    rows: dict = {"phi": [], "mean_score": [], "num_detections": [], "recall": [], "gflops": []}
    for s in sorted(float(v) for v in scales):
        dets, out = model.detect([x], torch.full((1,), s))
        d = {k: v.cpu() for k, v in dets[0].items()}
        keep = d["scores"] >= threshold
        boxes, labels, scores = d["boxes"][keep], d["labels"][keep], d["scores"][keep]
        recall = float("nan")
        if len(gt):
            hit = (box_iou(gt, boxes) >= iou) & (target["labels"][:, None] == labels[None, :])
            recall = float(hit.any(dim=1).float().mean())
        rows["phi"].append(s)
        rows["mean_score"].append(float(scores.mean()) if len(scores) else 0.0)
        rows["num_detections"].append(int(keep.sum()))
        rows["recall"].append(recall)
        rows["gflops"].append(flops.detector(*out["image_sizes"][0].tolist()))
    rows["predicted_phi"] = float(model.predict_phi([x])[0])
    rows["image_id"] = int(target["image_id"])
    return rows
