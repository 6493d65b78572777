"""Paired statistics of the benchmark, computed from cell files alone.

Every row that a comparison reads holds ``bootstrap_ap``: its AP on the resamples of
``ap_subsets.bootstrap_indices(n, replicas, seed)``, the same resamples in every cell. A
comparison is therefore computed once on the full test set (the estimate) and once per
replica b with every row at its replica b (the paired bootstrap); the GFLOPs of a row on
replica b are the mean of its per-image GFLOPs over that resample. Over seeds, the estimate is
summarised by mean ± sd, and the interval of the seed mean comes from the seed means of the
replicas (test-image sampling). Seeds are the other source of spread: ``seed_interval`` is the
Student-t interval of the mean over the seeds' estimates (training runs as the sample; wide
with few seeds, and it already holds the test-image noise of each seed's estimate).

Compute saved at equal AP reads the baseline's *interpolated* Pareto front
(``analysis.compare_to_baseline``). When the model's AP is above the front's best, the front
never reaches it: the saving is +inf, in the estimate and in the replicas (the model beats
every baseline point; a lower interval bound stays meaningful).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from .analysis import compare_to_baseline
from .ap_subsets import bootstrap_indices

LEVEL = 0.95


def replica_index(cells: Mapping[str, Mapping]) -> np.ndarray | None:
    """The bootstrap resamples shared by ``cells`` (their ``evaluation`` entries), or None
    when there are no cells; ValueError when the cells were not evaluated on the same images
    with the same resamples (then they cannot be paired)."""
    keys = {(tuple(c["evaluation"]["image_ids"]), c["evaluation"]["bootstrap"]["replicas"],
             c["evaluation"]["bootstrap"]["seed"]) for c in cells.values() if "evaluation" in c}
    if not keys:
        return None
    if len(keys) > 1:
        raise ValueError("the cells were evaluated on different images or resamples: "
                         "their bootstrap replicas cannot be paired")
    ids, replicas, seed = keys.pop()
    return bootstrap_indices(len(ids), replicas, seed)


def interval(values: Sequence[float], level: float = LEVEL) -> list[float] | None:
    """Percentile interval (order statistics, so +inf stays +inf) of the finite-or-inf
    ``values``; None when empty."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return [float(lo), float(hi)]


def row_replicas(row: Mapping, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP [R], GFLOPs [R]) of a row on every resample."""
    if "bootstrap_ap" not in row:
        raise ValueError("a compared row has no bootstrap replicas")
    gflops = np.asarray(row["gflops_per_image"], np.float64)[index].mean(axis=1)
    return np.asarray(row["bootstrap_ap"], np.float64), gflops


def compare_rows(model: Mapping, baseline: Sequence[Mapping], index: np.ndarray) -> dict:
    """The model row against the baseline rows' interpolated front: estimate and replicas of
    the compute saved at equal AP and of the AP gain at equal GFLOPs."""
    est = compare_to_baseline([{"ap": r["AP"], "gflops": r["gflops"]} for r in baseline],
                              model["AP"], model["gflops"])
    m_ap, m_g = row_replicas(model, index)
    base = [row_replicas(r, index) for r in baseline]
    saved, gain = np.empty(len(m_ap)), np.empty(len(m_ap))
    for b in range(len(m_ap)):
        c = compare_to_baseline([{"ap": a[b], "gflops": g[b]} for a, g in base], m_ap[b], m_g[b])
        saved[b] = np.inf if c["compute_saved"] is None else c["compute_saved"]
        gain[b] = c["ap_gain"]
    saved_est = np.inf if est["compute_saved"] is None else est["compute_saved"]
    return {"compute_saved": saved_est, "ap_gain": est["ap_gain"],
            "baseline_gflops_at_equal_ap": est["baseline_gflops_at_equal_ap"],
            "baseline_ap_at_equal_gflops": est["baseline_ap_at_equal_gflops"],
            "extrapolated": est["extrapolated"], "model_ap": model["AP"],
            "model_gflops": model["gflops"],
            "replicas": {"compute_saved": saved, "ap_gain": gain}}


def seed_summary(values: Mapping[int, float | None], replicas: Mapping[int, np.ndarray]
                 ) -> dict:
    """One quantity over seeds: per seed its estimate and interval; mean ± sd of the
    estimates (mean None when a seed's estimate is None; sd None for one seed or an infinite
    estimate), the interval of the seed mean from the seed-averaged replicas and
    ``seed_interval``, the t interval over seeds (None unless sd is defined)."""
    seeds = sorted(values)
    if not seeds:
        return {"seeds": [], "per_seed": {}, "mean": None, "sd": None, "interval": None,
                "seed_interval": None}
    est = [values[s] for s in seeds]
    defined = all(v is not None for v in est)
    mean_rep = np.mean(np.stack([np.asarray(replicas[s], np.float64) for s in seeds]), axis=0)
    sd = (float(np.std(est, ddof=1)) if defined and len(est) > 1 and np.all(np.isfinite(est))
          else None)
    return {"seeds": seeds,
            "per_seed": {str(s): {"value": values[s], "interval": interval(replicas[s])}
                         for s in seeds},
            "mean": float(np.mean(est)) if defined else None,
            "sd": sd,
            "interval": interval(mean_rep),
            "seed_interval": None if sd is None else t_interval(est)}


def t_interval(values: Sequence[float], level: float = LEVEL) -> list[float]:
    """Student-t interval of the mean of ``values`` (n ≥ 2)."""
    v = np.asarray(values, np.float64)
    low, high = stats.t.interval(level, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return [float(low), float(high)]


def paired_difference(a: Mapping, b: Mapping, index: np.ndarray, key: str = "AP") -> tuple:
    """(estimate, replicas) of row a's AP minus row b's (``key`` "AP"), or of the GFLOPs ratio
    a / b (``key`` "gflops_ratio")."""
    a_ap, a_g = row_replicas(a, index)
    b_ap, b_g = row_replicas(b, index)
    if key == "gflops_ratio":
        return a["gflops"] / b["gflops"], a_g / b_g
    return a["AP"] - b["AP"], a_ap - b_ap


def mean_sd(values: Sequence[float]) -> dict:
    """{"mean", "sd" (None for one value), "n"}."""
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)) if v else None,
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v)}


def target_check(name: str, text: str, value: float | None, met: bool | None,
                 **details) -> dict:
    """A target of the issue as a plain record; ``met`` None: not measurable yet (cells
    missing)."""
    return {"name": name, "target": text, "value": value,
            "met": None if value is None or met is None else bool(met), **details}
