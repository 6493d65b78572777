"""Image I/O shared by prediction, evaluation, the app and the notebooks: any PIL image as
upright 8-bit RGB, and as the float tensor the models take."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = ["image_tensor", "to_rgb"]


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
