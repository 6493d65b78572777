"""Synthetic data: determinism, COCO validity, scale diversity, regimes."""

from __future__ import annotations

import argparse
import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from elastic_lab.data import synth
from elastic_lab.data.synth import drawing


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth.generate(a, train=5, val=2, test=1, seed=3, progress=False)
    synth.generate(b, train=5, val=2, test=1, seed=3, progress=False)
    synth.generate(c, train=5, val=2, test=1, seed=4, progress=False)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert len(files_a) == 5 + 2 + 1 + 3  # images + one json per split
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    assert files_a["annotations/instances_train.json"] != files_c["annotations/instances_train.json"]
    assert all(files_a[k] != files_c[k] for k in files_a if k.endswith(".png"))


def test_worker_processes_give_identical_output(tmp_path):
    synth.generate(tmp_path / "one", train=4, val=0, seed=1, workers=1, progress=False)
    synth.generate(tmp_path / "two", train=4, val=0, seed=1, workers=2, progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_test_split_omitted_when_zero(tmp_path):
    written = synth.generate(tmp_path, train=2, val=1, seed=0, progress=False)
    assert set(written) == {"train", "val"}
    assert not (tmp_path / "annotations" / "instances_test.json").exists()
    assert not (tmp_path / "images" / "test").exists()


def test_pycocotools_loads_and_records_are_consistent(synth_dir, capsys):
    coco = COCO(str(synth_dir / "annotations" / "instances_train.json"))
    capsys.readouterr()
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == [1, 2, 3, 4, 5, 6]
    assert [c["name"] for c in cats] == list(synth.CLASS_NAMES)
    assert len(coco.getImgIds()) == 24
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) > 100
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h, abs=0.01)
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
    for img in coco.dataset["images"]:
        path = synth_dir / "images" / "train" / img["file_name"]
        assert path.is_file()
        long_side, short_side = max(img["width"], img["height"]), min(img["width"], img["height"])
        assert synth.LONG_SIDE_RANGE[0] <= long_side <= synth.LONG_SIDE_RANGE[1]
        assert short_side >= long_side * synth.ASPECT_RANGE[0] - 1


