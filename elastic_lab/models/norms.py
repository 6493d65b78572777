"""Normalisation layers of the convolutional trunks (the detector's backbone, the predictor's).

- ``batch``: trainable BatchNorm, batch statistics in training and running statistics in
  inference. Right when every training batch looks like the test data; wrong when batches are
  made of one kind of image (elastic training: images of similar processed size have similar
  content), because the network then learns per-kind statistics it will not see at test time.
- ``group``: GroupNorm (8 groups): every image normalised on its own, so the network computes
  the same function in training and inference, for any batch (and any batch size).
- ``frozen``: FrozenBatchNorm2d, fixed statistics (DETR's choice for pretrained backbones).

ImageNet weights carry batch-norm statistics, so they need ``batch`` or ``frozen``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["NORMS", "norm_layer"]

NORMS = ("group", "batch", "frozen")


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """A constructor ``f(channels) -> module`` for the normalisation ``kind`` (see NORMS)."""
    if kind == "group":
        return lambda channels: nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "frozen":
        return FrozenBatchNorm2d
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
