"""Figures of the distribution loss L_dist (docs/method.md §4): target Beta, W1 landscapes,
and the fitted Beta of predicted scales against the target over a run's metrics.

Computed with :mod:`elastic_lab.distribution_loss` (``target_beta``, ``beta_w1``,
``distribution_loss``); Beta densities with ``scipy.stats.beta``. Traces carry
``meta={"kind": ...}`` ("pdf", "mean", "w1", "minimum", "current", "fit", "target").
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from scipy import stats

from elastic_lab.distribution_loss import (
    beta_w1,
    distribution_loss,
    fit_beta_moments,
    target_beta,
)
from elastic_lab.viz._common import add_slider, color, side_grid

__all__ = [
    "beta_fit_vs_target",
    "beta_target_from_losses",
    "w1_landscape_alpha_beta",
    "w1_landscape_gamma",
]

FIT_KEYS = ("u_beta_alpha", "u_beta_beta")
TARGET_KEYS = ("target_alpha", "target_beta")


def _pdf_grid(x: Sequence[float] | None) -> np.ndarray:
    return np.linspace(0.001, 0.999, 999) if x is None else np.asarray(x, np.float64)


def beta_target_from_losses(ema_examples: Sequence[Sequence[float]] | Mapping[str, Sequence[float]],
                            concentration: float = 8.0,
                            x: Sequence[float] | None = None) -> go.Figure:
    """Target Beta(α*, β*) pdfs for several per-bin loss triples (L̄_s, L̄_m, L̄_l).

    ``ema_examples``: a list of triples, or a mapping name -> triple. One "pdf" trace per
    example (meta: ema, alpha, beta, mean = α/(α+β)) and a "mean" marker on it. The pdf is
    evaluated on ``x`` (default 999 points in [0.001, 0.999]).
    """
    items = (list(ema_examples.items()) if isinstance(ema_examples, Mapping)
             else [(None, e) for e in ema_examples])
    if not items:
        raise ValueError("ema_examples: need at least one (small, medium, large) loss triple")
    x = _pdf_grid(x)
    fig = go.Figure()
    for i, (name, ema) in enumerate(items):
        ema = [float(v) for v in ema]
        a, b = target_beta(ema, concentration)
        mean = a / (a + b)
        label = (f"{name}: " if name else "") + (
            f"L̄ = ({ema[0]:.2f}, {ema[1]:.2f}, {ema[2]:.2f}) → Beta({a:.2f}, {b:.2f})")
        meta = {"ema": ema, "alpha": a, "beta": b, "mean": mean}
        fig.add_trace(go.Scatter(x=x, y=stats.beta.pdf(x, a, b), mode="lines", name=label,
                                 legendgroup=str(i), line={"color": color(i), "width": 2},
                                 meta={"kind": "pdf", **meta}))
        fig.add_trace(go.Scatter(x=[mean], y=[stats.beta.pdf(mean, a, b)], mode="markers",
                                 name=f"mean {mean:.2f}", legendgroup=str(i), showlegend=False,
                                 marker={"color": color(i), "size": 10, "symbol": "diamond"},
                                 meta={"kind": "mean", **meta}))
    fig.update_xaxes(title="u (normalised scale): 0 = τ_min, 1 = τ_max", range=[0, 1])
    fig.update_yaxes(title="target density")
    fig.update_layout(title=f"Target Beta from per-bin localization losses (c = {concentration:g})",
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


def w1_landscape_gamma(sides_per_image: Sequence[torch.Tensor],
                       ema: Sequence[float] | torch.Tensor,
                       gammas: Sequence[float] | None = None, b_s: float = 32.0,
                       b_l: float = 96.0, k: float = 6.0, concentration: float = 8.0,
                       current_gamma: float | None = None) -> go.Figure:
    """L_dist = W1({P̄_i}, Beta(α*, β*)) as a function of γ, with its grid minimum marked.

    ``sides_per_image``: B tensors [N_i] of object sides (px); ``ema``: (L̄_s, L̄_m, L̄_l).
    Traces: "w1" (the curve), "minimum" (one marker at the grid argmin) and, when
    ``current_gamma`` is given, "current".
    """
    gammas = np.geomspace(0.25, 4.0, 81) if gammas is None else side_grid(gammas)

    def w1(g: float) -> float:
        g_t = torch.tensor(math.log(g), dtype=torch.float64)
        return float(distribution_loss(sides_per_image, g_t, ema, b_s, b_l, k, concentration))

    values = np.array([w1(g) for g in gammas])
    best = int(np.argmin(values))
    a, b = target_beta(ema, concentration)
    fig = go.Figure(go.Scatter(x=gammas, y=values, mode="lines", name="W1(γ)",
                               line={"width": 2}, meta={"kind": "w1"}))
    fig.add_trace(go.Scatter(x=[gammas[best]], y=[values[best]], mode="markers+text",
                             name=f"minimum: γ = {gammas[best]:.2f}",
                             text=[f"γ = {gammas[best]:.2f}"], textposition="top center",
                             marker={"size": 12, "color": "red", "symbol": "star"},
                             meta={"kind": "minimum", "gamma": float(gammas[best]),
                                   "w1": float(values[best])}))
    if current_gamma is not None:
        fig.add_trace(go.Scatter(x=[current_gamma], y=[w1(current_gamma)], mode="markers",
                                 name=f"current γ = {current_gamma:.2f}",
                                 marker={"size": 10, "color": "black"},
                                 meta={"kind": "current", "gamma": float(current_gamma)}))
    fig.update_xaxes(type="log", title="boundary factor γ = exp(g)")
    fig.update_yaxes(title="W1({P̄_i}, target Beta)")
    fig.update_layout(title=f"Distribution loss over γ (target Beta({a:.2f}, {b:.2f}), "
                      f"{len(sides_per_image)} images)", template="plotly_white")
    return fig


def w1_landscape_alpha_beta(samples: Sequence[float] | torch.Tensor, alphas: Sequence[float],
                            betas: Sequence[float]) -> go.Figure:
    """Heatmap of W1(samples, Beta(α, β)) over an (α, β) grid (z[j][i] at betas[j], alphas[i]).

    Marks the grid minimum ("minimum") and the method-of-moments fit ("fit") when it exists.
    """
    s = torch.as_tensor(np.asarray(samples, np.float64)).reshape(-1)
    alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    if s.numel() == 0 or alphas.size == 0 or betas.size == 0:
        raise ValueError("w1_landscape_alpha_beta needs non-empty samples, alphas and betas")
    z = np.array([[float(beta_w1(s, a, b)) for a in alphas] for b in betas])  # [len(b), len(a)]
    j, i = np.unravel_index(int(np.argmin(z)), z.shape)
    fig = go.Figure(go.Heatmap(x=alphas, y=betas, z=z, colorscale="Viridis_r",
                               colorbar={"title": "W1"}, meta={"kind": "w1"}))
    fig.add_trace(go.Scatter(x=[alphas[i]], y=[betas[j]], mode="markers",
                             name=f"grid minimum ({alphas[i]:.2f}, {betas[j]:.2f})",
                             marker={"size": 14, "color": "red", "symbol": "star"},
                             meta={"kind": "minimum", "alpha": float(alphas[i]),
                                   "beta": float(betas[j]), "w1": float(z[j, i])}))
    a_fit, b_fit = fit_beta_moments(s)
    if math.isfinite(a_fit):
        fig.add_trace(go.Scatter(x=[a_fit], y=[b_fit], mode="markers",
                                 name=f"moment fit ({a_fit:.2f}, {b_fit:.2f})",
                                 marker={"size": 12, "color": "white", "symbol": "x",
                                             "line": {"color": "black", "width": 1}},
                                 meta={"kind": "fit", "alpha": a_fit, "beta": b_fit}))
    fig.update_xaxes(title="α")
    fig.update_yaxes(title="β")
    fig.update_layout(title=f"W1 between {s.numel()} samples and Beta(α, β)",
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


def _finite(row: Mapping, keys: Sequence[str]) -> bool:
    return all(isinstance(row.get(key), (int, float)) and math.isfinite(row[key]) for key in keys)


def beta_fit_vs_target(metrics_rows: Sequence[Mapping], num_frames: int = 8,
                       x: Sequence[float] | None = None, y_max: float = 8.0) -> go.Figure:
    """Fitted Beta of predicted u (u_beta_alpha/u_beta_beta) vs the target Beta
    (target_alpha/target_beta) at up to ``num_frames`` evenly spaced logging steps, with a
    slider over the steps.

    Rows missing those keys or with non-finite values are skipped (a ValueError if none is
    left). Each frame holds two traces: "fit" and "target" (meta: step, alpha, beta).
    The y axis is clipped at ``y_max`` (densities with α or β < 1 diverge at the edges).
    """
    rows = [r for r in metrics_rows if _finite(r, FIT_KEYS + TARGET_KEYS)]
    if not rows:
        raise ValueError(f"beta_fit_vs_target: no metrics row has finite {FIT_KEYS + TARGET_KEYS}"
                         " (fixed/multiscale runs and runs without the distribution loss lack "
                         "them)")
    idx = np.unique(np.linspace(0, len(rows) - 1, max(1, num_frames)).round().astype(int))
    x = _pdf_grid(x)

    def traces(r: Mapping) -> list[go.Scatter]:
        step = r.get("step", "?")
        out = []
        for kind, (ka, kb), c, dash in (("fit", FIT_KEYS, color(0), "solid"),
                                        ("target", TARGET_KEYS, color(1), "dash")):
            a, b = float(r[ka]), float(r[kb])
            name = (f"fit to predicted u: Beta({a:.2f}, {b:.2f})" if kind == "fit"
                    else f"target: Beta({a:.2f}, {b:.2f})")
            out.append(go.Scatter(x=x, y=stats.beta.pdf(x, a, b), mode="lines", name=name,
                                  line={"color": c, "dash": dash, "width": 2},
                                  meta={"kind": kind, "step": step, "alpha": a, "beta": b}))
        return out

    def title(r: Mapping) -> str:
        return f"Predicted-scale Beta vs target at step {r.get('step', '?')}"

    first = rows[idx[0]]
    fig = go.Figure(data=traces(first))
    frames = [go.Frame(data=traces(rows[i]), name=str(n), layout={"title_text": title(rows[i])})
              for n, i in enumerate(idx)]
    add_slider(fig, frames, [str(rows[i].get("step", n)) for n, i in enumerate(idx)],
               prefix="step ")
    fig.update_xaxes(title="u (normalised scale)", range=[0, 1])
    fig.update_yaxes(title="density", range=[0, y_max])
    fig.update_layout(title=title(first), template="plotly_white",
                      legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"})
    return fig
