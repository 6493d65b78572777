"""The benchmark's report: ``results.json`` (bench_summary.summarize of the cell files),
``results.md`` (its tables and sections; the sentences a reader quotes are bench_text.py's)
and the figures (bench_figures.py).
Nothing here trains or evaluates: the report is a function of ``OUT/cells/*.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import recipes
from .ap_subsets import COCO_KEYS
from .bench_cells import FIXED_FRONT, read_cells
from .bench_figures import COLUMN_LABELS, figures, save_figures
from .bench_stats import replica_index
from .bench_summary import ORACLE_COLUMNS, summarize
from .bench_text import (
    ablation_ap,
    ablation_findings,
    ap_diff,
    best_fixed,
    ci,
    elastic_choice,
    fewer_seeds,
    fmt_ap,
    fmt_dap,
    latency_at_sizes,
    mean_sd,
    multiscale_never_reaches,
    num,
    over_seeds,
    pct,
    per_seed,
    saving,
    seed_names,
    variants_above_best_fixed,
    verdict,
)


def settings(cells: Mapping[str, Mapping]) -> list[str]:
    """The shared settings, read off the cells (recipe, split, images, machines)."""
    named = [(n, c) for n, c in cells.items() if "recipe" in c]
    if not named:
        return []
    main = [c for _, c in named]
    r = main[0]["recipe"]
    ev = main[0]["evaluation"]
    machines = sorted({f"{c['machine']['device_name']} ({c['machine']['device']}, torch "
                       f"{c['machine']['torch']}, {c['machine']['torch_threads']} thread(s)"
                       f"{', amp' if c['machine']['amp'] else ''})" for c in cells.values()})
    smoke = any(c.get("smoke") for c in cells.values())
    el = next((c["recipe"] for c in main if c["recipe"]["model"]["mode"] == "elastic"), None)
    elastic = "" if el is None else (
        f"; elastic: predictor {el['model']['predictor_trunk']}/{el['model']['predictor_norm']}"
        f", thumbnail {el['model']['thumb_size']}, {el['model']['predictor_size_bins']} size "
        f"bins, warm start {el['train']['pretrain_steps']} steps, distribution loss "
        f"{el['loss']['distribution']} (budget {el['loss']['compute_budget']:g})")
    cal = {n: c["calibration"] for n, c in named if c.get("calibration")}
    calibrated = "" if not cal else (
        " Runs trained at many scales are evaluated with per-scale batch-norm statistics ("
        + "; ".join(f"{n}: {len(c['centres'])} φ bins from {c['num_images']} unlabelled "
                    f"training images" for n, c in sorted(cal.items()))
        + "; filled after training by `elastic-lab calibrate`).")
    drop = f" (÷10 after {r['train']['lr_drop']:g} of the steps)" if r["train"]["lr_drop"] else ""
    return [(f"Recipe (`elastic_lab/recipes.py`{', smoke variant' if smoke else ''}): "
             f"{r['train']['max_steps']} steps × batch {r['train']['batch_size']}, lr "
             f"{r['train']['lr']:g}{drop}, base size "
             f"{r['model']['base_size']}, τ ∈ [{r['model']['tau_min']:g}, τmax of the run], "
             f"{r['model']['detr']['num_queries']} queries, anchors "
             f"{r['model']['detr']['anchor_cells']} cells, hflip {r['train']['hflip']:g}"
             f"{elastic}. Every cell stores its full config (`recipe`)."),
            (f"Evaluation: split **{main[0]['split']}**, {ev['num_images']} images (nothing was "
            f"tuned on it), sweep φ ∈ {{{', '.join(f'{s:g}' for s in ev['scales'])}}}, "
            f"{ev['bootstrap']['replicas']} paired bootstrap replicas over test images "
            f"(`bootstrap_indices(n, {ev['bootstrap']['replicas']}, seed="
            f"{ev['bootstrap']['seed']})`), 95 % percentile intervals.{calibrated}"),
            "Machines: " + "; ".join(machines) + "."]


def headline_lines(s: Mapping) -> list[str]:
    lines = ["## Headline: compute saved at equal AP, AP gain at equal GFLOPs", "",
             ("Read off the baseline's *interpolated* Pareto front (`analysis.compare_to_baseline`)"
             "; elastic at its predicted φ, GFLOPs with the predictor. Intervals: paired "
             "bootstrap over test images (replica b of every row on the same resample) of the "
             "seed mean; ± is the sd over seeds; over seeds: the Student-t interval of the "
             "mean with the training runs as the sample (needs 2 seeds). ∞: on that resample "
             "the front never reaches the elastic AP."), "",
             ("| against | compute saved (mean ± sd) | 95 % interval | over seeds | per seed | "
             "AP gain at equal GFLOPs | 95 % interval | over seeds | per seed |"),
             "|---|---|---|---|---|---|---|---|---|"]
    points = s.get("num_scales", "?")
    phis = ", ".join(f"{recipes.RUNS[r].fixed_phi:g}" for r in FIXED_FRONT)
    names = {"fixed_front": f"fixed-resolution front (φ = {phis})",
             "multiscale": f"multi-scale ({points}-point sweep)"}
    for key, label in names.items():
        h = s["headline"][key]
        saved, gain = h["compute_saved"], h["ap_gain"]
        lines.append(f"| {label} | {mean_sd(saved)} | {ci(saved['interval'])} "
                     f"| {ci(saved.get('seed_interval'))} | {per_seed(saved)} "
                     f"| {mean_sd(gain, fmt_dap)} | {ci(gain['interval'], fmt_dap)} "
                     f"| {ci(gain.get('seed_interval'), fmt_dap)} | {per_seed(gain, fmt_dap)} |")
    never = multiscale_never_reaches(s)
    best = " ".join(t for t in (best_fixed(s), variants_above_best_fixed(s)) if t)
    return lines + (["", never] if never else []) + (["", best] if best else [])


def target_lines(s: Mapping) -> list[str]:
    lines = ["## Targets of issue 16", ""]
    fmt = {"fixed_front": pct, "multiscale": pct, "latency": lambda x: num(x, ".2f"),
           "predictor": pct}
    for t in s["targets"]:
        state = {True: "**met**", False: "**not met**", None: "not measurable yet"}[t["met"]]
        extra = f", interval {ci(t['interval'])}" if t.get("interval") else ""
        value = fmt[t["name"]](t["value"])
        if t["name"] == "latency" and t.get("flops_saved") is not None and t["flops_saved"] <= 0:
            extra += "; elastic saves no FLOPs on these images, so the ratio means nothing"
        measured = f" (measured {value}{extra})" if t["value"] is not None else ""
        lines.append(f"- {t['target']}: {state}{measured}.")
    g = s.get("gap")
    if g and any(t["met"] is False for t in s["targets"]):
        lines += ["", "Where the gap comes from (elastic, seed means, paired 95 % intervals):",
                  (f"- oracle gap: AP-optimal φ − predicted φ = "
                  f"{mean_sd(g['oracle_gap'], fmt_dap)} {ci(g['oracle_gap']['interval'], fmt_dap)}; "
                  f"the same oracle lifts the fixed φ = 1 detector by "
                  f"{mean_sd(g['fixed_oracle_gain'], fmt_dap)} (its optimism: it picks on the "
                  "test labels);"),
                  (f"- predictor fidelity: φ* − predicted = {mean_sd(g['fidelity_gap'], fmt_dap)} "
                  f"{ci(g['fidelity_gap']['interval'], fmt_dap)} (what a perfect predictor of "
                  f"today's targets adds); Pearson(u, u*) {mean_sd(g['pearson_u'], fmt_ap)}, "
                  f"MAE {mean_sd(g['mae_u'], fmt_ap)}, Spearman(φ, median object side) "
                  f"{mean_sd(g['spearman_phi_vs_median_side'], fmt_dap)};"),
                  (f"- target calibration: φ* − φ = 1 = {mean_sd(g['calibration'], fmt_dap)} "
                  f"{ci(g['calibration']['interval'], fmt_dap)}; predicted − φ = 1 = "
                  f"{mean_sd(g['predicted_vs_phi1'], fmt_dap)}; share of the φ = 1 → AP-optimal "
                  f"gap closed by the predicted φ {mean_sd(g['closes_gap_share'], fmt_ap)};"),
                  (f"- detector budget: elastic detector at φ = 1 − fixed detector at φ = 1 = "
                  f"{mean_sd(g['detector_at_phi1'], fmt_dap)} "
                  f"{ci(g['detector_at_phi1']['interval'], fmt_dap)}; γ "
                  f"{mean_sd(g['gamma'], fmt_ap)}.")]
    late = [t for t in s["targets"] if t["name"] == "latency" and t["met"] is False]
    split = _latency_split(s.get("latency") or {})
    if late and split:
        sizes = latency_at_sizes(s)
        lines.append("- latency: " + split[1][len("Where the time goes: "):]
                     + (f" {sizes}" if sizes else ""))
    return lines


def detector_lines(s: Mapping) -> list[str]:
    lines = ["## Detectors on the test split", "",
             ("Seed means (± sd). Fixed: its own φ; elastic runs: predicted φ (GFLOPs with the "
             "predictor); multi-scale: every sweep point."), "",
             "| run | φ | " + " | ".join(COCO_KEYS) + " | GFLOPs | mean φ | seeds |",
             "|---|---|" + "---|" * (len(COCO_KEYS) + 3)]

    def cells_of(stats: Mapping) -> str:
        return " | ".join(fmt_ap(stats[k]["mean"]) + (f" ± {fmt_ap(stats[k]['sd'])}"
                                                   if stats[k]["sd"] is not None else "")
                          for k in COCO_KEYS)

    for run, d in s["detectors"].items():
        if "own" in d:
            phi = "predicted" if d["mode"] == "elastic" else f"{recipes.RUNS[run].fixed_phi:g}"
            lines.append(f"| {run} | {phi} | {cells_of(d['own'])} | "
                         f"{num(d['own']['gflops']['mean'], '.2f')} | "
                         f"{num(d['own']['mean_phi']['mean'], '.3f')} | {d['seeds']} |")
        if d["mode"] == "multiscale":
            for k, st in d["sweep"].items():
                lines.append(f"| {run} | {k} | {cells_of(st)} | {num(st['gflops']['mean'], '.2f')}"
                             f" | {k} | {d['seeds']} |")
    return lines


def oracle_lines(s: Mapping) -> list[str]:
    lines = ["## Oracles: own φ, φ = 1, the scale loss's φ*, the per-image AP-optimal φ", "",
             ("AP (GFLOPs) seed means; oracle GFLOPs are the detector's alone. The AP-optimal "
             "oracle picks each image's φ on its test labels, so it flatters every detector: "
             "the fixed detectors' own gain from it is the reference for that optimism."), "",
             "| detector | " + " | ".join(COLUMN_LABELS[k] for k in ORACLE_COLUMNS)
             + " | AP-optimal gain [95 %] |", "|---|" + "---|" * (len(ORACLE_COLUMNS) + 1)]
    for run, o in s["oracles"].items():
        vals = [f"{fmt_ap(o[k]['AP']['mean'])} ({num(o[k]['gflops']['mean'], '.2f')})" if k in o
                else "—" for k in ORACLE_COLUMNS]
        g = o["ap_optimal_gain"]
        lines.append(f"| {run} | " + " | ".join(vals) + f" | {mean_sd(g, fmt_dap)} "
                     f"{ci(g['interval'], fmt_dap)} over {o['gain_over']} |")
    return lines


def ablation_lines(s: Mapping) -> list[str]:
    lines = ["## Ablations (first seed; a run trained at more seeds: their mean ± sd)", "",
             ("| run | what | AP | ΔAP vs elastic [95 %] | GFLOPs | mean φ | γ | "
              "Pearson(u, u*) | Spearman(φ, side) | saved vs fixed front | "
              "AP gain vs fixed front | ΔAP vs best fixed | saved vs multi-scale |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in s["ablations"]:
        d = a.get("ap_minus_elastic")
        dap = ap_diff(d) if d else "—"
        saved = [a.get(f"compute_saved_vs_{b}") for b in ("fixed_front", "multiscale")]
        saved = [saving(x) for x in saved]
        gain = a.get("ap_gain_vs_fixed_front")
        gain = ap_diff(gain) if gain else "n/a"
        best = "; ".join(f"{ap_diff(b['ap_minus'])}{over_seeds(b['ap_minus'])} vs {b['run']}"
                         f"{fewer_seeds(b['ap_minus'], a)}"
                         for b in (a.get("vs_best_fixed"), a.get("vs_best_seeded_fixed"))
                         if b) or "n/a"
        lines.append(f"| {a['run']} {seed_names(a)} | {a['note']} | {ablation_ap(a)} | {dap} | "
                     f"{num(a['gflops'], '.2f')} | {num(a['mean_phi'], '.3f')} | "
                     f"{num(a['gamma'], '.3f')} | {num(a['pearson_u'], '.2f')} | "
                     f"{num(a['spearman'], '+.2f')} | {saved[0]} | {gain} | {best} | "
                     f"{saved[1]} |")
    findings = ablation_findings(s)
    return lines + (["", findings] if findings else [])


def latency_lines(s: Mapping) -> list[str]:
    lat = s.get("latency")
    lines = ["## Latency (paired, one process)", ""]
    if not lat:
        return lines + ["Not measured yet (cell `latency` missing)."]
    def named(key: str, origin: str | None) -> str:
        return f"`{lat[key]}`" + (f" (from `{origin}`)" if origin and origin != lat[key] else "")
    origins = lat.get("origins") or [None, None]
    text = (f"{named('model', origins[0])} against {named('reference', origins[1])} on "
            f"{lat['images']} test images, batch 1, {lat['repeats']} interleaved repeats per "
            f"image (alternating order), on {lat['machine']['device_name']} "
            f"({lat['machine']['device']}).")
    return lines + [
        text + f" Over the subset the elastic model takes {num(lat['total_ratio'], '.3f')} "
        f"{ci(lat['total_ratio_interval'], lambda x: num(x, '.3f'))} of the fixed detector's "
        f"time (mean {num(lat['mean_ms'], '.1f')} vs {num(lat['reference_mean_ms'], '.1f')} ms "
        f"per image): latency saved {pct(lat['latency_saved'])} "
        f"{ci(lat['latency_saved_interval'])}, FLOPs saved on the same images "
        f"{pct(lat['flops_saved'])}; latency saving / FLOPs saving = "
        f"{num(lat['latency_to_flops_saving'], '.2f')}. Per image, the median time ratio is "
        f"{num(lat['median_ratio'], '.3f')} "
        f"{ci(lat['median_ratio_interval'], lambda x: num(x, '.3f'))} against a median FLOPs "
        f"ratio of {num(lat['median_flops_ratio'], '.3f')}."] + _latency_split(lat) + \
        _size_table(lat)


def _size_table(lat: Mapping) -> list[str]:
    """The pair at its own processing size and at the cell's other sizes, one row each."""
    others = lat.get("other_sizes") or []
    if not others:
        return []
    lines = ["", (f"At other processing sizes: the same two models and the same φ per image, "
                  f"with the short side they resize to (base size) changed from "
                  f"{lat.get('base_size', 'the trained')} px; the test images are upsampled. "
                  "Only time and FLOPs are measured there: the detectors never saw that size, "
                  "so their accuracy at it means nothing. The rows show how much of the gap "
                  "between the latency and the FLOPs saving is a fixed cost per call."), "",
             ("| short side (px) | fixed ms (mean) | elastic ms (mean) | latency saved [95 %] "
             "| FLOPs saved | latency / FLOPs saving | detector alone: latency / FLOPs saving "
             "| predictor: share of the fixed time / of its FLOPs |"),
             "|---|---|---|---|---|---|---|---|"]
    for part in [lat, *others]:
        det, pred = part.get("detector") or {}, part.get("predictor") or {}
        own = "" if part is not lat else " (trained)"
        lines.append(
            f"| {part.get('base_size', 'trained')}{own} | {num(part['reference_mean_ms'], '.1f')} "
            f"| {num(part['mean_ms'], '.1f')} | {pct(part['latency_saved'])} "
            f"{ci(part['latency_saved_interval'])} | {pct(part['flops_saved'])} "
            f"| {num(part['latency_to_flops_saving'], '.2f')} "
            f"| {num(det.get('latency_to_flops_saving'), '.2f')} "
            f"| {num(100 * pred['share_of_reference_ms'], '.1f') if pred else 'n/a'} % / "
            f"{num(100 * pred['share_of_reference_gflops'], '.1f') if pred else 'n/a'} % |")
    return lines


