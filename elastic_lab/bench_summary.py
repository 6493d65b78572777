"""The benchmark's results (``results.json``), assembled from the committed cell files alone.

:func:`summarize` reads every ``<run>_s<seed>`` cell and the latency cell and returns the
headline (compute saved at equal AP and AP gain at equal GFLOPs against the fixed-resolution
front and against multi-scale, paired intervals, spread over seeds), the best single fixed
resolution, the detectors' own rows, the oracle table, where the elastic model's gap comes
from, the ablations, the latency cell and the issue's targets, plus the cells still missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from . import recipes
from .ap_subsets import COCO_KEYS
from .bench_cells import FIXED_FRONT, FIXED_RUNS, LATENCY, parse_cell, training_time_complete
from .bench_eval import scale_key
from .bench_latency import summarize_latency
from .bench_stats import (
    compare_rows,
    mean_sd,
    paired_difference,
    replica_index,
    seed_summary,
    target_check,
)
from .config import TrainConfig

# issue 16's targets
FIXED_SAVING, MULTISCALE_SAVING, LATENCY_RATIO, PREDICTOR_SHARE = 0.15, 0.26, 0.8, 0.05
ORACLE_COLUMNS = ("own", "phi1", "loss_optimal", "ap_optimal")


def by_run(cells: Mapping[str, Mapping]) -> dict[str, dict[int, Mapping]]:
    """{run: {seed: cell}} of the (run, seed) cells."""
    out: dict[str, dict[int, Mapping]] = {}
    for name, cell in cells.items():
        if name != LATENCY:
            c = parse_cell(name)
            out.setdefault(c.run, {})[c.seed] = cell
    return out


def column(cell: Mapping, key: str) -> Mapping | None:
    """A row of a cell by oracle-table column: own, phi1 (the sweep at φ = 1), loss_optimal,
    ap_optimal (None when the cell has no such row)."""
    rows = cell["rows"]
    if key == "phi1":
        return rows["sweep"].get(scale_key(1.0))
    return rows.get(key)


def baselines(runs: Mapping[str, Mapping[int, Mapping]], seed: int) -> dict[str, list]:
    """The baseline fronts at ``seed`` that are complete: the fixed front's own rows and the
    multi-scale sweep."""
    out = {}
    if all(seed in runs.get(r, {}) for r in FIXED_FRONT):
        out["fixed_front"] = [runs[r][seed]["rows"]["own"] for r in FIXED_FRONT]
    if seed in runs.get("multiscale", {}):
        out["multiscale"] = list(runs["multiscale"][seed]["rows"]["sweep"].values())
    return out


def headline(runs: Mapping, index: np.ndarray, model_run: str = "elastic") -> dict:
    """Compute saved and AP gain of ``model_run`` against each baseline front, per seed and
    over seeds."""
    out = {}
    for base in ("fixed_front", "multiscale"):
        per_seed = {}
        for seed, cell in sorted(runs.get(model_run, {}).items()):
            fronts = baselines(runs, seed)
            if base in fronts:
                per_seed[seed] = compare_rows(cell["rows"]["own"], fronts[base], index)
        out[base] = {
            "compute_saved": seed_summary({s: c["compute_saved"] for s, c in per_seed.items()},
                                          {s: c["replicas"]["compute_saved"]
                                           for s, c in per_seed.items()}),
            "ap_gain": seed_summary({s: c["ap_gain"] for s, c in per_seed.items()},
                                    {s: c["replicas"]["ap_gain"] for s, c in per_seed.items()}),
            "details": {str(s): {k: v for k, v in c.items() if k != "replicas"}
                        for s, c in per_seed.items()}}
    return out


def best_fixed(runs: Mapping, index: np.ndarray) -> dict | None:
    """The single fixed resolution with the best mean AP over its seeds, among every fixed run
    trained (the front and the studies past it), and elastic against it (AP difference and
    GFLOPs ratio, paired, at the seeds both have). When that run has fewer seeds than the
    most any fixed run has, ``seeded`` holds the same for the best of those with the most
    (the comparison with a spread over training runs); else it is None."""
    means = _fixed_means(runs)
    if not means:
        return None
    best, seeded = _best_of(means), _best_seeded(runs, means)
    out = {**_best_entry(runs, best, means, index),
           "mean_ap_by_run": {r: float(v) for r, v in means.items()},
           "seeds_by_run": {r: sorted(runs[r]) for r in means}}
    out["seeded"] = None if seeded == best else _best_entry(runs, seeded, means, index)
    return out


def _best_entry(runs: Mapping, best: str, means: Mapping[str, float],
                index: np.ndarray) -> dict:
    """A fixed run and elastic against it (paired, at the seeds both have)."""
    vs = _paired_against(runs, "elastic", best, list(runs.get("elastic", {})), index)
    return {"run": best, "phi": recipes.RUNS[best].fixed_phi, "mean_ap": float(means[best]),
            "seeds": sorted(runs[best]), "elastic_ap_minus_best": vs["ap_minus"],
            "elastic_gflops_over_best": vs["gflops_ratio"]}


def _best_seeded(runs: Mapping, means: Mapping[str, float]) -> str | None:
    """The best of the fixed runs trained at the most seeds."""
    most = max(len(runs[r]) for r in means)
    return _best_of({r: v for r, v in means.items() if len(runs[r]) == most})


def _fixed_means(runs: Mapping) -> dict[str, float]:
    """Mean AP over its seeds of each fixed-resolution run trained (front and studies)."""
    return {r: float(np.mean([c["rows"]["own"]["AP"] for c in runs[r].values()]))
            for r in FIXED_RUNS if runs.get(r)}


def _best_of(means: Mapping[str, float]) -> str | None:
    """The fixed run with the highest mean AP (None when none is trained)."""
    return max(means, key=means.get) if means else None


def _paired_against(runs: Mapping, run: str, ref: str, seeds: Sequence[int],
                    index: np.ndarray) -> dict:
    """``run`` minus ``ref`` at those of ``seeds`` both have: the paired AP difference
    (``ap_minus``) and the GFLOPs ratio (``gflops_ratio``), seed summaries."""
    own = {s: (runs[run][s]["rows"]["own"], runs[ref][s]["rows"]["own"])
           for s in seeds if s in runs[ref]}
    diff = {s: paired_difference(a, b, index) for s, (a, b) in own.items()}
    ratio = {s: paired_difference(a, b, index, "gflops_ratio") for s, (a, b) in own.items()}
    return {"ap_minus": seed_summary({s: v for s, (v, _) in diff.items()},
                                     {s: r for s, (_, r) in diff.items()}),
            "gflops_ratio": seed_summary({s: v for s, (v, _) in ratio.items()},
                                         {s: r for s, (_, r) in ratio.items()})}


def _against_best_fixed(runs: Mapping, run: str, best: str | None, seeds: Sequence[int],
                        index: np.ndarray) -> dict | None:
    """``run`` against the best single fixed resolution ``best`` at the seeds both have: its
    name, the paired AP difference and the GFLOPs ratio; None when they share no seed."""
    if best is None or not any(s in runs[best] for s in seeds):
        return None
    return {"run": best, **_paired_against(runs, run, best, seeds, index)}


def row_stats(rows: Sequence[Mapping]) -> dict:
    """Mean ± sd over seeds of a row's metrics, GFLOPs and mean φ."""
    keys = (*COCO_KEYS, "gflops", "predictor_gflops", "mean_phi")
    return {k: mean_sd([r[k] for r in rows]) for k in keys}


