"""The benchmark's report: results.json, a results.md a reader can quote, and the figures
(Pareto fronts AP vs GFLOPs and AP vs latency, phi vs object size with and without the scale
loss, AP by object size) as one HTML file plus one PNG per figure when kaleido can render."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from . import viz

FIGURES = ("pareto_gflops", "pareto_ms", "phi_vs_object_size", "ap_by_size")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} %"


def _num(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def pareto_points(results: dict) -> list[dict]:
    """Every evaluated point as {name, label, ap, gflops, ms} for viz.pareto_figure."""
    points = []
    for name, run in results["runs"].items():
        for p in run["points"]:
            label = f"φ={p['scale']:g}" if p["scale"] is not None else f"φ̄={p['mean_phi']:.2f}"
            points.append({"name": name, "label": label, "ap": p["AP"], "gflops": p["gflops"],
                           "ms": p["ms"]})
    return points


def reference_point(run: dict) -> dict:
    """A baseline's point at the scale nearest phi = 1; an elastic run's predicted-phi point."""
    return min(run["points"], key=lambda p: 0.0 if p["scale"] is None else abs(p["scale"] - 1))


def figures(results: dict) -> dict[str, go.Figure]:
    """The report's figures, built by the package's viz functions."""
    points = pareto_points(results)
    seed = results["seed_experiments"]["phi_vs_object_size"]
    main = {name: reference_point(run) for name, run in results["runs"].items()
            if run["role"] in ("baseline", "elastic")}
    figs = {"pareto_gflops": viz.pareto_figure(points, "gflops"),
            "pareto_ms": viz.pareto_figure(points, "ms"),
            "phi_vs_object_size": viz.phi_size_comparison(
                {name: (t["median_side"], t["phi"]) for name, t in seed.items()}),
            "ap_by_size": viz.ap_by_size_figure(main)}
    figs["pareto_gflops"].update_layout(title="AP vs GFLOPs per image (test split)")
    figs["pareto_ms"].update_layout(title="AP vs measured latency per image (test split)")
    figs["ap_by_size"].update_layout(title="COCO AP by object size (baselines at φ nearest 1)")
    return figs


def save_figures(figs: dict[str, go.Figure], out: Path) -> dict[str, str]:
    """figures.html (all figures, plotly.js inline once, works offline) and NAME.png each.

    Returns {name: "NAME.png" or the reason the PNG was not written}.
    """
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0))
             for i, fig in enumerate(figs.values())]
    (out / "figures.html").write_text(
        "<html><head><meta charset='utf-8'><title>elastic-lab benchmark</title></head><body>"
        + "\n".join(parts) + "</body></html>", encoding="utf-8")
    status = {}
    for name, fig in figs.items():
        try:
            fig.write_image(out / f"{name}.png", width=900, height=560)
            status[name] = f"{name}.png"
        except Exception as exc:  # noqa: BLE001 (kaleido missing or no browser: say so)
            reason = " ".join(str(exc).split())[:200]
            status[name] = f"PNG not written ({type(exc).__name__}: {reason})"
    return status


def _train_options(s: dict) -> str:
    """The runs' shared training options, in words."""
    if "train_args" in s:  # results.json of the first benchmark versions
        return f"train options `{' '.join(s['train_args'])}`"
    parts = ["the smoke detector" if s.get("smoke") else "the default detector"]
    parts.append("frozen stem" if s["freeze_stem"] else "trainable stem")
    if s["lr_drop"] is not None:
        parts.append(f"lr /10 after {s['lr_drop']:g} of the steps")
    parts += [f"{s['workers']} loader worker(s)", "bfloat16/float16 autocast" if s["amp"]
              else "float32"]
    return "train options: " + ", ".join(parts)


