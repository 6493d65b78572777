"""Convolutional trunks of the ScalePredictor, with a normalisation that suits how it trains.

- ``resnet18``: torchvision ResNet-18 up to layer3 (stride 16, 256 channels), the trunk of the
  paper's predictor and of DyRA (its "res4"). At a 64-px thumbnail it costs 0.23 GFLOPs.
- ``mobilenet_v3_large`` / ``mobilenet_v3_small``: torchvision MobileNetV3 features up to
  stride 16 (112 / 48 channels). They cost so little that the thumbnail can be 160 px within
  the same budget (0.18 GFLOPs for the large one with the default head), so objects of 6-14 px
  in a 256-px image stay 4-9 px wide instead of 1-4 px: the project's default (measured: see
  docs/method.md, "Scale predictor").

Normalisation (``norm``):

- ``group`` (default): GroupNorm, 8 groups. It normalises each image on its own, so the
  predictor computes the same function in training and inference, on any batch: training
  batches are grouped by processed size (i.e. by similar φ), and batch statistics would remove
  exactly the between-image differences the predictor must learn.
- ``batch``: trainable BatchNorm with batch statistics in training (the old default).
- ``frozen``: FrozenBatchNorm2d (fixed statistics; DETR's choice for pretrained backbones).

ImageNet weights (``weights``: "imagenet" or a torchvision weights name) carry batch-norm
statistics, so they need ``norm="frozen"`` or ``"batch"``.
"""

from __future__ import annotations

import torchvision
from torch import nn

from .norms import NORMS, norm_layer

__all__ = ["NORMS", "TRUNKS", "build_trunk"]

TRUNKS = ("resnet18", "mobilenet_v3_large", "mobilenet_v3_small")
_MOBILENET_STRIDE16 = {"mobilenet_v3_large": 13, "mobilenet_v3_small": 9}  # features[:n]


def _weights(name: str, weights: str | None):
    if weights is None:
        return None
    enum = torchvision.models.get_model_weights(name)
    return enum.DEFAULT if weights.lower() in ("imagenet", "default") else enum[weights]


def build_trunk(name: str, norm: str = "group", weights: str | None = None
                ) -> tuple[nn.Module, int]:
    """The trunk ``name`` (see TRUNKS) up to stride 16 and its output channels.

    Args:
        norm: "group", "batch" or "frozen" (see the module docstring).
        weights: None (random initialisation), "imagenet" or a torchvision weights name.
    Returns:
        (module mapping [B, 3, T, T] to [B, C, T/16, T/16], C).
    """
    if name not in TRUNKS:
        raise ValueError(f"unknown predictor trunk {name!r}; choose one of {TRUNKS}")
    if weights is not None and norm == "group":
        raise ValueError("ImageNet weights carry batch-norm statistics: use the predictor norm "
                         "'frozen' or 'batch' with them, not 'group'")
    factory = norm_layer(norm)
    w = _weights(name, weights)
    try:
        net = getattr(torchvision.models, name)(weights=w, norm_layer=factory)
    except Exception as exc:  # URLError, HTTPError, socket errors
        if w is None:
            raise
        raise RuntimeError(
            f"could not load ImageNet weights {w} for the predictor's {name} ({exc}). They are "
            f"downloaded from {w.url} into $TORCH_HOME/hub/checkpoints/; offline, copy the file "
            "there or train from random initialisation.") from exc
    if name == "resnet18":  # conv1 .. layer3: DyRA's res4, 256 channels at stride 16
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                              net.layer3)
        return trunk, 256
    trunk = net.features[:_MOBILENET_STRIDE16[name]]
    channels = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    return trunk, channels
