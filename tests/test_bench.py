"""The benchmark: compute saved two ways on hand-made points, and the whole pipeline in smoke
mode (same budget for every run, test split, report files, reuse of finished runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elastic_lab.bench import compare, lowest_scale_reaching
from elastic_lab.bench_report import markdown
from elastic_lab.cli import main


def _baseline(aps, gflops=(1.0, 2.0, 3.0, 4.0), ms=(10.0, 20.0, 30.0, 40.0)):
    return [{"scale": s, "AP": a, "gflops": g, "ms": t}
            for s, a, g, t in zip((0.5, 0.75, 1.0, 1.25), aps, gflops, ms)]


def test_compute_saved_at_the_lowest_scale_reaching_the_elastic_ap():
    base = _baseline((0.10, 0.20, 0.30, 0.30))
    elastic = {"AP": 0.25, "gflops": 2.0, "ms": 22.0}
    assert lowest_scale_reaching(base, 0.25)["scale"] == 1.0
    c = compare(elastic, base)
    assert c["lowest_scale_reaching_elastic_ap"] == 1.0
    assert c["compute_saved"] == pytest.approx(1 - 2.0 / 3.0)
    assert c["latency_saved"] == pytest.approx(1 - 22.0 / 30.0)
    assert c["latency_to_flops_saving"] == pytest.approx((8 / 30) / (1 / 3))
    # on the interpolated front the baseline reaches AP 0.25 at 2.5 GFLOPs
    assert c["compute_saved_interpolated"] == pytest.approx(1 - 2.0 / 2.5)
    assert c["baseline_ap_at_equal_gflops"] == pytest.approx(0.20)
    assert c["ap_gain_at_equal_gflops"] == pytest.approx(0.05)
    assert c["goal_met"]  # +0.05 AP at equal GFLOPs >= +0.035
    assert c["baseline_best_ap"] == 0.30


def test_goal_needs_the_best_ap_with_26_percent_fewer_gflops_or_35_ap_points():
    base = _baseline((0.28, 0.29, 0.30, 0.30))  # flat: no large AP gain at equal GFLOPs
    assert compare({"AP": 0.30, "gflops": 2.2, "ms": 25.0}, base)["goal_met"]   # -27 %
    near = compare({"AP": 0.30, "gflops": 2.3, "ms": 25.0}, base)               # -23 % only
    assert near["compute_saved"] == pytest.approx(1 - 2.3 / 3.0)
    assert near["ap_gain_at_equal_gflops"] < 0.035 and not near["goal_met"]
    worse = compare({"AP": 0.05, "gflops": 3.5, "ms": 35.0}, base)
    assert worse["ap_gain_at_equal_gflops"] == pytest.approx(0.05 - 0.30)
    assert worse["compute_saved"] == pytest.approx(1 - 3.5 / 1.0)  # reached at 0.5: costs more
    assert not worse["goal_met"]


def test_a_baseline_that_never_reaches_the_elastic_ap_saves_nothing_measurable():
    c = compare({"AP": 0.5, "gflops": 2.0, "ms": 20.0}, _baseline((0.1, 0.2, 0.3, 0.3)))
    assert c["lowest_scale_reaching_elastic_ap"] is None
    assert c["compute_saved"] is None and c["latency_saved"] is None
    assert c["ap_gain_at_equal_gflops"] == pytest.approx(0.3)


@pytest.fixture(scope="module")
def smoke_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--smoke", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_bench_smoke_trains_every_run_with_the_same_budget(smoke_bench):
    results = json.loads((smoke_bench / "results.json").read_text())
    runs = results["runs"]
    assert list(runs) == ["fixed", "multiscale", "elastic", "elastic_no_scale_loss",
                          "elastic_tau_max_1.25"]
    opts = {n: json.loads((smoke_bench / "runs" / n / "options.json").read_text())
            for n in runs}
    for key in ("max_steps", "batch_size", "seed", "base_size"):
        values = {json.dumps(_find(o, key)) for o in opts.values()}
        assert len(values) == 1, (key, values)
    assert _find(opts["elastic_no_scale_loss"], "use_scale_loss") is False
    assert _find(opts["elastic"], "use_scale_loss") is True
    assert _find(opts["elastic_tau_max_1.25"], "tau_max") == 1.25
    assert results["settings"]["split"] == "test"


def _find(tree, key):
    """The value of ``key`` anywhere in a nested options dict."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def test_bench_smoke_points_comparisons_and_report(smoke_bench):
    results = json.loads((smoke_bench / "results.json").read_text())
    runs = results["runs"]
    for name in ("fixed", "multiscale"):
        pts = runs[name]["points"]
        assert [p["scale"] for p in pts] == [0.75, 1.0]
        assert pts[0]["gflops"] < pts[1]["gflops"] and pts[0]["predictor_gflops"] == 0.0
    elastic = runs["elastic"]["points"][0]
    assert elastic["scale"] is None and elastic["predictor_gflops"] > 0
    assert elastic["gflops"] > elastic["predictor_gflops"]
    for name in ("multiscale", "fixed"):  # each comparison read off the points it compares
        c, base = results["comparisons"][name], runs[name]["points"]
        assert c["baseline_best_ap"] == max(p["AP"] for p in base)
        reached = [p for p in base if p["AP"] >= elastic["AP"]]
        if reached:
            hit = min(reached, key=lambda p: p["scale"])
            assert c["lowest_scale_reaching_elastic_ap"] == hit["scale"]
            assert c["compute_saved"] == pytest.approx(1 - elastic["gflops"] / hit["gflops"])
        else:
            assert c["lowest_scale_reaching_elastic_ap"] is None and c["compute_saved"] is None
        gflops, aps = zip(*sorted((p["gflops"], p["AP"]) for p in base))
        assert c["ap_gain_at_equal_gflops"] == pytest.approx(
            elastic["AP"] - np.interp(elastic["gflops"], gflops, np.maximum.accumulate(aps)))
    seed = results["seed_experiments"]
    assert set(seed["phi_vs_object_size"]) == {"elastic", "elastic_no_scale_loss",
                                               "elastic_tau_max_1.25"}
    for t in seed["phi_vs_object_size"].values():
        assert len(t["phi"]) == len(t["median_side"]) > 0
    assert [r["tau_max"] for r in seed["tau_max_sweep"]] == [1.25, 1.5]
    md = (smoke_bench / "results.md").read_text()
    for name in runs:
        assert f"| {name} |" in md
    assert "Compute saved" in md and "Speed against Hugging Face" in md
    html = (smoke_bench / "figures.html").read_text()
    assert html.count("plotly-graph-div") >= 4
    assert set(results["figures"]) == {"pareto_gflops", "pareto_ms", "phi_vs_object_size",
                                       "ap_by_size"}


def test_bench_reuses_finished_runs(smoke_bench):
    ckpts = sorted((smoke_bench / "runs").glob("*/checkpoint.pt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    first = json.loads((smoke_bench / "results.json").read_text())["runs"]
    assert main(["bench", "--smoke", "--out", str(smoke_bench), "--device", "cpu",
                 "--compare-hf", "no"]) == 0
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before
    results = json.loads((smoke_bench / "results.json").read_text())
    # a reused run reports the training time of the run that made it, not the reuse time
    assert {n: r["train_seconds"] for n, r in results["runs"].items()} == \
        {n: r["train_seconds"] for n, r in first.items()}
    assert results["speed_vs_hf"] == {"skipped": "--compare-hf no"}
    assert "Not measured: --compare-hf no" in markdown(results)
