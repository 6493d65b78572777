"""Evaluation of one benchmark cell on the report split: its rows and, for elastic models, the
predictor's analyses.

Rows (each: COCO AP, AP50, AP75, APs, APm, APl, mean GFLOPs, GFLOPs per image, mean φ):

- ``sweep``: the detector at every φ of :data:`SWEEP` (the multi-scale front, and the input of
  the AP-optimal oracle for every detector);
- ``own``: fixed models at their own φ (a sweep point, or evaluated besides the sweep),
  elastic ones at the predicted φ (GFLOPs include the predictor); multi-scale models have
  none (their sweep is their front);
- ``loss_optimal``: every image at the scale loss's optimum φ* (oracles.loss_optimal_phi;
  fixed and multi-scale models with ``ElasticLossOptions.for_base_size`` at γ = 1, elastic
  ones with their own loss options and γ); ``ap_optimal``: every image at the φ that
  maximises its own AP (oracles.ap_optimal_phi) among the sweep's and, for a fixed model
  trained outside the sweep, its own. These are the choices of oracles.loss_optimal /
  ap_optimal (tested equal), kept with their detections so that the rows can be
  bootstrapped. Oracle GFLOPs are the detector's alone.

Rows that a headline or a table reads carry ``bootstrap_ap``: the AP of every resample of
``ap_subsets.bootstrap_indices(n, replicas, seed)``, the same resamples in every cell, so that
cells can be compared replica by replica. GFLOPs are counted once per architecture and input
size (:class:`SharedFlops`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .analysis import phi_object_size_table, predictor_fidelity
from .ap_subsets import COCO_KEYS, SubsetAP, bootstrap_indices
from .evaluate import run_inference
from .flops import FlopTable
from .models.criterion import ElasticLossOptions
from .oracles import ap_optimal_phi, detect_at, loss_optimal_phi

SWEEP = tuple(0.5 + 0.125 * k for k in range(9))  # 0.5, 0.625, ..., 1.5
SIZE_BINS = 5  # quantile bins of the median object side in the compact phi-vs-size table


@dataclass
class EvalOptions:
    """How a cell is evaluated."""

    scales: tuple[float, ...] = SWEEP
    replicas: int = 200
    bootstrap_seed: int = 0
    batch_size: int = 8


def scale_key(phi: float) -> str:
    """The key of a sweep row: ``f"{phi:g}"`` ("0.5", "1", "1.125")."""
    return f"{float(phi):g}"


def choice_row(dataset, results: Sequence[dict], flops: FlopTable | SharedFlops,
               index: np.ndarray | None = None, predictor: bool = False) -> dict:
    """One row from per-image detections ({"image_id", "boxes", "scores", "labels", "phi",
    "size", "orig_size"} in item order): metrics, GFLOPs, φ and, given ``index``, the
    bootstrap replicas of AP. ``predictor``: add the predictor's GFLOPs per image."""
    scorer = SubsetAP(dataset, results)
    metrics = scorer.metrics(range(len(results)))
    det = np.array([flops.detector(*r["size"]) for r in results])
    pred = np.array([flops.predictor(*r["orig_size"]) for r in results]) if predictor \
        else np.zeros(len(results))
    phi = np.array([r["phi"] for r in results])
    row = {**{k: round(metrics[k], 5) for k in COCO_KEYS},
           "gflops": round(float((det + pred).mean()), 4),
           "detector_gflops": round(float(det.mean()), 4),
           "predictor_gflops": round(float(pred.mean()), 4),
           "mean_phi": round(float(phi.mean()), 4), "phi_std": round(float(phi.std()), 4),
           "gflops_per_image": np.round(det + pred, 3).tolist()}
    if np.ptp(phi) > 0:
        row["phi_per_image"] = np.round(phi, 4).tolist()
    if index is not None:
        row["bootstrap_ap"] = np.round(scorer.bootstrap(index), 5).tolist()
    return row


def loss_options_of(model, checkpoint: Mapping) -> dict:
    """The scale-loss options the loss-optimal oracle uses: an elastic model's own, else the
    command line's defaults at the model's base size (γ = 1: such models have no γ)."""
    if model.predictor is not None and checkpoint.get("loss_options"):
        return dict(checkpoint["loss_options"])
    return asdict(ElasticLossOptions.for_base_size(model.base_size))


class SharedFlops:
    """FlopTable's interface (``detector(h, w)``, ``predictor(h, w)``) over a memo shared by
    every model of the same architecture: a detector's GFLOPs depend only on its options, its
    number of classes and its input size, a predictor's on its options and the image size.
    ``cache`` is a plain dict (the benchmark keeps it in a JSON file between cells)."""

    PREDICTOR_KEYS = ("thumb_size", "predictor_d_model", "predictor_layers", "predictor_trunk",
                      "predictor_norm", "predictor_size_bins")

    def __init__(self, model, checkpoint: Mapping, cache: dict):
        self.table, self.cache = FlopTable(model), cache
        opts = checkpoint["model_options"]
        self._det = _digest({"detr": opts["detr"], "classes": len(checkpoint["categories"])})
        self._pred = _digest({k: opts.get(k) for k in self.PREDICTOR_KEYS})

    def _get(self, key: str, compute) -> float:
        if key not in self.cache:
            self.cache[key] = compute()
        return float(self.cache[key])

    def detector(self, h: int, w: int) -> float:
        return self._get(f"det-{self._det}-{h}x{w}", lambda: self.table.detector(h, w))

    def predictor(self, h: int, w: int) -> float:
        if self.table.model.predictor is None:
            return 0.0
        return self._get(f"pred-{self._pred}-{h}x{w}", lambda: self.table.predictor(h, w))


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def size_table(sides: np.ndarray, phi: np.ndarray, phi_star: np.ndarray,
               bins: int = SIZE_BINS) -> list[dict]:
    """Compact φ-vs-object-size table: quantile bins of the median object side (images with
    objects), each with its side range, image count, mean φ and mean φ*."""
    keep = np.isfinite(sides)
    if keep.sum() < bins:
        return []
    edges = np.quantile(sides[keep], np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, sides[keep], side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"side_from": round(float(edges[b]), 2),
                        "side_to": round(float(edges[b + 1]), 2), "n": int(m.sum()),
                        "phi": round(float(phi[keep][m].mean()), 4),
                        "phi_star": round(float(phi_star[keep][m].mean()), 4)})
    return out


