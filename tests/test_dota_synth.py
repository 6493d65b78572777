"""Synthetic aerial scenes: DOTA-format output, determinism, and the split on top of them."""

import argparse
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from elastic_lab.data import synth_aerial
from elastic_lab.data.dota import load_dota_folder
from elastic_lab.data.dota_split import split_dota
from elastic_lab.data.synth_aerial import SYNTH_CLASSES, write_synth_aerial


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_writes_a_dota_folder(tmp_path: Path):
    parser = argparse.ArgumentParser()
    synth_aerial.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "a"), "--images", "4", "--seed", "3"])
    assert synth_aerial.run(args) == 0
    items = load_dota_folder(tmp_path / "a")  # parses with the v1.0 class list
    assert len(items) == 4
    counts, n_difficult, n_small = Counter(), 0, 0
    for entry, label in items:
        assert label.image_source == "elastic-lab-synth" and 0.1 <= label.gsd <= 0.6
        w, h = Image.open(entry.image_path).size
        assert 1024 <= w <= 2048 and 1024 <= h <= 2048
        assert len(label.objects) >= 30  # many objects per scene
        for o in label.objects:
            x0, y0, x1, y1 = o.hbox
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            n_small += max(x1 - x0, y1 - y0) < 32
        counts.update(o.category for o in label.objects)
        n_difficult += sum(o.difficult for o in label.objects)
    total = sum(counts.values())
    assert set(counts) == set(SYNTH_CLASSES)
    assert 0.04 < n_difficult / total < 0.2  # ~10 % difficult
    assert n_small / total > 0.5  # mostly small objects
    sizes = [max(o.hbox[2] - o.hbox[0], o.hbox[3] - o.hbox[1]) for _, lab in items
             for o in lab.objects]
    assert max(sizes) > 80  # plus a few large ones


def test_deterministic_per_seed(tmp_path: Path):
    write_synth_aerial(tmp_path / "a", 2, seed=7, max_size=1100, progress=False)
    write_synth_aerial(tmp_path / "b", 2, seed=7, max_size=1100, progress=False)
    write_synth_aerial(tmp_path / "c", 1, seed=8, max_size=1100, progress=False)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a["images/P0000.png"] != c["images/P0000.png"]
    assert a["labelTxt/P0000.txt"] != c["labelTxt/P0000.txt"]
    # The scene is textured, not flat: the ground varies.
    pixels = np.asarray(Image.open(tmp_path / "a" / "images" / "P0000.png"), dtype=float)
    assert pixels.std() > 10


def test_split_of_synthetic_set_loads_with_pycocotools(tmp_path: Path):
    write_synth_aerial(tmp_path / "src", 1, seed=0, max_size=1400, progress=False)
    stats = split_dota(tmp_path / "src", tmp_path / "out", split="train", patch=800, gap=200,
                       progress=False)
    coco = COCO(str(tmp_path / "out" / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == stats["patches"] >= 4
    assert len(coco.getAnnIds()) == stats["annotations"] > 30
    names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert set(SYNTH_CLASSES) <= names
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
        assert w > 0 and h > 0 and ann["difficult"] in (0, 1)
