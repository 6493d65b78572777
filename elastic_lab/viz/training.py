"""Reading a run's ``metrics.jsonl`` and plotting its training curves."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from elastic_lab.viz._common import color

__all__ = ["load_metrics", "training_curves"]

DEFAULT_KEYS = ("loss", "loss_scale", "loss_dist", "phi_mean")


def load_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (one JSON object per line; blank lines skipped).

    Raises FileNotFoundError when the file is missing and ValueError naming the file and
    line when a line is not valid JSON or not a JSON object.
    """
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg}, column {e.colno})"
                                 ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, "  # noqa: TRY004
                                 f"got {type(row).__name__}")
            rows.append(row)
    return rows


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def training_curves(runs: Mapping[str, Sequence[Mapping]], keys: Sequence[str] = DEFAULT_KEYS,
                    x: str = "step") -> go.Figure:
    """One subplot per metric key, one coloured line per run (x = ``x``, default "step").

    Rows lacking a key (e.g. loss_dist in fixed/multiscale runs) or with a non-finite value
    are skipped for that key; a run with no value for a key draws no trace there. Trace meta:
    {"kind": "curve", "run": name, "key": key}.
    """
    if not keys:
        raise ValueError("training_curves: need at least one metric key")
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, subplot_titles=list(keys),
                        vertical_spacing=min(0.08, 0.3 / len(keys)))
    for i, (name, rows) in enumerate(runs.items()):
        shown = False  # one legend entry per run
        for r, key in enumerate(keys, start=1):
            pts = [(row[x], row[key]) for row in rows
                   if _number(row.get(x)) and _number(row.get(key))]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", name=name,
                                     legendgroup=name, showlegend=not shown,
                                     line={"color": color(i)},
                                     meta={"kind": "curve", "run": name, "key": key}),
                          row=r, col=1)
            shown = True
    fig.update_xaxes(title=x, row=len(keys), col=1)
    fig.update_layout(height=max(300, 220 * len(keys)), template="plotly_white",
                      title="Training curves", hovermode="x unified")
    return fig
