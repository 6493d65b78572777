"""The benchmark's figures, from the cell files and the summary: Pareto fronts with interval
bands, φ vs object size (predicted and φ*), the oracle gap per detector, AP by object size.
Written as one HTML file (plotly.js inline once) plus one PNG each where kaleido renders
(it needs a Chromium; the plotly.js it loads is the copy plotly ships, so offline works)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import plotly.io as pio

from . import viz
from .bench_cells import FIXED_FRONT, FIXED_RUNS
from .bench_stats import interval, row_replicas
from .bench_summary import ORACLE_COLUMNS, by_run, column
from .viz._common import color

FIGURES = ("pareto", "phi_vs_object_size", "oracle_gap", "ap_by_size")
COLUMN_LABELS = {"own": "own / predicted φ", "phi1": "φ = 1", "loss_optimal": "φ* (loss)",
                 "ap_optimal": "AP-optimal φ"}


def _seed_mean(rows: list[Mapping], index: np.ndarray) -> tuple[float, float, list | None]:
    """(mean AP, mean GFLOPs, 95 % interval of the seed-mean AP) of the same row over seeds."""
    reps = np.mean([row_replicas(r, index)[0] for r in rows], axis=0)
    return (float(np.mean([r["AP"] for r in rows])), float(np.mean([r["gflops"] for r in rows])),
            interval(reps))


def _band(fig: go.Figure, name: str, points: list[tuple[float, float, list]], color: str) -> None:
    """A front (points sorted by GFLOPs) as a line with its interval band."""
    points = sorted(points)
    x = [p[0] for p in points]
    fig.add_trace(go.Scatter(x=x + x[::-1], y=[p[2][1] for p in points]
                             + [p[2][0] for p in points][::-1], fill="toself", opacity=0.2,
                             line={"width": 0}, fillcolor=color, showlegend=False,
                             hoverinfo="skip", meta={"kind": "band", "name": name}))
    fig.add_trace(go.Scatter(x=x, y=[p[1] for p in points], mode="lines+markers", name=name,
                             line={"color": color}, meta={"kind": "front", "name": name}))


def pareto(cells: Mapping[str, Mapping], index: np.ndarray) -> go.Figure:
    """AP vs GFLOPs (seed means, 95 % bands of the seed mean): the fixed-resolution front, the
    multi-scale sweep, elastic and its ablations at their predicted φ, and the fixed
    resolutions trained past the front (studies) as single points."""
    runs = by_run(cells)
    fig = go.Figure()
    seeds = sorted(set.intersection(*(set(runs.get(r, {})) for r in FIXED_FRONT)))
    if seeds:
        pts = []
        for r in FIXED_FRONT:
            ap, g, ci = _seed_mean([runs[r][s]["rows"]["own"] for s in seeds], index)
            pts.append((g, ap, ci))
        _band(fig, f"fixed front (seeds {seeds})", pts, color(0))
    if runs.get("multiscale"):
        ms = runs["multiscale"]
        keys = list(next(iter(ms.values()))["rows"]["sweep"])
        pts = []
        for k in keys:
            ap, g, ci = _seed_mean([c["rows"]["sweep"][k] for c in ms.values()], index)
            pts.append((g, ap, ci))
        _band(fig, f"multi-scale sweep (seeds {sorted(ms)})", pts, color(1))
    studies = set(FIXED_RUNS) - set(FIXED_FRONT)
    elastic_runs = [r for r in sorted(runs) if r.startswith("elastic")]
    for run in elastic_runs + sorted(studies & set(runs)):
        seeds_of = runs[run]
        ap, g, ci = _seed_mean([s["rows"]["own"] for s in seeds_of.values()], index)
        # a fixed study: the front's colour, a diamond; elastic runs: a colour each
        marker = ({"size": 10, "color": color(0), "symbol": "diamond"} if run in studies else
                  {"size": 12 if run == "elastic" else 8,
                   "color": color(2 + elastic_runs.index(run))})
        fig.add_trace(go.Scatter(x=[g], y=[ap], mode="markers", name=f"{run} {sorted(seeds_of)}",
                                 error_y={"type": "data", "symmetric": False,
                                          "array": [ci[1] - ap], "arrayminus": [ap - ci[0]]},
                                 marker=marker, meta={"kind": "method", "name": run}))
    fig.update_layout(title="AP vs GFLOPs per image (test split; bands: 95 % interval of the "
                      "seed mean over test images)", template="plotly_white",
                      xaxis_title="GFLOPs / image (predictor included)", yaxis_title="AP")
    return fig


def phi_vs_size(cells: Mapping[str, Mapping], runs: Sequence[str] = ("elastic",)
                ) -> go.Figure | None:
    """Predicted φ against the median object side of each test image for every cell of
    ``runs`` (elastic runs: the main one by default, ablations too when named), plus the scale
    loss's φ* of the first run's first seed. None when no such cell exists."""
    series = {}
    present = by_run(cells)
    for run in [r for r in runs if present.get(r)]:
        seeds = present[run]
        for seed, cell in sorted(seeds.items()):
            t = cell["elastic"]["phi_vs_size"]
            sides = [np.nan if v is None else v for v in t["median_side"]]
            series[f"{run} s{seed}: predicted φ"] = (sides, t["phi"])
            if not any("φ*" in k for k in series):
                series[f"{run} s{seed}: φ* (scale loss)"] = (sides, t["phi_star"])
    return viz.phi_size_comparison(series) if series else None


def oracle_gap(summary: Mapping) -> go.Figure | None:
    """AP per detector at own / φ = 1 / φ* / AP-optimal φ (seed means, sd as error bars)."""
    table = summary.get("oracles") or {}
    if not table:
        return None
    fig = go.Figure()
    runs = list(table)
    for c, key in enumerate(ORACLE_COLUMNS):
        y = [table[r][key]["AP"]["mean"] if key in table[r] else None for r in runs]
        sd = [(table[r][key]["AP"]["sd"] or 0.0) if key in table[r] else 0.0 for r in runs]
        fig.add_trace(go.Bar(x=runs, y=y, name=COLUMN_LABELS[key], marker={"color": color(c)},
                             error_y={"type": "data", "array": sd}, meta={"kind": "bars",
                                                                          "column": key}))
    fig.update_layout(barmode="group", template="plotly_white", yaxis_title="AP",
                      title="Oracle gap: each detector at its own φ, φ = 1, φ* and the "
                      "per-image AP-optimal φ (seed mean ± sd)")
    return fig


def ap_by_size(cells: Mapping[str, Mapping]) -> go.Figure | None:
    """COCO AP by object size at each main detector's own φ (multi-scale at φ = 1), seed 0."""
    runs = by_run(cells)
    metrics = {}
    for run in ("fixed_0.75", "fixed_1.00", "fixed_1.25", "multiscale", "elastic"):
        if runs.get(run):
            cell = runs[run][min(runs[run])]
            row = cell["rows"].get("own") or column(cell, "phi1")
            metrics[run if "own" in cell["rows"] else f"{run} (φ = 1)"] = row
    if not metrics:
        return None
    fig = viz.ap_by_size_figure(metrics)
    fig.update_layout(title="COCO AP by object size (first seed; multi-scale at φ = 1)")
    return fig


