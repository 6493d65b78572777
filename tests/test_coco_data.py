"""COCO-format loading (label mapping, box conventions, bad inputs) and coco-subset."""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

from elastic_lab.data import subset, synth
from elastic_lab.data.coco import (
    CocoDetection,
    DataWarning,
    boxes_to_coco,
    collate_fn,
    load_categories,
)

ODD_IDS = [3, 7, 11, 20, 21, 40]


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory) -> Path:
    """Synthetic set whose category ids are non-contiguous."""
    out = tmp_path_factory.mktemp("odd")
    synth.generate_split(out, "train", 8, seed=2, category_ids=ODD_IDS, progress=False)
    return out


def _dataset(root: Path, split: str = "train", **kwargs) -> CocoDetection:
    return CocoDetection(root / "images" / split, root / "annotations" / f"instances_{split}.json",
                         **kwargs)


# ----------------------------------------------------------------------------- conventions

def test_non_contiguous_ids_map_to_labels_and_back(odd_dir):
    ds = _dataset(odd_dir)
    assert ds.label_to_cat_id == ODD_IDS
    assert ds.cat_id_to_label == {cat_id: i for i, cat_id in enumerate(ODD_IDS)}
    assert [c["name"] for c in ds.categories] == list(synth.CLASS_NAMES)
    assert ds.num_classes == 6
    seen = set()
    for index in range(len(ds)):
        _, target = ds[index]
        anns = ds.coco.imgToAnns[target["image_id"]]
        mapped = sorted(ds.label_to_cat_id[label] for label in target["labels"].tolist())
        assert mapped == sorted(a["category_id"] for a in anns)
        seen.update(target["labels"].tolist())
    assert seen <= set(range(6)) and len(seen) >= 4


def test_explicit_category_order_defines_labels(odd_dir):
    given = [{"id": i, "name": n} for i, n in zip(ODD_IDS[::-1], synth.CLASS_NAMES[::-1])]
    ds = _dataset(odd_dir, categories=given)
    assert ds.label_to_cat_id == ODD_IDS[::-1]
    _, target = next(t for t in (ds[i] for i in range(len(ds))) if len(t[1]["labels"]))
    anns = ds.coco.imgToAnns[target["image_id"]]
    assert sorted(ODD_IDS[::-1][label] for label in target["labels"].tolist()) == sorted(
        a["category_id"] for a in anns)
    with pytest.raises(ValueError, match=r"category id 99 .* not in the file"):
        _dataset(odd_dir, categories=given[:5] + [{"id": 99, "name": "cat"}])


def test_load_categories_sorted_by_id(odd_dir):
    cats = load_categories(odd_dir / "annotations" / "instances_train.json")
    assert cats == [{"id": i, "name": n} for i, n in zip(ODD_IDS, synth.CLASS_NAMES)]


def test_item_format_and_box_round_trip(odd_dir):
    ds = _dataset(odd_dir)
    for index in range(len(ds)):
        image, target = ds[index]
        info = ds.coco.imgs[target["image_id"]]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["orig_size"].tolist() == [info["height"], info["width"]]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        boxes = target["boxes"]
        assert boxes.shape == (len(target["labels"]), 4)
        if len(boxes):
            assert (boxes >= 0).all() and (boxes <= 1).all()
        anns = sorted(ds.coco.imgToAnns[target["image_id"]], key=lambda a: a["id"])
        expected = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        torch.testing.assert_close(boxes_to_coco(boxes, target["orig_size"]), expected,
                                   atol=1e-3, rtol=0)


def test_box_conversion_round_trip_random():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 200
    wh = torch.rand(50, 2, generator=gen) * 100 + 1
    xywh = torch.cat([xy, wh], 1)
    h, w = 300, 400
    cxcywh = box_convert(xywh, "xywh", "cxcywh") / torch.tensor([w, h, w, h])
    torch.testing.assert_close(boxes_to_coco(cxcywh, (h, w)), xywh, atol=1e-4, rtol=0)


