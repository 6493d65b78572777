"""The benchmark (issue 16): one recipe; compute saved read off a hand-made front with a known
answer; paired replicas; the cell order; the whole pipeline in smoke mode (cells, evaluation,
bootstrap, latency, report), a cell not retrained when its file exists, a stopped run resumed,
and the report of an empty benchmark."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import elastic_lab.train as train_module
from elastic_lab import bench, experiments, recipes
from elastic_lab.ap_subsets import SubsetAP, bootstrap_indices
from elastic_lab.bench_cells import (
    FIXED_FRONT,
    FIXED_RUNS,
    LATENCY,
    MAIN_RUNS,
    Cell,
    all_cells,
    parse_cell,
    read_cells,
    train_cell,
    training_time_complete,
)
from elastic_lab.bench_eval import SWEEP, loss_options_of
from elastic_lab.bench_figures import pareto, save_figures
from elastic_lab.bench_latency import processing_size, summarize_latency
from elastic_lab.bench_report import ablation_lines, cell_lines, write_report
from elastic_lab.bench_stats import compare_rows, interval, replica_index, seed_summary
from elastic_lab.bench_summary import stale_cells, summarize
from elastic_lab.bench_text import (
    ablation_findings,
    best_fixed,
    ci,
    fmt_ap,
    fmt_dap,
    latency_finding,
    multiscale_never_reaches,
    variants_above_best_fixed,
    verdict,
)
from elastic_lab.checkpoint import load_checkpoint
from elastic_lab.cli import main
from elastic_lab.config import smoke_config
from elastic_lab.data.coco import CocoDetection
from elastic_lab.experiments import first_images, trained_seconds
from elastic_lab.models.build import build_model, load_model
from elastic_lab.oracles import ap_optimal, detect_at, loss_optimal
from elastic_lab.runtime import split_paths
from elastic_lab.train import add_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the recipe
def test_the_recipe_is_the_command_line_of_its_constants():
    """recipe_config("elastic") is what `elastic-lab train` builds from the recipe's flags (the
    values are read from recipes.py, so the lead can change them there alone)."""
    r = recipes
    argv = ["--data", r.DATA, "--out", "runs/elastic", "--mode", "elastic",
            "--max-steps", r.MAX_STEPS, "--epochs", r.EPOCHS, "--batch-size", r.BATCH_SIZE,
            "--lr", r.LR, "--lr-drop", r.LR_DROP, "--num-queries", r.NUM_QUERIES,
            "--hflip", r.HFLIP, "--seed", 0, "--workers", r.WORKERS, "--log-every", r.LOG_EVERY,
            "--base-size", r.BASE_SIZE, "--anchor-cells", r.ANCHOR_CELLS,
            "--tau-min", r.TAU_MIN, "--tau-max", r.TAU_MAX,
            "--predictor-trunk", r.PREDICTOR_TRUNK, "--predictor-norm", r.PREDICTOR_NORM,
            "--thumb-size", r.THUMB_SIZE, "--predictor-size-bins", r.PREDICTOR_SIZE_BINS,
            "--pretrain-steps", r.PRETRAIN_STEPS, "--pretrain-batch-size",
            r.PRETRAIN_BATCH_SIZE, "--pretrain-lr", r.PRETRAIN_LR,
            "--distribution-loss", r.DISTRIBUTION_LOSS, "--compute-budget", r.COMPUTE_BUDGET,
            "--batching", r.BATCHING] + (
                ["--backbone-norm", r.BACKBONE_NORM] if r.BACKBONE_NORM else [])
    argv = [str(a) for a in argv] + (["--freeze-stem"] if r.FREEZE_STEM else []) + (
        ["--amp"] if r.AMP else [])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert recipes.recipe_config("elastic").to_dict() == \
        config_from_args(parser.parse_args(argv)).to_dict()


def _without(d: dict, *paths: str) -> dict:
    d = json.loads(json.dumps(d))
    for path in paths:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node[p]
        node.pop(leaf)
    return d


def test_runs_differ_only_in_what_they_are_named_after():
    ref = recipes.recipe_config("fixed_1.00").to_dict()
    assert set(FIXED_FRONT) < set(FIXED_RUNS)  # the studies past the front are fixed runs too
    # the front: main cells, in order of φ, up to the sweep's top, so that the multi-scale
    # sweep and the front span the same range
    phis = [recipes.RUNS[r].fixed_phi for r in FIXED_FRONT]
    assert set(FIXED_FRONT) <= set(MAIN_RUNS) and phis == sorted(phis) and phis[-1] == SWEEP[-1]
    assert all(recipes.RUNS[r].fixed_phi > SWEEP[-1] for r in set(FIXED_RUNS) - set(FIXED_FRONT))
    for run in FIXED_RUNS:
        c = recipes.recipe_config(run, out="x")
        assert c.model.fixed_phi == recipes.RUNS[run].fixed_phi
        assert _without(c.to_dict(), "out", "model.fixed_phi") == _without(
            ref, "out", "model.fixed_phi")
    assert _without(recipes.recipe_config("multiscale").to_dict(), "out", "model.mode") == \
        _without(ref, "out", "model.mode")
    el = recipes.recipe_config("elastic").to_dict()
    changed = {"elastic_no_scale_loss": "loss.use_scale_loss",
               "elastic_no_dist_loss": "loss.use_distribution_loss",
               "elastic_paper_dist": "loss.distribution",
               "elastic_tau_max_1.25": "model.tau_max", "elastic_tau_max_2": "model.tau_max",
               "elastic_budget_0.9": "loss.compute_budget",
               "elastic_budget_1.0": "loss.compute_budget"}
    assert set(changed) == {r for r, s in recipes.RUNS.items()
                            if s.role in ("ablation", "study") and s.mode == "elastic"}
    assert recipes.recipe_config("elastic_budget_0.9").loss.compute_budget == 0.9
    # studies are trained only when named: not cells of the benchmark, never "missing"
    studies = {r for r, s in recipes.RUNS.items() if s.role == "study"}
    assert {"elastic_budget_0.9", "fixed_1.75"} <= studies
    assert not any(parse_cell(c).run in studies for c in all_cells() if c != LATENCY)
    assert parse_cell("elastic_budget_0.9_s1") == Cell("elastic_budget_0.9", 1)
    assert parse_cell("fixed_1.75_s0") == Cell("fixed_1.75", 0)
    for run, field in changed.items():
        c = recipes.recipe_config(run).to_dict()
        assert _without(c, "out", field) == _without(el, "out", field), run
        assert c != {**el, "out": c["out"]}, run
    s1 = recipes.recipe_config("elastic", seed=1).to_dict()
    assert _without(s1, "train.seed") == _without(el, "train.seed") and s1["train"]["seed"] == 1
    assert recipes.run_name("fixed") == "fixed_1.00" and recipes.run_name("elastic") == "elastic"


def test_cells_are_named_and_ordered_with_the_first_seed_first():
    cells = all_cells()
    first = [f"{r}_s0" for r in MAIN_RUNS]
    assert cells[:len(first)] == first and cells[len(first)] == LATENCY
    assert cells[-5:] == [f"{r}_s0" for r, s in recipes.RUNS.items() if s.role == "ablation"]
    assert len(cells) == len(MAIN_RUNS) * 3 + 5 + 1 and len(set(cells)) == len(cells)
    assert parse_cell("fixed_1.25_s2").run == "fixed_1.25" and parse_cell("elastic_s1").seed == 1
    for bad in ("elastic", "fixed_2.00_s0", "elastic_sx"):
        with pytest.raises(ValueError, match="not a benchmark cell"):
            parse_cell(bad)


# ----------------------------------------------------------------------------- statistics
def _row(ap: float, gflops: float, replicas, n: int = 4) -> dict:
    return {"AP": ap, "gflops": gflops, "gflops_per_image": [gflops] * n,
            "bootstrap_ap": list(replicas)}


def test_compute_saved_is_read_off_the_interpolated_front_per_replica():
    index = bootstrap_indices(4, 3, 0)
    front = [_row(0.10, 1.0, [0.10] * 3), _row(0.20, 2.0, [0.20] * 3),
             _row(0.30, 4.0, [0.30] * 3)]
    # the front reaches AP 0.25 at 3 GFLOPs (halfway from 2 to 4): 1 - 2.4 / 3 = 20 % saved;
    # at 2.4 GFLOPs it scores 0.22: +0.03 AP. Replica 1: above the front's best (never
    # reached: +inf); replica 2: below its cheapest point (reached at 1 GFLOP: -140 %).
    model = _row(0.25, 2.4, [0.25, 0.35, 0.05])
    c = compare_rows(model, front, index)
    assert c["compute_saved"] == pytest.approx(0.2)
    assert c["ap_gain"] == pytest.approx(0.03)
    assert c["baseline_gflops_at_equal_ap"] == pytest.approx(3.0)
    saved = c["replicas"]["compute_saved"]
    assert saved[0] == pytest.approx(0.2) and np.isinf(saved[1]) and saved[2] == pytest.approx(-1.4)
    assert interval(saved) == [pytest.approx(-1.4), np.inf]
    assert compare_rows(_row(0.40, 2.0, [0.4] * 3), front, index)["compute_saved"] == np.inf


def test_replica_gflops_follow_the_resampled_images():
    index = np.array([[0, 0, 0, 0], [1, 1, 2, 3]])
    model = {"AP": 0.2, "gflops": 2.5, "gflops_per_image": [1.0, 2.0, 3.0, 4.0],
             "bootstrap_ap": [0.2, 0.2]}
    front = [_row(0.1, 1.0, [0.1, 0.1]), _row(0.3, 3.0, [0.3, 0.3])]
    saved = compare_rows(model, front, index)["replicas"]["compute_saved"]
    assert saved == pytest.approx([1 - 1.0 / 2.0, 1 - 2.75 / 2.0])  # mean GFLOPs 1 and 2.75


def test_paired_replicas_cancel_what_the_rows_share():
    """A model equal to a front point saves exactly 0 on every replica when the replicas are
    paired (the same resample everywhere); shuffling one row's replicas (unpaired) does not."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 0.02, 200)  # the resample's effect, common to every row
    index = bootstrap_indices(4, 200, 0)
    front = [_row(a, g, a + shared) for a, g in ((0.1, 1.0), (0.2, 2.0), (0.3, 4.0))]
    paired = compare_rows(_row(0.2, 2.0, 0.2 + shared), front, index)
    assert np.allclose(paired["replicas"]["compute_saved"], 0.0)
    unpaired = compare_rows(_row(0.2, 2.0, 0.2 + rng.permutation(shared)), front, index)
    lo, hi = interval(unpaired["replicas"]["compute_saved"])
    assert lo < -0.05 and hi > 0.05