def detectors(runs: Mapping) -> dict:
    """Every run's own row (multi-scale: its sweep rows) over seeds."""
    out = {}
    for run in recipes.RUNS:
        if not runs.get(run):
            continue
        cells = list(runs[run].values())
        entry = {"seeds": sorted(runs[run]), "role": recipes.RUNS[run].role,
                 "mode": recipes.RUNS[run].mode}
        if "own" in cells[0]["rows"]:
            entry["own"] = row_stats([c["rows"]["own"] for c in cells])
        entry["sweep"] = {k: row_stats([c["rows"]["sweep"][k] for c in cells])
                          for k in cells[0]["rows"]["sweep"]}
        out[run] = entry
    return out


def oracle_table(runs: Mapping, index: np.ndarray) -> dict:
    """Per detector: AP / GFLOPs / mean φ at own (predicted) φ, φ = 1, φ*, AP-optimal φ, and
    the AP-optimal oracle's gain over the detector's own choice (φ = 1 for multi-scale)."""
    out = {}
    for run in [r for r in recipes.RUNS if r in runs]:
        seeds = runs[run]
        cells = [seeds[s] for s in sorted(seeds)]
        entry = {}
        for key in ORACLE_COLUMNS:
            rows = [column(c, key) for c in cells]
            if all(r is not None for r in rows):
                entry[key] = {k: mean_sd([r[k] for r in rows])
                              for k in ("AP", "gflops", "mean_phi")}
        ref = "own" if "own" in entry else "phi1"
        gains = {s: paired_difference(column(seeds[s], "ap_optimal"), column(seeds[s], ref),
                                      index) for s in sorted(seeds)}
        entry["ap_optimal_gain"] = seed_summary({s: v for s, (v, _) in gains.items()},
                                                {s: r for s, (_, r) in gains.items()})
        entry["gain_over"] = ref
        out[run] = entry
    return out


