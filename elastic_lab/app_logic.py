"""The demo app's logic without the UI (``app.py`` holds the Gradio layout).

Everything here is plain Python and testable without a server:

* ``open_upload`` validates an uploaded file with Pillow (not an image, corrupt or truncated,
  decompression-bomb sized, too small, extreme aspect ratio) and returns upright 8-bit RGB,
  with notes on what was converted (16-bit, CMYK, alpha, palette, EXIF rotation, animation).
* ``DetectorService`` keeps the loaded models (one per checkpoint), their FLOP and latency
  tables, and answers ``detect`` and ``sweep`` requests.
* ``draw_detections``, ``summary_markdown`` and ``sweep_figure`` turn results into what the
  page shows; ``write_result_json`` writes the downloadable JSON.

Latency is measured per processed size and memoised (``LatencyTable``, the twin of
``evaluate.FlopTable``): the first image at a new size pays a few extra forward passes, every
later one pays nothing, so a ``/detect`` call costs about one inference.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from plotly.subplots import make_subplots

from .data.image import image_tensor, to_rgb
from .flops import FlopTable, LatencyTable
from .models.build import load_model
from .models.elastic_detr import ElasticDETR
from .predict import predict_image, scale_sweep
from .resize import processed_size

MAX_PIXELS = 40_000_000            # refuse larger images before decoding them (decompression bombs)
MIN_SIDE = 16                      # px; smaller images carry nothing to detect
MAX_PROCESSED_PIXELS = 4_000_000   # the detector's input at tau_max (catches 1 x 5000 strips)
MAX_FILE_SIZE = "25mb"             # upload limit passed to gradio's launch(max_file_size=...)
SWEEP_POINTS = 9
MAX_LABELS = 25                    # boxes beyond the 25 best are drawn without a text label
DISPLAY_SIDE = 1024                # px; larger images are drawn downscaled to this long side

# one colour per class index (tab10), as RGB
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class InputImageError(ValueError):
    """An uploaded file cannot be used as an image; the message says why and what to do."""


# --------------------------------------------------------------------------- input validation
@dataclass
class Upload:
    """A validated upload: upright RGB pixels plus what was done to get them."""

    image: Image.Image
    name: str
    format: str
    mode: str
    stored_size: tuple[int, int]           # (width, height) as stored in the file
    notes: list[str] = field(default_factory=list)


def _describe_conversion(im: Image.Image) -> list[str]:
    """Human-readable notes on how ``to_rgb`` will change ``im`` (before converting it)."""
    notes = []
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied (photo turned upright)")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"{im.mode} pixels (high bit depth) stretched to 8-bit")
    elif im.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        notes.append("transparency flattened onto white")
    elif im.mode in ("L", "1"):
        notes.append("grayscale repeated on the three RGB channels")
    n_frames = getattr(im, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"first frame of {n_frames} used")
    return notes


def open_upload(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE
                ) -> Upload:
    """Open and validate an uploaded image file; raise InputImageError with a clear message.

    The header is checked (format, size) before any pixel is decoded, so a decompression bomb
    costs nothing; then the file is verified and fully decoded (truncated or corrupt data
    fail here), converted to upright RGB (``predict.to_rgb``) and checked for a minimum size.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InputImageError(f"{name}: no such file was uploaded")
    if path.stat().st_size == 0:
        raise InputImageError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, mode, (w, h) = im.format or "?", im.mode, im.size
                if w * h > max_pixels:
                    raise InputImageError(
                        f"{name}: {w} x {h} px = {w * h / 1e6:.0f} megapixels is more than this "
                        f"app accepts ({max_pixels / 1e6:.0f} megapixels); downscale it first")
                im.verify()  # structure and checksums (PNG CRCs) without decoding
            with Image.open(path) as im:
                im.load()
                notes = _describe_conversion(im)
                try:
                    image = to_rgb(im)
                except (ValueError, OSError) as exc:
                    raise InputImageError(
                        f"{name}: cannot turn its {im.mode} pixels into RGB ({exc}); save it as "
                        "an RGB PNG or JPEG") from exc
    except InputImageError:
        raise
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"{name}: not an image file Pillow can read (try PNG, JPEG, WebP, BMP, TIFF or GIF)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InputImageError(
            f"{name}: far more pixels than this app accepts ({max_pixels / 1e6:.0f} megapixels); "
            f"Pillow refuses it as a possible decompression bomb ({exc}); downscale it first"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputImageError(f"{name}: the {fmt} file is corrupt or truncated ({exc})") from exc
    if min(image.size) < min_side:
        raise InputImageError(
            f"{name}: {image.width} x {image.height} px is too small; the detector needs at "
            f"least {min_side} px on each side")
    return Upload(image, name, fmt, mode, (w, h), notes)