def test_cells_of_other_resamples_cannot_be_paired():
    ev = {"image_ids": [1, 2, 3], "bootstrap": {"replicas": 5, "seed": 0}}
    cells = {"a_s0": {"evaluation": ev}, "b_s0": {"evaluation": ev}}
    assert (replica_index(cells) == bootstrap_indices(3, 5, 0)).all()
    cells["b_s0"] = {"evaluation": {**ev, "bootstrap": {"replicas": 5, "seed": 1}}}
    with pytest.raises(ValueError, match="cannot be paired"):
        replica_index(cells)


# ----------------------------------------------------------------------------- smoke pipeline
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--smoke", "--out", str(out), "--device", "cpu"]) == 0
    return out, bench.smoke_options(str(out))


def test_smoke_bench_writes_one_small_file_per_cell(smoke):
    out, opts = smoke
    cells = read_cells(out / "cells")
    assert sorted(cells) == sorted(bench.expected_cells(opts))
    for name, cell in cells.items():
        assert (out / "cells" / f"{name}.json").stat().st_size < 150_000
        assert cell["machine"]["cpu"] and cell["machine"]["torch"] and cell["split"] == "test"
        if name == LATENCY:
            continue
        c = parse_cell(name)
        assert cell["recipe"] == json.loads(json.dumps(recipes.smoke_recipe_config(
            c.run, c.seed, str(out / "runs" / name), opts.data, "cpu").to_dict()))
        assert cell["training"]["steps"] == recipes.SMOKE_STEPS
        rows = cell["rows"]
        assert list(rows["sweep"]) == ["0.75", "1", "1.25"]
        for key in ("loss_optimal", "ap_optimal"):
            assert len(rows[key]["bootstrap_ap"]) == opts.replicas
        assert len(rows["sweep"]["1"]["bootstrap_ap"]) == opts.replicas
        mode = recipes.RUNS[c.run].mode
        if mode == "fixed":  # its own φ: the sweep's row where the sweep has it (smoke: ≤ 1.25)
            phi = recipes.RUNS[c.run].fixed_phi
            if f"{phi:g}" in rows["sweep"]:
                assert rows["own"] == rows["sweep"][f"{phi:g}"]
            else:
                assert rows["own"]["mean_phi"] == phi and rows["own"]["bootstrap_ap"]
        elif mode == "multiscale":
            assert "own" not in rows
            assert all("bootstrap_ap" in r for r in rows["sweep"].values())
        else:
            own = rows["own"]
            assert own["predictor_gflops"] > 0
            assert own["gflops"] == pytest.approx(own["detector_gflops"] + own["predictor_gflops"],
                                                  abs=1e-3)
            assert len(cell["elastic"]["phi_vs_size"]["phi"]) == opts.eval_images
            assert 0 < cell["elastic"]["predictor_share"] < 1


