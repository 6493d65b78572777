"""DOTA patch splitting (windows, 0.7 keep rule, COCO output) and merging back."""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from elastic_lab.data import dota_split
from elastic_lab.data.dota import DotaLabel, DotaObject, write_label_txt
from elastic_lab.data.dota_split import (
    clip_polygon_to_rect,
    crop_objects,
    load_patch_map,
    merge_patch_detections,
    parse_patch_name,
    patch_name,
    polygon_area,
    split_dota,
    window_offsets,
)


def _box(x0, y0, x1, y1, category="plane", difficult=0) -> DotaObject:
    return DotaObject((x0, y0, x1, y0, x1, y1, x0, y1), category, difficult)


def test_window_offsets_snap_to_edge():
    assert window_offsets(2500, 1024, 200) == [0, 824, 1476]  # 1648 + 1024 > 2500: snapped
    assert window_offsets(1848, 1024, 200) == [0, 824]  # exact fit, nothing extra
    assert window_offsets(1024, 1024, 200) == [0]
    assert window_offsets(600, 1024, 200) == [0]  # shorter than a patch: one (smaller) window
    for length in range(1025, 6000, 37):
        offs = window_offsets(length, 1024, 200)
        assert offs[0] == 0 and offs[-1] + 1024 == length  # covers the side, never beyond it
        assert all(0 < b - a <= 824 for a, b in itertools.pairwise(offs))
    with pytest.raises(ValueError):
        window_offsets(100, 64, 64)


def test_clip_polygon_to_rect():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    clipped = clip_polygon_to_rect(square, 5, -1, 20, 20)
    assert polygon_area(clipped) == pytest.approx(50.0)
    assert clipped[:, 0].min() == 5 and clipped[:, 0].max() == 10
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], dtype=float)  # area 50
    corner = clip_polygon_to_rect(diamond, 0, 0, 5, 5)  # a quarter: triangle of area 12.5
    assert polygon_area(corner) == pytest.approx(12.5)
    assert len(clip_polygon_to_rect(square, 20, 20, 30, 30)) == 0
    # Two corners cut off a rotated square: a hexagon.
    assert len(clip_polygon_to_rect(diamond, 1, 0, 9, 10)) == 6


def test_keep_rule_threshold_and_clipping():
    # Patch [0, 1024) of a 2500 px row. 100 px wide objects straddling x = 1024.
    kept_74 = _box(950, 10, 1050, 30)   # 74 % inside -> kept, clipped to the patch
    dropped_64 = _box(960, 40, 1060, 60)  # 64 % inside -> dropped
    exact_70 = _box(954, 70, 1054, 90)  # exactly 70 % -> kept (>=)
    inside = _box(100, 100, 120, 110, "ship", difficult=1)
    kept = crop_objects([kept_74, dropped_64, exact_70, inside], 0, 0, 1024, 1024, 0.7)
    assert [k[0] for k in kept] == [kept_74, exact_70, inside]
    _, clipped, truncated = kept[0]
    assert truncated and clipped[:, 0].max() == 1024 and clipped[:, 0].min() == 950
    assert kept[2][2] is False
    # In the next window (x = 824) they are whole and shifted by the offset.
    kept = crop_objects([kept_74, dropped_64], 824, 0, 1024, 1024, 0.7)
    assert len(kept) == 2 and kept[0][1][:, 0].min() == pytest.approx(950 - 824)
    # A rotated object (diamond of area 5000): the rule uses the polygon, not its box.
    diamond = DotaObject((50, 0, 100, 50, 50, 100, 0, 50), "plane")
    # Window x <= 65: 65 % of the box but the cut-off triangle is 35 * 70 / 2 = 1225 -> 75.5 %.
    kept = crop_objects([diamond], 0, 0, 65, 100, 0.7)
    assert kept and polygon_area(kept[0][1]) == pytest.approx(5000 - 1225)
    assert len(kept[0][1]) == 5 and kept[0][2]
    # Window [0, 60]^2: 1250 + 2 * 450 + 100 = 2250 -> 45 % -> dropped.
    assert not crop_objects([diamond], 0, 0, 60, 60, 0.7)


