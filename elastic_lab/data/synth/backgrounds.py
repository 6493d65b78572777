"""Backgrounds of the synthetic set: photographs, gradients, texture and distractors.

The photographs are an explicit input. By default they are the four files shipped in
``photos/`` (copies of Gradio's media assets, Apache-2.0: see ``photos/NOTICE``), loaded with
:mod:`importlib.resources`; a caller may pass other image files instead, or none (then every
background is a gradient or a flat colour). Which files were used, with their SHA-256, is
recorded in the annotation file's ``info`` (:func:`background_record`), so a data set says
what it was drawn from.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .drawing import SUPERSAMPLE, _ellipse, _log_uniform, _paste_antialiased, _polygon

PHOTO_NAMES: tuple[str, ...] = ("bus.png", "cheetah.jpg", "lion.jpg", "tower.jpg")
Backgrounds = Sequence[str | Path] | None  # image files; None: the shipped photographs


def _sources(backgrounds: Backgrounds) -> list[tuple[str, bytes]]:
    """(name, file content) of each background photograph, in order."""
    if backgrounds is None:
        folder = resources.files(__package__) / "photos"
        return [(name, (folder / name).read_bytes()) for name in PHOTO_NAMES]
    return [(Path(p).name, Path(p).read_bytes()) for p in backgrounds]


@lru_cache(maxsize=4)
def _load(backgrounds: tuple[str, ...] | None) -> tuple[np.ndarray, ...]:
    photos = []
    for name, content in _sources(backgrounds):
        try:
            with Image.open(io.BytesIO(content)) as image:
                photos.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise ValueError(f"background {name}: not a readable image ({error})") from error
    return tuple(photos)


def load_photos(backgrounds: Backgrounds = None) -> tuple[np.ndarray, ...]:
    """The background photographs as uint8 RGB arrays [H, W, 3] (loaded once per set of files):
    the shipped ones (None, in the order of PHOTO_NAMES) or the given image files."""
    return _load(None if backgrounds is None else tuple(str(p) for p in backgrounds))


def background_record(backgrounds: Backgrounds = None) -> list[dict]:
    """[{"name", "sha256"}] of the background photographs, for the annotation file's info."""
    return [{"name": name, "sha256": hashlib.sha256(content).hexdigest()}
            for name, content in _sources(backgrounds)]


def _background(rng: np.random.Generator, width: int, height: int,
                photos: Sequence[np.ndarray]) -> np.ndarray:
    """Cluttered background as float32 [H, W, 3] in [0, 255] (before distractors): a random
    crop of one of ``photos`` (uint8 [H, W, 3]; half of the images when there are any), a
    colour gradient or a flat colour, plus low-frequency texture."""
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