def _paired(runs: Mapping, a: tuple[str, str], b: tuple[str, str], index: np.ndarray) -> dict:
    """seed_summary of column a[1] of run a[0] minus column b[1] of run b[0] (seeds with both)."""
    seeds = sorted(set(runs.get(a[0], {})) & set(runs.get(b[0], {})))
    d = {s: paired_difference(column(runs[a[0]][s], a[1]), column(runs[b[0]][s], b[1]), index)
         for s in seeds}
    return seed_summary({s: v for s, (v, _) in d.items()}, {s: r for s, (_, r) in d.items()})


def gap_analysis(runs: Mapping, index: np.ndarray) -> dict | None:
    """Where the elastic model's AP goes: the oracle gap (AP-optimal − predicted) next to the
    fixed detector's own gain from that oracle (its optimism), the predictor-fidelity gap
    (φ* − predicted), the target calibration (φ* − φ = 1), the detector (elastic at
    φ = 1 − fixed at φ = 1), the share of the φ = 1 → AP-optimal gap that the predicted φ
    closes, and the predictor's fidelity numbers."""
    if not runs.get("elastic"):
        return None
    el = [runs["elastic"][s] for s in sorted(runs["elastic"])]
    closes = []
    for c in el:
        span = c["rows"]["ap_optimal"]["AP"] - column(c, "phi1")["AP"]
        if span > 0:
            closes.append((c["rows"]["own"]["AP"] - column(c, "phi1")["AP"]) / span)
    fid = [c["elastic"]["fidelity"] for c in el]
    return {
        "oracle_gap": _paired(runs, ("elastic", "ap_optimal"), ("elastic", "own"), index),
        "fixed_oracle_gain": _paired(runs, ("fixed_1.00", "ap_optimal"), ("fixed_1.00", "own"),
                                     index),
        "fidelity_gap": _paired(runs, ("elastic", "loss_optimal"), ("elastic", "own"), index),
        "calibration": _paired(runs, ("elastic", "loss_optimal"), ("elastic", "phi1"), index),
        "predicted_vs_phi1": _paired(runs, ("elastic", "own"), ("elastic", "phi1"), index),
        "detector_at_phi1": _paired(runs, ("elastic", "phi1"), ("fixed_1.00", "phi1"), index),
        "closes_gap_share": mean_sd(closes),
        "pearson_u": mean_sd([f["pearson_u"] for f in fid if f.get("pearson_u") is not None]),
        "mae_u": mean_sd([f["mae_u"] for f in fid]),
        "spearman_phi_vs_median_side": mean_sd(
            [f["spearman_phi_vs_median_side"] for f in fid
             if f.get("spearman_phi_vs_median_side") is not None]),
        "by_regime": fid[0].get("by_regime", {}),
        "gamma": mean_sd([c["elastic"]["gamma"] for c in el]),
        "predictor_share": mean_sd([c["elastic"]["predictor_share"] for c in el]),
    }


