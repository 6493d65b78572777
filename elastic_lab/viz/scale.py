"""Figures of the scale loss L_scale (docs/method.md §3).

Everything is computed with :mod:`elastic_lab.scale_loss` itself (``up_probability``,
``scale_loss_per_image``), so the figures show the loss that training uses. Traces carry
``meta={"kind": ...}`` ("curve", "boundary", "argmin", "loss", "grad", ...) so that notebooks
and tests can find their data with :func:`elastic_lab.viz.traces_of`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from elastic_lab.scale_loss import scale_loss_per_image, up_probability
from elastic_lab.viz._common import add_slider, color, side_grid, unit_grid, vertical_line

__all__ = [
    "per_object_scale_loss",
    "scale_loss_gradient_direction",
    "scale_loss_gradient_on_u",
    "scale_loss_landscape_u_gamma",
    "scale_loss_landscape_u_side",
    "up_probability_curves",
    "up_probability_slider",
]

SIDE_AXIS = "object side s = √(w·h) [px, processed resolution]"


def _p_up(sides: np.ndarray, log_gamma: float, b_s: float, b_l: float, k: float) -> np.ndarray:
    return up_probability(torch.as_tensor(sides, dtype=torch.float64), float(log_gamma),
                          b_s, b_l, k).numpy()


def _curve_traces(sides: np.ndarray, log_gamma: float, b_s: float, b_l: float, k: float,
                  i: int, label: str) -> list[go.Scatter]:
    """P_up curve plus its two boundary markers (at B_s = b_s·γ and B_l = b_l·γ)."""
    gamma = math.exp(log_gamma)
    bounds = np.array([b_s * gamma, b_l * gamma])
    meta = {"log_gamma": float(log_gamma), "gamma": gamma, "k": float(k),
            "b_s_px": float(bounds[0]), "b_l_px": float(bounds[1])}
    return [
        go.Scatter(x=sides, y=_p_up(sides, log_gamma, b_s, b_l, k), mode="lines", name=label,
                   legendgroup=label, line={"color": color(i), "width": 2},
                   meta={"kind": "curve", **meta}),
        go.Scatter(x=bounds, y=_p_up(bounds, log_gamma, b_s, b_l, k), mode="markers",
                   name=f"{label}: B_s, B_l", legendgroup=label, showlegend=False,
                   marker={"color": color(i), "size": 9, "symbol": "line-ns-open", "line_width": 3},
                   hovertemplate="boundary %{x:.1f} px<extra></extra>",
                   meta={"kind": "boundary", **meta}),
    ]


def _p_up_layout(fig: go.Figure, title: str) -> go.Figure:
    fig.update_xaxes(type="log", title=SIDE_AXIS)
    fig.update_yaxes(title="P_up(s): up-scaling target", range=[-0.03, 1.03])
    fig.update_layout(title=title, hovermode="x unified", template="plotly_white")
    return fig


def up_probability_curves(log_gammas: Sequence[float], b_s: float = 32.0, b_l: float = 96.0,
                          k: float = 6.0, sides: Sequence[float] | None = None) -> go.Figure:
    """P_up vs object side (log x) for several boundary factors γ = exp(g).

    One "curve" trace per g (meta: log_gamma, gamma, b_s_px, b_l_px) and one "boundary"
    marker trace per g at B_s and B_l. P_up = 1/2 at √(B_s·B_l) = √(b_s·b_l)·γ.
    """
    sides = side_grid(sides)
    fig = go.Figure()
    for i, g in enumerate(log_gammas):
        label = f"γ = {math.exp(g):.2f}"
        fig.add_traces(_curve_traces(sides, float(g), b_s, b_l, k, i, label))
    return _p_up_layout(fig, f"Up-scaling probability P_up(s) for several γ (k = {k:g})")


def up_probability_slider(values: Sequence[float], over: str = "log_gamma",
                          log_gamma: float = 0.0, k: float = 6.0, b_s: float = 32.0,
                          b_l: float = 96.0, sides: Sequence[float] | None = None) -> go.Figure:
    """Interactive P_up(s) with a slider over g = log γ (``over="log_gamma"``) or over k.

    One frame per value (frame name = the value); a grey dashed reference curve at
    (``log_gamma``, ``k``) stays fixed.
    """
    if over not in ("log_gamma", "k"):
        raise ValueError(f"over must be 'log_gamma' or 'k', got {over!r}")
    if len(values) == 0:
        raise ValueError("values: need at least one slider value")
    sides = side_grid(sides)
    ref = go.Scatter(x=sides, y=_p_up(sides, log_gamma, b_s, b_l, k), mode="lines",
                     name=f"reference (γ = {math.exp(log_gamma):.2f}, k = {k:g})",
                     line={"color": "grey", "dash": "dash"}, meta={"kind": "reference"})

    def frame_traces(v: float) -> list[go.Scatter]:
        g, kk = (v, k) if over == "log_gamma" else (log_gamma, v)
        label = f"γ = {math.exp(g):.2f}" if over == "log_gamma" else f"k = {kk:g}"
        return _curve_traces(sides, g, b_s, b_l, kk, 0, label)

    fig = go.Figure(data=[ref, *frame_traces(float(values[0]))])
    frames = [go.Frame(data=frame_traces(float(v)), traces=[1, 2], name=f"{float(v):g}")
              for v in values]
    labels = [f"{math.exp(v):.2f}" if over == "log_gamma" else f"{v:g}" for v in values]
    add_slider(fig, frames, labels, prefix="γ = " if over == "log_gamma" else "k = ")
    name = "γ" if over == "log_gamma" else "k"
    return _p_up_layout(fig, f"P_up(s): move the slider over {name}")


def per_object_scale_loss(u: np.ndarray, sides: np.ndarray, log_gamma: float,
                          b_s: float = 32.0, b_l: float = 96.0, k: float = 6.0) -> np.ndarray:
    """ℓ(u, s) = BCE(u, P_up(s)) of a one-object image, via ``scale_loss_per_image``.

    Returns [len(u), len(sides)] (float64).
    """
    uu, ss = np.meshgrid(np.asarray(u, np.float64), np.asarray(sides, np.float64), indexing="ij")
    u_t = torch.as_tensor(uu.ravel())
    per_image = [torch.as_tensor(s).reshape(1) for s in ss.ravel()]
    loss, _ = scale_loss_per_image(u_t, per_image, float(log_gamma), b_s, b_l, k)
    return loss.numpy().reshape(uu.shape)


def _landscape(x: np.ndarray, u: np.ndarray, z: np.ndarray, kind: str, x_title: str,
               title: str) -> go.Figure:
    if kind == "heatmap":
        fig = go.Figure(go.Heatmap(x=x, y=u, z=z, colorscale="Viridis",
                                   colorbar={"title": "ℓ"}, meta={"kind": "loss"}))
        fig.update_xaxes(type="log", title=x_title)
        fig.update_yaxes(title="u (normalised scale)", range=[0, 1])
    elif kind == "surface":
        fig = go.Figure(go.Surface(x=x, y=u, z=z, colorscale="Viridis", meta={"kind": "loss"}))
        fig.update_scenes(xaxis={"type": "log", "title": x_title}, yaxis_title="u",
                          zaxis_title="ℓ")
    else:
        raise ValueError(f"kind must be 'heatmap' or 'surface', got {kind!r}")
    fig.update_layout(title=title, template="plotly_white")
    return fig


def scale_loss_landscape_u_side(u: Sequence[float] | None = None,
                                sides: Sequence[float] | None = None, log_gamma: float = 0.0,
                                b_s: float = 32.0, b_l: float = 96.0, k: float = 6.0,
                                kind: str = "heatmap") -> go.Figure:
    """Per-object scale loss ℓ(u, s) over (u, object side) for one γ.

    Heatmap (x = side, log; y = u) with the boundaries B_s, B_l as dashed "boundary" lines and
    the minimiser u*(s) = P_up(s) as an "argmin" line; ``kind="surface"`` gives a 3-D surface.
    """
    u, sides = unit_grid(u), side_grid(sides, num=97)
    z = per_object_scale_loss(u, sides, log_gamma, b_s, b_l, k)
    gamma = math.exp(log_gamma)
    fig = _landscape(sides, u, z, kind, SIDE_AXIS,
                     f"Scale loss ℓ(u, s) = BCE(u, P_up(s)) at γ = {gamma:.2f}")
    if kind == "heatmap":
        fig.add_trace(go.Scatter(x=sides, y=_p_up(sides, log_gamma, b_s, b_l, k), mode="lines",
                                 name="argmin_u ℓ = P_up(s)", line={"color": "white", "width": 2},
                                 meta={"kind": "argmin"}))
        fig.add_trace(vertical_line(b_s * gamma, 0, 1, f"B_s = {b_s * gamma:.1f} px",
                                    line_color="red"))
        fig.add_trace(vertical_line(b_l * gamma, 0, 1, f"B_l = {b_l * gamma:.1f} px",
                                    line_color="orange"))
        fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return fig


def scale_loss_landscape_u_gamma(side: float, u: Sequence[float] | None = None,
                                 gammas: Sequence[float] | None = None, b_s: float = 32.0,
                                 b_l: float = 96.0, k: float = 6.0,
                                 kind: str = "heatmap") -> go.Figure:
    """Per-object scale loss ℓ(u, γ) for an object of side ``side`` px, over (u, γ).

    Marks the minimiser u*(γ) = P_up(side; γ) ("argmin") and the γ at which the object sits on
    a boundary (γ = side/b_s: B_s = side; γ = side/b_l: B_l = side) as "boundary" lines.
    """
    if side <= 0:
        raise ValueError(f"side must be > 0 pixels, got {side}")
    u = unit_grid(u)
    gammas = np.geomspace(0.25, 4.0, 61) if gammas is None else side_grid(gammas)
    z = np.concatenate([per_object_scale_loss(u, np.array([side]), math.log(g), b_s, b_l, k)
                        for g in gammas], axis=1)  # [U, G]
    fig = _landscape(gammas, u, z, kind, "boundary factor γ = exp(g)",
                     f"Scale loss ℓ(u, γ) for an object of side {side:g} px")
    if kind == "heatmap":
        argmin = np.array([_p_up(np.array([side]), math.log(g), b_s, b_l, k)[0] for g in gammas])
        fig.add_trace(go.Scatter(x=gammas, y=argmin, mode="lines", name="argmin_u ℓ = P_up",
                                 line={"color": "white", "width": 2}, meta={"kind": "argmin"}))
        for g_b, name, c in ((side / b_s, "B_s = s", "red"), (side / b_l, "B_l = s", "orange")):
            if gammas.min() <= g_b <= gammas.max():
                fig.add_trace(vertical_line(g_b, 0, 1, f"{name} (γ = {g_b:.2f})", line_color=c))
        fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return fig


def scale_loss_gradient_on_u(u: Sequence[float], sides: Sequence[float], log_gamma: float = 0.0,
                             b_s: float = 32.0, b_l: float = 96.0,
                             k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scale loss L(u) and dL/du (autograd) of one image with objects ``sides``.

    Returns (loss [U], grad [U]) evaluated at every u in ``u``.
    """
    u_t = torch.as_tensor(np.asarray(u, np.float64)).requires_grad_(True)
    s = torch.as_tensor(np.asarray(sides, np.float64)).reshape(-1)
    loss, _ = scale_loss_per_image(u_t, [s] * u_t.numel(), float(log_gamma), b_s, b_l, k)
    (grad,) = torch.autograd.grad(loss.sum(), u_t)  # images are independent: grad_i = dL_i/du_i
    return loss.detach().numpy(), grad.numpy()


