"""Tests of the notebook helpers (paths, runs, data splits, seed-experiment analysis)."""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.ops import box_convert

from elastic_lab.data.coco import CocoDetection
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.detr import DetrOptions
from elastic_lab.notebook_utils import (
    PROJECT_ROOT,
    SMOKE_MODEL_ARGS,
    coco_size_counts,
    compare_to_baseline,
    ensure_synth,
    first_images,
    holdout_split,
    image_scale_sweep,
    load_or_train,
    median_object_sides,
    phi_object_size_table,
    project_path,
    spearman,
    train_run,
    work_dir,
)
from elastic_lab.resize import base_size_scale
from elastic_lab.runtime import split_paths


def _write_coco(root: Path, split: str, images: list[dict], anns: list[dict]) -> Path:
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    for img in images:
        (root / "images" / split / img["file_name"]).write_bytes(b"x")
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return ann


def _tiny_model(mode="elastic"):
    torch.manual_seed(0)
    opts = ModelOptions(mode=mode, base_size=64, thumb_size=32,
                        detr=DetrOptions(d_model=32, num_encoder_layers=1, num_decoder_layers=2))
    return build_model(opts, 6).eval()


def test_project_path_and_work_dir(tmp_path, monkeypatch):
    assert project_path("/abs/x.pt") == Path("/abs/x.pt")
    assert project_path("checkpoints/a.pt") == PROJECT_ROOT / "checkpoints" / "a.pt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "1")
    assert work_dir("nb") == tmp_path / "smoke_work" / "nb" and (tmp_path / "smoke_work/nb").is_dir()
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "0")
    assert work_dir("nb", root=tmp_path / "runs") == tmp_path / "runs" / "nb"


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
    ckpt = train_run(synth_dir, out, "elastic", 2, SMOKE_MODEL_ARGS)
    stamp = ckpt.stat().st_mtime_ns
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert train_run(synth_dir, out, "elastic", 2, SMOKE_MODEL_ARGS) == ckpt
    assert ckpt.stat().st_mtime_ns == stamp  # reused, not retrained
    with monkeypatch.context() as m:  # the same run named by relative paths (notebooks/ cwd)
        m.chdir(out)
        rel = train_run(os.path.relpath(synth_dir, out), ".", "elastic", 2, SMOKE_MODEL_ARGS)
    assert rel == ckpt and ckpt.stat().st_mtime_ns == stamp
    train_run(synth_dir, out, "elastic", 1, SMOKE_MODEL_ARGS)  # other options: fresh run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # the old rows were not mixed in
    data = tmp_path / "data"  # same options, other training annotations: trained again
    shutil.copytree(synth_dir, data)
    ckpt = train_run(data, out, "fixed", 1, SMOKE_MODEL_ARGS)
    stamp = ckpt.stat().st_mtime_ns
    ann = data / "annotations" / "instances_train.json"
    content = json.loads(ann.read_text())
    content["annotations"] = content["annotations"][:-1]
    ann.write_text(json.dumps(content))
    train_run(data, out, "fixed", 1, SMOKE_MODEL_ARGS)
    assert ckpt.stat().st_mtime_ns != stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a training run folder"):
        train_run(synth_dir, foreign, "fixed", 1, SMOKE_MODEL_ARGS)
    assert (foreign / "notes.txt").exists()


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