def test_the_gpu_script_writes_each_finished_cell_where_the_device_tool_returns_it(tmp_path):
    """scripts/gpu_cells.sh, run here on the CPU with the smoke recipe: the machine line, the
    CUDA tests' exit status, each cell's status and its file copied to $OUT (the folder the
    device tool brings back), the same as the benchmark folder's."""
    out, bench_out = tmp_path / "out", tmp_path / "bench"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "BENCH_OUT": str(bench_out),
           "BENCH_ARGS": "--smoke --seeds 0", "WHEELS": str(tmp_path / "no_wheels"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "scripts/gpu_cells.sh", "fixed_1.00_s0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    lines = (out / "gpu.txt").read_text().splitlines()
    assert lines[0].startswith(torch.__version__)
    assert "tests/test_cuda.py: exit 0" in lines and "fixed_1.00_s0: exit 0" in lines
    cell = json.loads((out / "fixed_1.00_s0.json").read_text())
    assert cell == json.loads((bench_out / "cells" / "fixed_1.00_s0.json").read_text())
    assert cell["machine"]["device"] == "cpu" and cell["machine"]["amp"] is True
    if not torch.cuda.is_available():
        assert "skipped" in (out / "test_cuda.log").read_text()


def _smoke_model(out, opts, cell):
    evaluated = read_cells(out / "cells")[cell]["evaluated"]  # calibrated.pt: many-scale runs
    assert evaluated == ("checkpoint.pt" if cell.startswith("fixed") else "calibrated.pt")
    model, meta = load_model(out / "runs" / cell / evaluated, "cpu")
    image_dir, ann = split_paths(opts.data, "test")
    return model, meta, first_images(CocoDetection(image_dir, ann, categories=meta["categories"]),
                                     opts.eval_images)


def test_smoke_rows_are_the_package_oracles_on_the_shared_resamples(smoke):
    out, opts = smoke
    cells = read_cells(out / "cells")
    for name in ("fixed_1.00_s0", "elastic_s0"):
        model, meta, ds = _smoke_model(out, opts, name)
        rows = cells[name]["rows"]
        assert rows["loss_optimal"]["AP"] == pytest.approx(
            loss_optimal(model, ds, loss_options_of(model, meta))["AP"], abs=1e-5)
        assert rows["ap_optimal"]["AP"] == pytest.approx(
            ap_optimal(model, ds, opts.scales)["AP"], abs=1e-5)
    model, _, ds = _smoke_model(out, opts, "fixed_1.00_s0")
    index = bootstrap_indices(len(ds), opts.replicas, 0)
    expected = SubsetAP(ds, detect_at(model, ds, [1.0] * len(ds))).bootstrap(index)
    assert cells["fixed_1.00_s0"]["rows"]["own"]["bootstrap_ap"] == pytest.approx(expected,
                                                                                 abs=1e-5)
    assert (replica_index({n: c for n, c in cells.items() if n != LATENCY}) == index).all()


def test_smoke_latency_is_paired_and_set_beside_the_flops(smoke):
    out, opts = smoke
    lat = json.loads((out / "cells" / "latency.json").read_text())
    assert (lat["model"], lat["reference"]) == ("elastic_s0", "fixed_1.00_s0")
    assert lat["images"] == len(lat["per_image"]) == opts.latency_images
    assert lat["repeats"] == opts.latency_repeats and lat["batch_size"] == 1
    ratios = [r["ratio"] for r in lat["per_image"]]
    assert lat["median_ratio"] == pytest.approx(float(np.median(ratios)), abs=1e-4)
    # the saving is a ratio of totals, as the FLOPs saving is
    total = sum(r["ms"] for r in lat["per_image"]) / sum(r["reference_ms"] for r in lat["per_image"])
    assert lat["latency_saved"] == pytest.approx(1 - total, abs=1e-4)
    low, high = lat["latency_saved_interval"]
    assert low <= lat["latency_saved"] <= high
    flops = 1 - sum(r["gflops"] for r in lat["per_image"]) / sum(
        r["reference_gflops"] for r in lat["per_image"])
    assert lat["flops_saved"] == pytest.approx(flops, abs=1e-3)
    # where the time goes: the detector alone at the same φ, and the predictor's remainder
    for r in lat["per_image"]:
        assert 0 < r["detector_gflops"] < r["gflops"]  # the predictor adds FLOPs
        assert r["detector_ratio"] == pytest.approx(r["detector_ms"] / r["reference_ms"],
                                                    rel=1e-3)
    assert lat["predictor"]["median_ms"] == pytest.approx(float(np.median(
        [r["ms"] - r["detector_ms"] for r in lat["per_image"]])), abs=1e-3)
    assert lat["detector"]["flops_saved"] > lat["flops_saved"]


def test_smoke_latency_at_another_size_keeps_each_images_phi_and_scales_only_the_detector(
        smoke):
    out, opts = smoke
    lat = json.loads((out / "cells" / "latency.json").read_text())
    (other,) = lat["other_sizes"]
    assert other["base_size"] == opts.latency_base_sizes[0] > lat["base_size"]
    assert other["max_size"] == (None if lat["max_size"] is None else
                                 round(lat["max_size"] * other["base_size"] / lat["base_size"]))
    assert other["repeats"] == opts.latency_repeats
    for small, large in zip(lat["per_image"], other["per_image"], strict=True):
        assert large["image_id"] == small["image_id"] and large["phi"] == small["phi"]
        assert large["reference_gflops"] > 1.5 * small["reference_gflops"]
        assert large["detector_gflops"] > 1.5 * small["detector_gflops"]
        # the predictor sees the same thumbnail whatever size the detector works at
        assert large["gflops"] - large["detector_gflops"] == pytest.approx(
            small["gflops"] - small["detector_gflops"], abs=2e-4)
    results = json.loads((out / "results.json").read_text())
    (summary,) = results["latency"]["other_sizes"]
    assert "per_image" not in summary and summary["base_size"] == other["base_size"]
    assert summary["latency_saved"] == pytest.approx(other["latency_saved"], abs=1e-4)
    report = (out / "results.md").read_text()
    assert f"| {other['base_size']} | " in report and f"| {lat['base_size']} (trained) | " in report


def test_processing_size_is_restored_even_when_the_timing_fails():
    model = replace(smoke_config("data", "out", "elastic").model, max_size=107)
    a = build_model(model, num_classes=2)
    b = build_model(replace(model, mode="fixed"), num_classes=2)
    with pytest.raises(RuntimeError, match="stop"), processing_size((a, b), 128):
        assert (a.base_size, a.max_size, b.base_size) == (128, 214, 128)
        assert a.sizes([(64, 64)], torch.tensor([1.0])) == [(128, 128)]
        raise RuntimeError("stop")
    assert (a.base_size, a.max_size, b.base_size, b.max_size) == (64, 107, 64, 107)


def test_the_latency_sizes_of_the_command_line():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)

    def sizes(*argv: str) -> tuple[int, ...]:
        return bench.options_from_args(parser.parse_args(list(argv))).latency_base_sizes

    assert sizes() == bench.BenchOptions.latency_base_sizes == (512, 800)
    assert sizes("--smoke") == bench.smoke_options().latency_base_sizes
    assert sizes("--latency-sizes", "384") == (384,)
    assert sizes("--latency-sizes") == ()  # the trained size only
    with pytest.raises(SystemExit, match=r"--latency-sizes.*\[16\]"):
        sizes("--latency-sizes", "512", "16")


