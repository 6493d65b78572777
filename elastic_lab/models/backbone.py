"""ResNet backbone (torchvision) returning a feature map and its padding mask.

Random initialisation by default; ``weights="imagenet"`` (or a torchvision weights name) loads
torchvision's ImageNet weights, with a clear message when they cannot be downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .norms import norm_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHANNELS = {  # channels after layer2 / layer3 / layer4
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
}
_STRIDES = {"layer2": 8, "layer3": 16, "layer4": 32}


def build_resnet(name: str, weights: str | None, norm: str | None = None) -> nn.Module:
    """A torchvision ResNet by name; ``weights`` None (random), "imagenet" or a weights enum name;
    ``norm`` one of norms.NORMS.

    By default pretrained backbones get frozen batch norm (as in DETR); random ones train theirs.
    """
    if name not in _CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_CHANNELS)}")
    if weights is None:
        return getattr(torchvision.models, name)(weights=None,
                                                 norm_layer=norm_layer(norm or "batch"))
    if norm == "group":
        raise ValueError("ImageNet weights carry batch-norm statistics: use the backbone norm "
                         "'frozen' or 'batch' with them, not 'group'")
    enum = torchvision.models.get_model_weights(name)
    w = enum.DEFAULT if weights.lower() in ("imagenet", "default") else enum[weights]
    try:
        return getattr(torchvision.models, name)(weights=w,
                                                 norm_layer=norm_layer(norm or "frozen"))
    except Exception as exc:  # URLError, HTTPError, socket errors
        raise RuntimeError(
            f"could not load ImageNet weights {w} for {name} ({exc}). They are downloaded from "
            f"{w.url} into $TORCH_HOME/hub/checkpoints/ (TORCH_HOME defaults to ~/.cache/torch). "
            "Offline, download that file elsewhere and copy it there, or train from random "
            "initialisation (omit --backbone-weights)."
        ) from exc


def normalize(images: Tensor, mask: Tensor | None = None) -> Tensor:
    """ImageNet-normalise [B, 3, H, W] images in [0, 1]; padded pixels (mask True) become 0."""
    mean = images.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = images.new_tensor(IMAGENET_STD)[None, :, None, None]
    out = (images - mean) / std
    if mask is not None:
        out = out.masked_fill(mask[:, None], 0.0)
    return out


class Backbone(nn.Module):
    """ResNet trunk up to ``return_layer``.

    forward(images [B, 3, H, W] in [0, 1], mask [B, H, W] True=padding)
        -> features [B, C, H/stride, W/stride], mask [B, H/stride, W/stride]
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None,
                 return_layer: str = "layer3", freeze_stem: bool = False,
                 norm: str | None = None):
        super().__init__()
        if return_layer not in _STRIDES:
            raise ValueError(f"return_layer must be one of {sorted(_STRIDES)}")
        net = build_resnet(name, weights, norm)
        layers = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        keep = layers[: layers.index(return_layer) + 1]
        self.body = nn.Sequential(*[getattr(net, n) for n in keep])
        self.num_channels = _CHANNELS[name][list(_STRIDES).index(return_layer)]
        self.stride = _STRIDES[return_layer]
        if freeze_stem:  # DETR trains layer2 onwards only; saves ~40 % of the backbone's time
            for layer in ("conv1", "bn1", "layer1"):
                for p in getattr(net, layer).parameters():
                    p.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.body(normalize(images, mask))
        small = F.interpolate(mask[None].float(), size=feats.shape[-2:])[0].to(torch.bool)
        return feats, small