def check_processed_size(model: ElasticDETR, width: int, height: int,
                         limit: int = MAX_PROCESSED_PIXELS, name: str = "image") -> None:
    """Refuse images whose detector input at tau_max would exceed ``limit`` pixels.

    The base size fixes the short side, so only extreme aspect ratios (long thin strips)
    reach the limit; the message says how to fix it.
    """
    h, w = processed_size(height, width, model.tau_max, model.base_size, model.max_size,
                          model.stride)
    if h * w > limit:
        raise InputImageError(
            f"{name}: a {width} x {height} px image (aspect ratio 1:{max(width, height) / min(width, height):.0f}) "
            f"would reach the detector as {w} x {h} px at phi = {model.tau_max:g}, more than "
            f"{limit / 1e6:.0f} megapixels; crop it to a less elongated shape")


# --------------------------------------------------------------------------- the model service
@dataclass
class LoadedModel:
    """One checkpoint, loaded: the model, its categories and its memo tables."""

    model: ElasticDETR
    categories: list[dict]
    mode: str
    flops: FlopTable
    latency: LatencyTable


def sweep_scales(tau_min: float, tau_max: float, n: int = SWEEP_POINTS) -> list[float]:
    """``n`` evenly spaced scale factors from tau_min to tau_max (rounded to 1e-4)."""
    return [round(float(s), 4) for s in np.linspace(tau_min, tau_max, n)]