def markdown(results: dict, png: dict[str, str] | None = None) -> str:
    """results.md: settings, every point, compute saved two ways, the seed experiments."""
    s = results["settings"]
    lines = ["# elastic-lab benchmark", "",
             (f"Synthetic set `{s['data']}`, report split **{s['split']}** ({s['eval_images']} "
             f"images at most; no setting was chosen on it). Every run: {s['budget_steps']} "
             f"steps x batch {s['batch_size']}, base size {s['base_size']}, seed {s['seed']}, "
             f"{_train_options(s)}; tau range "
             f"[{s['tau_min']}, {s['tau_max']}]; {results['torch_threads']} torch threads; "
             f"latency = median of {s['latency_images']} images one by one."), "",
             "| run | phi | AP | AP50 | APs | APm | APl | GFLOPs/img | ms/img | train min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        for p in run["points"]:
            phi = f"{p['scale']:g}" if p["scale"] is not None else \
                f"pred. {p['mean_phi']:.2f} ± {p['phi_std']:.2f}"
            g = f"{p['gflops']:.2f}" + (f" ({p['predictor_gflops']:.2f} pred.)"
                                        if p["scale"] is None else "")
            lines.append(f"| {name} | {phi} | {p['AP']:.3f} | {p['AP50']:.3f} | {p['APs']:.3f} | "
                         f"{p['APm']:.3f} | {p['APl']:.3f} | {g} | {p['ms']:.1f} | "
                         f"{run['train_seconds'] / 60:.1f} |")
    lines += ["", "## Compute saved by the elastic model", "",
              ("| baseline | its best AP | lowest scale reaching elastic AP | GFLOPs saved | "
              "latency saved | latency / FLOPs saving | GFLOPs saved (front, interpolated) | "
              "AP gain at equal GFLOPs | goal met |"), "|---|---|---|---|---|---|---|---|---|"]
    for b, c in results["comparisons"].items():
        scale = c["lowest_scale_reaching_elastic_ap"]
        lines.append(
            f"| {b} | {c['baseline_best_ap']:.3f} | {'none' if scale is None else f'{scale:g}'} "
            f"| {_pct(c['compute_saved'])} | {_pct(c['latency_saved'])} | "
            f"{_num(c['latency_to_flops_saving'], '.2f')} | "
            f"{_pct(c['compute_saved_interpolated'])} | {c['ap_gain_at_equal_gflops']:+.3f}"
            f"{' (extrapolated)' if c['gflops_extrapolated'] else ''} | "
            f"{'yes' if c['goal_met'] else 'no'} |")
    lines += ["", ("Goal (the paper's claim): at least the multi-scale baseline's best AP with "
              ">= 26 % fewer GFLOPs (predictor included), or +3.5 AP (0.035) at equal GFLOPs; "
              "latency saving >= 0.8 x the FLOPs saving."), "",
              "## Seed experiments", "", ("| elastic run | tau_max | AP | GFLOPs/img | mean phi | "
              "Spearman(phi, median object side) | compute saved vs phi=1 |"),
              "|---|---|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        if run["mode"] == "elastic":
            p = run["points"][0]
            lines.append(f"| {name} | {run['tau_max']:g} | {p['AP']:.3f} | {p['gflops']:.2f} | "
                         f"{p['mean_phi']:.2f} | {_num(p['spearman'], '+.2f')} | "
                         f"{_pct(p['compute_saved_vs_phi1'])} |")
    lines += ["", ("Spearman < 0: images of small objects get larger phi (seed experiment 1); "
              "`elastic_no_scale_loss` is the ablation without L_scale (2); the "
              "`elastic_tau_max_*` rows with `elastic` form the tau_max sweep (3)."), "",
              "## Speed against Hugging Face DetrForObjectDetection", ""]
    hf = results["speed_vs_hf"]
    lines.append(hf["markdown"] if "markdown" in hf else f"Not measured: {hf['skipped']}")
    if png:
        lines += ["", "## Figures", "", "All in `figures.html`; PNG files:"]
        lines += [f"- {name}: {v}" for name, v in png.items()]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> None:
    """results.json, results.md, figures.html and the PNGs under ``out``."""
    out = Path(out)
    png = save_figures(figures(results), out)
    results["figures"] = png
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "results.md").write_text(markdown(results, png), encoding="utf-8")