def _latency_split(lat: Mapping) -> list[str]:
    """Where the time goes (cells that timed the elastic detector alone)."""
    det, pred = lat.get("detector"), lat.get("predictor")
    if not det or not pred:
        return []
    return ["", (f"Where the time goes: the elastic detector alone at the predicted φ saves "
            f"{pct(det['latency_saved'])} of the fixed detector's time for "
            f"{pct(det['flops_saved'])} of its FLOPs (ratio "
            f"{num(det['latency_to_flops_saving'], '.2f')}); the predictor takes "
            f"{num(pred['median_ms'], '.1f')} ms per image (median), "
            f"{num(100 * pred['share_of_reference_ms'], '.1f')} % of the fixed detector's time, "
            f"for {num(100 * pred['share_of_reference_gflops'], '.1f')} % of its FLOPs."
            + (f" The detector's time per image is {num(det['fit_intercept_ms'], '.1f')} ms + "
               f"{num(det['fit_ms_per_gflop'], '.2f')} ms per GFLOP (least squares over the timed "
               f"images): the intercept is time that a smaller φ does not remove."
               if det.get("fit_intercept_ms") is not None else ""))]


def cell_lines(s: Mapping, expected: Sequence[str]) -> list[str]:
    lines = ["## Cells"]
    if s["cells"]:
        lines += ["", "| cell | device | training min | steps | images/s | eval min |",
                  "|---|---|---|---|---|---|"]
    incomplete = []
    for name, c in s["cells"].items():
        t = c.get("training") or {}
        minutes, rate = num(t.get("seconds", 0) / 60 if t else None, ".1f"), \
            num(t.get("images_per_s"), ".1f")
        if c.get("training_time_complete") is False:
            incomplete.append(f"`{name}` ({minutes} min recorded, {rate} images/s against "
                              f"{num(t['logged_images_per_s_median'], '.1f')} in its own "
                              "logged intervals)")
            minutes, rate = "n/a †", "n/a †"
        lines.append(f"| {name} | {c['machine']['device_name'] if c.get('machine') else '?'} | "
                     f"{minutes} | {t.get('steps', '—')} | {rate} | "
                     f"{num((c.get('evaluation_seconds') or 0) / 60, '.1f')} |")
    if incomplete:
        lines += ["", "† The recorded training time misses a session that was killed before it "
                  "could count itself (cells trained before every checkpoint carried the run's "
                  "seconds): " + "; ".join(incomplete) + ". Its steps and results are complete."]
    if s.get("stale"):
        lines += ["", "**Trained with another recipe than today's `recipes.py`** (delete their "
                  "files to retrain them): " + ", ".join(f"`{m}`" for m in s["stale"]) + "."]
    missing = s["missing"]
    lines += ["", f"**Missing cells ({len(missing)} of {len(expected)})**: "
              + (", ".join(f"`{m}`" for m in missing) if missing else "none")
              + (". `make bench` trains them in this order (`elastic-lab bench --max-cells N` "
                 "for a few at a time)." if missing else ".")]
    return lines


