"""Analysis of the seed experiments: phi vs object size, predictor fidelity (does φ follow the
scale loss's own optimum φ*?), compute saved against a baseline's Pareto front, and per-image
scale sweeps (used by ``eval``, the notebooks, the app and the benchmark)."""

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
from .resize import base_size_scale, phi_from_u
from .scale_loss import scale_optimum


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
                            size: tuple[int, int] | None = None,
                            loss_options: Mapping | None = None) -> dict[str, np.ndarray]:
    """Predicted φ on ``per_regime`` freshly rendered synthetic scenes of each regime.

    One scene per regime is an anecdote; this is the quick check that φ follows the regime
    (scenes drawn from (seed, 7920, regime index, k), so not the bundled examples; ``size`` =
    (width, height), default ``EXAMPLE_SIZE``). Runs only the scale predictor. Returns columns
    of length len(regimes)·per_regime: "regime", "phi", "median_side" (px at the base
    resolution, NaN for scenes without objects); with ``loss_options`` (a checkpoint's) also
    "phi_star", the scale loss's optimum of each scene (:func:`loss_optimum`), and "fidelity",
    :func:`fidelity_summary` of the scenes.
    """
    width, height = size or EXAMPLE_SIZE
    to_base = base_size_scale(height, width, model.base_size, model.max_size)
    device = next(model.parameters()).device
    names, phis, sides, all_sides = [], [], [], []
    for r, regime in enumerate(regimes):
        images = []
        for k in range(per_regime):
            image, anns = render_scene(np.random.default_rng([seed, 7920, r, k]), regime,
                                       (width, height))
            images.append(image_tensor(image).to(device))
            s = [math.sqrt(a["bbox"][2] * a["bbox"][3]) * to_base for a in anns]
            all_sides.append(torch.tensor(s, dtype=torch.float64))
            sides.append(float(np.median(s)) if s else math.nan)
            names.append(regime)
        phis.append(model.predict_phi(images).reshape(-1))
    out = {"regime": np.array(names), "phi": torch.cat(phis).double().numpy(),
           "median_side": np.array(sides)}
    if loss_options is not None:
        u_star, out["phi_star"] = loss_optimum(model, all_sides, loss_options)
        u = (out["phi"] - model.tau_min) / (model.tau_max - model.tau_min)
        out["fidelity"] = fidelity_summary(u, u_star, model.tau_min, model.tau_max,
                                           list(out["regime"]), list(out["median_side"]))
    return out


def base_object_sides(dataset, index: int, base_size: int, max_size: int | None) -> torch.Tensor:
    """Object sides sqrt(w·h) of item ``index`` of a CocoDetection at φ = 1 (pixels): [N]."""
    target = dataset.coco.imgs[dataset.ids[index]]
    factor = base_size_scale(int(target["height"]), int(target["width"]), base_size, max_size)
    sides = [math.sqrt(max(a["bbox"][2], 0.0) * max(a["bbox"][3], 0.0)) * factor
             for a in dataset.coco.imgToAnns.get(dataset.ids[index], [])
             if not a.get("iscrowd", 0) and a["category_id"] in dataset.cat_id_to_label]
    return torch.tensor(sides, dtype=torch.float64)


def loss_optimum(model, base_sides: Sequence[torch.Tensor], loss_options: Mapping
                 ) -> tuple[np.ndarray, np.ndarray]:
    """u*, φ* of each image for ``model``'s boundaries: the scale loss's own optimum.

    ``loss_options`` are the run's scale-loss options (a checkpoint's "loss_options": b_s,
    b_l, k, empty_target); γ is the model's learned one (1 for models without a predictor).
    Returns two float64 arrays [N] (see :func:`elastic_lab.scale_loss.scale_optimum`).
    """
    g = float(model.log_gamma.detach()) if model.log_gamma is not None else 0.0
    empty = loss_options.get("empty_target", 0.0)
    u, phi = scale_optimum(base_sides, g, model.tau_min, model.tau_max,
                           float(loss_options["b_s"]), float(loss_options["b_l"]),
                           float(loss_options.get("k", 6.0)), 0.0 if empty is None else empty)
    return u.numpy(), phi.numpy()


def fidelity_summary(u: Sequence[float], u_star: Sequence[float], tau_min: float,
                     tau_max: float, regimes: Sequence[str] | None = None,
                     median_sides: Sequence[float] | None = None) -> dict:
    """How well predicted scales u follow their targets u*: the numbers of issue-style reports.

    Returns {"pearson_u", "mae_u", "sd_u", "sd_u_star", "mean_phi", "mean_phi_star",
    "num_images"} plus, when given, "by_regime" {regime: {"phi", "phi_star", "n"}} and
    "spearman_phi_vs_median_side" (images with objects). Pearson is NaN for a constant side.
    """
    u, u_star = np.asarray(u, np.float64), np.asarray(u_star, np.float64)
    if u.shape != u_star.shape or u.ndim != 1 or u.size == 0:
        raise ValueError(f"u {u.shape} and u_star {u_star.shape}: need equal 1-D shapes")
    phi, phi_star = phi_from_u(u, tau_min, tau_max), phi_from_u(u_star, tau_min, tau_max)
    pearson = (float(np.corrcoef(u, u_star)[0, 1])
               if u.size > 1 and np.ptp(u) > 0 and np.ptp(u_star) > 0 else float("nan"))
    out = {"pearson_u": pearson, "mae_u": float(np.abs(u - u_star).mean()),
           "sd_u": float(u.std()), "sd_u_star": float(u_star.std()),
           "mean_phi": float(phi.mean()), "mean_phi_star": float(phi_star.mean()),
           "num_images": int(u.size)}
    if regimes is not None:
        regimes = np.asarray(regimes)
        out["by_regime"] = {str(r): {"phi": float(phi[regimes == r].mean()),
                                     "phi_star": float(phi_star[regimes == r].mean()),
                                     "n": int((regimes == r).sum())}
                            for r in sorted(set(regimes.tolist())) if r != ""}
    if median_sides is not None:
        out["spearman_phi_vs_median_side"] = spearman(median_sides, phi)
    return out


@torch.no_grad()
def predictor_fidelity(model, dataset, loss_options: Mapping, batch_size: int = 16,
                       indices: Sequence[int] | None = None) -> dict:
    """Predicted u against the scale loss's optimum u* on (part of) a CocoDetection.

    Runs only the scale predictor. ``loss_options`` as in :func:`loss_optimum`. Returns
    :func:`fidelity_summary` of the images plus the per-image columns "u", "u_star"
    (lists), so that callers can plot them.
    """
    if model.predictor is None:
        raise ValueError("predictor_fidelity needs an elastic model (it has no scale predictor)")
    indices = list(range(len(dataset))) if indices is None else list(indices)
    device = next(model.parameters()).device
    u = []
    for start in range(0, len(indices), batch_size):
        images = [dataset[i][0].to(device) for i in indices[start:start + batch_size]]
        u.append(model.predictor(images)["u"].float().cpu())
    u = torch.cat(u).double().numpy()
    sides = [base_object_sides(dataset, i, model.base_size, model.max_size) for i in indices]
    u_star, _ = loss_optimum(model, sides, loss_options)
    records = [dataset.coco.imgs[dataset.ids[i]] for i in indices]
    medians = [float(s.median()) if s.numel() else math.nan for s in sides]
    out = fidelity_summary(u, u_star, model.tau_min, model.tau_max,
                           [str(r.get("regime", "")) for r in records], medians)
    out.update({"u": u.tolist(), "u_star": u_star.tolist()})
    return out



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
