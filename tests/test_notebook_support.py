"""Package functions notebook 04 relies on: the shortened demonstration run of the recipe and
the φ-vs-size figure of several elastic cells."""
import json

import numpy as np
import pytest

from elastic_lab import recipes
from elastic_lab.bench_figures import phi_vs_size
from elastic_lab.viz._common import traces_of


def _train_diff(a: dict, b: dict) -> dict:
    return {k: (a["train"][k], b["train"][k]) for k in a["train"] if a["train"][k] != b["train"][k]}


@pytest.mark.parametrize("smoke", [False, True])
def test_the_demo_run_is_the_recipe_with_a_shorter_budget(smoke):
    make = recipes.smoke_recipe_config if smoke else recipes.recipe_config
    full = json.loads(json.dumps(make("elastic", 3, "o", "d").recipe_dict()))
    demo = json.loads(json.dumps(recipes.demo_config("elastic", 40, 8, 3, "o", "d",
                                                     smoke=smoke).recipe_dict()))
    assert {k: v for k, v in demo.items() if k != "train"} == \
        {k: v for k, v in full.items() if k != "train"}
    diff = _train_diff(demo, full)
    assert set(diff) <= {"max_steps", "pretrain_steps", "warmup_steps", "log_every",
                         "probe_images"}
    t = demo["train"]
    assert t["max_steps"] == 40 and t["seed"] == 3
    assert t["pretrain_steps"] == min(8, full["train"]["pretrain_steps"])
    assert t["warmup_steps"] <= 4 and t["log_every"] == 4 and t["probe_images"] <= 16
    if not smoke:
        assert t["pretrain_steps"] == 8 < full["train"]["pretrain_steps"]


def test_a_demo_of_a_run_without_warm_start_has_none():
    demo = recipes.demo_config("fixed_1.00", 30, 10)
    assert demo.train.pretrain_steps == 0 and demo.model.mode == "fixed"
    assert demo.train.lr_drop == recipes.LR_DROP and demo.train.batch_size == recipes.BATCH_SIZE


def _elastic_cell(sides, phi, phi_star):
    return {"elastic": {"phi_vs_size": {"median_side": sides, "phi": phi,
                                        "phi_star": phi_star}}}


def test_phi_vs_size_shows_the_named_elastic_runs_and_one_target():
    cells = {"elastic_s0": _elastic_cell([4.0, None, 40.0, 80.0], [1.4, 1.0, 0.8, 0.6],
                                         [1.5, 1.0, 0.7, 0.5]),
             "elastic_s1": _elastic_cell([4.0, 20.0, 40.0], [1.3, 1.0, 0.9], [1.5, 1.0, 0.7]),
             "elastic_no_scale_loss_s0": _elastic_cell([4.0, 20.0, 40.0], [0.9, 1.1, 1.0],
                                                       [1.5, 1.0, 0.7]),
             "fixed_1.00_s0": {"rows": {}}}
    default = {t.meta["run"] for t in traces_of(phi_vs_size(cells), "images")}
    assert default == {"elastic s0: predicted φ", "elastic s0: φ* (scale loss)",
                       "elastic s1: predicted φ"}
    fig = phi_vs_size(cells, runs=("elastic", "elastic_no_scale_loss"))
    traces = {t.meta["run"]: t for t in traces_of(fig, "images")}
    assert set(traces) == default | {"elastic_no_scale_loss s0: predicted φ"}
    s0 = traces["elastic s0: predicted φ"]
    assert list(s0.x) == [4.0, 40.0, 80.0] and list(s0.y) == [1.4, 0.8, 0.6]  # no objects: out
    assert s0.meta["spearman"] == pytest.approx(-1.0)
    assert np.isclose(traces["elastic_no_scale_loss s0: predicted φ"].meta["spearman"], 0.5)
    assert phi_vs_size(cells, runs=("elastic_tau_max_2",)) is None
    assert phi_vs_size({"fixed_1.00_s0": {"rows": {}}}) is None