def markdown(summary: Mapping, cells: Mapping[str, Mapping], expected: Sequence[str],
             png: Mapping[str, str]) -> str:
    """results.md."""
    lines = [("# elastic-lab benchmark: does a learned per-image resolution beat the best single "
             "resolution, beyond the noise?"), "",
             (f"Assembled by `elastic-lab bench --report-only` from the {len(cells)} cell files "
             "in `cells/`; every number below is in one of them.")]
    lines += [""] + [x for line in settings(cells) for x in (line, "")]
    if summary.get("headline") is None:
        lines += [("**No (run, seed) cell has been trained yet**: there are no results to "
                   "report. `make bench` trains the cells listed below (the README's benchmark "
                   "section says what each cell is and how it is evaluated).")]
        lines += [""] + target_lines(summary) + [""] + latency_lines(summary) + [""]
        lines += cell_lines(summary, expected)
        return "\n".join(lines) + "\n"
    lines += [verdict(summary), ""]
    if elastic_choice(summary):
        lines += [elastic_choice(summary), ""]
    for part in (headline_lines(summary), target_lines(summary), detector_lines(summary),
                 oracle_lines(summary), ablation_lines(summary), latency_lines(summary),
                 cell_lines(summary, expected)):
        lines += part + [""]
    lines += ["## Figures", "", ("All in `figures.html` (not committed; `--report-only` rebuilds "
              "it):")] + [f"- {k}: {v}" for k, v in png.items()]
    return "\n".join(lines) + "\n"


def _plain(obj):
    """JSON-ready copy: numpy arrays dropped (replicas stay in the cells), non-finite floats
    as strings."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items() if k != "replicas"}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_report(out: Path, expected: Sequence[str], png: bool = True) -> dict:
    """results.json, results.md and the figures under ``out`` from ``out/cells``; returns the
    summary."""
    out = Path(out)
    cells = read_cells(out / "cells")
    summary = summarize(cells, expected)
    index = replica_index({n: c for n, c in cells.items() if "evaluation" in c})
    status = save_figures(figures(cells, summary, index), out, png)
    summary["figures"] = status
    plain = _plain(summary)
    (out / "results.json").write_text(json.dumps(plain, indent=1, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "results.md").write_text(markdown(summary, cells, expected, status),
                                    encoding="utf-8")
    return plain