def ablations(runs: Mapping, index: np.ndarray) -> list[dict]:
    """Elastic and every ablation trained: own row (mean over the run's seeds), γ, fidelity,
    AP against elastic (paired, at the seeds both have), compute saved and AP gain at equal
    GFLOPs against both fronts of the same seeds, and AP against the best single fixed
    resolution with the GFLOPs ratio (``vs_best_fixed``; ``vs_best_seeded_fixed`` the same
    against the best fixed run at the most seeds when that is another). The ablations run at
    the first seed; a run trained at more seeds (``elastic-lab bench --cells
    elastic_no_dist_loss_s1``) is averaged over them, and the elastic row covers the seeds of
    the ablations present."""
    elastic_runs = [r for r, spec in recipes.RUNS.items() if spec.mode == "elastic" and runs.get(r)]
    ablation_seeds = sorted({s for r in elastic_runs if r != "elastic" for s in runs[r]})
    means = _fixed_means(runs)
    best = _best_of(means)
    seeded = _best_seeded(runs, means) if means else None
    out = []
    for run in elastic_runs:
        seeds = sorted(runs[run])
        if run == "elastic":
            seeds = [s for s in ablation_seeds if s in runs[run]] or seeds[:1]
        cells = [runs[run][s] for s in seeds]
        own = [c["rows"]["own"] for c in cells]
        entry = {"run": run, "seed": seeds[0], "seeds": seeds, "note": recipes.RUNS[run].note,
                 "tau_max": recipes.RUNS[run].tau_max,
                 **{k: _mean(r[k] for r in own)
                    for k in ("AP", "AP50", "APs", "APl", "gflops", "mean_phi")},
                 "AP_sd": float(np.std([r["AP"] for r in own], ddof=1)) if len(own) > 1 else None,
                 "gamma": _mean(c["elastic"]["gamma"] for c in cells),
                 "pearson_u": _mean(c["elastic"]["fidelity"].get("pearson_u") for c in cells),
                 "spearman": _mean(c["elastic"]["fidelity"].get("spearman_phi_vs_median_side")
                                   for c in cells)}
        paired = [s for s in seeds if s in runs.get("elastic", {})]
        if run != "elastic" and paired:
            diffs = {s: paired_difference(runs[run][s]["rows"]["own"],
                                          runs["elastic"][s]["rows"]["own"], index)
                     for s in paired}
            entry["ap_minus_elastic"] = seed_summary({s: d[0] for s, d in diffs.items()},
                                                     {s: d[1] for s, d in diffs.items()})
        for base in ("fixed_front", "multiscale"):
            found = {s: compare_rows(runs[run][s]["rows"]["own"], rows, index)
                     for s in seeds for b, rows in baselines(runs, s).items() if b == base}
            if found:
                for key in ("compute_saved", "ap_gain"):
                    entry[f"{key}_vs_{base}"] = seed_summary(
                        {s: c[key] for s, c in found.items()},
                        {s: c["replicas"][key] for s, c in found.items()})
        entry["vs_best_fixed"] = _against_best_fixed(runs, run, best, seeds, index)
        entry["vs_best_seeded_fixed"] = (None if seeded == best else
                                         _against_best_fixed(runs, run, seeded, seeds, index))
        out.append(entry)
    return out


def _mean(values) -> float | None:
    """The mean of ``values`` (None when one is None)."""
    values = list(values)
    return None if any(v is None for v in values) else float(np.mean(values))


