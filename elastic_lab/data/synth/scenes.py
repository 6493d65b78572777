"""Scenes of the synthetic set: an image size, a regime, and objects placed on a background.

Every image gets a *regime*:

- ``tiny``: many (12-30) objects of ~6-14 px,
- ``medium``: a handful of 14-40 px objects,
- ``mixed``: 5-15 objects whose sides are drawn independently from 6 px to 0.6 x short side,
- ``large``: 1-3 objects of 0.3-0.7 x the short side,
- ``empty``: background and distractors only (5 % of the images).

:func:`render_scene` consumes one random generator in a fixed order (size, sides, background,
distractors, then per object class, angle, position and colours, finally pixel noise), so a
scene is a function of the generator's seed and of the background photographs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .backgrounds import _background, _draw_distractors, load_photos
from .drawing import (
    CLASS_NAMES,
    Box,
    _contrasting,
    _log_uniform,
    _paste_antialiased,
    _shape_geometry,
)

REGIMES: tuple[str, ...] = ("tiny", "medium", "mixed", "large", "empty")
# One block of 20 consecutive images holds exactly these regimes (shuffled per block), so any
# 20 images contain every regime and the empty share is exactly 5 %.
REGIME_BLOCK: tuple[str, ...] = ("tiny",) * 6 + ("medium",) * 4 + ("mixed",) * 4 + (
    "large",) * 5 + ("empty",)

MIN_OBJECT_SIDE = 6.0        # px, nominal side of the smallest object
MAX_OBJECTS = 30             # objects per image at most (a detector needs >= this many queries)
LONG_SIDE_RANGE = (224, 320)  # px, image long side (inclusive)
ASPECT_RANGE = (0.6, 1.6)    # width / height, drawn log-uniformly


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
    photos: Sequence[np.ndarray] | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Render one synthetic scene.

    Args:
        rng: the random generator (consumed).
        regime: one of REGIMES ("tiny", "medium", "mixed", "large", "empty").
        size: (width, height) in pixels; drawn with :func:`sample_size` when None.
        photos: background photographs, uint8 [H, W, 3] each (backgrounds.load_photos);
            None: the shipped ones; empty: gradients and flat colours only.

    Returns:
        (RGB PIL image, annotations), each annotation {"bbox": [x, y, w, h] in pixels (tight box
        of the drawn shape, rounded to 0.01 px), "category": class name}.
    """
    width, height = size if size is not None else sample_size(rng)
    sides = _object_sides(rng, regime, min(width, height))
    photos = load_photos() if photos is None else photos
    image = Image.fromarray(_background(rng, width, height, photos).astype(np.uint8))
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
