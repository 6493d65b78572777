"""Small helpers shared by the figure modules: default grids, trace tagging, frame sliders."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

DEFAULT_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def color(i: int) -> str:
    """The i-th colour of a fixed qualitative palette (cycled)."""
    return DEFAULT_COLORS[i % len(DEFAULT_COLORS)]


def side_grid(sides: Sequence[float] | np.ndarray | None, num: int = 121) -> np.ndarray:
    """Object sides in pixels for a log x axis: ``sides`` as float64, or 4–512 px log-spaced."""
    if sides is None:
        return np.geomspace(4.0, 512.0, num)
    out = np.asarray(sides, dtype=np.float64).reshape(-1)
    if out.size == 0 or not np.all(out > 0):
        raise ValueError("sides: expected a non-empty list of positive sizes in pixels")
    return out


def unit_grid(u: Sequence[float] | np.ndarray | None, num: int = 99,
              margin: float = 0.01) -> np.ndarray:
    """Values in (0, 1): ``u`` as float64, or ``num`` points from ``margin`` to 1 - ``margin``."""
    if u is None:
        return np.linspace(margin, 1.0 - margin, num)
    out = np.asarray(u, dtype=np.float64).reshape(-1)
    if out.size == 0 or not np.all((out > 0) & (out < 1)):
        raise ValueError("u: expected a non-empty list of values strictly inside (0, 1)")
    return out


def traces_of(fig: go.Figure, kind: str) -> list:
    """Traces of ``fig`` whose ``meta["kind"]`` is ``kind`` (how tests and notebooks find data)."""
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == kind]


def vertical_line(x: float, y0: float, y1: float, name: str, dash: str = "dash",
                  line_color: str = "black", **meta) -> go.Scatter:
    """A vertical line as a data trace (exact on log axes, and inspectable)."""
    return go.Scatter(
        x=[x, x], y=[y0, y1], mode="lines", name=name,
        line={"dash": dash, "color": line_color, "width": 1.5},
        meta={"kind": "boundary", "x": float(x), **meta},
    )


def add_slider(fig: go.Figure, frames: Sequence[go.Frame], labels: Sequence[str],
               prefix: str, duration_ms: int = 300) -> go.Figure:
    """Attach ``frames`` to ``fig`` with a slider (one step per frame) and a play button.

    Frames must carry a unique ``name``; step i animates to frame i.
    """
    fig.frames = list(frames)
    anim = {"mode": "immediate", "frame": {"duration": duration_ms, "redraw": True},
            "transition": {"duration": 0}}
    steps = [{"method": "animate", "label": lab, "args": [[fr.name], anim]}
             for fr, lab in zip(frames, labels, strict=True)]
    fig.update_layout(
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": prefix},
                  "pad": {"t": 50}}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0.0, "y": 0.0,
                      "xanchor": "right",
                          "yanchor": "top", "pad": {"t": 50, "r": 10},
                          "buttons": [{"label": "▶", "method": "animate", "args": [None, anim]},
                                   {"label": "❚❚", "method": "animate",
                                        "args": [[None], {**anim, "mode": "immediate",
                                                       "frame": {"duration": 0}}]}]}],
    )
    return fig
