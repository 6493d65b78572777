"""A smaller COCO-format set: chosen categories, at most N images (``elastic-lab coco-subset``).

Images are drawn (deterministically for a seed) among those that contain at least one
annotation of a chosen category, then hard-linked (or copied, across file systems) to
``OUT/images/{split}/``; ``OUT/annotations/instances_{split}.json`` keeps only the chosen
categories with their original ids and only their annotations (crowd ones included, as
COCOeval expects). Image records are kept unchanged.

Example (COCO val2017, people and dogs, 500 images)::

    elastic-lab coco-subset --ann annotations/instances_val2017.json --images val2017 \\
        --categories person,dog --max-images 500 --out data/coco-person-dog --split val
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from elastic_lab.data.coco import read_annotation_json


def default_split_name(ann_file: str | Path) -> str:
    """Split name from an annotation file name: ``instances_val2017.json`` -> ``val2017``."""
    stem = Path(ann_file).stem
    return stem.removeprefix("instances_") or "train"


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists() and target.resolve() == source.resolve():
        return
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_subset(
    ann_file: str | Path, image_dir: str | Path, categories: Sequence[str], out_dir: str | Path,
    max_images: int | None = None, seed: int = 0, split: str | None = None,
    progress: bool = True,
) -> Path:
    """Write a subset with the named ``categories``; returns the new annotation file.

    Raises ValueError (listing the available names) for an unknown category name and
    FileNotFoundError (naming the path) for a missing source image, before writing anything.
    """
    ann_file, image_dir, out_dir = Path(ann_file), Path(image_dir), Path(out_dir)
    split = split or default_split_name(ann_file)
    data = read_annotation_json(ann_file)
    by_name = {c["name"]: c for c in data["categories"]}
    names = list(dict.fromkeys(n.strip() for n in categories if n.strip()))
    if not names:
        raise ValueError("no categories given")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"{ann_file}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}; available: {', '.join(sorted(by_name))}")
    chosen_ids = {by_name[n]["id"] for n in names}

    candidates = sorted({a["image_id"] for a in data["annotations"] if a["category_id"] in chosen_ids})
    if max_images is not None and max_images < len(candidates):
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        picked = np.random.default_rng(seed).choice(len(candidates), size=max_images, replace=False)
        candidates = [candidates[i] for i in sorted(picked)]
    keep = set(candidates)
    images = [img for img in data["images"] if img["id"] in keep]
    annotations = [a for a in data["annotations"]
                   if a["image_id"] in keep and a["category_id"] in chosen_ids]

    sources = [image_dir / img["file_name"] for img in images]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {ann_file} not found: "
                                f"{', '.join(missing[:10])}")
    target_dir = out_dir / "images" / split
    for img, source in tqdm(list(zip(images, sources)), desc="coco-subset", unit="img",
                            disable=not progress):
        target = target_dir / img["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, target)

    subset = {key: value for key, value in data.items()
              if key not in ("images", "annotations", "categories")}
    subset.update(images=images, annotations=annotations,
                  categories=[c for c in data["categories"] if c["id"] in chosen_ids])
    out_file = out_dir / "annotations" / f"instances_{split}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(subset))
    return out_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elastic-lab coco-subset``."""
    parser.add_argument("--ann", type=Path, required=True, help="COCO annotation json")
    parser.add_argument("--images", type=Path, required=True, help="folder of its images")
    parser.add_argument("--categories", required=True,
                        help="comma-separated category names, e.g. person,dog")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many images")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice")
    parser.add_argument("--split", default=None,
                        help="split name (default: from --ann, instances_val2017.json -> val2017)")


def run(args: argparse.Namespace) -> int:
    """Run ``elastic-lab coco-subset``."""
    make_subset(args.ann, args.images, args.categories.split(","), args.out,
                args.max_images, args.seed, args.split)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