class DetectorService:
    """Loads checkpoints on demand (kept loaded) and runs detection and scale sweeps.

    ``checkpoints`` maps the names shown in the app to file paths; only those can be used.
    Calls are serialised by a lock (one model, one CPU).
    """

    def __init__(self, checkpoints: dict[str, str | Path], device: str | torch.device = "cpu"):
        if not checkpoints:
            raise ValueError("DetectorService needs at least one checkpoint")
        self.checkpoints = {name: Path(p) for name, p in checkpoints.items()}
        self.device = torch.device(device)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._closed = False

    @contextmanager
    def _running(self):
        """Hold the lock for model work; refuse it once ``close`` was called."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the app is shutting down")
            yield

    def close(self, timeout: float = 120.0) -> None:
        """Wait for the running model call, then refuse new ones.

        Call it before the interpreter exits (app.py registers it with atexit): a server
        thread that is stopped inside a torch operator during interpreter shutdown aborts the
        whole process ("terminate called without an active exception").
        """
        if self._lock.acquire(timeout=timeout):
            self._closed = True
            self._lock.release()

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    def get(self, name: str) -> LoadedModel:
        """The loaded model of checkpoint ``name`` (loads it on first use; CheckpointError)."""
        if name not in self.checkpoints:
            raise ValueError(f"unknown checkpoint {name!r}; choose one of {self.names}")
        with self._running():
            if name not in self._loaded:
                model, ckpt = load_model(self.checkpoints[name], str(self.device))
                mode = ckpt["model_options"].get("mode", "?")
                self._loaded[name] = LoadedModel(model, ckpt["categories"], mode,
                                                 FlopTable(model), LatencyTable(model))
            return self._loaded[name]

    def describe(self, name: str) -> str:
        """One line about a checkpoint: mode, classes and phi range."""
        m = self.get(name)
        kind = ("elastic: a ScalePredictor picks phi per image" if m.model.predictor is not None
                else f"{m.mode}: no predictor, phi = 1 unless forced")
        classes = ", ".join(c["name"] for c in m.categories)
        return (f"**{name}** ({kind}); phi range [{m.model.tau_min:g}, {m.model.tau_max:g}], "
                f"base short side {m.model.base_size} px; classes: {classes}")

    def detect(self, name: str, upload: Upload, threshold: float = 0.3,
               phi: float | None = None, measure_latency: bool = True) -> dict:
        """predict_image plus latency (memoised per size), end-to-end time and input notes.

        Adds "latency_ms" / "latency_ms_phi1" (``LatencyTable``; only with ``measure_latency``),
        "inference_ms" (wall time of this request's ``predict_image`` call, which includes FLOP
        counting the first time a size is seen) and the input's format, mode and notes.
        Boxes are clipped to the image (x1, y1, x2, y2 in original pixels).
        """
        m = self.get(name)
        image = upload.image
        check_processed_size(m.model, image.width, image.height, name=upload.name)
        if phi is not None:
            check_phi(m.model, phi)
        h0, w0 = image.height, image.width
        with self._running():
            start = time.perf_counter()
            result = predict_image(m.model, m.categories, image, threshold, phi, timing=False,
                                   flops=m.flops)
            inference_ms = (time.perf_counter() - start) * 1e3
            if measure_latency:
                uses_predictor = result["phi_source"] == "predicted"
                result["latency_ms"] = (m.latency.detector(*result["processed_size"])
                                        + (m.latency.predictor(h0, w0) if uses_predictor else 0.0))
                result["latency_ms_phi1"] = m.latency.detector(*result["base_size"])
        result["inference_ms"] = inference_ms
        for d in result["detections"]:  # boxes may overhang the image; show them inside it
            x1, y1, x2, y2 = d["box"]
            d["box"] = [min(max(x1, 0.0), w0), min(max(y1, 0.0), h0),
                        min(max(x2, 0.0), w0), min(max(y2, 0.0), h0)]
        return {"image": upload.name, "checkpoint": name, "mode": m.mode,
                "tau_range": [m.model.tau_min, m.model.tau_max], "threshold": float(threshold),
                "input_format": upload.format, "input_mode": upload.mode,
                "input_notes": upload.notes, **result}

    def sweep(self, name: str, upload: Upload, threshold: float = 0.3,
              phi: float | None = None, n: int = SWEEP_POINTS) -> dict:
        """scale_sweep over ``n`` scales in [tau_min, tau_max], plus the phi to mark.

        The marked phi is ``phi`` when forced, else the predictor's choice (1 without one).
        """
        m = self.get(name)
        image = upload.image
        check_processed_size(m.model, image.width, image.height, name=upload.name)
        if phi is not None:
            check_phi(m.model, phi)
        scales = sweep_scales(m.model.tau_min, m.model.tau_max, n)
        with self._running():
            rows = scale_sweep(m.model, image, scales, threshold, m.flops)
            if phi is None:
                x = image_tensor(image).to(self.device)
                marked, source = float(m.model.predict_phi([x])[0]), (
                    "predicted" if m.model.predictor is not None else "fixed")
            else:
                marked, source = float(phi), "forced"
        return {**rows, "marked_phi": marked, "phi_source": source, "threshold": float(threshold)}


def check_phi(model: ElasticDETR, phi: float) -> None:
    """A forced phi must lie in the model's [tau_min, tau_max] (ValueError otherwise)."""
    if not model.tau_min - 1e-6 <= phi <= model.tau_max + 1e-6:  # False for NaN too
        raise ValueError(f"forced phi = {phi:g} is outside this model's range "
                              f"[{model.tau_min:g}, {model.tau_max:g}]")


