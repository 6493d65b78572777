"""What the page says about a result: the summary, the caveat next to the boxes, the sweep chart.

Every sentence is computed from the result of the loaded model on that image (which way phi
went and by how much, the compute it cost, how far the choice is from the scale loss's own
optimum phi* on a generated scene, how many known objects were found); nothing here states what
a model "should" do, so the text stays true whatever checkpoint is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go

from ..viz import scale_sweep_figure

__all__ = ["PHI_CLOSE", "caveat_markdown", "phi_reading", "summary_markdown", "sweep_chart"]

PHI_CLOSE = 0.05  # |phi - phi*| up to this reads as "close to what its loss asks"
SOURCES = {"predicted": "chosen by the scale predictor", "forced": "forced by you",
           "fixed": "this model has no predictor"}
SWEEP_SERIES = ("num_detections", "recall", "mean_score", "gflops")


def phi_reading(phi: float) -> str:
    """Which way the image went: down-scaled, up-scaled or the base resolution (by how much)."""
    if abs(phi - 1.0) < 0.005:
        return "the base resolution"
    change = abs(phi - 1.0) * 100
    return (f"down-scaled: {change:.0f}% shorter sides than at phi = 1" if phi < 1
            else f"up-scaled: {change:.0f}% longer sides than at phi = 1")


def _compute_line(r: Mapping) -> str:
    saved = 100 * r["compute_saved"]
    if abs(saved) < 0.5:
        verdict = "the same compute"
    elif saved > 0:
        verdict = f"**{saved:.0f}% less compute**"
    else:
        why = ("up-scaled" if r["processed_width"] * r["processed_height"]
               > r["base_width"] * r["base_height"] else "the predictor's cost")
        verdict = f"**{-saved:.0f}% more compute** ({why})"
    predictor = (f" (predictor {r['gflops_predictor']:.2f} included)"
                 if r["gflops_predictor"] else "")
    return (f"- **compute**: {r['gflops']:.2f} GFLOPs{predictor} vs {r['gflops_phi1']:.2f} "
            f"GFLOPs at phi = 1: {verdict}")


def _optimum_line(r: Mapping) -> str | None:
    if "phi_star" not in r:
        if "scene" in r:
            return ("- **phi\\***: unknown (the checkpoint does not record its scale-loss "
                    "options)")
        return None
    n = len(r.get("ground_truth", ()))
    what = (f"{n} objects, median side {r['median_side_phi1']:.0f} px at phi = 1"
            if r.get("median_side_phi1") is not None else "no objects")
    diff = r["phi"] - r["phi_star"]
    if abs(diff) <= PHI_CLOSE:
        verdict = f"phi is close to it (within {PHI_CLOSE:g})"
    else:
        verdict = f"phi is {abs(diff):.2f} {'below' if diff < 0 else 'above'} it"
    return (f"- **phi\\* = {r['phi_star']:.2f}**, where this model's scale loss asks this "
            f"image to be processed ({what}): {verdict}")


def _recall_line(r: Mapping) -> str | None:
    if "scene" not in r:
        return None
    n = len(r["found"])
    if n == 0:
        return "- **ground truth**: the scene has no objects"
    return (f"- **found**: {sum(r['found'])} of {n} objects (recall {100 * r['recall']:.0f}% at "
            f"score >= {r['threshold']:.2f}; same class and IoU >= 0.5); white outlines: "
            "ground truth")


def _latency_line(r: Mapping) -> str | None:
    if "latency_ms" not in r:
        return None
    lo, hi = r["latency_ratio_range"]
    return (f"- **latency** (wall clock on this machine, noisy): {r['latency_ms']:.0f} ms vs "
            f"{r['latency_ms_phi1']:.0f} ms at phi = 1; ratio {r['latency_ratio']:.2f} "
            f"(from {lo:.2f} to {hi:.2f} over {r['latency_pairs']} interleaved pairs)")


def summary_markdown(result: Mapping) -> str:
    """The numbers of one detection in a few lines of Markdown, led by phi and its cost."""
    r = result
    source = SOURCES.get(r["phi_source"], r["phi_source"])
    reading = phi_reading(r["phi"])
    n = len(r["detections"])
    lines = [
        f"### phi = {r['phi']:.2f}, {reading} ({source})",
        _compute_line(r),
        (f"- **resolution** (width x height): the detector saw **{r['processed_width']} x "
         f"{r['processed_height']} px**; at phi = 1 it sees {r['base_width']} x "
         f"{r['base_height']} px; your image is {r['width']} x {r['height']} px"),
        _optimum_line(r),
        _recall_line(r),
        (f"- **detections** with score >= {r['threshold']:.2f}: {n}"
         + ("" if n else " (none: lower the threshold to see weaker ones)")),
        _latency_line(r),
    ]
    notes = list(r.get("input_notes", ()))
    if "reduced_to" in r:
        h, w = r["reduced_to"]
        notes.append(f"box-filtered to {w} x {h} px before detection (pixel budget)")
    if notes:
        lines.append(f"- **input**: {'; '.join(notes)}")
    if "inference_ms" in r:
        lines.append(f"- this request's model call took {r['inference_ms']:.0f} ms")
    return "\n".join(line for line in lines if line)


def caveat_markdown(result: Mapping | None) -> str:
    """The warning shown next to the boxes, or "" when none applies."""
    if not result or not result.get("trained_on_generated_shapes") or "scene" in result:
        return ""
    return ("**This model was trained on generated shapes only.** On a photograph its boxes "
            "and labels mean little; phi still shows how the scale predictor reacts to the "
            "size of what it sees.")


def _vertical(x: float, y0: float, y1: float, name: str, colour: str, dash: str, kind: str,
              show: bool) -> go.Scatter:
    return go.Scatter(x=[x, x], y=[y0, y1], mode="lines", name=name, showlegend=show,
                      line={"color": colour, "dash": dash, "width": 2},
                      hovertemplate=f"{name}<extra></extra>", meta={"kind": kind, "x": float(x)})


def sweep_chart(rows: Mapping) -> go.Figure:
    """The scale sweep as ``viz.scale_sweep_figure``, with the used phi and phi* marked.

    ``rows`` is ``DetectorService.sweep``'s dict. The predictor's phi is the figure's own
    "predicted" line; a forced phi ("forced") and phi* ("optimum", generated scenes) are
    added as vertical lines on every panel. The title is short enough for a phone.
    """
    series = {"phi": rows["phi"], **{k: rows[k] for k in SWEEP_SERIES if k in rows}}
    fig = scale_sweep_figure(series, rows.get("predicted_phi"))
    marks = []
    if rows.get("phi_source") == "forced":
        marks.append((rows["used_phi"], f"forced phi = {rows['used_phi']:.2f}", "black", "dot",
                      "forced"))
    if rows.get("phi_star") is not None:
        marks.append((rows["phi_star"], f"phi* = {rows['phi_star']:.2f} (loss optimum)",
                      "seagreen", "dashdot", "optimum"))
    for r, key in enumerate(k for k in series if k != "phi"):
        values = [v for v in series[key] if not math.isnan(v)]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        for x, name, colour, dash, kind in marks:
            fig.add_trace(_vertical(x, lo, hi, name, colour, dash, kind, r == 0), row=r + 1,
                          col=1)
    fig.update_layout(title={"text": "The same image at every phi", "x": 0.01,
                             "xanchor": "left", "font": {"size": 15}},
                      margin={"l": 48, "r": 12, "t": 56, "b": 40}, autosize=True,
                      legend={"orientation": "h", "x": 0, "y": -0.08, "yanchor": "top"})
    return fig