def test_latency_saving_is_a_ratio_of_totals_like_the_flops_saving():
    # nine cheap images save 40 % each, one heavy image costs twice the fixed time: the median
    # per-image ratio (0.6) says "40 % saved", the totals say the subset took longer
    rows = [{"ms": 6.0, "reference_ms": 10.0, "detector_ms": 4.0, "gflops": 0.6,
             "reference_gflops": 1.0, "detector_gflops": 0.55} for _ in range(9)]
    rows.append({"ms": 200.0, "reference_ms": 100.0, "detector_ms": 190.0, "gflops": 25.0,
                 "reference_gflops": 10.0, "detector_gflops": 24.95})
    lat = summarize_latency(rows, repeats=3, warmup=1)
    assert lat["median_ratio"] == pytest.approx(0.6)
    assert lat["total_ratio"] == pytest.approx(254 / 190, abs=1e-4)
    assert lat["latency_saved"] == pytest.approx(1 - 254 / 190, abs=1e-4)
    assert lat["latency_saved"] < 0
    assert lat["flops_saved"] == pytest.approx(1 - 30.4 / 19, abs=1e-4)
    assert lat["latency_to_flops_saving"] == pytest.approx(
        (1 - 254 / 190) / (1 - 30.4 / 19), abs=1e-3)
    assert lat["detector"]["latency_saved"] == pytest.approx(1 - 226 / 190, abs=1e-4)
    assert lat["predictor"]["share_of_reference_ms"] == pytest.approx(28 / 190, abs=1e-4)
    low, high = lat["total_ratio_interval"]
    assert low < lat["total_ratio"] < high
    # detector time = intercept + slope · GFLOPs through (0.55, 4) and (24.95, 190)
    slope = (190 - 4) / (24.95 - 0.55)
    assert lat["detector"]["fit_ms_per_gflop"] == pytest.approx(slope, abs=1e-3)
    assert lat["detector"]["fit_intercept_ms"] == pytest.approx(4 - 0.55 * slope, abs=1e-3)


def test_smoke_report_is_a_function_of_the_cell_files(smoke):
    out, opts = smoke
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == [] and results["stale"] == []
    assert [t["name"] for t in results["targets"]] == ["fixed_front", "multiscale", "latency",
                                                       "predictor"]
    head = results["headline"]["fixed_front"]["compute_saved"]
    assert head["seeds"] == [0] and len(head["interval"]) == 2
    md = (out / "results.md").read_text()
    for section in ("## Headline", "## Targets of issue 16", "## Oracles", "## Ablations",
                    "## Latency", "**Best single fixed resolution**",
                    f"Missing cells (0 of {len(bench.expected_cells(opts))})"):
        assert section in md, section
    assert (out / "figures.html").read_text().count("plotly-graph-div") >= 4
    before = (out / "results.json").read_text()
    (out / "results.json").unlink()
    assert main(["bench", "--smoke", "--out", str(out), "--report-only"]) == 0
    assert (out / "results.json").read_text() == before


