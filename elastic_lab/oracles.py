"""Oracle scale choices: what a detector scores when each image gets the "right" φ.

Two ceilings, both computed from the test labels (so neither is a deployable model):

- **Loss-optimal φ\\*** (:func:`loss_optimal`): each image at the optimum of the scale loss
  (``scale_loss.scale_optimum`` with the model's boundaries and γ): what a perfect predictor
  of the loss's own targets would give.
- **AP-optimal φ** (:func:`ap_optimal`): each image at the φ of a sweep that maximises its own
  AP (ties to the cheaper scale; images without objects at the cheapest scale). The ceiling of
  any per-image resolution choice; optimistic, because it picks on the labels, so a detector
  trained at one scale gains from it too: report that gain as the reference for the bias.

:func:`detect_at` runs a detector with a given φ per image, batching only images of the same
processed size (no padding, so the result does not depend on the batch size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .analysis import base_object_sides, loss_optimum
from .ap_subsets import SubsetAP
from .flops import FlopTable

__all__ = ["ap_optimal", "ap_optimal_phi", "detect_at", "image_sizes", "loss_optimal",
           "loss_optimal_phi", "summarize_choice"]


def image_sizes(dataset) -> list[tuple[int, int]]:
    """(h, w) of every item, from the annotations of a CocoDetection (or a torch Subset of one)
    without loading the images; other data sets are read item by item."""
    base, index = dataset, list(range(len(dataset)))
    if isinstance(dataset, torch.utils.data.Subset):
        base, index = dataset.dataset, list(dataset.indices)
    if hasattr(base, "coco") and hasattr(base, "ids"):
        infos = [base.coco.imgs[base.ids[i]] for i in index]
        return [(int(info["height"]), int(info["width"])) for info in infos]
    return [tuple(int(v) for v in dataset[i][1]["orig_size"]) for i in range(len(dataset))]


@torch.no_grad()
def detect_at(model, dataset, phi: Sequence[float], batch_size: int = 8,
              progress: bool = False) -> list[dict]:
    """Detections of every item of ``dataset`` at its own φ (``phi[i]`` for item i).

    Items are batched by equal processed size only. Returns, in item order,
    {"image_id", "scores", "labels", "boxes" (xyxy, original pixels), "phi", "size"
    (processed h, w), "orig_size"}.
    """
    if len(phi) != len(dataset):
        raise ValueError(f"phi has {len(phi)} values for {len(dataset)} images")
    device = next(model.parameters()).device
    orig = image_sizes(dataset)
    sizes = [model.sizes([hw], torch.tensor([float(p)]))[0] for hw, p in zip(orig, phi)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(s, []).append(i)
    batches = [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
    out: list[dict | None] = [None] * len(dataset)
    for batch in tqdm(batches, desc="detect", disable=not progress, dynamic_ncols=True):
        images, targets = zip(*(dataset[i] for i in batch))
        phis = torch.tensor([float(phi[i]) for i in batch])
        dets, raw = model.detect([im.to(device) for im in images], phis)
        for i, t, d, s in zip(batch, targets, dets, raw["image_sizes"].tolist()):
            out[i] = {"image_id": int(t["image_id"]), **{k: v.cpu() for k, v in d.items()},
                      "phi": float(phi[i]), "size": tuple(s), "orig_size": orig[i]}
    return out


def summarize_choice(model, dataset, results: Sequence[dict], flops: FlopTable | None = None
                     ) -> dict:
    """COCO metrics of ``results`` plus the detector's GFLOPs per image and φ statistics."""
    flops = flops or FlopTable(model)
    scorer = SubsetAP(dataset, results)
    metrics = scorer.metrics(range(len(results)))
    gflops = np.array([flops.detector(*r["size"]) for r in results])
    phis = np.array([r["phi"] for r in results])
    metrics.update({"gflops_per_image": float(gflops.mean()), "mean_phi": float(phis.mean()),
                    "phi": phis.round(4).tolist(), "gflops": gflops.round(4).tolist()})
    return metrics


def loss_optimal_phi(model, dataset, loss_options: Mapping) -> np.ndarray:
    """φ* of every item: the scale loss's optimum for ``model``'s boundaries and γ ([N])."""
    sides = [base_object_sides(dataset, i, model.base_size, model.max_size)
             for i in range(len(dataset))]
    return loss_optimum(model, sides, loss_options)[1]


def loss_optimal(model, dataset, loss_options: Mapping, batch_size: int = 8,
                 progress: bool = False) -> dict:
    """The detector with every image at the scale loss's optimum φ* (see module docstring)."""
    phi_star = loss_optimal_phi(model, dataset, loss_options)
    results = detect_at(model, dataset, phi_star.tolist(), batch_size, progress)
    return {"oracle": "loss-optimal", **summarize_choice(model, dataset, results)}


def ap_optimal_phi(dataset, sweep: Mapping[float, list[dict]]) -> np.ndarray:
    """The AP-optimal φ of every item among the scales of ``sweep`` ({φ: detect_at(...)}):
    the φ maximising the item's own AP, ties to the smaller φ, items without objects at the
    smallest ([N])."""
    scales = sorted(sweep)
    table = np.nan_to_num(np.stack([SubsetAP(dataset, sweep[s]).per_image() for s in scales]),
                          nan=-1.0)  # [S, N]; NaN = no objects
    return np.array(scales)[table.argmax(axis=0)]  # first maximum = smallest φ on ties


def ap_optimal(model, dataset, scales: Sequence[float], batch_size: int = 8,
               progress: bool = False, sweep: Mapping[float, list[dict]] | None = None) -> dict:
    """The detector with every image at the φ of ``scales`` that maximises its own AP.

    ``sweep`` may hold already computed detections per scale ({φ: detect_at(...)}); missing
    scales are run. Ties go to the smaller φ; images without objects get the smallest φ.
    """
    scales = sorted(float(s) for s in scales)
    sweep = dict(sweep or {})
    for s in scales:
        if s not in sweep:
            sweep[s] = detect_at(model, dataset, [s] * len(dataset), batch_size, progress)
    best = ap_optimal_phi(dataset, {s: sweep[s] for s in scales})
    results = [sweep[float(b)][i] for i, b in enumerate(best)]
    return {"oracle": "ap-optimal", "scales": scales,
            **summarize_choice(model, dataset, results)}
