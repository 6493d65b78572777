"""predictor_study: the designs' fidelity curves and their batch-1 time against the detector."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from elastic_lab import recipes
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.predictor_study import (
    RECIPE_VARIANT,
    VARIANTS,
    add_arguments,
    fidelity_summary,
    run,
    run_variant,
    time_design,
)


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_the_recipe_variant_is_the_recipe_predictor():
    v = {x.name: x for x in VARIANTS}[RECIPE_VARIANT]
    assert (v.trunk, v.norm, v.thumb_size, v.size_bins) == (
        recipes.PREDICTOR_TRUNK, recipes.PREDICTOR_NORM, recipes.THUMB_SIZE,
        recipes.PREDICTOR_SIZE_BINS)
    assert len({x.name for x in VARIANTS}) == len(VARIANTS)


def test_time_design_times_predictor_and_detector_separately():
    torch.manual_seed(0)
    model = build_model(ModelOptions(mode="elastic", base_size=64, thumb_size=32,
                                     predictor_trunk="mobilenet_v3_small",
                                     predictor_norm="group"), 3).eval()
    calls = {"predictor": 0, "detector": 0}
    predict, detect = model.predict_phi, model.detect

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    model.predict_phi, model.detect = count("predictor", predict), count("detector", detect)
    r = time_design(model, torch.rand(3, 48, 64), repeats=4, warmup=1)
    assert calls == {"predictor": 5, "detector": 5}
    assert r["predictor_ms"] > 0 and r["detector_ms"] > 0
    assert r["share_of_detector_ms"] == pytest.approx(r["predictor_ms"] / r["detector_ms"],
                                                      rel=1e-3)
    lo, hi = r["share_interval"]
    assert 0 < lo <= hi
    with pytest.raises(ValueError, match="repeats"):
        time_design(model, torch.rand(3, 48, 64), repeats=1)


def test_latency_only_writes_one_row_per_design(synth_dir, tmp_path, capsys):
    names = ["mnv3s-group-128-sizemap-crop", RECIPE_VARIANT]
    assert run(_args(data=synth_dir, eval_split="val", out=tmp_path, latency_only=True,
                     repeats=2, variants=",".join(names))) == 0
    r = json.loads((tmp_path / "latency.json").read_text())
    assert [row["variant"] for row in r["rows"]] == names
    assert [row["recipe"] for row in r["rows"]] == [False, True]
    small, recipe = r["rows"]
    assert small["predictor_gflops"] < recipe["predictor_gflops"]  # a smaller trunk and thumbnail
    assert small["detector_gflops"] == recipe["detector_gflops"]  # the same detector
    for row in r["rows"]:
        assert row["share_of_detector_gflops"] == pytest.approx(
            row["predictor_gflops"] / row["detector_gflops"], rel=1e-2)
        assert {"float32", "autocast"} <= row.keys()
    assert r["machine"]["torch_threads"] == 1 and r["batch_size"] == 1
    assert not list(tmp_path.glob("predictor_*.json"))  # nothing trained
    assert "mnv3s-group-128-sizemap-crop: 0.0" in capsys.readouterr().out


def test_run_variant_writes_a_fidelity_curve(synth_dir, tmp_path):
    v = {x.name: x for x in VARIANTS}["mnv3s-group-128-sizemap-crop"]
    r = run_variant(v, synth_dir, "val", tmp_path, steps=4, eval_every=2, eval_images=4,
                    base_size=64, progress=False)
    saved = json.loads((tmp_path / f"predictor_{v.name}.json").read_text())
    assert saved["variant"]["name"] == v.name and saved["eval_images"] == 4
    assert [row["step"] for row in saved["curve"]] == [row["step"] for row in r["curve"]]
    assert len(saved["curve"]) >= 2
    assert all(-1 <= row["pearson_u"] <= 1 or row["pearson_u"] is None
               for row in saved["curve"])


def test_fidelity_summary_quotes_each_design_and_refuses_mixed_budgets():
    def result(name, steps, pearson):
        return {"variant": {"name": name}, "steps": steps, "seed": 0, "eval_split": "test",
                "eval_images": 300, "curve": [{"pearson_u": 0.1, "mae_u": 0.3},
                                              {"pearson_u": pearson, "mae_u": 0.2}]}
    latency = {"rows": [{"variant": RECIPE_VARIANT, "autocast": {"share_of_detector_ms": 0.27}}]}
    text = fidelity_summary([result(RECIPE_VARIANT, 2000, 0.9), result("other", 2000, 0.8)],
                            latency)
    assert (f"{RECIPE_VARIANT} (the recipe's) 0.900 (MAE 0.200, 27 % of the detector's time "
            "under autocast)") in text
    assert "other 0.800 (MAE 0.200)" in text and "2000 steps" in text
    with pytest.raises(ValueError, match="same --steps"):
        fidelity_summary([result(RECIPE_VARIANT, 2000, 0.9), result("other", 500, 0.8)])