def test_a_cell_with_a_file_is_not_retrained_and_one_without_is_only_evaluated(smoke,
                                                                                monkeypatch):
    out, _ = smoke
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoint.pt")}
    with monkeypatch.context() as m:
        m.setattr(bench, "run_cell", lambda *a: pytest.fail(f"run_cell{a[1:]} called"))
        assert main(["bench", "--smoke", "--out", str(out), "--device", "cpu"]) == 0
    (out / "cells" / "fixed_1.25_s0.json").unlink()
    calls = []
    real_train = experiments.train
    monkeypatch.setattr(experiments, "train", lambda c: calls.append(c) or real_train(c))
    assert main(["bench", "--smoke", "--out", str(out), "--device", "cpu",
                 "--cells", "fixed_1.25_s0,elastic_s0"]) == 0
    assert calls == [] and (out / "cells" / "fixed_1.25_s0.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts


def test_a_stopped_cell_run_resumes_instead_of_restarting(tmp_path, synth_dir, monkeypatch):
    config = recipes.smoke_recipe_config("fixed_1.00", 0, str(tmp_path / "run"), str(synth_dir),
                                         "cpu")
    config = replace(config, train=replace(config.train, max_steps=4, pool_batches=1))
    real_save = train_module.save_run_checkpoint

    def save_then_stop(path, state, **kw):
        if state.step == 2:
            time.sleep(0.3)  # time this session spends before its last checkpoint
        real_save(path, state, **kw)
        if state.step == 2:
            raise KeyboardInterrupt  # or killed: nothing after the checkpoint is recorded

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_run_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train_cell(config)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    killed = load_checkpoint(ckpt)
    assert killed["step"] == 2 and killed["seconds"] >= 0.3
    assert "seconds" not in json.loads((tmp_path / "run" / experiments.RUN_STAMP).read_text())
    resumed = []
    real_train = experiments.train
    monkeypatch.setattr(experiments, "train", lambda c: resumed.append(c.resume) or real_train(c))
    _, summary = train_cell(config)
    assert resumed == [True] and summary["steps"] == 4 == load_checkpoint(ckpt)["step"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert trained_seconds(ckpt) >= killed["seconds"] >= 0.3  # the first session counts
    train_cell(config)  # finished: reused, not trained again
    assert resumed == [True]


def test_a_recorded_training_time_that_cannot_cover_its_steps_is_not_reported_as_one():
    """A cell whose mean rate beats its own logged intervals lost a killed session's seconds:
    the cells table says n/a with the reason instead of an impossible speed."""
    ok = {"steps": 10, "seconds": 100.0, "images_per_s": 0.8, "logged_images_per_s_median": 1.0}
    lost = {**ok, "seconds": 5.0, "images_per_s": 16.0}
    assert training_time_complete(ok) is True and training_time_complete(lost) is False
    assert training_time_complete(None) is None
    summary = {"cells": {n: {"machine": None, "training": t, "evaluation_seconds": 60.0,
                             "training_time_complete": training_time_complete(t)}
                         for n, t in (("fixed_1.00_s0", ok), ("fixed_1.00_s1", lost))},
               "missing": [], "stale": []}
    text = "\n".join(cell_lines(summary, ["fixed_1.00_s0", "fixed_1.00_s1"]))
    assert "| fixed_1.00_s0 | ? | 1.7 | 10 | 0.8 | 1.0 |" in text
    assert "| fixed_1.00_s1 | ? | n/a † | 10 | n/a † | 1.0 |" in text
    assert "`fixed_1.00_s1` (0.1 min recorded, 16.0 images/s against 1.0 in its own" in text


# ----------------------------------------------------------------------------- empty / stale
def test_the_report_of_an_empty_benchmark_lists_every_missing_cell(tmp_path):
    results = write_report(tmp_path, all_cells(), png=False)
    assert results["missing"] == all_cells() and results["headline"] is None
    md = (tmp_path / "results.md").read_text()
    assert "No (run, seed) cell has been trained yet" in md
    assert f"Missing cells ({len(all_cells())} of {len(all_cells())})" in md
    assert all(f"`{c}`" in md for c in all_cells())


def test_a_cell_of_an_older_recipe_is_flagged(smoke):
    out, _ = smoke
    cells = read_cells(out / "cells")
    assert stale_cells(cells) == []
    cells["elastic_s0"] = {**cells["elastic_s0"], "recipe": {
        **cells["elastic_s0"]["recipe"], "train": {**cells["elastic_s0"]["recipe"]["train"],
                                                   "lr": 1.0}}}
    assert stale_cells(cells) == ["elastic_s0"]
    # an option added after a cell was trained takes the value that cell trained with: fixed
    # runs were grouped before `batching` existed (not stale), elastic runs are mixed now
    older = read_cells(out / "cells")
    for name in ("fixed_1.00_s0", "elastic_s0"):
        older[name] = {**older[name], "recipe": json.loads(json.dumps(older[name]["recipe"]))}
        del older[name]["recipe"]["train"]["batching"]
    assert stale_cells(older) == ["elastic_s0"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="kaleido needs a Chromium")
def test_figures_render_to_png_offline(tmp_path):
    """kaleido loads plotly.js from a CDN unless told otherwise; save_figures points it at the
    copy plotly ships, so PNGs render on a machine without internet (this one)."""
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[0.2, 0.3, 0.25]))
    status = save_figures({"front": fig}, tmp_path)
    assert status == {"front": "front.png"}
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figures({"front": fig}, tmp_path / "no", png=False)["front"].startswith(
        "PNG not written")


