"""Detections drawn into the pixels with Pillow (the app's result image, the README picture).

The plotly figures of this package are for notebooks; a drawn PNG is what a user downloads.
``draw_detections`` scales the picture for display (small images enlarged, large ones reduced),
outlines the ground truth when it is known, draws every detection box in its class colour and
puts a "label score" tag on the best ones, each tag kept inside the picture and clear of the
tags already placed (``place_label``). It returns the picture and where the tags went, so that
callers and tests can check the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["DISPLAY_MAX", "DISPLAY_MIN", "MAX_LABELS", "PALETTE", "Drawing", "display_scale",
           "draw_detections", "label_font", "place_label"]

MAX_LABELS = 25     # boxes beyond the 25 best are drawn without a text label
DISPLAY_MIN = 768   # px; smaller images are enlarged to this long side (labels stay legible)
DISPLAY_MAX = 1024  # px; larger images are reduced to this long side

# one colour per class index (tab10), as RGB
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
Rect = tuple[float, float, float, float]


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` px (the bitmap default where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def display_scale(width: int, height: int, min_side: int = DISPLAY_MIN,
                  max_side: int = DISPLAY_MAX) -> float:
    """Factor that brings the long side into [min_side, max_side] (1 when it already is)."""
    long = max(width, height)
    if long < min_side:
        return min_side / long
    if long > max_side:
        return max_side / long
    return 1.0


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_label(box: Rect, size: tuple[float, float], canvas: tuple[int, int],
                placed: Sequence[Rect]) -> Rect | None:
    """Where a tag of ``size`` (w, h) goes for ``box`` (x1, y1, x2, y2), or None.

    Tried in turn: above the box, inside its top edge, below it, inside its bottom edge, each
    shifted into the canvas; the first that overlaps no tag in ``placed`` wins. None when all
    collide (the box is then drawn without a tag) or the tag is wider than the canvas.
    """
    (x1, y1, _, y2), (tw, th), (cw, ch) = box, size, canvas
    if tw > cw or th > ch:
        return None
    x = min(max(x1, 0.0), cw - tw)
    for y in (y1 - th, y1, y2, y2 - th):
        y = min(max(y, 0.0), ch - th)
        rect = (x, y, x + tw, y + th)
        if not any(_overlaps(rect, p) for p in placed):
            return rect
    return None


@dataclass
class Drawing:
    """A drawn picture, the factor from original to drawn pixels and the tags' rectangles."""

    image: Image.Image
    scale: float
    labels: list[Rect] = field(default_factory=list)
    unlabelled: int = 0  # boxes drawn without a tag (beyond max_labels or no free place)


def draw_detections(image: Image.Image, detections: Sequence[dict], categories: Sequence[dict],
                    ground_truth: Sequence[dict] = (), scale: float | None = None,
                    max_labels: int = MAX_LABELS) -> Drawing:
    """``image`` scaled by ``scale`` (default ``display_scale``) with its boxes drawn on it.

    ``detections`` are in original pixels ({"label", "category_id", "score", "box" x1y1x2y2});
    the colour follows the class index in ``categories``. ``ground_truth`` boxes ({"box"} in
    original pixels) are outlined white on black first, so a detection over its object shows.
    Every box is drawn; the ``max_labels`` best get a tag (text is the slow part).
    """
    s = display_scale(image.width, image.height) if scale is None else float(scale)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    canvas = (image.convert("RGB") if size == image.size
              else image.convert("RGB").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    draw = ImageDraw.Draw(canvas)
    long = max(size)
    font = label_font(max(11, round(long / 56)))
    line = max(1, round(long / 320))
    for g in ground_truth:
        x1, y1, x2, y2 = (v * s for v in g["box"])
        draw.rectangle([x1 - 1, y1 - 1, max(x1, x2) + 1, max(y1, y2) + 1], outline=(0, 0, 0),
                       width=line + 2)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=(255, 255, 255), width=line)
    index = {c["id"]: i for i, c in enumerate(categories)}
    ranked = sorted(detections, key=lambda d: -d["score"])
    colours = [PALETTE[index.get(d["category_id"], 0) % len(PALETTE)] for d in ranked]
    boxes = [tuple(v * s for v in d["box"]) for d in ranked]
    for colour, (x1, y1, x2, y2) in zip(reversed(colours), reversed(boxes)):  # best on top
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
    placed: list[Rect] = []
    unlabelled = max(0, len(ranked) - max_labels)
    for d, colour, box in zip(ranked[:max_labels], colours, boxes):  # best placed first
        text = f"{d['label']} {d['score']:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        rect = place_label(box, (tx1 - tx0 + 4, ty1 - ty0 + 4), size, placed)
        if rect is None:
            unlabelled += 1
            continue
        placed.append(rect)
        draw.rectangle(rect, fill=colour)
        draw.text((rect[0] + 2 - tx0, rect[1] + 2 - ty0), text, fill=(255, 255, 255), font=font)
    return Drawing(canvas, s, placed, unlabelled)