def elastic_analyses(model, dataset, loss_options: Mapping, own: dict, sweep_phi1: dict
                     ) -> dict:
    """γ, predictor fidelity (u vs u*, per regime, Spearman φ vs median side), the compact
    φ-vs-size table with its per-image columns, and the predictor's share of the detector's
    GFLOPs at φ = 1."""
    fidelity = predictor_fidelity(model, dataset, loss_options)
    u, u_star = np.array(fidelity.pop("u")), np.array(fidelity.pop("u_star"))
    span = model.tau_max - model.tau_min
    table = phi_object_size_table(model, dataset)
    sides = np.asarray(table["median_side"], np.float64)
    phi = np.asarray(table["phi"], np.float64)
    phi_star = model.tau_min + span * u_star
    return {
        "gamma": round(float(model.log_gamma.detach().exp()), 5),
        "fidelity": {k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v)
                     for k, v in fidelity.items()},
        "phi_vs_size": {
            "bins": size_table(sides, phi, phi_star),
            "median_side": [None if not math.isfinite(s) else round(float(s), 2) for s in sides],
            "phi": np.round(phi, 4).tolist(), "phi_star": np.round(phi_star, 4).tolist(),
            "u": np.round(u, 4).tolist(), "regime": [str(r) for r in table["regime"]]},
        "predictor_share": round(own["predictor_gflops"] / sweep_phi1["detector_gflops"], 5),
    }


@torch.no_grad()
def evaluate_cell(model, checkpoint: Mapping, dataset, opts: EvalOptions,
                  flops_cache: dict | None = None) -> dict:
    """Every row of one cell (see the module docstring) plus, for elastic models, their
    analyses. ``dataset``: the report split (a CocoDetection), its first N images;
    ``flops_cache``: a :class:`SharedFlops` memo to reuse (and fill)."""
    model.eval()
    mode = checkpoint["model_options"]["mode"]
    flops = SharedFlops(model, checkpoint, {} if flops_cache is None else flops_cache)
    index = bootstrap_indices(len(dataset), opts.replicas, opts.bootstrap_seed)
    scales = sorted(float(s) for s in opts.scales)
    sweep = {s: detect_at(model, dataset, [s] * len(dataset), opts.batch_size) for s in scales}
    own_phi = model.fixed_phi if mode == "fixed" else None

    def boot(s: float) -> bool:  # sweep rows a headline or a table reads
        return mode == "multiscale" or abs(s - 1.0) < 1e-9 or (
            own_phi is not None and abs(s - own_phi) < 1e-9)

    rows: dict = {"sweep": {scale_key(s): choice_row(dataset, sweep[s], flops,
                                                     index if boot(s) else None)
                            for s in scales}}
    # the AP-optimal oracle chooses among the sweep's scales and a fixed model's own φ (a
    # model trained past the sweep's top would otherwise be judged without its best scale)
    candidates = dict(sweep)
    if mode == "fixed":
        key = scale_key(own_phi)
        if key in rows["sweep"]:
            rows["own"] = rows["sweep"][key]
        else:
            candidates[own_phi] = detect_at(model, dataset, [own_phi] * len(dataset),
                                            opts.batch_size)
            rows["own"] = choice_row(dataset, candidates[own_phi], flops, index)
    elif mode == "elastic":
        rows["own"] = choice_row(dataset, run_inference(model, dataset, opts.batch_size,
                                                        progress=False),
                                 flops, index, predictor=True)
    loss_options = loss_options_of(model, checkpoint)
    phi_star = loss_optimal_phi(model, dataset, loss_options).tolist()
    rows["loss_optimal"] = choice_row(dataset, detect_at(model, dataset, phi_star,
                                                         opts.batch_size), flops, index)
    best = ap_optimal_phi(dataset, candidates)
    rows["ap_optimal"] = choice_row(dataset, [candidates[float(b)][i]
                                              for i, b in enumerate(best)], flops, index)
    out = {"mode": mode, "own_phi": own_phi, "loss_options": loss_options, "rows": rows,
           "evaluation": {"num_images": len(dataset), "image_ids": [int(i) for i in dataset.ids],
                          "scales": scales, "bootstrap": {"replicas": opts.replicas,
                                                          "seed": opts.bootstrap_seed}}}
    if mode == "elastic":
        out["elastic"] = elastic_analyses(model, dataset, loss_options, rows["own"],
                                          rows["sweep"][scale_key(1.0)])
    return out