def test_seed_summary_gives_a_t_interval_over_seeds():
    rng = np.random.default_rng(0)
    reps = {s: rng.normal(0.3, 0.02, 50) for s in range(3)}
    out = seed_summary({0: 0.30, 1: 0.42, 2: 0.33}, reps)
    lo, hi = out["seed_interval"]
    # mean 0.35, sd 0.0624, t(0.975, 2) = 4.303: half-width 0.155
    assert (lo + hi) / 2 == pytest.approx(0.35)
    assert (hi - lo) / 2 == pytest.approx(4.3027 * np.std([0.30, 0.42, 0.33], ddof=1) / 3 ** 0.5,
                                          rel=1e-3)
    assert hi - lo > out["interval"][1] - out["interval"][0]  # wider than the image noise here
    assert seed_summary({0: 0.3}, {0: reps[0]})["seed_interval"] is None  # one seed: no spread
    assert seed_summary({0: float("inf"), 1: 0.3}, reps)["seed_interval"] is None


def test_the_multiscale_sentence_names_the_seeds_on_which_it_reaches_elastic():
    inf = float("inf")
    sweep = {"1.5": {"AP": {"mean": 0.35}, "gflops": {"mean": 12.2}},
             "1.0": {"AP": {"mean": 0.30}, "gflops": {"mean": 5.4}}}

    def summary(per_seed):
        return {"detectors": {"multiscale": {"sweep": sweep}},
                "headline": {"multiscale": {"compute_saved": {
                    "seeds": sorted(int(k) for k in per_seed), "mean": inf,
                    "interval": [inf, inf], "per_seed": per_seed}}}}

    never = multiscale_never_reaches(summary({"0": {"value": inf, "interval": [inf, inf]}}))
    assert never.startswith("Multi-scale never reaches the elastic AP on any seed")
    assert "AP 0.350 at φ = 1.5 (12.20 GFLOPs)" in never
    some = multiscale_never_reaches(summary({  # "inf": as read back from results.json
        "0": {"value": inf, "interval": [inf, inf]},
        "2": {"value": 0.645, "interval": [0.551, "inf"]}}))
    assert some.startswith("Multi-scale reaches the elastic AP on 1 of 2 seeds")
    assert "s2: +64.5 %" in some and "s0" not in some
    finite = summary({"0": {"value": 0.2, "interval": [0.1, 0.3]}})
    finite["headline"]["multiscale"]["compute_saved"].update(mean=0.2, interval=[0.1, 0.3])
    assert multiscale_never_reaches(finite) is None


def test_the_ablation_sentence_says_which_differences_clear_the_noise():
    def row(run, ap, diff=None):
        saved = {"mean": "inf" if ap > 0.4 else 0.1, "interval": [0.05, "inf"]}
        out = {"run": run, "seed": 0, "note": f"what {run} changes", "AP": ap, "gflops": 4.0,
               "mean_phi": 0.8, "pearson_u": 0.9, "compute_saved_vs_fixed_front": saved}
        if diff is not None:
            out["ap_minus_elastic"] = {"mean": diff[0], "interval": list(diff[1:])}
        if ap > 0.4:  # above the whole front: its AP gain at equal GFLOPs has the size
            out["ap_gain_vs_fixed_front"] = {"mean": 0.12, "interval": [0.1, 0.14]}
        out["vs_best_fixed"] = {"run": "fixed_1.25", "ap_minus": {
            "mean": ap - 0.38, "interval": [ap - 0.40, ap - 0.36]},
            "gflops_ratio": {"mean": 0.7, "interval": [0.65, 0.75]}}
        return out

    assert ablation_findings({"ablations": [row("elastic", 0.34)]}) is None  # nothing to compare
    text = ablation_findings({"ablations": [
        row("elastic", 0.34), row("worse", 0.30, (-0.04, -0.06, -0.02)),
        row("same", 0.345, (0.005, -0.01, 0.02)), row("better", 0.41, (0.07, 0.05, 0.09))]})
    assert text.startswith("**Ablations** (seed 0, one training run each")
    assert "`worse`, what worse changes: AP 0.300 at 4.00 GFLOPs" in text
    assert "AP -0.040 [-0.060, -0.020] against elastic, lower beyond the test-image noise" in text
    assert "AP +0.005 [-0.010, +0.020] against elastic, within the test-image noise" in text
    assert "AP +0.070 [+0.050, +0.090] against elastic, higher beyond the test-image noise" in text
    assert "compute saved against the fixed front +10.0 % [+5.0 %, ∞]" in text
    assert ("`better`, what better changes: AP 0.410 at 4.00 GFLOPs (mean φ 0.80, Pearson(u, "
            "u*) 0.90, above every point of the fixed front, AP gain at equal GFLOPs +0.120 "
            "[+0.100, +0.140])") in text
    # only the row whose interval against the best fixed resolution clears zero says so
    assert text.count("above the best single fixed resolution") == 1
    assert ("higher beyond the test-image noise; it also scores above the best single fixed "
            "resolution (`fixed_1.25`), AP +0.030 [+0.010, +0.050], at 0.700× its GFLOPs") in text
    # and the best-fixed paragraph names that variant, and only it
    rows = [row("elastic", 0.34), row("same", 0.345, (0.005, -0.01, 0.02)),
            row("better", 0.41, (0.07, 0.05, 0.09))]
    assert variants_above_best_fixed({"ablations": rows}) == (
        "Elastic variants above it beyond the test-image noise: `better` (what better changes, "
        "s0) AP +0.030 [+0.010, +0.050], at 0.700× its GFLOPs.")
    assert variants_above_best_fixed({"ablations": rows[:2]}) is None
    # elastic itself is the "Elastic minus it" sentence, never a variant
    assert variants_above_best_fixed({"ablations": [row("elastic", 0.41)]}) is None