def targets(head: Mapping | None, gap: Mapping | None, latency: Mapping | None) -> list[dict]:
    """Issue 16's targets, each met / not met / not measurable yet."""
    none = {"mean": None, "interval": None}
    fixed = none if head is None else head["fixed_front"]["compute_saved"]
    multi = none if head is None else head["multiscale"]["compute_saved"]
    lat = None if latency is None else latency.get("latency_to_flops_saving")
    share = None if gap is None else gap["predictor_share"]["mean"]
    low = fixed["interval"][0] if fixed["interval"] else None
    return [
        target_check("fixed_front", "elastic reaches the fixed-resolution front's AP at ≤ 0.85× "
                     "its GFLOPs (compute saved ≥ 15 %), 95 % interval excluding zero saving",
                     fixed["mean"], fixed["mean"] is not None and fixed["mean"] >= FIXED_SAVING
                     and low is not None and low > 0, interval=fixed["interval"]),
        target_check("multiscale", "elastic reaches multi-scale's AP at ≤ 0.74× its GFLOPs "
                     "(compute saved ≥ 26 %)", multi["mean"],
                     multi["mean"] is not None and multi["mean"] >= MULTISCALE_SAVING,
                     interval=multi["interval"]),
        target_check("latency", "latency saving ≥ 0.8 × the FLOPs saving (paired, batch 1)",
                     lat, lat is not None and latency["flops_saved"] > 0
                     and lat >= LATENCY_RATIO,
                     flops_saved=None if latency is None else latency["flops_saved"]),
        target_check("predictor", "predictor ≤ 5 % of the detector's GFLOPs at φ = 1", share,
                     share is not None and share <= PREDICTOR_SHARE),
    ]




def stale_cells(cells: Mapping[str, Mapping]) -> list[str]:
    """Cells whose stored recipe differs from what recipes.py gives today (the recipe was
    changed after they were trained): delete their files to retrain them."""
    out = []
    for name, cell in cells.items():
        if name == LATENCY or "recipe" not in cell:
            continue
        c = parse_cell(name)
        make = recipes.smoke_recipe_config if cell.get("smoke") else recipes.recipe_config
        want = make(c.run, c.seed).recipe_dict()
        if json.loads(json.dumps(want)) != TrainConfig.stored_recipe(cell["recipe"]):
            out.append(name)
    return out


def latency_summary(cell: Mapping | None) -> dict | None:
    """The latency cell with today's statistics of its timings (bench_latency.
    summarize_latency), at its own size and at each of its ``other_sizes``, without the
    per-image rows."""
    if cell is None:
        return None

    def restated(part: Mapping) -> dict:
        if part.get("per_image"):
            part = {**part, **summarize_latency(part["per_image"], part["repeats"],
                                                part["warmup"])}
        return {k: v for k, v in part.items() if k != "per_image"}

    return {**restated(cell), "other_sizes": [restated(o) for o in cell.get("other_sizes", [])]}


def summarize(cells: Mapping[str, Mapping], expected: Sequence[str]) -> dict:
    """results.json from the cell files (see the module docstring)."""
    latency = latency_summary(cells.get(LATENCY))
    runs = by_run(cells)
    index = replica_index({n: c for n, c in cells.items() if n != LATENCY})
    missing = [n for n in expected if n not in cells]
    out = {"cells": {n: {"machine": c.get("machine"), "training": c.get("training"),
                         "training_time_complete": training_time_complete(c.get("training")),
                         "evaluation_seconds": c.get("evaluation_seconds")}
                     for n, c in cells.items()},
           "missing": missing, "stale": stale_cells(cells), "latency": latency}
    if index is None:
        out.update({"headline": None, "targets": targets(None, None, out["latency"]),
                    "ablations": [], "oracles": {},
                    "detectors": {}, "gap": None, "best_fixed": None})
        return out
    head = headline(runs, index)
    gap = gap_analysis(runs, index)
    out.update({"headline": head, "best_fixed": best_fixed(runs, index),
                "detectors": detectors(runs), "oracles": oracle_table(runs, index),
                "gap": gap, "ablations": ablations(runs, index),
                "targets": targets(head, gap, out["latency"]),
                "replicas": int(index.shape[0]), "num_images": int(index.shape[1]),
                "num_scales": len(next(c for n, c in cells.items()
                                       if n != LATENCY)["evaluation"]["scales"])})
    return out
