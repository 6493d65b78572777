"""Cut DOTA images into overlapping patches (a COCO-format set) and merge detections back.

``elastic-lab dota-split --src DIR --out DIR [--patch 1024] [--gap 200] [--rates 1.0]``

For each rate r the image is first resized by r (bicubic), then cut by sliding windows of
``patch`` px with stride ``patch - gap``; the last window of a row/column is snapped to the
image edge, so no window reaches past the image (offsets for 2500 px, patch 1024, gap 200:
0, 824, 1476). An image side shorter than ``patch`` gives one window of that side's length:
patches are NOT padded (the detector resizes each image anyway, and padding would add fake
black ground).

An object is kept in a patch when area(poly ∩ patch) / area(poly) >= ``keep_threshold`` (0.7,
as in the DOTA devkit); its polygon is clipped to the patch (Sutherland–Hodgman) and its COCO
``bbox`` is the horizontal box of the clipped polygon (``area`` is that box's w * h, as
bbox evaluation uses; ``segmentation`` the clipped polygon). Zero-area polygons are dropped,
and so are objects that no window holds to 70 % (e.g. fields larger than a patch).
The difficult flag is kept in the annotation field ``difficult``; ``truncated`` says whether
the polygon was clipped (the devkit writes difficult=2 for those; we keep both facts apart).

Output::

    OUT/images/{split}/P0001__1.0__824___0.png       # source stem, rate, x offset, y offset
    OUT/annotations/instances_{split}.json           # COCO; category ids 1-based in class order
    OUT/patch_map.json                               # {"splits": {split: {..., "patches": {...}}}}

Offsets in names and records are pixels of the *resized* image: a patch pixel (u, v) lies at
((u + x) / r, (v + y) / r) in the source image (see ``merge_patch_detections``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.ops import batched_nms
from tqdm import tqdm

from elastic_lab.data.dota import IMAGE_EXTENSIONS, DotaObject, dota_classes, list_dota_images

log = logging.getLogger(__name__)

PATCH_MAP_FORMAT = "elastic-lab dota patch map v1"


def window_offsets(length: int, patch: int, gap: int) -> list[int]:
    """Window starts along one side: stride ``patch - gap``, last window snapped to the edge."""
    if patch <= 0 or not 0 <= gap < patch:
        raise ValueError(f"need patch > 0 and 0 <= gap < patch, got patch={patch}, gap={gap}")
    if length <= patch:
        return [0]
    offsets = [0]
    while offsets[-1] + patch < length:
        offsets.append(min(offsets[-1] + patch - gap, length - patch))
    return offsets


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon, points [K, 2] (shoelace formula, any orientation)."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_polygon_to_rect(
    points: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """Sutherland–Hodgman clip of a polygon [K, 2] to the rectangle [x0, x1] x [y0, y1].

    Returns the clipped polygon [M, 2] (M = 0 when nothing is left).
    """
    poly = [tuple(p) for p in np.asarray(points, dtype=np.float64)]
    # Each edge: (axis, bound, keep_greater).
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not poly:
            break

        def inside(p, axis=axis, bound=bound, keep_greater=keep_greater):
            return p[axis] >= bound if keep_greater else p[axis] <= bound

        out = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            if inside(cur) != inside(prev):  # the edge prev -> cur crosses the clip line
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append(tuple(cross))
            if inside(cur):
                out.append(cur)
        poly = out
    # Drop consecutive duplicates (vertices lying on the clip lines).
    dedup = [p for i, p in enumerate(poly) if not np.allclose(p, poly[i - 1])]
    return np.asarray(dedup, dtype=np.float64).reshape(-1, 2)


def crop_objects(
    objects: Sequence[DotaObject], x: float, y: float, w: float, h: float,
    keep_threshold: float = 0.7, scale: float = 1.0,
) -> list[tuple[DotaObject, np.ndarray, bool]]:
    """Objects kept in the window [x, x+w] x [y, y+h] of the image resized by ``scale``.

    Returns [(object, clipped polygon [M, 2] in window pixels, truncated)], in input order.
    """
    kept = []
    for obj in objects:
        pts = np.asarray(obj.poly, dtype=np.float64).reshape(4, 2) * scale
        area = polygon_area(pts)
        if area <= 0:
            continue
        if pts[:, 0].max() <= x or pts[:, 0].min() >= x + w:
            continue
        if pts[:, 1].max() <= y or pts[:, 1].min() >= y + h:
            continue
        clipped = clip_polygon_to_rect(pts, x, y, x + w, y + h)
        inside = polygon_area(clipped) / area
        if inside >= keep_threshold:
            kept.append((obj, clipped - np.array([x, y]), inside < 1.0 - 1e-9))
    return kept


def patch_name(stem: str, rate: float, x: int, y: int, ext: str = ".png") -> str:
    """DOTA-devkit patch name, e.g. ``P0001__1.0__824___0.png`` (x = left, y = top)."""
    return f"{stem}__{float(rate)!r}__{int(x)}___{int(y)}{ext}"


def parse_patch_name(name: str) -> tuple[str, float, int, int]:
    """Inverse of ``patch_name``: (source stem, rate, x, y)."""
    base = Path(name).name
    if Path(base).suffix.lower() in IMAGE_EXTENSIONS:
        base = Path(base).stem
    try:
        rest, y = base.rsplit("___", 1)
        stem, rate, x = rest.rsplit("__", 2)
        return stem, float(rate), int(x), int(y)
    except ValueError:
        raise ValueError(f"not a DOTA patch name 'STEM__RATE__X___Y': {name!r}") from None


def _open_rgb(path: Path) -> Image.Image:
    """Open an image as RGB; DOTA v2 images exceed PIL's decompression-bomb limit on purpose."""
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def split_dota(
    src_dir: str | Path, out_dir: str | Path, split: str = "train", patch: int = 1024,
    gap: int = 200, rates: Sequence[float] = (1.0,), version: str = "1.0",
    keep_threshold: float = 0.7, skip_empty: bool = False, require_labels: bool = True,
    progress: bool = True,
) -> dict:
    """Split a DOTA folder (``images/``, ``labelTxt/``) into a COCO patch set under ``out_dir``.

    ``skip_empty`` leaves out patches without objects (for training only: evaluation needs
    every patch). Returns counts {"sources", "patches", "annotations", "dropped_objects"}.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    classes = dota_classes(version)
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)

    images, annotations, patches, sources = [], [], {}, {}
    n_objects = n_kept_any = 0
    entries = list_dota_images(src_dir, require_labels)
    for entry in tqdm(entries, desc=f"dota-split {split}", disable=not progress):
        objects = entry.read_label(version).objects
        source = _open_rgb(entry.image_path)
        sources[entry.stem] = {"width": source.width, "height": source.height,
                               "image": str(entry.image_path.relative_to(src_dir))}
        n_objects += len(objects)
        kept_ids: set[int] = set()
        for rate in rates:
            rate = float(rate)
            if rate == 1.0:
                scaled = source
            else:
                size = (max(1, round(source.width * rate)), max(1, round(source.height * rate)))
                scaled = source.resize(size, Image.Resampling.BICUBIC)
            w, h = min(patch, scaled.width), min(patch, scaled.height)
            for y in window_offsets(scaled.height, patch, gap):
                for x in window_offsets(scaled.width, patch, gap):
                    kept = crop_objects(objects, x, y, w, h, keep_threshold, rate)
                    if skip_empty and not kept:
                        continue
                    name = patch_name(entry.stem, rate, x, y)
                    scaled.crop((x, y, x + w, y + h)).save(image_dir / name, compress_level=1)
                    image_id = len(images) + 1
                    images.append({"id": image_id, "file_name": name, "width": w, "height": h,
                                   "dota_source": entry.stem, "dota_rate": rate,
                                   "dota_x": x, "dota_y": y})
                    patches[name] = {"source": entry.stem, "rate": rate, "x": x, "y": y,
                                     "width": w, "height": h, "source_width": source.width,
                                     "source_height": source.height}
                    for obj, clipped, truncated in kept:
                        kept_ids.add(id(obj))
                        x0, y0 = clipped.min(axis=0)
                        x1, y1 = clipped.max(axis=0)
                        annotations.append({
                            "id": len(annotations) + 1, "image_id": image_id,
                            "category_id": cat_id[obj.category],
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "area": float((x1 - x0) * (y1 - y0)),
                            "segmentation": [[round(float(v), 3) for v in clipped.ravel()]],
                            "iscrowd": 0, "difficult": obj.difficult, "truncated": truncated,
                        })
        n_kept_any += len(kept_ids)

    categories = [{"id": cat_id[name], "name": name, "supercategory": "dota"} for name in classes]
    coco = {"info": {"description": f"DOTA v{version} patches of {src_dir}", "patch": patch,
                     "gap": gap, "rates": [float(r) for r in rates]},
            "images": images, "annotations": annotations, "categories": categories}
    (out_dir / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))

    map_path = out_dir / "patch_map.json"
    patch_map = json.loads(map_path.read_text()) if map_path.exists() else {}
    patch_map["format"] = PATCH_MAP_FORMAT
    patch_map.setdefault("splits", {})[split] = {
        "src_dir": str(src_dir.resolve()), "patch": patch, "gap": gap,
        "rates": [float(r) for r in rates], "version": version, "keep_threshold": keep_threshold,
        "sources": sources, "patches": patches,
    }
    map_path.write_text(json.dumps(patch_map, indent=1))
    return {"sources": len(entries), "patches": len(images), "annotations": len(annotations),
            "dropped_objects": n_objects - n_kept_any}


def load_patch_map(split_dir: str | Path, split: str) -> dict:
    """The ``split`` section of ``split_dir/patch_map.json`` (ValueError names the file)."""
    path = Path(split_dir) / "patch_map.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no patch map (make one with elastic-lab dota-split)")
    data = json.loads(path.read_text())
    if data.get("format") != PATCH_MAP_FORMAT or split not in data.get("splits", {}):
        raise ValueError(f"{path}: no split {split!r} (have {sorted(data.get('splits', {}))})")
    return data["splits"][split]


def merge_patch_detections(
    patch_dets: Mapping[str, tuple], patch_info: Mapping[str, Mapping],
    iou_threshold: float = 0.5,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Map patch detections to full-image pixels and apply class-wise NMS per source image.

    patch_dets: {patch name: (boxes [N, 4] x1y1x2y2 patch pixels, scores [N], labels [N])}.
    patch_info: {patch name: {"source", "rate", "x", "y"[, "source_width", "source_height"]}}
        (the ``patches`` of a patch map). A source box is (patch box + (x, y, x, y)) / rate,
        clipped to the source size when known.
    Returns {source: (boxes [M, 4] float32, scores [M], labels [M] int64)} sorted by score, with
    an entry (possibly empty) for every source named in ``patch_info``.
    """
    per_source: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for info in patch_info.values():
        per_source.setdefault(info["source"], [])
    for name, (boxes, scores, labels) in patch_dets.items():
        if name not in patch_info:
            raise KeyError(f"detections for unknown patch {name!r} (not in the patch map)")
        info = patch_info[name]
        boxes = torch.as_tensor(boxes, dtype=torch.float32).detach().cpu().reshape(-1, 4)
        offset = torch.tensor([info["x"], info["y"], info["x"], info["y"]], dtype=torch.float32)
        boxes = (boxes + offset) / float(info["rate"])
        if "source_width" in info:
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, info["source_width"])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, info["source_height"])
        per_source[info["source"]].append(
            (boxes, torch.as_tensor(scores, dtype=torch.float32).detach().cpu().reshape(-1),
             torch.as_tensor(labels, dtype=torch.int64).detach().cpu().reshape(-1)))
    merged = {}
    for source, parts in per_source.items():
        boxes = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, 4)
        scores = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0)
        labels = torch.cat([p[2] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        keep = batched_nms(boxes, scores, labels, iou_threshold)  # sorted by decreasing score
        merged[source] = (boxes[keep], scores[keep], labels[keep])
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-lab dota-split``."""
    parser.add_argument("--src", required=True, type=Path, help="DOTA folder: images/, labelTxt/")
    parser.add_argument("--out", required=True, type=Path, help="output folder (COCO patch set)")
    parser.add_argument("--split", default="train", help="split name in the output (train/val)")
    parser.add_argument("--patch", type=int, default=1024, help="patch side in pixels")
    parser.add_argument("--gap", type=int, default=200, help="overlap between patches (pixels)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0],
                        help="resize factors applied before cutting, e.g. 0.5 1.0")
    parser.add_argument("--version", default="1.0", choices=["1.0", "1.5", "2.0"],
                        help="DOTA version (class list)")
    parser.add_argument("--keep-threshold", type=float, default=0.7,
                        help="keep an object when area(poly ∩ patch)/area(poly) >= this")
    parser.add_argument("--skip-empty", action="store_true",
                        help="leave out patches without objects (training sets only)")
    parser.add_argument("--allow-missing-labels", action="store_true",
                        help="treat images without labelTxt files as having no objects")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``elastic-lab dota-split``."""
    stats = split_dota(args.src, args.out, split=args.split, patch=args.patch, gap=args.gap,
                       rates=args.rates, version=args.version, keep_threshold=args.keep_threshold,
                       skip_empty=args.skip_empty, require_labels=not args.allow_missing_labels)
    log.info("dota-split: %d source images -> %d patches, %d annotations (%d objects in no patch)"
             " in %s", stats["sources"], stats["patches"], stats["annotations"],
             stats["dropped_objects"], args.out)
    return 0