def test_patch_name_round_trip():
    name = patch_name("P0001", 1.0, 824, 0)
    assert name == "P0001__1.0__824___0.png"
    assert parse_patch_name(name) == ("P0001", 1.0, 824, 0)
    assert parse_patch_name("my__img__0.5__10___20") == ("my__img", 0.5, 10, 20)
    with pytest.raises(ValueError, match="not a DOTA patch name"):
        parse_patch_name("P0001.png")


COLORS = {"plane": (255, 0, 0), "ship": (0, 255, 0), "storage-tank": (0, 0, 255)}


def _make_folder(root: Path, images: dict[str, tuple[tuple[int, int], list[DotaObject]]]) -> None:
    """DOTA folder whose objects are solid axis-aligned rectangles of a class colour on black."""
    for stem, (size, objects) in images.items():
        img = Image.new("RGB", size)
        draw = ImageDraw.Draw(img)
        for o in objects:
            x0, y0, x1, y1 = o.hbox
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLORS[o.category])
        (root / "images").mkdir(parents=True, exist_ok=True)
        img.save(root / "images" / f"{stem}.png")
        write_label_txt(root / "labelTxt" / f"{stem}.txt", DotaLabel(objects, "test", 0.5))


def _scene() -> dict:
    return {
        "P0001": ((2500, 1100), [
            _box(950, 10, 1050, 40),                         # cut by the first window's edge
            _box(960, 500, 1060, 540, "ship", difficult=1),  # 64 % in window 0 -> only in 824
            _box(2400, 1000, 2480, 1080, "storage-tank"),
        ]),
        "P0002": ((600, 500), [_box(10, 10, 50, 30, "ship")]),  # smaller than a patch
    }


def test_split_writes_coco_set(tmp_path: Path):
    _make_folder(tmp_path / "src", _scene())
    stats = split_dota(tmp_path / "src", tmp_path / "out", split="val", patch=1024, gap=200,
                       progress=False)
    assert stats["sources"] == 2 and stats["dropped_objects"] == 0
    ann_file = tmp_path / "out" / "annotations" / "instances_val.json"
    coco = COCO(str(ann_file))  # loads with pycocotools
    names = sorted(img["file_name"] for img in coco.dataset["images"])
    # P0001: x offsets 0, 824, 1476; y offsets 0, 76 (1100 px high). P0002: one 600x500 window.
    expected = sorted([patch_name("P0001", 1.0, x, y) for x in (0, 824, 1476) for y in (0, 76)]
                      + [patch_name("P0002", 1.0, 0, 0)])
    assert names == expected and stats["patches"] == 7
    for name in names:
        assert (tmp_path / "out" / "images" / "val" / name).is_file()
    small = next(i for i in coco.dataset["images"] if i["dota_source"] == "P0002")
    assert (small["width"], small["height"]) == (600, 500)
    assert Image.open(tmp_path / "out" / "images" / "val" / small["file_name"]).size == (600, 500)
    cats = coco.dataset["categories"]
    assert [c["id"] for c in cats] == list(range(1, 16)) and cats[0]["name"] == "plane"
    assert cats[6]["name"] == "ship"

    def anns_of(x, y):
        img = next(i for i in coco.dataset["images"]
                   if (i["dota_source"], i["dota_x"], i["dota_y"]) == ("P0001", x, y))
        assert img["dota_rate"] == 1.0
        return coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))

    first = anns_of(0, 0)
    assert len(first) == 1 and first[0]["bbox"] == [950.0, 10.0, 74.0, 30.0]
    assert first[0]["truncated"] and first[0]["category_id"] == 1
    middle = anns_of(824, 0)
    assert sorted(a["category_id"] for a in middle) == [1, 7]
    ship = next(a for a in middle if a["category_id"] == 7)
    assert ship["difficult"] == 1 and ship["bbox"] == [960.0 - 824, 500.0, 100.0, 40.0]
    last = anns_of(1476, 76)
    assert [a["bbox"] for a in last] == [[2400.0 - 1476, 1000.0 - 76, 80.0, 80.0]]

    pmap = json.loads((tmp_path / "out" / "patch_map.json").read_text())["splits"]["val"]
    assert pmap["patches"][patch_name("P0001", 1.0, 1476, 76)] == {
        "source": "P0001", "rate": 1.0, "x": 1476, "y": 76, "width": 1024, "height": 1024,
        "source_width": 2500, "source_height": 1100}
    assert pmap["sources"]["P0002"]["width"] == 600