def test_regimes_and_empty_images_present(synth_dir):
    data = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())
    counts: dict[int, int] = {}
    for ann in data["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    regimes = {img["id"]: img["regime"] for img in data["images"]}
    assert set(regimes.values()) == set(synth.REGIMES)
    empty = [i for i, r in regimes.items() if r == "empty"]
    assert empty and all(counts.get(i, 0) == 0 for i in empty)
    tiny_counts = [counts.get(i, 0) for i, r in regimes.items() if r == "tiny"]
    large_counts = [counts.get(i, 0) for i, r in regimes.items() if r == "large"]
    assert min(tiny_counts) >= 10 and max(large_counts) <= 3
    assert max(counts.values()) <= synth.MAX_OBJECTS


def test_object_sides_span_tiny_to_more_than_half_the_image():
    min_side, max_fraction = np.inf, 0.0
    for i in range(40):
        rng = np.random.default_rng([0, 0, i])
        image, anns = synth.render_scene(rng, synth.regime_for_index(0, 0, i))
        for ann in anns:
            w, h = ann["bbox"][2:]
            min_side = min(min_side, max(w, h))
            max_fraction = max(max_fraction, max(w, h) / min(image.size))
    assert min_side < 10
    assert max_fraction > 0.5


def test_render_scene_respects_size_and_regime():
    image, anns = synth.render_scene(np.random.default_rng(0), "tiny", size=(200, 150))
    assert image.size == (200, 150) and image.mode == "RGB"
    assert len(anns) >= 10
    assert {a["category"] for a in anns} <= set(synth.CLASS_NAMES)
    assert all(max(a["bbox"][2:]) < 20 for a in anns)
    image, anns = synth.render_scene(np.random.default_rng(0), "empty", size=(64, 80))
    assert image.size == (64, 80) and anns == []
    with pytest.raises(ValueError, match="unknown regime 'huge'"):
        synth.render_scene(np.random.default_rng(0), "huge")


def test_ring_and_disc_differ_at_the_centre():
    """The fine detail is really drawn: a ring's centre shows the background, a disc's does not."""
    for name, hollow in (("ring", True), ("disc", False)):
        rng = np.random.default_rng(0)
        _, body, _ = drawing._shape_geometry(name, 40.0, 0.0, rng)
        image = Image.new("RGB", (60, 60), (0, 0, 0))
        drawing._paste_antialiased(image, (10, 10, 50, 50), (255, 255, 255),
                                   body(np.array([30.0, 30.0])))
        pixels = np.asarray(image)
        assert pixels[30, 12].min() > 200  # on the outline / body
        assert (pixels[30, 30].max() < 50) == hollow


def test_custom_category_ids(tmp_path):
    ann = synth.generate_split(tmp_path, "val", 3, seed=0, category_ids=[3, 7, 11, 20, 21, 40],
                               progress=False)
    data = json.loads(ann.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == list(
        zip([3, 7, 11, 20, 21, 40], synth.CLASS_NAMES))
    assert {a["category_id"] for a in data["annotations"]} <= {3, 7, 11, 20, 21, 40}
    with pytest.raises(ValueError, match="6 distinct ints"):
        synth.categories_for([1, 1, 2, 3, 4, 5])


def test_write_examples_is_deterministic(tmp_path):
    first = synth.write_examples(tmp_path / "a")
    second = synth.write_examples(tmp_path / "b")
    assert [p.name for p in first] == ["tiny.png", "mixed.png", "large.png"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


# the data set of `make data` (seed 0) and the shipped checkpoints: the first two images of each
# split and their annotations, as generated before the photos were shipped with the package
GOLDEN_PNG = {
    "train/000000.png": "cdbef916f02b67239660e1cdb03163cec077cd5672c45f5c04f848974101bc67",
    "train/000001.png": "d91df1793e73e307fa25e1dc2eeb4c06a93b7ad19183d818d58834d4de18761d",
    "val/000000.png": "0cfb9413083d60fd78687dd1974b52540d7026f82fa3ec2e11ad929eca73743f",
    "val/000001.png": "952ba2e63cec5e642d6861d3fa2f3e903023b6d083274e9ec66538cebbf132b4",
    "test/000000.png": "ccbbbf7a7528590799b45f4a21ad155674632dd83b3c38e2fbb0098ef1eafb28",
    "test/000001.png": "b13506d74addb30be8496c486bb0ca9916fc7b76ea5b41c45b31c4abdd8bfb56",
}
GOLDEN_JSON = {  # sha256 of the sorted-keys JSON of images, annotations, categories
    "train": "5b679192ff985128d270e8adc61a23593bcfc7bb0f047d97acf1fab454f0cb91",
    "val": "3afa4e18ce557cb21cd043cd4f65eff497425003e70b178cd55d422bad16c881",
    "test": "b659acd05719811be4a1b67f3d6f0903ce507961829201dea6508df16f7c309d",
}
PHOTOS = resources.files("elastic_lab.data.synth") / "photos"


def test_seed_0_gives_the_data_set_of_the_shipped_checkpoints(tmp_path):
    synth.generate(tmp_path, train=2, val=2, test=2, seed=0, progress=False)
    for name, digest in GOLDEN_PNG.items():
        assert hashlib.sha256((tmp_path / "images" / name).read_bytes()).hexdigest() == digest
    for split, digest in GOLDEN_JSON.items():
        data = json.loads((tmp_path / "annotations" / f"instances_{split}.json").read_text())
        body = {k: data[k] for k in ("images", "annotations", "categories")}
        assert hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() == digest


def test_the_shipped_photos_are_loaded_and_recorded(synth_dir):
    photos = synth.load_photos()
    assert len(photos) == len(synth.PHOTO_NAMES) == 4
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    notice = (PHOTOS / "NOTICE").read_text()
    assert "Apache" in notice and "gradio" in notice.lower()
    expected = [{"name": n, "sha256": hashlib.sha256((PHOTOS / n).read_bytes()).hexdigest()}
                for n in synth.PHOTO_NAMES]
    assert synth.background_record() == expected
    info = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())["info"]
    assert info["backgrounds"] == expected and info["seed"] == 0 and info["split"] == "train"
    assert all(n in notice for n in synth.PHOTO_NAMES)


def test_other_backgrounds_are_an_explicit_recorded_input(tmp_path):
    """The caller's photographs, or none at all, change the scenes and are recorded."""
    photo = tmp_path / "stripes.png"
    stripes = np.zeros((120, 160, 3), np.uint8)
    stripes[::8] = (250, 20, 20)
    Image.fromarray(stripes).save(photo)
    outs = {}
    for name, backgrounds in (("default", None), ("custom", [photo]), ("none", [])):
        outs[name] = tmp_path / name
        synth.generate_split(outs[name], "train", 6, seed=2, progress=False,
                             backgrounds=backgrounds)
    info = {n: json.loads((o / "annotations" / "instances_train.json").read_text())["info"]
            for n, o in outs.items()}
    assert info["custom"]["backgrounds"] == [
        {"name": "stripes.png", "sha256": hashlib.sha256(photo.read_bytes()).hexdigest()}]
    assert info["none"]["backgrounds"] == []
    images = {n: _files(o / "images") for n, o in outs.items()}
    assert images["default"].keys() == images["custom"].keys() == images["none"].keys()
    assert images["custom"] != images["default"] and images["none"] != images["default"]
    again = tmp_path / "again"
    synth.generate_split(again, "train", 6, seed=2, progress=False, backgrounds=[photo])
    assert _files(again / "images") == images["custom"]  # deterministic in the files too
    image, _ = synth.render_scene(np.random.default_rng(1), "mixed", photos=())
    assert image.mode == "RGB"
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        synth.load_photos([bad])


def test_cli_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "5",
                              "--category-ids", "3,7,11,20,21,40"])
    assert args.backgrounds is None  # the shipped photos
    assert synth.run(args) == 0
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 2 and data["categories"][0]["id"] == 3
    assert (tmp_path / "annotations" / "instances_val.json").is_file()
    assert len(data["info"]["backgrounds"]) == 4
    assert parser.parse_args(["--out", "x", "--backgrounds"]).backgrounds == []
    assert parser.parse_args(["--out", "x", "--backgrounds", "a.jpg", "b.png"]).backgrounds == [
        "a.jpg", "b.png"]
