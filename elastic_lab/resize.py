"""The one resize function every mode uses (fixed, multi-scale, elastic), and batch padding.

A dataset has a base size S: an image is first scaled so that its short side is S (its long
side capped at ``max_size``), then multiplied by the scale factor phi, and finally rounded to a
multiple of the detector's stride. Boxes are normalised to the unpadded image, so targets do
not change under the resize; only pixel statistics (object sides in pixels) depend on phi.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def phi_from_u(u, tau_min: float, tau_max: float):
    """The scale factor of a normalised scale u ∈ [0, 1]: φ = τmin + (τmax − τmin)·u.

    The one place this map is written (predictor output, uniform multi-scale draws, loss optima,
    analyses); ``u`` may be a float, a tensor or a NumPy array, φ has its type.
    """
    return tau_min + (tau_max - tau_min) * u


def base_size_scale(height: int, width: int, base_size: int, max_size: int | None) -> float:
    """Scale that maps (height, width) to the base size: short side ``base_size``, long side <= max_size."""
    short, long = min(height, width), max(height, width)
    scale = base_size / short
    if max_size is not None and long * scale > max_size:
        scale = max_size / long
    return scale


def processed_size(
    height: int, width: int, phi: float, base_size: int, max_size: int | None = None, stride: int = 32
) -> tuple[int, int]:
    """Size (h, w) at which the detector sees an image of (height, width) at scale factor ``phi``.

    Rounded to the nearest multiple of ``stride`` (at least one stride).
    """
    scale = base_size_scale(height, width, base_size, max_size) * float(phi)
    h = max(stride, round(height * scale / stride) * stride)
    w = max(stride, round(width * scale / stride) * stride)
    return h, w


def resize_image(
    image: Tensor, phi: float, base_size: int, max_size: int | None = None, stride: int = 32
) -> Tensor:
    """Resize one image [3, H, W] to its processed size at scale ``phi`` (bilinear, antialiased).

    ``phi`` is a plain float: the resize is not differentiable in phi (method.md §1).
    """
    h, w = processed_size(image.shape[-2], image.shape[-1], phi, base_size, max_size, stride)
    if (h, w) == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def pad_batch(images: list[Tensor], stride: int = 32) -> tuple[Tensor, Tensor]:
    """Pad images [3, Hi, Wi] into a batch.

    Returns:
        tensor: [B, 3, H, W] zero-padded (H, W = per-batch maxima rounded up to ``stride``),
        mask: [B, H, W] bool, True on padding.
    """
    H = max(int(im.shape[-2]) for im in images)
    W = max(int(im.shape[-1]) for im in images)
    H, W = math.ceil(H / stride) * stride, math.ceil(W / stride) * stride
    batch = images[0].new_zeros((len(images), 3, H, W))
    mask = torch.ones((len(images), H, W), dtype=torch.bool, device=images[0].device)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        mask[i, : im.shape[-2], : im.shape[-1]] = False
    return batch, mask


def padding_ratio(sizes: list[tuple[int, int]], stride: int = 32) -> float:
    """Fraction of processed pixels that are padding when ``sizes`` are padded into one batch."""
    H = math.ceil(max(h for h, _ in sizes) / stride) * stride
    W = math.ceil(max(w for _, w in sizes) / stride) * stride
    used = sum(h * w for h, w in sizes)
    return 1.0 - used / (len(sizes) * H * W)
