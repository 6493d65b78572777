"""Synthetic, scale-diverse detection data in COCO format.

The set is built to make the Elastic-DETR phenomenon visible on a CPU: six shape classes that
differ only by a fine detail (disc / ring, square / square with a cross, triangle / triangle
with a dot), drawn at a per-image zoom level that ranges from ~6 px objects to objects larger
than half the image. A tiny ring is hard to tell from a tiny disc at the detector's stride, so
images full of tiny objects profit from up-scaling; large objects keep their detail when the
image is down-scaled, so those images can be processed cheaply.

Every image gets a *regime*:

- ``tiny``: many (12-30) objects of ~6-14 px,
- ``medium``: a handful of 14-40 px objects,
- ``mixed``: 5-15 objects whose sides are drawn independently from 6 px to 0.6 x short side,
- ``large``: 1-3 objects of 0.3-0.7 x the short side,
- ``empty``: background and distractors only (5 % of the images).

Backgrounds are cluttered: random crops of the real photographs that ship with gradio, colour
gradients, low-frequency texture, distractor lines / blobs / elongated ellipses / arcs (never
one of the classes), and pixel noise. All drawing is anti-aliased (4x supersampling), objects
and distractors alike, so that edge quality is no cue.

Generation is deterministic: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, split_index, i])``, so the same seed gives byte-identical PNGs
and JSON, whatever the number of worker processes.

Layout written by :func:`generate`::

    OUT/images/{train,val,test}/000000.png ...
    OUT/annotations/instances_{split}.json     (COCO: images, annotations, categories)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "cross_square", "triangle", "dot_triangle",
)
REGIMES: tuple[str, ...] = ("tiny", "medium", "mixed", "large", "empty")
# One block of 20 consecutive images holds exactly these regimes (shuffled per block), so any
# 20 images contain every regime and the empty share is exactly 5 %.
REGIME_BLOCK: tuple[str, ...] = ("tiny",) * 6 + ("medium",) * 4 + ("mixed",) * 4 + (
    "large",) * 5 + ("empty",)
SPLITS: tuple[str, ...] = ("train", "val", "test")
PHOTO_NAMES: tuple[str, ...] = ("bus.png", "cheetah.jpg", "lion.jpg", "tower.jpg")

MIN_OBJECT_SIDE = 6.0        # px, nominal side of the smallest object
MAX_OBJECTS = 30             # objects per image at most (a detector needs >= this many queries)
LONG_SIDE_RANGE = (224, 320)  # px, image long side (inclusive)
ASPECT_RANGE = (0.6, 1.6)    # width / height, drawn log-uniformly
SUPERSAMPLE = 4              # anti-aliasing factor of every drawn shape
EXAMPLE_SIZE = (288, 224)    # (width, height) of the images written by write_examples

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
DrawFn = Callable[[ImageDraw.ImageDraw, Callable[[np.ndarray], list[tuple[float, float]]]], None]


# ----------------------------------------------------------------------------- photographs

def _gradio_media() -> ModuleType | None:
    """gradio's ``media`` module, loaded without importing all of gradio (which takes seconds)."""
    if "gradio.media" in sys.modules:
        return sys.modules["gradio.media"]
    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "media.py"
    try:
        media_spec = importlib.util.spec_from_file_location("_elastic_lab_gradio_media", path)
        module = importlib.util.module_from_spec(media_spec)
        media_spec.loader.exec_module(module)
        return module
    except Exception:  # noqa: BLE001 - any failure: use the ordinary import
        import gradio.media

        return gradio.media


@lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The real photographs shipped with gradio as uint8 RGB arrays [H, W, 3] (loaded once).

    Returns an empty tuple, with a warning, when gradio is not installed; backgrounds then use
    gradients and noise only.
    """
    try:
        media = _gradio_media()
        if media is None:
            raise ImportError("gradio is not installed")
        photos = []
        for name in PHOTO_NAMES:
            with Image.open(media.get_image(name)) as image:
                photos.append(np.asarray(image.convert("RGB")))
        return tuple(photos)
    except (ImportError, OSError) as error:
        warnings.warn(
            f"synthetic backgrounds without real photographs ({error}); using noise only",
            RuntimeWarning, stacklevel=2,
        )
        return ()


# ----------------------------------------------------------------------------- drawing

def _log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate points [N, 2] about the origin by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _paste_antialiased(image: Image.Image, box: Box, colour: Sequence[int], draw_fn: DrawFn) -> None:
    """Draw a shape into a supersampled mask covering ``box`` and paste ``colour`` through it.

    ``draw_fn(draw, to_mask)`` draws with value 255 (or 0 to cut holes); ``to_mask`` maps image
    coordinates [N, 2] to mask coordinates.
    """
    width, height = image.size
    x0, y0 = max(0, math.floor(box[0]) - 1), max(0, math.floor(box[1]) - 1)
    x1, y1 = min(width, math.ceil(box[2]) + 1), min(height, math.ceil(box[3]) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    origin = np.array([x0, y0], dtype=np.float64)

    def to_mask(points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in ((np.atleast_2d(points) - origin) * SUPERSAMPLE).tolist()]

    draw_fn(ImageDraw.Draw(mask), to_mask)
    image.paste(tuple(int(c) for c in colour), (x0, y0, x1, y1), mask.reduce(SUPERSAMPLE))


def _ellipse(centre: np.ndarray, rx: float, ry: float, fill: int = 255):
    def draw_fn(draw, to_mask):
        (a, b), (c, d) = to_mask(np.array([centre - (rx, ry), centre + (rx, ry)]))
        draw.ellipse((a, b, c, d), fill=fill)
    return draw_fn


def _polygon(points: np.ndarray, fill: int = 255):
    def draw_fn(draw, to_mask):
        draw.polygon(to_mask(points), fill=fill)
    return draw_fn


def _combine(*fns):
    def draw_fn(draw, to_mask):
        for fn in fns:
            fn(draw, to_mask)
    return draw_fn


def _bar(centre: np.ndarray, half_length: float, half_width: float, angle: float) -> np.ndarray:
    corners = np.array([[-half_length, -half_width], [half_length, -half_width],
                        [half_length, half_width], [-half_length, half_width]])
    return centre + _rotate(corners, angle)


def _shape_geometry(name: str, side: float, angle: float, rng: np.random.Generator):
    """Outline of class ``name`` centred at the origin.

    Returns (extent [2, 2] = min/max xy relative to the centre, body(centre) -> draw_fn,
    detail(centre) -> draw_fn or None).
    """
    radius = side / 2
    if name in ("disc", "ring"):
        extent = np.array([[-radius, -radius], [radius, radius]])
        if name == "disc":
            return extent, lambda c: _ellipse(c, radius, radius), None
        inner = radius * (1 - rng.uniform(0.35, 0.5))
        return extent, lambda c: _combine(_ellipse(c, radius, radius),
                                          _ellipse(c, inner, inner, fill=0)), None
    if name in ("square", "cross_square"):
        corners = _rotate(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * radius, angle)
        body = lambda c: _polygon(c + corners)
        detail = None
        if name == "cross_square":
            half_width = max(0.09 * side, 0.45)
            detail = lambda c: _combine(
                _polygon(_bar(c, 0.36 * side, half_width, angle)),
                _polygon(_bar(c, 0.36 * side, half_width, angle + math.pi / 2)))
        return np.array([corners.min(0), corners.max(0)]), body, detail
    if name in ("triangle", "dot_triangle"):
        circumradius = side / math.sqrt(3)
        phases = np.deg2rad([-90.0, 30.0, 150.0]) + angle
        corners = circumradius * np.stack([np.cos(phases), np.sin(phases)], axis=1)
        body = lambda c: _polygon(c + corners)
        detail = None
        if name == "dot_triangle":
            dot = max(0.12 * side, 0.9)
            detail = lambda c: _ellipse(c, dot, dot)
        return np.array([corners.min(0), corners.max(0)]), body, detail
    raise ValueError(f"unknown shape class {name!r}; expected one of {CLASS_NAMES}")


def _contrasting(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour clearly darker or lighter than ``colour`` (for the fine detail)."""
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    if luminance > 128:
        return colour * rng.uniform(0.0, 0.3)
    return colour + (255 - colour) * rng.uniform(0.7, 1.0)


# ----------------------------------------------------------------------------- background

