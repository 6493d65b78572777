"""Result figures: φ vs object size (one run or several), the accuracy/compute Pareto front,
AP per object size, scale sweeps (one image, or many with the predicted φ marked), and an image
with its detections."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots
from scipy import stats

from elastic_lab.analysis import pareto_front
from elastic_lab.viz._common import color, vertical_line

__all__ = [
    "ap_by_size_figure",
    "detections_figure",
    "pareto_figure",
    "phi_size_comparison",
    "phi_vs_object_size",
    "scale_sweep_figure",
    "scale_sweeps_figure",
]

SWEEP_TITLES = {"num_detections": "detections above threshold", "mean_score": "mean score",
                "gflops": "GFLOPs / image", "ms": "latency [ms]", "recall": "recall (IoU ≥ 0.5)"}


def phi_vs_object_size(median_sides: Sequence[float], phis: Sequence[float],
                       spearman: float | None = None,
                       labels: Sequence[str] | None = None) -> go.Figure:
    """Scatter of predicted φ against each image's median object side (log x).

    The Spearman rank correlation ρ (``scipy.stats.spearmanr`` unless given) is written in the
    title and stored in ``fig.layout.meta["spearman"]``; the method expects ρ < 0 (images of
    small objects get up-scaled).
    """
    sides, phis = np.asarray(median_sides, np.float64), np.asarray(phis, np.float64)
    if sides.shape != phis.shape or sides.ndim != 1 or sides.size < 2:
        raise ValueError(f"median_sides {sides.shape} and phis {phis.shape}: need two 1-D "
                         "sequences of the same length ≥ 2")
    rho = float(stats.spearmanr(sides, phis).statistic) if spearman is None else float(spearman)
    fig = go.Figure(go.Scatter(x=sides, y=phis, mode="markers", name="images",
                               text=list(labels) if labels is not None else None,
                               marker={"size": 7, "opacity": 0.7}, meta={"kind": "images"}))
    fig.update_xaxes(type="log", title="median object side in the image [px, base resolution]")
    fig.update_yaxes(title="predicted scale φ")
    fig.update_layout(title=f"φ vs object size: Spearman ρ = {rho:.3f} (n = {sides.size})",
                      meta={"spearman": rho}, template="plotly_white")
    return fig


def phi_size_comparison(runs: Mapping[str, tuple[Sequence[float], Sequence[float]]]
                        ) -> go.Figure:
    """φ vs median object side for several runs (e.g. with and without the scale loss).

    ``runs`` maps a run name to (median sides [N] px, predicted φ [N]). Images whose median side
    is not finite (no objects) are left out. Each run is one marker trace with
    ``meta={"kind": "images", "run": name, "spearman": ρ}`` (scipy's Spearman ρ of the plotted
    points; NaN when fewer than 3 points or φ is constant).
    """
    if not runs:
        raise ValueError("phi_size_comparison: no runs")
    fig = go.Figure()
    for c, (name, (sides, phis)) in enumerate(runs.items()):
        sides, phis = np.asarray(sides, np.float64), np.asarray(phis, np.float64)
        if sides.shape != phis.shape or sides.ndim != 1:
            raise ValueError(f"run {name!r}: median sides {sides.shape} and φ {phis.shape} "
                             "must be 1-D of the same length")
        keep = np.isfinite(sides) & np.isfinite(phis)
        sides, phis = sides[keep], phis[keep]
        rho = float("nan")
        if sides.size >= 3 and np.ptp(phis) > 0 and np.ptp(sides) > 0:
            rho = float(stats.spearmanr(sides, phis).statistic)
        fig.add_trace(go.Scatter(x=sides, y=phis, mode="markers", name=f"{name} (ρ = {rho:.2f})",
                                 marker={"size": 7, "opacity": 0.6, "color": color(c)},
                                 meta={"kind": "images", "run": name, "spearman": rho}))
    fig.update_xaxes(type="log", title="median object side in the image [px, base resolution]")
    fig.update_yaxes(title="predicted scale φ")
    fig.update_layout(title="φ vs object size (Spearman ρ per run)", template="plotly_white")
    return fig


def ap_by_size_figure(metrics: Mapping[str, Mapping[str, float]],
                      keys: Sequence[str] = ("AP", "AP50", "APs", "APm", "APl")) -> go.Figure:
    """Grouped bars of COCO metrics (default AP, AP50, AP_S, AP_M, AP_L), one bar group per key
    and one coloured trace per run (``meta={"kind": "bars", "run": name}``).

    ``metrics`` maps a run name to a metrics dict such as :func:`elastic_lab.evaluate.evaluate`
    returns; every key must be present and numeric.
    """
    if not metrics or not keys:
        raise ValueError("ap_by_size_figure: need at least one run and one key")
    fig = go.Figure()
    for c, (name, m) in enumerate(metrics.items()):
        missing = [k for k in keys if not isinstance(m.get(k), (int, float))]
        if missing:
            raise ValueError(f"run {name!r}: missing numeric metric(s) {missing}")
        fig.add_trace(go.Bar(x=list(keys), y=[float(m[k]) for k in keys], name=name,
                             marker={"color": color(c)}, meta={"kind": "bars", "run": name}))
    fig.update_layout(barmode="group", title="COCO AP by object size", template="plotly_white",
                      yaxis={"title": "AP", "rangemode": "tozero"})
    return fig


def _points_xy(points: Sequence[Mapping], x: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, p in enumerate(points):
        for field in (x, "ap"):
            if not isinstance(p.get(field), (int, float)):
                name = p.get("name", "?")
                raise ValueError(  # noqa: TRY004 (bad input value, as elsewhere in the package)
                    f"points[{i}] ({name}): missing numeric '{field}'")
        xs.append(float(p[x]))
        ys.append(float(p["ap"]))
    return np.array(xs), np.array(ys)


def pareto_figure(points: Sequence[Mapping], x: str = "gflops") -> go.Figure:
    """AP vs compute (``x`` = "gflops" or "ms") with one marker trace per method ("name") and
    the Pareto front as a line ("front" trace, meta["indices"] = the front's point indices).

    Each point is a dict with keys name, ap, gflops, ms and an optional label (e.g. "φ=0.75").
    """
    if x not in ("gflops", "ms"):
        raise ValueError(f"x must be 'gflops' or 'ms', got {x!r}")
    if not points:
        raise ValueError("pareto_figure: no points")
    xs, ys = _points_xy(points, x)
    fig = go.Figure()
    names = list(dict.fromkeys(str(p.get("name", "?")) for p in points))
    for c, name in enumerate(names):
        idx = [i for i, p in enumerate(points) if str(p.get("name", "?")) == name]
        fig.add_trace(go.Scatter(x=xs[idx], y=ys[idx], mode="markers+text", name=name,
                                 text=[str(points[i].get("label", "")) for i in idx],
                                 textposition="top center", marker={"size": 10, "color": color(c)},
                                 meta={"kind": "method", "name": name, "indices": idx}))
    front = pareto_front(points, x)
    fig.add_trace(go.Scatter(x=xs[front], y=ys[front], mode="lines+markers", name="Pareto front",
                             line={"color": "black", "dash": "dot"},
                             marker={"symbol": "circle-open", "size": 16, "color": "black"},
                             meta={"kind": "front", "indices": front}))
    fig.update_xaxes(title="GFLOPs / image" if x == "gflops" else "latency / image [ms]")
    fig.update_yaxes(title="AP")
    fig.update_layout(title="Accuracy vs compute", template="plotly_white")
    return fig


def scale_sweep_figure(sweep: Mapping[str, Sequence[float]],
                       predicted_phi: float | None = None) -> go.Figure:
    """One image detected at several scales: one subplot per quantity against φ.

    ``sweep`` holds "phi" and any number of same-length series (e.g. num_detections,
    mean_score, gflops). ``predicted_phi`` draws a dashed "predicted" line in every subplot.
    """
    if "phi" not in sweep:
        raise ValueError("scale_sweep_figure: sweep needs a 'phi' series")
    phi = np.asarray(sweep["phi"], np.float64)
    keys = [k for k in sweep if k != "phi"]
    if not keys:
        raise ValueError("scale_sweep_figure: sweep needs at least one series besides 'phi'")
    for key in keys:
        if len(sweep[key]) != phi.size:
            raise ValueError(f"sweep['{key}'] has {len(sweep[key])} values, 'phi' has {phi.size}")
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True,
                        subplot_titles=[SWEEP_TITLES.get(k, k) for k in keys])
    for r, key in enumerate(keys, start=1):
        y = np.asarray(sweep[key], np.float64)
        fig.add_trace(go.Scatter(x=phi, y=y, mode="lines+markers", name=key, showlegend=False,
                                 line={"color": color(r - 1)}, meta={"kind": "series", "key": key}),
                      row=r, col=1)
        if predicted_phi is not None and y.size:
            lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
            line = vertical_line(predicted_phi, lo, hi, f"predicted φ = {predicted_phi:.2f}",
                                 line_color="red")
            line.update(meta={"kind": "predicted", "x": float(predicted_phi)}, showlegend=r == 1)
            fig.add_trace(line, row=r, col=1)
    fig.update_xaxes(title="scale factor φ", row=len(keys), col=1)
    fig.update_layout(height=max(300, 200 * len(keys)), template="plotly_white",
                      title="One image across scales")
    return fig


def scale_sweeps_figure(sweeps: Mapping[str, Mapping[str, Sequence[float]]],
                        predicted: Mapping[str, float] | None = None,
                        key: str = "mean_score") -> go.Figure:
    """Several images each detected at several φ: ``key`` against φ, one line per image.

    ``sweeps`` maps an image name to {"phi": [...], key: [...], ...} (φ ascending). For every
    image the best φ (the first maximum of ``key``, i.e. the cheapest on ties) gets a star
    (``meta={"kind": "best", "image", "phi"}``) and, when ``predicted`` names it, the predicted φ
    a diamond on the line (y interpolated; ``meta={"kind": "predicted", "image", "phi"}``).
    Lines carry ``meta={"kind": "sweep", "image": name}``.
    """
    if not sweeps:
        raise ValueError("scale_sweeps_figure: no sweeps")
    predicted = predicted or {}
    fig = go.Figure()
    for c, (name, sweep) in enumerate(sweeps.items()):
        if "phi" not in sweep or key not in sweep:
            raise ValueError(f"sweep {name!r}: needs 'phi' and '{key}' series")
        phi, y = np.asarray(sweep["phi"], np.float64), np.asarray(sweep[key], np.float64)
        if phi.size == 0 or phi.shape != y.shape or np.any(np.diff(phi) <= 0):
            raise ValueError(f"sweep {name!r}: 'phi' must be non-empty and increasing, with as "
                             f"many '{key}' values ({phi.size} vs {y.size})")
        col = color(c)
        fig.add_trace(go.Scatter(x=phi, y=y, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": col}, meta={"kind": "sweep", "image": name}))
        best = int(np.nanargmax(y)) if np.any(np.isfinite(y)) else 0
        fig.add_trace(go.Scatter(x=[phi[best]], y=[y[best]], mode="markers", legendgroup=name,
                                 name=f"{name}: best φ", showlegend=False,
                                 marker={"symbol": "star", "size": 15, "color": col},
                                 meta={"kind": "best", "image": name, "phi": float(phi[best])}))
        if name in predicted:
            p = float(predicted[name])
            fig.add_trace(go.Scatter(
                x=[p], y=[float(np.interp(p, phi, y))], mode="markers", legendgroup=name,
                name=f"{name}: predicted φ", showlegend=False,
                marker={"symbol": "diamond-open", "size": 14, "color": col, "line": {"width": 3}},
                meta={"kind": "predicted", "image": name, "phi": p}))
    fig.update_xaxes(title="scale factor φ")
    fig.update_yaxes(title=SWEEP_TITLES.get(key, key))
    fig.update_layout(title=f"{SWEEP_TITLES.get(key, key)} across scales: ★ best φ, "
                            "◇ predicted φ", template="plotly_white")
    return fig


def _image_array(image) -> np.ndarray:
    """PIL image, HxWx3 array (uint8 or float in [0, 1]) or [3, H, W] tensor -> HxWx3 uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.permute(1, 2, 0) if image.dim() == 3 and image.shape[0] == 3 else image
        image = image.numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image: expected HxWx3 (or [3, H, W] tensor), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return arr


def detections_figure(image, boxes: Sequence[Sequence[float]], labels: Sequence,
                      scores: Sequence[float] | None = None) -> go.Figure:
    """The image with its boxes (absolute pixel xyxy) drawn as rectangle shapes and a
    "label score" annotation per box, one colour per label."""
    arr = _image_array(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"detections_figure: {len(boxes)} boxes, {len(labels)} labels, "
                         f"{'no' if scores is None else len(scores)} scores")
    h, w = arr.shape[:2]
    fig = go.Figure(go.Image(z=arr, hoverinfo="skip"))
    palette = {lab: color(i) for i, lab in enumerate(dict.fromkeys(str(v) for v in labels))}
    for i, (box, lab) in enumerate(zip(boxes, labels, strict=True)):
        c = palette[str(lab)]
        x0, y0, x1, y1 = (float(v) for v in box)
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": c, "width": 2})
        text = str(lab) if scores is None else f"{lab} {float(scores[i]):.2f}"
        fig.add_annotation(x=x0, y=y0, text=text, showarrow=False, xanchor="left",
                           yanchor="bottom", font={"color": "white", "size": 11}, bgcolor=c)
    fig.update_xaxes(visible=False, range=[0, w])
    fig.update_yaxes(visible=False, range=[h, 0], scaleanchor="x")
    fig.update_layout(margin={"l": 0, "r": 0, "t": 30, "b": 0}, template="plotly_white",
                      title=f"{len(boxes)} detections")
    return fig
