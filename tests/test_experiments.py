"""experiments.py: data preparation, runs trained or reused from a TrainConfig, hold-out splits."""
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from elastic_lab.config import TrainConfig, smoke_config
from elastic_lab.data.coco import CocoDetection
from elastic_lab.experiments import (
    budget_config,
    coco_size_counts,
    ensure_synth,
    first_images,
    holdout_split,
    load_or_train,
    train_run,
    trained_seconds,
)
from elastic_lab.runtime import split_paths


def run_config(data, out, mode, steps) -> TrainConfig:
    return budget_config(smoke_config(str(data), str(out)), out, mode, steps)


def _write_coco(root: Path, split: str, images: list[dict], anns: list[dict]) -> Path:
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    for img in images:
        (root / "images" / split / img["file_name"]).write_bytes(b"x")
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return ann


def test_ensure_synth_generates_only_missing_splits(tmp_path):
    out = ensure_synth(tmp_path / "s", train=3, val=2)
    ann = out / "annotations" / "instances_train.json"
    before = ann.stat().st_mtime_ns
    ensure_synth(out, train=5, val=2, test=1)  # train exists (kept as is), test is added
    assert ann.stat().st_mtime_ns == before
    assert len(json.loads(ann.read_text())["images"]) == 3
    assert len(json.loads((out / "annotations/instances_test.json").read_text())["images"]) == 1


def test_train_run_reuses_identical_runs_and_refuses_foreign_folders(synth_dir, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "run"
    ckpt = train_run(run_config(synth_dir, out, "elastic", 2))
    stamp = ckpt.stat().st_mtime_ns
    seconds = trained_seconds(ckpt)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and seconds > 0
    assert train_run(run_config(synth_dir, out, "elastic", 2)) == ckpt
    assert ckpt.stat().st_mtime_ns == stamp and trained_seconds(ckpt) == seconds  # reused
    with monkeypatch.context() as m:  # the same run named by relative paths (notebooks/ cwd)
        m.chdir(out)
        rel = train_run(run_config(os.path.relpath(synth_dir, out), ".", "elastic", 2))
    assert rel == ckpt and ckpt.stat().st_mtime_ns == stamp
    # executed otherwise (precision, loader processes, cache folder): still the same run
    other = replace(run_config(synth_dir, out, "elastic", 2), amp=True, workers=3,
                    warm_start_cache=str(tmp_path / "cache"))
    assert train_run(other) == ckpt and ckpt.stat().st_mtime_ns == stamp
    # a run stamped before an option existed (it trained with the option's legacy value) is
    # the same run: adding an option to the code must not throw finished runs away
    stamp_file = out / "experiment_run.json"
    written = json.loads(stamp_file.read_text())
    older = json.loads(json.dumps(written))
    del older["config"]["model"]["scale_stats_bins"], older["config"]["train"]["batching"]
    stamp_file.write_text(json.dumps(older))
    assert train_run(run_config(synth_dir, out, "elastic", 2)) == ckpt
    assert ckpt.stat().st_mtime_ns == stamp
    older["config"]["train"]["batching"] = "mixed"  # ... but a different value is another run
    stamp_file.write_text(json.dumps(older))
    train_run(run_config(synth_dir, out, "elastic", 2))
    assert ckpt.stat().st_mtime_ns != stamp
    train_run(run_config(synth_dir, out, "elastic", 1))  # other options: fresh run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # the old rows were not mixed in
    changed = run_config(synth_dir, out, "elastic", 1)
    changed.loss = replace(changed.loss_options(), k=4.0)  # a loss option counts too
    train_run(changed)
    assert json.loads((out / "options.json").read_text())["loss"]["k"] == 4.0
    data = tmp_path / "data"  # same options, other training annotations: trained again
    shutil.copytree(synth_dir, data)
    ckpt = train_run(run_config(data, out, "fixed", 1))
    stamp = ckpt.stat().st_mtime_ns
    ann = data / "annotations" / "instances_train.json"
    content = json.loads(ann.read_text())
    content["annotations"] = content["annotations"][:-1]
    ann.write_text(json.dumps(content))
    train_run(run_config(data, out, "fixed", 1))
    assert ckpt.stat().st_mtime_ns != stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a training run folder"):
        train_run(run_config(synth_dir, foreign, "fixed", 1))
    assert (foreign / "notes.txt").exists()


def test_budget_config_bounds_a_run_by_its_steps_alone():
    base = smoke_config("d", "o", "fixed", max_steps=7)
    run = budget_config(base, "elsewhere", "elastic", 300)
    assert (run.out, run.model.mode, run.train.max_steps) == ("elsewhere", "elastic", 300)
    assert run.train.epochs >= 1_000_000 and run.train.log_every == 12
    assert (base.out, base.model.mode, base.train.max_steps) == ("o", "fixed", 7)  # untouched
    assert budget_config(base, "x").train.max_steps == 7
    with pytest.raises(ValueError, match="max_steps"):
        budget_config(smoke_config("d", "o", max_steps=None), "x")


def test_load_or_train_falls_back_only_when_the_file_is_missing(synth_dir, tmp_path):
    fb = load_or_train(tmp_path / "missing.pt", "elastic", synth_dir, tmp_path / "fb", 1)
    assert fb.fallback and "not found" in fb.note and fb.model.predictor is not None
    real = load_or_train(fb.path, "elastic", synth_dir, tmp_path / "unused", 1)
    assert not real.fallback and real.path == fb.path and not (tmp_path / "unused").exists()
    assert real.checkpoint["categories"] == fb.checkpoint["categories"]


def test_first_images_keeps_the_coco_mapping(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    few = first_images(ds, 3)
    assert len(few) == 3 and len(ds) == 8 and few.ids == ds.ids[:3]
    assert few.coco is ds.coco and few.label_to_cat_id == ds.label_to_cat_id
    assert torch.equal(few[2][0], ds[2][0]) and first_images(ds, None) is ds
    with pytest.raises(ValueError, match="n must be"):
        first_images(ds, 0)


def test_holdout_split_is_disjoint_complete_and_deterministic(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in range(1, 11)]
    anns = [{"id": i, "image_id": i, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4,
             "iscrowd": 0} for i in range(1, 11)]
    _write_coco(tmp_path, "all", images, anns)
    parts = holdout_split(tmp_path, "all", 0.3, seed=1)
    data = {k: json.loads(p.read_text()) for k, p in parts.items()}
    train, val = ({img["id"] for img in data[k]["images"]} for k in ("train", "val"))
    assert len(val) == 3 and not train & val and train | val == set(range(1, 11))
    assert {a["image_id"] for a in data["val"]["annotations"]} == val
    assert all((tmp_path / "images" / "val" / f"{i}.png").is_file() for i in val)
    again = json.loads(holdout_split(tmp_path, "all", 0.3, seed=1)["val"].read_text())
    assert {img["id"] for img in again["images"]} == val
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(tmp_path, "all", 1.0)


def test_coco_size_counts_use_cocoeval_area_bins(tmp_path):
    images = [{"id": 1, "file_name": "1.png", "width": 500, "height": 500}]
    areas = [(3, 100.0, 0), (3, 1023.0, 0), (3, 1024.0, 0), (7, 9216.0, 0), (7, 50.0, 1)]
    anns = [{"id": k, "image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "area": a,
             "iscrowd": crowd} for k, (c, a, crowd) in enumerate(areas, start=1)]
    ann = _write_coco(tmp_path, "val", images, anns)
    assert coco_size_counts(ann) == {"a": {"small": 2, "medium": 1, "large": 0},
                                     "b": {"small": 0, "medium": 0, "large": 1}}
