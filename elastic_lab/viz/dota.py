"""DOTA figures: an aerial image with its oriented polygons and horizontal boxes, and the
patches a large image is cut into, coloured by a per-patch value (e.g. the predicted φ).

Aerial images are large (800–4000 px), so the image is embedded as a downscaled PNG
(``go.Image(source=data URI)``, not a pixel array) and every coordinate is multiplied by the
same display factor; traces keep the factor in ``meta["display_scale"]``.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from elastic_lab.data.dota import DotaObject
from elastic_lab.viz._common import color

__all__ = ["dota_objects_figure", "image_source", "patch_values_figure"]


def image_source(image: Image.Image | np.ndarray, max_side: int = 1024
                 ) -> tuple[str, float, tuple[int, int]]:
    """A PNG data URI of ``image`` downscaled to ``max_side`` (never upscaled).

    Returns (URI, display scale = shown px / original px, (shown width, shown height)).
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image
    buf = io.BytesIO()
    shown.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), scale, size


def _image_figure(image, max_side: int) -> tuple[go.Figure, float]:
    uri, scale, (w, h) = image_source(image, max_side)
    fig = go.Figure(go.Image(source=uri, hoverinfo="skip", meta={"kind": "image",
                                                                  "display_scale": scale}))
    fig.update_xaxes(visible=False, range=[0, w])
    fig.update_yaxes(visible=False, range=[h, 0], scaleanchor="x")
    fig.update_layout(margin={"l": 0, "r": 0, "t": 40, "b": 0}, template="plotly_white")
    return fig, scale


def _closed_paths(shapes: Sequence[np.ndarray]) -> tuple[list, list]:
    """x, y lists of closed polylines separated by None (one trace draws many shapes)."""
    xs, ys = [], []
    for pts in shapes:
        xs += [*pts[:, 0].tolist(), float(pts[0, 0]), None]
        ys += [*pts[:, 1].tolist(), float(pts[0, 1]), None]
    return xs, ys


def dota_objects_figure(image, objects: Sequence[DotaObject], max_side: int = 1024,
                        show_hboxes: bool = True) -> go.Figure:
    """The image with each object's quadrilateral (solid) and horizontal box (dashed).

    One polygon trace and one box trace per category (``meta={"kind": "polygons" | "hboxes",
    "category", "count", "difficult", "display_scale"}``); coordinates are image pixels times
    the display scale. The horizontal box is the polygon's enclosing axis-aligned rectangle,
    the box that the horizontal-box metric (VOC07 mAP) and the detector use.
    """
    fig, scale = _image_figure(image, max_side)
    names = list(dict.fromkeys(o.category for o in objects))
    for c, name in enumerate(names):
        objs = [o for o in objects if o.category == name]
        polys = [np.asarray(o.poly, np.float64).reshape(4, 2) * scale for o in objs]
        meta = {"category": name, "count": len(objs), "display_scale": scale,
                "difficult": sum(o.difficult for o in objs)}
        xs, ys = _closed_paths(polys)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{name} ({len(objs)})",
                                 legendgroup=name, line={"color": color(c), "width": 2},
                                 meta={"kind": "polygons", **meta}))
        if show_hboxes:
            boxes = []
            for o in objs:
                x0, y0, x1, y1 = (v * scale for v in o.hbox)
                boxes.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
            xs, ys = _closed_paths(boxes)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{name}: box",
                                     legendgroup=name, showlegend=False,
                                     line={"color": color(c), "width": 1, "dash": "dot"},
                                     meta={"kind": "hboxes", **meta}))
    fig.update_layout(title=f"{len(objects)} objects: polygons (solid) and horizontal boxes "
                            "(dotted)")
    return fig


def patch_values_figure(image, patches: Sequence[Mapping], values: Sequence[float],
                        max_side: int = 1024, name: str = "φ", fmt: str = ".2f") -> go.Figure:
    """The patches of one large image, outlined and coloured by a value per patch.

    ``patches``: dicts with "x", "y", "width", "height" in image pixels (as in a dota-split
    patch map, rate 1). One marker per patch centre carries the colour scale (``meta={"kind":
    "patch_values", "values", "display_scale"}``), labelled with the value in format ``fmt``;
    outlines are one "outlines" trace. Overlapping patches overlap in the figure too.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    if len(patches) != values.size or values.size == 0:
        raise ValueError(f"patch_values_figure: {len(patches)} patches, {values.size} values")
    fig, scale = _image_figure(image, max_side)
    rects, cx, cy = [], [], []
    for i, p in enumerate(patches):
        try:
            x, y, w, h = (float(p[k]) * scale for k in ("x", "y", "width", "height"))
        except KeyError as e:
            raise ValueError(f"patches[{i}]: missing {e.args[0]!r}") from None
        rects.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
        cx.append(x + w / 2)
        cy.append(y + h / 2)
    xs, ys = _closed_paths(rects)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="patches", showlegend=False,
                             line={"color": "white", "width": 1},
                             meta={"kind": "outlines", "display_scale": scale}))
    fig.add_trace(go.Scatter(
        x=cx, y=cy, mode="markers+text", text=[format(v, fmt) for v in values],
        textposition="middle center", textfont={"color": "white", "size": 12},
        marker={"size": 34, "color": values, "colorscale": "Viridis", "opacity": 0.85,
                "colorbar": {"title": name}}, name=name, showlegend=False,
        meta={"kind": "patch_values", "values": values.tolist(), "display_scale": scale}))
    fig.update_layout(title=f"{len(patches)} patches, {name} per patch (range "
                            f"{format(values.min(), fmt)}–{format(values.max(), fmt)})")
    return fig