# the elastic twin repeats seed 0, so the headline's t interval over seeds has sd 0
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_an_ablation_trained_at_more_seeds_is_averaged_and_paired_seed_by_seed(smoke):
    out, _ = smoke
    cells = {n: json.loads(json.dumps(c)) for n, c in read_cells(out / "cells").items()}
    # a second training seed of elastic and of the ablation: seed 0's cells with the
    # ablation's AP raised by 0.1 on every resample
    for run in ("elastic", "elastic_no_scale_loss"):
        twin = json.loads(json.dumps(cells[f"{run}_s0"]))
        twin["cell"], twin["seed"] = f"{run}_s1", 1
        if run != "elastic":
            own = twin["rows"]["own"]
            own["AP"] += 0.1
            own["bootstrap_ap"] = [a + 0.1 for a in own["bootstrap_ap"]]
        cells[f"{run}_s1"] = twin
    rows = {a["run"]: a for a in summarize(cells, list(cells))["ablations"]}
    base, abl = rows["elastic"], rows["elastic_no_scale_loss"]
    assert base["seeds"] == abl["seeds"] == [0, 1]
    d0 = cells["elastic_no_scale_loss_s0"]["rows"]["own"]["AP"] - cells["elastic_s0"]["rows"][
        "own"]["AP"]
    d = abl["ap_minus_elastic"]
    assert d["seeds"] == [0, 1]
    assert d["mean"] == pytest.approx(d0 + 0.05, abs=1e-6)
    assert d["sd"] == pytest.approx(0.1 / np.sqrt(2), abs=1e-6)
    # the interval of the seed mean: seed 0's resamples, shifted by half the raise
    assert d["interval"] == pytest.approx([x + 0.05 for x in d["per_seed"]["0"]["interval"]],
                                          abs=1e-6)
    assert abl["AP"] == pytest.approx(cells["elastic_no_scale_loss_s0"]["rows"]["own"]["AP"]
                                      + 0.05, abs=1e-6)
    assert abl["AP_sd"] == pytest.approx(0.1 / np.sqrt(2), abs=1e-6)
    # against the best single fixed resolution, paired at the seeds both have
    fixed = {r: np.mean([c["rows"]["own"]["AP"] for n, c in cells.items()
                         if n.startswith(r + "_s")]) for r in ("fixed_0.75", "fixed_1.00",
                                                                "fixed_1.25")}
    best = max(fixed, key=fixed.get)
    vs = abl["vs_best_fixed"]
    assert vs["run"] == best and vs["ap_minus"]["seeds"] == [0]  # the front has seed 0 only
    assert vs["ap_minus"]["mean"] == pytest.approx(
        cells["elastic_no_scale_loss_s0"]["rows"]["own"]["AP"]
        - cells[f"{best}_s0"]["rows"]["own"]["AP"], abs=1e-9)
    assert abl["ap_gain_vs_fixed_front"]["seeds"] == [0]
    text = ablation_findings({"ablations": list(rows.values())})
    assert text.startswith("**Ablations** (the first seed, and the seeds named")
    assert "`elastic_no_scale_loss` (seeds 0, 1)" in text and "± 0.071 (2 seeds)" in text


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_the_best_fixed_resolution_is_sought_past_the_front(smoke):
    out, _ = smoke
    cells = {n: json.loads(json.dumps(c)) for n, c in read_cells(out / "cells").items()}
    top = max(FIXED_FRONT, key=lambda r: cells[f"{r}_s0"]["rows"]["own"]["AP"])
    front = summarize(cells, list(cells))["best_fixed"]
    assert front["run"] == top and set(front["mean_ap_by_run"]) == set(FIXED_FRONT)
    assert front["seeded"] is None  # every fixed run at the same seeds: one best
    # a study past the front, seed 0 only, above every run of the front on every resample
    study = json.loads(json.dumps(cells[f"{top}_s0"]))
    study["cell"], study["run"] = "fixed_1.75_s0", "fixed_1.75"
    own = study["rows"]["own"]
    own["AP"] += 0.2
    own["bootstrap_ap"] = [a + 0.2 for a in own["bootstrap_ap"]]
    cells["fixed_1.75_s0"] = study
    # and the front, elastic and an ablation at a second seed, so that the study has fewer
    # seeds than they have
    for r in FIXED_FRONT + ("elastic", "elastic_no_scale_loss"):
        twin = json.loads(json.dumps(cells[f"{r}_s0"]))
        twin["cell"], twin["seed"] = f"{r}_s1", 1
        cells[f"{r}_s1"] = twin
    summary = summarize(cells, list(cells))
    b = summary["best_fixed"]
    assert b["run"] == "fixed_1.75" and b["phi"] == 1.75
    assert b["mean_ap"] == pytest.approx(own["AP"], abs=1e-9)
    assert b["seeds_by_run"]["fixed_1.75"] == [0] and b["seeds_by_run"][top] == [0, 1]
    # elastic against it at the one seed both have
    d = b["elastic_ap_minus_best"]
    assert d["seeds"] == [0]
    assert d["mean"] == pytest.approx(cells["elastic_s0"]["rows"]["own"]["AP"] - own["AP"],
                                      abs=1e-9)
    # and the Pareto figure shows it as a point of its own beside the front's line
    fig = pareto(cells, replica_index({n: c for n, c in cells.items() if n != LATENCY}))
    points = [t for t in fig.data if (t.meta or {}).get("kind") == "method"]
    assert "fixed_1.75" in [t.meta["name"] for t in points]
    study_point = [t for t in points if t.meta["name"] == "fixed_1.75"]
    assert [t.y[0] for t in study_point] == [pytest.approx(own["AP"])]
    front_line = next(t for t in fig.data if (t.meta or {}).get("kind") == "front"
                      and t.meta["name"].startswith("fixed front"))
    assert study_point[0].marker.color == front_line.line.color  # read as a fixed detector
    assert study_point[0].marker.color not in [t.marker.color for t in points
                                               if t.meta["name"] != "fixed_1.75"]
    # the best of the runs at the most seeds (the front's top, seeds 0 and 1) stays beside it
    seeded = b["seeded"]
    assert seeded["run"] == top and seeded["seeds"] == [0, 1]
    assert seeded["elastic_ap_minus_best"]["seeds"] == [0, 1]
    assert seeded["elastic_ap_minus_best"]["mean"] == pytest.approx(
        cells["elastic_s0"]["rows"]["own"]["AP"] - cells[f"{top}_s0"]["rows"]["own"]["AP"],
        abs=1e-9)  # the twins at seed 1 repeat seed 0
    # the ablation table says at which seeds a run is paired with each
    table = [line for line in ablation_lines(summary) if line.startswith("| elastic")]
    assert table and all("vs fixed_1.75 (at s0); " in line for line in table)
    assert any(f" vs {top} |" in line for line in table)  # elastic: paired at both seeds
    rows = {a["run"]: a for a in summary["ablations"]}
    assert rows["elastic"]["vs_best_seeded_fixed"]["run"] == top
    text = best_fixed({"best_fixed": b})
    assert text.startswith("**Best single fixed resolution**: `fixed_1.75` (φ = 1.75")
    assert f"The best at 2 seeds, `{top}` (φ = {recipes.RUNS[top].fixed_phi:g}, mean AP" in text
    text = best_fixed({"best_fixed": {**b, "seeded": None}})
    trained = text.split("each fixed resolution trained: ")[1].split("). Elastic")[0]
    assert trained.count("(1 seed)") == 1 and trained.endswith("fixed_1.75 " + fmt_ap(
        own["AP"]) + " (1 seed)")  # the front, at more seeds, carries no note
    assert "over seeds" not in text  # one paired seed: no interval over training runs
    # paired at several seeds: the Student-t interval over them follows the image interval
    spread = {**d, "seeds": [0, 1], "sd": 0.01, "seed_interval": [-0.2, 0.05]}
    text = best_fixed({"best_fixed": {**b, "elastic_ap_minus_best": spread}})
    assert f"{ci(spread['interval'], fmt_dap)} (over seeds [-0.200, +0.050])" in text
    row = next(a for a in summary["ablations"] if a["run"] == "elastic")
    row = {**row, "vs_best_fixed": {**row["vs_best_fixed"], "ap_minus": spread}}
    (line,) = [x for x in ablation_lines({**summary, "ablations": [row]})
               if x.startswith("| elastic")]
    assert "(over seeds [-0.200, +0.050]) vs fixed_1.75" in line