def figures(cells: Mapping[str, Mapping], summary: Mapping, index: np.ndarray | None
            ) -> dict[str, go.Figure]:
    """Every figure that the available cells allow."""
    if index is None:
        return {}
    made = {"pareto": pareto(cells, index), "phi_vs_object_size": phi_vs_size(cells),
            "oracle_gap": oracle_gap(summary), "ap_by_size": ap_by_size(cells)}
    return {k: v for k, v in made.items() if v is not None}


def save_figures(figs: Mapping[str, go.Figure], out: Path, png: bool = True) -> dict[str, str]:
    """figures.html (all figures, works offline) and NAME.png each (``png``). Returns
    {name: "NAME.png" or the reason no PNG was written}."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0))
             for i, fig in enumerate(figs.values())]
    (out / "figures.html").write_text(
        "<html><head><meta charset='utf-8'><title>elastic-lab benchmark</title></head><body>"
        + "\n".join(parts) + "</body></html>", encoding="utf-8")
    status = {}
    if png and not pio.defaults.plotlyjs:  # kaleido fetches plotly.js from a CDN otherwise
        pio.defaults.plotlyjs = str(Path(plotly.__file__).parent / "package_data"
                                    / "plotly.min.js")
    for name, fig in figs.items():
        if not png:
            status[name] = "PNG not written (--no-png)"
            continue
        try:
            fig.write_image(out / f"{name}.png", width=1000, height=600)
            status[name] = f"{name}.png"
        except Exception as exc:  # noqa: BLE001 (kaleido missing or no browser: say so)
            reason = " ".join(str(exc).split())[:200]
            status[name] = f"PNG not written ({type(exc).__name__}: {reason})"
    return status