def test_collate_and_dataloader(synth_dir):
    ds = _dataset(synth_dir, "val")
    assert len(ds) == 8 and ds.label_to_cat_id == [1, 2, 3, 4, 5, 6]
    ds.check_files()
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert len(images) == len(targets) == 3
    assert [t["image_id"] for t in targets] == ds.ids[:3]
    assert all(img.shape[0] == 3 for img in images)
    assert collate_fn([]) == ([], [])


# ----------------------------------------------------------------------------- bad inputs

def _write_set(root: Path, annotations: list[dict], n_images: int = 2, size=(40, 30)) -> Path:
    """Tiny hand-written COCO set: n images of size (w, h), categories 5 'a' and 9 'b'."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n_images):
        Image.new("RGB", size, (i * 40, 0, 0)).save(root / "images" / f"im{i}.png")
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "width": size[0], "height": size[1]})
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]}))
    return ann_file


def _ann(ann_id: int, bbox, image_id: int = 10, category_id: int = 5, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_malformed_json_names_file_and_position(tmp_path):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ValueError, match=re.escape(str(ann_file)) + r".*line 2, column"):
        CocoDetection(tmp_path, ann_file)
    with pytest.raises(ValueError, match=re.escape(str(ann_file))):
        load_categories(ann_file)


def test_missing_field_names_record_and_field(tmp_path):
    ann_file = _write_set(tmp_path, [{"id": 77, "image_id": 10, "category_id": 5}])
    with pytest.raises(ValueError, match=r"annotation id 77 lacks field 'bbox'"):
        CocoDetection(tmp_path / "images", ann_file)


def test_unknown_category_names_file_and_annotation(tmp_path):
    ann_file = _write_set(tmp_path, [_ann(1, [1, 1, 5, 5]), _ann(42, [1, 1, 5, 5], category_id=6)])
    with pytest.raises(ValueError, match=re.escape(str(ann_file)) + r": annotation id 42 .*category id 6"):
        CocoDetection(tmp_path / "images", ann_file)


def test_bad_boxes_dropped_or_clipped_with_one_warning_each(tmp_path):
    ann_file = _write_set(tmp_path, [
        _ann(1, [2, 3, 10, 8]),                      # fine
        _ann(2, [30, 20, 20, 20], category_id=9),    # partly outside: clipped to 30..40, 20..30
        _ann(3, [5, 5, -4, 6]),                      # negative size
        _ann(4, [50, 40, 5, 5]),                     # entirely outside
        _ann(5, [5, 5, 0.5, 6]),                     # degenerate
        _ann(6, [1, 1, 20, 20], iscrowd=1),          # crowd: not a training target
    ])
    with pytest.warns(DataWarning) as record:
        ds = CocoDetection(tmp_path / "images", ann_file)
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 3
    for ann_id, what in ((3, "negative"), (4, "outside"), (5, "degenerate")):
        assert any(str(ann_file) in m and f"annotation id {ann_id}:" in m and what in m
                   for m in messages), (ann_id, messages)
    _, target = ds[ds.ids.index(10)]
    assert target["labels"].tolist() == [0, 1]
    torch.testing.assert_close(boxes_to_coco(target["boxes"], target["orig_size"]),
                               torch.tensor([[2.0, 3, 10, 8], [30, 20, 10, 10]]))
    _, empty = ds[ds.ids.index(11)]  # image without annotations is kept
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    with warnings.catch_warnings():  # no repeated warnings when iterating (epochs)
        warnings.simplefilter("error")
        for _ in range(2):
            for i in range(len(ds)):
                ds[i]


def test_missing_and_corrupt_images_name_the_path(tmp_path):
    ann_file = _write_set(tmp_path, [_ann(1, [2, 3, 10, 8])], n_images=3)
    (tmp_path / "images" / "im1.png").unlink()
    (tmp_path / "images" / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = CocoDetection(tmp_path / "images", ann_file)
    missing, corrupt = tmp_path / "images" / "im1.png", tmp_path / "images" / "im2.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ds.check_files()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ds[ds.ids.index(11)]
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        ds[ds.ids.index(12)]
    assert ds[ds.ids.index(10)][1]["labels"].tolist() == [0]


def test_image_size_mismatch_and_exif_orientation(tmp_path):
    ann_file = _write_set(tmp_path, [_ann(1, [2, 3, 10, 8])], n_images=3, size=(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90"
    # im0: stored 30 x 40 pixels, upright 40 x 30 as recorded -> EXIF applied
    Image.new("RGB", (30, 40)).save(tmp_path / "images" / "im0.png", exif=exif)
    # im1: plain 20 x 20 pixels, recorded as 40 x 30 -> error
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "im1.png")
    # im2: stored 40 x 30 as recorded, upright 30 x 40 -> annotations made on the stored pixels
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "im2.png", exif=exif)
    ds = CocoDetection(tmp_path / "images", ann_file)
    image, _ = ds[0]
    assert image.shape == (3, 30, 40)
    with pytest.warns(DataWarning, match="EXIF orientation ignored"):
        image, _ = ds[2]
    assert image.shape == (3, 30, 40)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "images" / "im1.png")) + ".*20 x 20"):
        ds[1]


# ----------------------------------------------------------------------------- coco-subset

def test_coco_subset_keeps_only_chosen_categories(odd_dir, tmp_path, capsys):
    ann = odd_dir / "annotations" / "instances_train.json"
    out = subset.make_subset(ann, odd_dir / "images" / "train", ["ring", "dot_triangle"],
                             tmp_path / "sub", max_images=3, seed=1, split="val", progress=False)
    assert out == tmp_path / "sub" / "annotations" / "instances_val.json"
    coco = COCO(str(out))
    capsys.readouterr()
    assert sorted(coco.cats) == [7, 40]
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {7, 40}
    assert 1 <= len(coco.imgs) <= 3
    original = COCO(str(ann))
    capsys.readouterr()
    for image_id in coco.imgs:
        assert coco.imgToAnns[image_id]
        assert (tmp_path / "sub" / "images" / "val" / coco.imgs[image_id]["file_name"]).is_file()
        kept = [a for a in original.imgToAnns[image_id] if a["category_id"] in (7, 40)]
        assert sorted(a["id"] for a in coco.imgToAnns[image_id]) == sorted(a["id"] for a in kept)
    ds = CocoDetection(tmp_path / "sub" / "images" / "val", out)
    assert ds.label_to_cat_id == [7, 40] and len(ds[0][1]["labels"]) > 0
    again = subset.make_subset(ann, odd_dir / "images" / "train", ["ring", "dot_triangle"],
                               tmp_path / "sub2", max_images=3, seed=1, split="val", progress=False)
    assert again.read_text() == out.read_text()


def test_coco_subset_unknown_category_lists_available(odd_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown category 'zebra'; available: .*cross_square"):
        subset.make_subset(odd_dir / "annotations" / "instances_train.json",
                           odd_dir / "images" / "train", ["ring", "zebra"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_coco_subset_cli(synth_dir, tmp_path):
    parser = argparse.ArgumentParser()
    subset.add_arguments(parser)
    args = parser.parse_args([
        "--ann", str(synth_dir / "annotations" / "instances_train.json"),
        "--images", str(synth_dir / "images" / "train"), "--categories", "disc, square",
        "--max-images", "5", "--out", str(tmp_path)])
    assert subset.run(args) == 0
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["disc", "square"]
    assert len(data["images"]) == 5
    assert subset.default_split_name("x/instances_val2017.json") == "val2017"
    assert np.all([(tmp_path / "images" / "train" / i["file_name"]).is_file() for i in data["images"]])