def test_the_verdict_answers_at_equal_ap_and_in_ap_alone():
    """The answer's two halves: compute saved against the front at equal AP (its interval
    decides "beats"), then elastic against the best single fixed resolution in AP alone (the
    paired AP interval decides no / yes / not settled)."""
    def summary(saved, ap_minus):
        return {"headline": {"fixed_front": {"compute_saved": {
                    "mean": sum(saved) / 2, "interval": saved, "seeds": [0, 1, 2]}}},
                "best_fixed": {"run": "fixed_1.50", "phi": 1.5, "elastic_ap_minus_best": {
                    "mean": sum(ap_minus) / 2, "interval": ap_minus},
                    "elastic_gflops_over_best": {"mean": 0.35}}}
    text = verdict(summary([0.3, 0.4], [-0.15, -0.11]))
    assert text.startswith("**Answer (3 seeds): the learned per-image resolution beats the "
                           "fixed-resolution front at equal AP beyond the test-image noise**")
    assert text.endswith(" In AP alone the answer is no: the best single fixed resolution "
                         "trained scores more AP (`fixed_1.50`, φ = 1.5; beyond the test-image "
                         "noise), and elastic spends 0.35× its GFLOPs.")
    assert "answer is yes: the best single fixed resolution trained scores less AP" in verdict(
        summary([0.3, 0.4], [0.01, 0.05]))
    within = verdict(summary([-0.1, 0.2], [-0.02, 0.01]))
    assert "does not beat the fixed-resolution front at equal AP" in within
    assert "answer is not settled" in within and "; within the test-image noise)" in within
    # no fixed run shares a seed with elastic yet: the first half alone
    alone = verdict({**summary([0.3, 0.4], [0, 0]), "best_fixed": None})
    assert alone.endswith("[+30.0 %, +40.0 %]).") and "In AP alone" not in alone


def test_the_latency_sentence_sets_time_beside_flops_at_each_size():
    def part(size, saved, flops, share):
        return {"base_size": size, "latency_saved": saved, "latency_saved_interval":
                [saved - 0.05, saved + 0.05], "flops_saved": flops,
                "latency_to_flops_saving": saved / flops,
                "predictor": {"share_of_reference_ms": share}}

    assert latency_finding({"latency": None}) is None
    lat = {**part(256, -0.07, 0.2, 0.24), "machine": {"device_name": "CPU X",
                                                      "torch_threads": 1}, "other_sizes": []}
    text = latency_finding({"latency": lat})
    assert text.startswith("**Latency** (paired in one process, batch 1, CPU X, 1 thread(s)): "
                           "at the 256 px the detectors were trained at")
    assert "latency saved -7.0 % [-12.0 %, -2.0 %], FLOPs saved +20.0 % (ratio -0.35;" in text
    assert "short side" not in text  # no other size timed
    lat["other_sizes"] = [part(512, 0.1, 0.2, 0.06), part(800, 0.18, 0.2, 0.02)]
    text = latency_finding({"latency": lat})
    assert ("at a short side of 512 px latency saved +10.0 % [+5.0 %, +15.0 %] for +20.0 % of "
            "the FLOPs (ratio 0.50; the predictor 6.0 % of the fixed detector's time)") in text
    assert "at a short side of 800 px latency saved +18.0 %" in text and "(ratio 0.90;" in text