def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Cluttered background as float32 [H, W, 3] in [0, 255] (before distractors)."""
    photos = load_photos()
    kind = rng.choice(["photo", "gradient", "flat"], p=[0.5, 0.3, 0.2]) if photos else (
        rng.choice(["gradient", "flat"], p=[0.6, 0.4]))
    if kind == "photo":
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        frac = rng.uniform(0.35, 1.0)
        aspect = width / height
        ch = max(8, min(ph, int(frac * min(ph, pw / aspect))))
        cw = max(8, min(pw, int(ch * aspect)))
        y0, x0 = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        base = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR), np.float32)
        tint = rng.uniform(0, 255, 3).astype(np.float32)
        base = base + rng.uniform(0.0, 0.4) * (tint - base)
    elif kind == "gradient":
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        base = c0 + t[..., None] * (c1 - c0)
    else:
        base = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (height, width, 3))
    # low-frequency texture
    coarse = rng.uniform(-1, 1, (max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    texture = np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., k])).resize(
            (width, height), Image.Resampling.BICUBIC)) for k in range(3)], axis=-1)
    return np.clip(base + rng.uniform(0, 40) * texture, 0, 255).astype(np.float32)


def _draw_distractors(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Lines, irregular blobs, elongated ellipses and arcs: clutter that is none of the classes."""
    width, height = image.size
    short = min(width, height)
    for _ in range(count):
        size = float(_log_uniform(rng, 4.0, 0.6 * short))
        centre = rng.uniform([0, 0], [width, height])
        colour = rng.integers(0, 256, 3)
        kind = rng.integers(4)
        if kind == 0:  # line or polyline
            points = centre + np.cumsum(rng.normal(0, size / 2, (rng.integers(2, 5), 2)), axis=0)
            line_width = float(rng.uniform(0.7, 3.5))
            box = (*(points.min(0) - line_width), *(points.max(0) + line_width))

            def draw_fn(draw, to_mask, points=points, line_width=line_width):
                draw.line(to_mask(points), fill=255, width=max(1, round(line_width * SUPERSAMPLE)))
        elif kind == 1:  # irregular blob with a jagged outline
            k = rng.integers(7, 13)
            phases = np.sort(rng.uniform(0, 2 * math.pi, k))
            radii = size / 2 * rng.uniform(0.45, 1.0, k)
            points = centre + np.stack([radii * np.cos(phases), radii * np.sin(phases)], 1)
            box = (*points.min(0), *points.max(0))
            draw_fn = _polygon(points)
        elif kind == 2:  # elongated ellipse (never round like a disc)
            rx = size / 2
            ry = rx / rng.uniform(2.5, 6.0)
            if rng.random() < 0.5:
                rx, ry = ry, rx
            box = (centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry)
            draw_fn = _ellipse(centre, rx, ry)
        else:  # open arc
            r = size / 2
            start = float(rng.uniform(0, 360))
            extent = float(rng.uniform(60, 240))
            line_width = float(rng.uniform(0.7, 3.0))
            box = (centre[0] - r - 2, centre[1] - r - 2, centre[0] + r + 2, centre[1] + r + 2)

            def draw_fn(draw, to_mask, centre=centre, r=r, start=start, extent=extent,
                        line_width=line_width):
                (a, b), (c, d) = to_mask(np.array([centre - r, centre + r]))
                draw.arc((a, b, c, d), start, start + extent, fill=255,
                         width=max(1, round(line_width * SUPERSAMPLE)))
        _paste_antialiased(image, box, colour, draw_fn)


# ----------------------------------------------------------------------------- scenes

def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """Random image size (width, height): long side in LONG_SIDE_RANGE, aspect in ASPECT_RANGE."""
    long_side = int(rng.integers(LONG_SIDE_RANGE[0], LONG_SIDE_RANGE[1] + 1))
    aspect = float(_log_uniform(rng, *ASPECT_RANGE))
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def _object_sides(rng: np.random.Generator, regime: str, short: int) -> np.ndarray:
    """Nominal object sides in pixels for one image, largest first."""
    if regime == "tiny":
        zoom = _log_uniform(rng, MIN_OBJECT_SIDE, 14.0)
        sides = zoom * _log_uniform(rng, 0.85, 1.18, rng.integers(12, MAX_OBJECTS + 1))
    elif regime == "medium":
        zoom = _log_uniform(rng, 14.0, 40.0)
        sides = zoom * _log_uniform(rng, 0.85, 1.18, rng.integers(3, 13))
    elif regime == "mixed":
        sides = _log_uniform(rng, MIN_OBJECT_SIDE, 0.6 * short, rng.integers(5, 16))
    elif regime == "large":
        zoom = _log_uniform(rng, 0.3, 0.7) * short
        sides = np.minimum(zoom * _log_uniform(rng, 0.85, 1.15, rng.integers(1, 4)), 0.8 * short)
    elif regime == "empty":
        sides = np.zeros(0)
    else:
        raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    return np.sort(np.maximum(sides, MIN_OBJECT_SIDE))[::-1]


