"""Drawing of the synthetic set: the six shape classes and anti-aliased pasting.

Every shape is drawn into a mask supersampled ``SUPERSAMPLE`` times and pasted through it, so
that objects and distractors alike have anti-aliased edges and edge quality is no cue. The
classes differ only by a fine detail: disc / ring, square / square with a cross, triangle /
triangle with a dot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "cross_square", "triangle", "dot_triangle",
)
SUPERSAMPLE = 4              # anti-aliasing factor of every drawn shape

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
DrawFn = Callable[[ImageDraw.ImageDraw, Callable[[np.ndarray], list[tuple[float, float]]]], None]


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