def test_median_object_sides_at_original_and_base_resolution(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    sides = median_object_sides(ds)
    base = median_object_sides(ds, base_size=128)
    for i, image_id in enumerate(ds.ids):
        anns = ds.coco.imgToAnns.get(image_id, [])
        if not anns:
            assert math.isnan(sides[i]) and math.isnan(base[i])
            continue
        expected = np.median([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
        info = ds.coco.imgs[image_id]
        assert sides[i] == pytest.approx(expected)
        assert base[i] == pytest.approx(expected * base_size_scale(
            info["height"], info["width"], 128, None))


def test_phi_object_size_table_is_the_predictor_per_image(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    model = _tiny_model()
    table = phi_object_size_table(model, ds, batch_size=3)
    assert {len(v) for v in table.values()} == {len(ds)}
    expected = model.predict_phi([ds[i][0] for i in range(len(ds))]).double().numpy()
    np.testing.assert_allclose(table["phi"], expected, rtol=1e-5)
    np.testing.assert_allclose(table["median_side"], median_object_sides(ds, 64), equal_nan=True)
    assert set(table["regime"]) <= {"tiny", "medium", "mixed", "large", "empty"}
    assert list(table["image_id"]) == ds.ids


def test_phi_on_generated_scenes_runs_the_predictor_on_fresh_scenes_of_each_regime():
    from elastic_lab.analysis import phi_on_generated_scenes
    from elastic_lab.data.image import image_tensor
    from elastic_lab.data.synth import render_scene

    model = _tiny_model()
    t = phi_on_generated_scenes(model, ["tiny", "large", "empty"], 3, seed=5, size=(160, 128))
    assert list(t["regime"]) == ["tiny"] * 3 + ["large"] * 3 + ["empty"] * 3
    image, anns = render_scene(np.random.default_rng([5, 7920, 1, 2]), "large", (160, 128))
    assert t["phi"][5] == pytest.approx(float(model.predict_phi([image_tensor(image)])[0]),
                                        abs=1e-5)
    side = np.median([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
    assert t["median_side"][5] == pytest.approx(side * base_size_scale(128, 160, 64, None))
    assert np.all(np.isnan(t["median_side"][6:]))  # empty scenes have no objects
    assert np.nanmax(t["median_side"][:3]) < np.nanmin(t["median_side"][3:6])  # tiny < large


def test_spearman_ignores_missing_pairs():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([6.0, 4.0, 1.0, 3.0, np.inf, 0.5])
    keep = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic)
    assert spearman(x, y) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [1, 1, 1])) and math.isnan(spearman([1, 2], [2, 1]))


def test_compare_to_baseline_interpolates_along_the_front():
    base = [{"ap": 0.1, "gflops": 1.0}, {"ap": 0.2, "gflops": 2.0}, {"ap": 0.3, "gflops": 4.0},
            {"ap": 0.15, "gflops": 3.0}]  # the last one is dominated
    c = compare_to_baseline(base, ap=0.25, gflops=2.0)
    assert c["baseline_ap_at_equal_gflops"] == pytest.approx(0.2)
    assert c["ap_gain"] == pytest.approx(0.05)
    assert c["baseline_gflops_at_equal_ap"] == pytest.approx(3.0)  # halfway from 2 to 4
    assert c["compute_saved"] == pytest.approx(1 - 2.0 / 3.0) and not c["extrapolated"]
    best = compare_to_baseline(base, ap=0.4, gflops=5.0)
    assert best["baseline_gflops_at_equal_ap"] is None and best["compute_saved"] is None
    assert best["extrapolated"] and best["baseline_ap_at_equal_gflops"] == pytest.approx(0.3)
    low = compare_to_baseline(base, ap=0.05, gflops=0.5)
    assert low["baseline_gflops_at_equal_ap"] == 1.0 and low["compute_saved"] == 0.5


class _OracleModel(torch.nn.Module):
    """Detects exactly the ground truth of one image (label of object 0 wrong at φ < 1)."""

    def __init__(self, boxes, labels):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.boxes, self.labels = boxes, labels

    def detect(self, images, phi):
        labels = self.labels.clone()
        if float(phi[0]) < 1:
            labels[0] = (labels[0] + 1) % 6
        dets = {"boxes": self.boxes, "labels": labels,
                "scores": torch.full((len(labels),), 0.9)}
        size = round(100 * float(phi[0]))
        return [dets], {"image_sizes": torch.tensor([[size, size]])}

    def predict_phi(self, images):
        return torch.tensor([1.25])


class _PixelFlops:
    def detector(self, h, w):
        return h * w / 1e4


def test_image_scale_sweep_recall_against_ground_truth(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    idx = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 2)
    _, target = ds[idx]
    h, w = target["orig_size"].tolist()
    gt = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
    sweep = image_scale_sweep(_OracleModel(gt, target["labels"]), ds, idx, [1.5, 0.5, 1.0],
                              threshold=0.3, flops=_PixelFlops())
    n = len(target["labels"])
    assert sweep["phi"] == [0.5, 1.0, 1.5]  # sorted
    assert sweep["recall"] == pytest.approx([(n - 1) / n, 1.0, 1.0])
    assert sweep["num_detections"] == [n] * 3 and sweep["mean_score"] == pytest.approx([0.9] * 3)
    assert sweep["gflops"] == pytest.approx([0.25, 1.0, 2.25])
    assert sweep["predicted_phi"] == 1.25 and sweep["image_id"] == target["image_id"]
    real = image_scale_sweep(_tiny_model(), ds, idx, [0.5, 1.5], threshold=0.0)
    assert real["gflops"][0] < real["gflops"][1] and 0.5 <= real["predicted_phi"] <= 1.5