def scale_loss_gradient_direction(sides_small: Sequence[float], sides_large: Sequence[float],
                                  u: Sequence[float] | None = None, log_gamma: float = 0.0,
                                  b_s: float = 32.0, b_l: float = 96.0,
                                  k: float = 6.0) -> go.Figure:
    """L(u) (top) and dL/du (bottom) for a small-object image and a large-object image.

    dL/du < 0 means gradient descent pushes u up (up-scale), > 0 pushes it down. Traces have
    meta kind "loss" / "grad" and image "small" / "large".
    """
    u = unit_grid(u, num=97, margin=0.02)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("per-image scale loss L(u)", "gradient dL/du"))
    lim = 1.0
    for i, (image, sides) in enumerate((("small", sides_small), ("large", sides_large))):
        loss, grad = scale_loss_gradient_on_u(u, sides, log_gamma, b_s, b_l, k)
        middle = (u >= 0.1) & (u <= 0.9)  # the edges diverge like 1/u, 1/(1-u)
        lim = max(lim, 1.5 * float(np.abs(grad[middle] if middle.any() else grad).max()))
        label = f"{image}-object image (sides {', '.join(f'{s:g}' for s in sides)} px)"
        meta = {"image": image, "sides": [float(s) for s in sides]}
        fig.add_trace(go.Scatter(x=u, y=loss, name=label, legendgroup=image,
                                 line={"color": color(i)}, meta={"kind": "loss", **meta}), 1, 1)
        fig.add_trace(go.Scatter(x=u, y=grad, name=label, legendgroup=image, showlegend=False,
                                 line={"color": color(i)}, meta={"kind": "grad", **meta}), 2, 1)
    fig.add_hline(y=0, line={"color": "black", "width": 1}, row=2, col=1)
    for y, text in ((0.6 * lim, "dL/du > 0: descent pushes u down (down-scale)"),
                    (-0.6 * lim, "dL/du < 0: descent pushes u up (up-scale)")):
        fig.add_annotation(text=text, x=0.5, y=y, showarrow=False, row=2, col=1,
                           font={"size": 11, "color": "grey"})
    fig.update_xaxes(title="u (normalised scale)", row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="linear", range=[-lim, lim], row=2, col=1)
    fig.update_layout(title=f"Where the scale loss pushes u (γ = {math.exp(log_gamma):.2f})",
                      template="plotly_white", legend={"orientation": "h", "y": -0.15})
    return fig