def test_split_with_rate_and_cli(tmp_path: Path):
    _make_folder(tmp_path / "src", {"P0001": _scene()["P0001"]})
    parser = argparse.ArgumentParser()
    dota_split.add_arguments(parser)
    args = parser.parse_args(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                              "--rates", "0.5", "--patch", "1024", "--split", "train",
                              "--skip-empty"])
    assert dota_split.run(args) == 0
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    # 2500 x 1100 at rate 0.5 -> 1250 x 550: x offsets 0, 226; one row of 550 px high windows.
    assert sorted(i["file_name"] for i in coco["images"]) == [
        "P0001__0.5__0___0.png", "P0001__0.5__226___0.png"]
    assert all((i["width"], i["height"]) == (1024, 550) for i in coco["images"])
    first = next(i for i in coco["images"] if i["dota_x"] == 0)
    boxes = sorted(a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"])
    assert boxes == [[475.0, 5.0, 50.0, 15.0], [480.0, 250.0, 50.0, 20.0]]  # halved, whole
    # A second split into the same folder adds its own section to the patch map.
    split_dota(tmp_path / "src", tmp_path / "out", split="val", progress=False)
    assert len(load_patch_map(tmp_path / "out", "train")["patches"]) == 2
    assert load_patch_map(tmp_path / "out", "val")["rates"] == [1.0]
    with pytest.raises(ValueError, match=r"patch_map\.json: no split 'test'"):
        load_patch_map(tmp_path / "out", "test")


def test_merge_recovers_object_cut_by_border():
    # One plane at source x 950..1050 seen by the windows at x = 0 (clipped) and x = 824.
    info = {
        "P1__1.0__0___0.png": {"source": "P1", "rate": 1.0, "x": 0, "y": 0},
        "P1__1.0__824___0.png": {"source": "P1", "rate": 1.0, "x": 824, "y": 0},
        "P1__0.5__0___0.png": {"source": "P1", "rate": 0.5, "x": 0, "y": 0},
        "P2__1.0__0___0.png": {"source": "P2", "rate": 1.0, "x": 0, "y": 0,
                               "source_width": 100, "source_height": 100},
    }
    dets = {
        "P1__1.0__0___0.png": ([[952, 10, 1024, 40]], [0.6], [0]),
        "P1__1.0__824___0.png": (torch.tensor([[126.0, 10, 226, 40], [126, 10, 226, 40]]),
                                 torch.tensor([0.9, 0.8]), torch.tensor([0, 3])),
        "P1__0.5__0___0.png": ([[475.0, 5, 525, 20]], [0.7], [0]),  # same plane at half size
        "P2__1.0__0___0.png": ([[90.0, 90, 120, 130]], [0.5], [1]),
    }
    merged = merge_patch_detections(dets, info, iou_threshold=0.5)
    boxes, scores, labels = merged["P1"]
    # Plane: three views -> one box (the best) at full-image coordinates; class 3 kept apart.
    assert labels.tolist() == [0, 3] and scores.tolist() == pytest.approx([0.9, 0.8])
    assert boxes[0].tolist() == [950.0, 10.0, 1050.0, 40.0]
    p2_boxes = merged["P2"][0]
    assert p2_boxes.tolist() == [[90.0, 90.0, 100.0, 100.0]]  # clipped to the source size
    # The half-scale view maps back by dividing by the rate.
    only_half = merge_patch_detections({"P1__0.5__0___0.png": dets["P1__0.5__0___0.png"]}, info)
    assert only_half["P1"][0].tolist() == [[950.0, 10.0, 1050.0, 40.0]]
    assert len(only_half["P2"][0]) == 0  # every source present, empty when nothing detected
    with pytest.raises(KeyError, match="unknown patch"):
        merge_patch_detections({"nope.png": ([], [], [])}, info)
