"""Image I/O shared by prediction, evaluation, the app and the notebooks.

* ``to_rgb`` / ``image_tensor``: any PIL image as upright 8-bit RGB, and as the float tensor
  the models take.
* ``read_header``, ``check_image_file``, ``data_url_bytes``: what a user's image costs, read
  from its header (PNG IHDR, JPEG SOF, ...) and its byte count *before* any pixel is decoded,
  so a decompression bomb or an oversized ``data:`` URL is refused for the price of a few
  hundred bytes.
* ``open_upload``: the full validation of a user's image (the checks above, then a verified
  decode) into an ``Upload`` with notes on what was converted.
* ``reduce_to_budget``: the per-request pixel budget (large pictures are box-filtered down
  before they become a float tensor; the detector sees at most a few hundred pixels a side).

Every error is an ``InputImageError`` whose message names the file (base name only), says what
is wrong and what to do, and carries no quotes, server paths or Python object reprs.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "PIXEL_BUDGET",
    "ImageHeader",
    "InputImageError",
    "Upload",
    "check_image_file",
    "data_url_bytes",
    "image_tensor",
    "open_upload",
    "read_header",
    "reduce_to_budget",
    "to_rgb",
]

MAX_PIXELS = 40_000_000            # refuse larger images before decoding them (decompression bombs)
MAX_FILE_BYTES = 25 * 1024 * 1024  # 25 MB: an uploaded file or a data: URL's decoded bytes
MIN_SIDE = 16                      # px; smaller images carry nothing to detect
PIXEL_BUDGET = 4_000_000           # larger images are box-filtered below this before detection


class InputImageError(ValueError):
    """A user's file cannot be used as an image; the message says why and what to do."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F; EXIF-rotated) as upright 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> float tensor [3, H, W] in [0, 1]."""
    return TF.to_dtype(TF.to_image(to_rgb(image)), torch.float32, scale=True)


def reduce_to_budget(image: Image.Image, max_pixels: int = PIXEL_BUDGET) -> Image.Image:
    """``image`` box-filtered by the smallest integer factor that brings it to ``max_pixels``.

    Returned unchanged when it fits. ``Image.reduce`` averages f x f blocks, which is both the
    cheapest and an alias-free way down; the caller maps boxes back with the size ratio.
    """
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    factor = math.ceil(math.sqrt(pixels / max_pixels))
    while math.ceil(image.width / factor) * math.ceil(image.height / factor) > max_pixels:
        factor += 1
    return image.reduce(factor)


# --------------------------------------------------------------------------- headers only
@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares before decoding: format, mode and stored size."""

    format: str
    mode: str
    width: int
    height: int


def _megapixels(n: float) -> str:
    return f"{n / 1e6:.0f} megapixels"


def read_header(source: str | Path | bytes, name: str = "image",
                max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Format, mode and size from the header of a file or a byte string; no pixel is decoded.

    Raises InputImageError for data Pillow cannot identify and for more than ``max_pixels``
    pixels (Pillow's own decompression-bomb refusal included).
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                header = ImageHeader(im.format or "?", im.mode, *im.size)
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"{name}: not an image file Pillow can read (try PNG, JPEG, WebP, BMP, TIFF or GIF)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InputImageError(
            f"{name}: far more pixels than this app accepts ({_megapixels(max_pixels)}); "
            "downscale it first") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputImageError(f"{name}: the file is corrupt or truncated (its header cannot "
                              "be read)") from exc
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise InputImageError(
            f"{name}: {header.width} x {header.height} px = {_megapixels(pixels)} is more than "
            f"this app accepts ({_megapixels(max_pixels)}); downscale it first")
    return header


def _size_text(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} kB"


def check_image_file(path: str | Path, name: str | None = None,
                     max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS
                     ) -> ImageHeader:
    """A regular file of at most ``max_bytes`` whose header declares at most ``max_pixels``.

    Directories, devices and missing paths are refused (without naming the server path).
    """
    path = Path(path)
    name = name or path.name or "image"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputImageError(f"{name}: no such file was uploaded") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputImageError(f"{name}: not a file (upload an image file)")
    if info.st_size == 0:
        raise InputImageError(f"{name}: the file is empty")
    if info.st_size > max_bytes:
        raise InputImageError(f"{name}: {_size_text(info.st_size)} is more than this app "
                              f"accepts ({_size_text(max_bytes)}); compress or downscale it")
    return read_header(path, name, max_pixels)


def data_url_bytes(url: str, name: str = "pasted image", max_bytes: int = MAX_FILE_BYTES,
                   max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of a base64 ``data:`` URL, refused by length before decoding, then by header.

    The payload's length bounds the decoded size (3 bytes per 4 characters), so an oversized
    URL costs nothing beyond the string already received; the header check then refuses
    images of more than ``max_pixels`` before their pixels are decoded.
    """
    head, sep, payload = url.partition(",")
    if not head.startswith("data:") or not sep:
        raise InputImageError(f"{name}: not a data URL (expected data:image/...;base64,...)")
    if not head.endswith(";base64"):
        raise InputImageError(f"{name}: only base64 data URLs are accepted")
    payload = payload.strip()
    if len(payload) // 4 * 3 > max_bytes:
        raise InputImageError(
            f"{name}: about {_size_text(len(payload) // 4 * 3)} of image data is more than "
            f"this app accepts ({_size_text(max_bytes)}); compress or downscale it")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputImageError(f"{name}: the data URL is not valid base64") from exc
    if not data:
        raise InputImageError(f"{name}: the data URL holds no data")
    read_header(data, name, max_pixels)
    return data


# --------------------------------------------------------------------------- full validation
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


def open_upload(source: str | Path | bytes, name: str | None = None,
                max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS,
                min_side: int = MIN_SIDE) -> Upload:
    """Validate a user's image (a file path or its bytes) and decode it to upright RGB.

    Header and byte count first (``check_image_file`` / ``read_header``: nothing decoded), then
    ``verify`` (structure and PNG CRCs), then the decode itself (truncated or corrupt data fail
    here), ``to_rgb`` and the minimum size. Raises InputImageError with a clear message.
    """
    if isinstance(source, bytes):
        name = name or "image"
        if len(source) > max_bytes:
            raise InputImageError(f"{name}: {_size_text(len(source))} is more than this app "
                                  f"accepts ({_size_text(max_bytes)})")
        header = read_header(source, name, max_pixels)

        def reopen():
            return Image.open(io.BytesIO(source))
    else:
        name = name or Path(source).name or "image"
        header = check_image_file(source, name, max_bytes, max_pixels)

        def reopen():
            return Image.open(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with reopen() as im:
                im.verify()  # structure and checksums (PNG CRCs) without decoding
            with reopen() as im:
                im.load()
                notes = _describe_conversion(im)
                try:
                    image = to_rgb(im)
                except (ValueError, OSError) as exc:
                    raise InputImageError(
                        f"{name}: cannot turn its {im.mode} pixels into RGB; save it as an "
                        "RGB PNG or JPEG") from exc
    except InputImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError) as exc:
        raise InputImageError(f"{name}: the {header.format} file is corrupt or truncated") from exc
    if min(image.size) < min_side:
        raise InputImageError(
            f"{name}: {image.width} x {image.height} px is too small; the detector needs at "
            f"least {min_side} px on each side")
    return Upload(image, name, header.format, header.mode, (header.width, header.height), notes)
