"""Writing the synthetic set: COCO-format splits, the bundled example images, ``elastic-lab synth``.

Generation is deterministic: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, split_index, i])`` (its regime from the shuffled block of
20 it belongs to), so the same seed and background photographs give byte-identical PNGs and
JSON, whatever the number of worker processes. Layout written by :func:`generate`::

    OUT/images/{train,val,test}/000000.png ...
    OUT/annotations/instances_{split}.json     (COCO: info, images, annotations, categories)

The JSON's ``info`` records the seed, the split and the background photographs (name and
SHA-256); every image record carries its ``regime``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backgrounds import Backgrounds, background_record, load_photos
from .drawing import CLASS_NAMES
from .scenes import regime_for_index, render_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
EXAMPLE_SIZE = (288, 224)    # (width, height) of the images written by write_examples


def _render_and_save(job: tuple[int, int, int, str, tuple[str, ...] | None]
                     ) -> tuple[int, int, str, list[dict]]:
    """Worker: render image ``index`` of a split and write its PNG; returns (w, h, regime, anns)."""
    seed, split_index, index, image_dir, backgrounds = job
    regime = regime_for_index(seed, split_index, index)
    image, annotations = render_scene(np.random.default_rng([seed, split_index, index]), regime,
                                      photos=load_photos(backgrounds))
    image.save(Path(image_dir) / f"{index:06d}.png", format="PNG", compress_level=1)
    return image.width, image.height, regime, annotations


def categories_for(category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO categories of the synthetic set; ids 1..6 unless ``category_ids`` (6 ints) is given."""
    ids = list(range(1, len(CLASS_NAMES) + 1)) if category_ids is None else [int(i) for i in category_ids]
    if len(ids) != len(CLASS_NAMES) or len(set(ids)) != len(ids):
        raise ValueError(f"category_ids must be {len(CLASS_NAMES)} distinct ints, got {category_ids}")
    return [{"id": i, "name": n, "supercategory": "shape"} for i, n in zip(ids, CLASS_NAMES)]


def generate_split(
    out_dir: str | Path, split: str, num_images: int, seed: int = 0,
    category_ids: Sequence[int] | None = None, workers: int = 1, progress: bool = True,
    backgrounds: Backgrounds = None,
) -> Path:
    """Write ``num_images`` images of ``split`` and its COCO json; returns the json path.

    ``backgrounds``: image files for the photographic backgrounds (None: the shipped photos,
    empty: none).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = categories_for(category_ids)
    name_to_id = {c["name"]: c["id"] for c in categories}
    split_index = SPLITS.index(split)
    files = None if backgrounds is None else tuple(str(Path(p)) for p in backgrounds)
    load_photos(files)  # once, before forking workers
    jobs = [(seed, split_index, i, str(image_dir), files) for i in range(num_images)]
    bar = {"total": num_images, "desc": f"synth {split}", "unit": "img", "disable": not progress}
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_render_and_save, jobs, chunksize=8), **bar))
    else:
        results = [_render_and_save(job) for job in tqdm(jobs, **bar)]

    images, annotations = [], []
    for index, (width, height, regime, anns) in enumerate(results):
        images.append({"id": index + 1, "file_name": f"{index:06d}.png", "width": width,
                       "height": height, "regime": regime})
        for ann in anns:
            w, h = ann["bbox"][2:]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": name_to_id[ann["category"]], "bbox": ann["bbox"],
                                "area": round(w * h, 2), "iscrowd": 0})
    data = {
        "info": {"description": f"elastic-lab synthetic shapes, split {split}, seed {seed}",
                 "version": "1", "seed": seed, "split": split,
                 "backgrounds": background_record(files)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = out_dir / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return ann_file


def generate(
    out_dir: str | Path, train: int, val: int, test: int = 0, seed: int = 0,
    category_ids: Sequence[int] | None = None, workers: int = 1, progress: bool = True,
    backgrounds: Backgrounds = None,
) -> dict[str, Path]:
    """Write the train/val(/test) splits; returns {split: annotation file}. Splits of 0 are skipped."""
    counts = {"train": train, "val": val, "test": test}
    return {split: generate_split(out_dir, split, n, seed, category_ids, workers, progress,
                                  backgrounds)
            for split, n in counts.items() if n > 0}


def write_examples(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write tiny.png, mixed.png and large.png (deterministic example scenes); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, regime in enumerate(("tiny", "mixed", "large")):
        image, _ = render_scene(np.random.default_rng([seed, 7919, k]), regime, EXAMPLE_SIZE)
        path = out_dir / f"{regime}.png"
        image.save(path, format="PNG")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elastic-lab synth``."""
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train", type=int, default=2000, help="number of train images")
    parser.add_argument("--val", type=int, default=300, help="number of val images")
    parser.add_argument("--test", type=int, default=0, help="number of test images (0: no split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (output is identical)")
    parser.add_argument("--category-ids", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, help=f"6 comma-separated COCO ids for {','.join(CLASS_NAMES)}")
    parser.add_argument("--backgrounds", nargs="*", default=None, metavar="IMAGE",
                        help="image files for the photographic backgrounds (default: the four "
                             "photos shipped with elastic-lab; none given: no photos)")


def run(args: argparse.Namespace) -> int:
    """Run ``elastic-lab synth``."""
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    generate(args.out, args.train, args.val, args.test, args.seed, args.category_ids, args.workers,
             backgrounds=args.backgrounds)
    return 0