# --------------------------------------------------------------------------- presentation
@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` px (the bitmap default where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def display_scale(width: int, height: int, side: int = DISPLAY_SIDE) -> float:
    """Factor that brings the long side down to ``side`` (1 when it is not longer)."""
    return min(1.0, side / max(width, height))


def draw_detections(image: Image.Image, detections: list[dict], categories: list[dict],
                    max_labels: int = MAX_LABELS) -> Image.Image:
    """The image (downscaled for display, see ``display_scale``) with boxes, labels and scores.

    ``detections`` are in original pixels ({"label", "category_id", "score", "box" x1y1x2y2});
    the colour follows the class index in ``categories``. Every box is drawn; only the
    ``max_labels`` best get a text label (text is the slow part, ~0.5 ms each).
    """
    s = display_scale(image.width, image.height)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    canvas = image.convert("RGB") if s == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    index = {c["id"]: i for i, c in enumerate(categories)}
    font = label_font(max(10, round(max(canvas.size) / 60)))
    line = max(1, round(max(canvas.size) / 400))
    ranked = sorted(detections, key=lambda d: -d["score"])
    for rank in range(len(ranked) - 1, -1, -1):  # best drawn last, on top
        d = ranked[rank]
        colour = PALETTE[index.get(d["category_id"], 0) % len(PALETTE)]
        x1, y1, x2, y2 = (v * s for v in d["box"])
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
        if rank >= max_labels:
            continue
        text = f"{d['label']} {d['score']:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0 + 4, ty1 - ty0 + 4
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=colour)
        draw.text((x1 + 2 - tx0, ty + 2 - ty0), text, fill=(255, 255, 255), font=font)
    return canvas


def summary_markdown(result: dict) -> str:
    """The numbers of one detection in a few lines of Markdown."""
    ph, pw = result["processed_size"]
    bh, bw = result["base_size"]
    source = {"predicted": "chosen by the scale predictor", "forced": "forced by you",
              "fixed": "this model has no predictor"}.get(result["phi_source"],
                                                          result["phi_source"])
    saved = 100 * result["compute_saved"]
    lines = [
        f"### phi = {result['phi']:.2f} ({source})",
        (f"- **resolution**: the detector saw **{pw} x {ph} px** (base at phi = 1: {bw} x {bh} "
         f"px; your image: {result['width']} x {result['height']} px)"),
        f"- **compute**: {result['gflops']:.2f} GFLOPs (predictor {result['gflops_predictor']:.2f} "
        f"included) vs {result['gflops_phi1']:.2f} GFLOPs at phi = 1: "
        + (f"**{saved:.0f}% saved**" if saved >= 0 else f"**{-saved:.0f}% more** "
           + ("(up-scaled)" if ph * pw > bh * bw else "(the predictor's cost)")),
    ]
    if "latency_ms" in result:
        lines.append(f"- **latency** (measured, median per input size): {result['latency_ms']:.0f} ms "
                     f"vs {result['latency_ms_phi1']:.0f} ms at phi = 1; this request's model call "
                     f"took {result['inference_ms']:.0f} ms (longer the first time a size is seen: "
                     "its FLOPs are counted then)")
    n = len(result["detections"])
    lines.append(f"- **detections** with score >= {result['threshold']:.2f}: {n}")
    if result.get("input_notes"):
        lines.append(f"- **input**: {'; '.join(result['input_notes'])}")
    return "\n".join(lines)


def sweep_figure(sweep: dict) -> go.Figure:
    """Plotly figure of a scale sweep: detections, mean confidence and GFLOPs against phi.

    ``sweep`` is ``DetectorService.sweep``'s dict (lists "phi", "num_detections",
    "mean_score", "gflops"; "marked_phi", "phi_source"); the marked phi is a dashed vertical
    line on every panel.
    """
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(f"detections with score >= {sweep['threshold']:.2f}",
                                        "mean confidence of those", "GFLOPs of the detector"))
    series = (("num_detections", "detections"), ("mean_score", "mean confidence"),
              ("gflops", "GFLOPs"))
    for row, (key, label) in enumerate(series, start=1):
        fig.add_trace(go.Scatter(x=sweep["phi"], y=sweep[key], mode="lines+markers", name=label,
                                 hovertemplate="phi %{x:.2f}: %{y:.3g}<extra></extra>"),
                      row=row, col=1)
    fig.add_vline(x=sweep["marked_phi"], line_dash="dash", line_color="crimson", row="all",
                  col=1)
    fig.update_xaxes(title_text="scale factor phi", row=3, col=1)
    title = (f"The same image at every phi; dashed: phi = {sweep['marked_phi']:.2f} "
             f"({sweep['phi_source']})")
    fig.update_layout(height=580, showlegend=False, margin={"l": 50, "r": 20, "t": 90, "b": 40},
                      title={"text": title, "x": 0.5, "y": 0.98, "font": {"color": "crimson"}})
    return fig


def _safe_stem(name: str) -> str:
    stem = Path(name).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:60]


def write_result_json(result: dict, out_dir: str | Path) -> Path:
    """Write ``result`` as indented JSON named after the image into ``out_dir``; return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"detections_{_safe_stem(str(result.get('image', 'image')))}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def write_drawn_image(image: Image.Image, name: str, out_dir: str | Path) -> Path:
    """Save the drawn image as a quickly compressed PNG named after the input; return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"detections_{_safe_stem(name)}.png"
    image.save(path, format="PNG", compress_level=1)
    return path


def list_checkpoints(folder: str | Path, extra: list[str | Path] = ()) -> dict[str, Path]:
    """{display name: path} for ``extra`` (first, as given) and every ``*.pt`` in ``folder``."""
    found: dict[str, Path] = {}
    resolved = set()
    for p in [*map(Path, extra), *sorted(Path(folder).glob("*.pt"))]:
        key = p.resolve()
        if key not in resolved:
            resolved.add(key)
            found[str(p)] = p
    return found