def _overlaps(box: Box, boxes: list[Box], margin: float = 1.0) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin
               and b[1] < box[3] + margin for b in boxes)


def render_scene(
    rng: np.random.Generator, regime: str, size: tuple[int, int] | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Render one synthetic scene.

    Args:
        rng: the random generator (consumed).
        regime: one of REGIMES ("tiny", "medium", "mixed", "large", "empty").
        size: (width, height) in pixels; drawn with :func:`sample_size` when None.

    Returns:
        (RGB PIL image, annotations), each annotation {"bbox": [x, y, w, h] in pixels (tight box
        of the drawn shape, rounded to 0.01 px), "category": class name}.
    """
    width, height = size if size is not None else sample_size(rng)
    sides = _object_sides(rng, regime, min(width, height))
    image = Image.fromarray(_background(rng, width, height).astype(np.uint8))
    _draw_distractors(image, rng, int(rng.integers(3, 14)))
    background = np.asarray(image, dtype=np.float32)

    boxes: list[Box] = []
    annotations = []
    for side in sides:
        name = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
        angle = math.radians(rng.uniform(-20, 20))
        extent, body, detail = _shape_geometry(name, float(side), angle, rng)
        box_w, box_h = extent[1] - extent[0]
        if box_w + 2 > width or box_h + 2 > height:
            continue
        for _ in range(40):  # rejection sampling of a free position
            x0 = rng.uniform(1, width - 1 - box_w)
            y0 = rng.uniform(1, height - 1 - box_h)
            box = (x0, y0, x0 + box_w, y0 + box_h)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        boxes.append(box)
        centre = np.array([x0, y0]) - extent[0]
        local = background[int(y0):math.ceil(box[3]), int(x0):math.ceil(box[2])]
        local_mean = local.reshape(-1, 3).mean(0)
        for _ in range(6):  # a colour that stands out from the local background
            colour = rng.integers(0, 256, 3).astype(np.float64)
            if np.abs(colour - local_mean).sum() > 150:
                break
        _paste_antialiased(image, box, colour, body(centre))
        if detail is not None:
            _paste_antialiased(image, box, _contrasting(colour, rng), detail(centre))
        annotations.append({
            "bbox": [round(float(x0), 2), round(float(y0), 2),
                     round(float(box_w), 2), round(float(box_h), 2)],
            "category": name,
        })

    pixels = np.asarray(image, dtype=np.float32)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(2.0, 12.0)
    image = Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))
    return image, annotations


def regime_for_index(seed: int, split_index: int, index: int) -> str:
    """Regime of image ``index``: each block of 20 images is a shuffled copy of REGIME_BLOCK."""
    block_rng = np.random.default_rng([seed, split_index, len(REGIME_BLOCK), index // len(REGIME_BLOCK)])
    return REGIME_BLOCK[block_rng.permutation(len(REGIME_BLOCK))[index % len(REGIME_BLOCK)]]


def _render_and_save(job: tuple[int, int, int, str]) -> tuple[int, int, str, list[dict]]:
    """Worker: render image ``index`` of a split and write its PNG; returns (w, h, regime, anns)."""
    seed, split_index, index, image_dir = job
    regime = regime_for_index(seed, split_index, index)
    image, annotations = render_scene(np.random.default_rng([seed, split_index, index]), regime)
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
) -> Path:
    """Write ``num_images`` images of ``split`` and its COCO json; returns the json path."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = categories_for(category_ids)
    name_to_id = {c["name"]: c["id"] for c in categories}
    split_index = SPLITS.index(split)
    load_photos()  # once, before forking workers
    jobs = [(seed, split_index, i, str(image_dir)) for i in range(num_images)]
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
                 "version": "1"},
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
) -> dict[str, Path]:
    """Write the train/val(/test) splits; returns {split: annotation file}. Splits of 0 are skipped."""
    counts = {"train": train, "val": val, "test": test}
    return {split: generate_split(out_dir, split, n, seed, category_ids, workers, progress)
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


def run(args: argparse.Namespace) -> int:
    """Run ``elastic-lab synth``."""
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    generate(args.out, args.train, args.val, args.test, args.seed, args.category_ids, args.workers)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
