"""ScalePredictor: a compact network that picks one scale factor φ per image (method.md §2).

    image ──► thumbnail (long side T, padded to T×T + mask) ──► ResNet-18 to layer3 (stride 16)
          ──► 1×1 conv to d ──► tokens + [SCALE] token + 2-D sine positions
          ──► TransformerEncoder (padding mask) ──► Linear([SCALE]) = z
          ──► u = sigmoid(z),  φ = τmin + (τmax - τmin)·u

The thumbnail of an image does not depend on the other images of the batch (every image is
padded to the same T×T square), and the padding mask keeps padded tokens out of attention,
so batched and single-image predictions agree.

Cost at T = 64, d = 64, 2 layers: 232,997,504 FLOPs per image (1 MAC = 2 FLOPs; counted by
``FlopCounterMode`` with grad enabled and the MATH attention kernel, equal to the analytic
count: trunk 228,982,784 + 1×1 conv 524,288 + encoder 3,490,304 + head 128). The trunk runs on
the padded T×T square, so the cost does not depend on the image's aspect ratio.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights

from ..resize import phi_from_u
from .position_encoding import PositionEmbeddingSine
from .predictor_trunk import build_trunk

__all__ = ["ScalePredictor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ScalePredictor(nn.Module):
    """Predicts a per-image scale factor φ ∈ [tau_min, tau_max] from a thumbnail.

    Args:
        tau_min, tau_max: range of φ.
        thumb_size: T, the thumbnail's long side in pixels (the batch is padded to T×T).
        d_model, nhead, num_layers: the head's transformer encoder (dim_ff = 4·d_model,
            dropout 0, post-norm).
        weights: "imagenet", a torchvision weights name (e.g. ``"IMAGENET1K_V1"``) or enum;
            None = random initialisation.
        frozen_bn: shorthand for ``norm="frozen"`` (kept for old callers).
        trunk: "resnet18" (to layer3), "mobilenet_v3_large" or "mobilenet_v3_small" (to
            stride 16); see predictor_trunk.py.
        norm: "group", "batch" or "frozen" normalisation in the trunk (default: "frozen" when
            ``frozen_bn`` else "batch", the behaviour of the first versions).
        size_bins: K > 0 adds the dense size head (size_map.py): K logits per trunk cell.
    """

    def __init__(
        self,
        tau_min: float = 0.5,
        tau_max: float = 1.5,
        thumb_size: int = 64,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        weights: str | ResNet18_Weights | None = None,
        frozen_bn: bool = False,
        trunk: str = "resnet18",
        norm: str | None = None,
        size_bins: int = 0,
    ):
        super().__init__()
        if not 0.0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        if thumb_size < 16:
            raise ValueError(f"thumb_size must be ≥ 16 (the trunk's stride), got {thumb_size}")
        self.tau_min = float(tau_min)
        self.tau_max = float(tau_max)
        self.thumb_size = int(thumb_size)
        self.d_model = d_model

        if isinstance(weights, ResNet18_Weights):
            weights = weights.name
        norm = norm or ("frozen" if frozen_bn else "batch")
        self.trunk_name, self.norm = trunk, norm
        self.trunk, channels = build_trunk(trunk, norm, weights)
        if d_model % 4:
            raise ValueError(f"d_model must be a multiple of 4 (sine positions), got {d_model}")
        self.input_proj = nn.Conv2d(channels, d_model, kernel_size=1)
        self.size_bins = int(size_bins)
        self.size_head = nn.Conv2d(channels, size_bins, kernel_size=1) if size_bins else None
        self.position = PositionEmbeddingSine(d_model // 2)
        self.scale_token = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.normal_(self.scale_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)
        nn.init.zeros_(self.head.bias)  # u starts near 1/2: φ mid-range

        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), False)

    def thumbnails(self, images: list[Tensor], normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Resize each image so that its long side is T (aspect kept), normalise, pad to T×T.

        Args:
            images: B tensors [3, H_i, W_i] in [0, 1].
            normalize: apply ImageNet normalisation (padding is 0 after normalisation).
        Returns:
            thumbs: [B, 3, T, T] on the model's device; mask: [B, T, T] bool, True = padding.
        """
        if len(images) == 0:
            raise ValueError("ScalePredictor needs at least one image")
        t = self.thumb_size
        device = self.pixel_mean.device
        thumbs = torch.zeros(len(images), 3, t, t, device=device)
        mask = torch.ones(len(images), t, t, dtype=torch.bool, device=device)
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
                raise ValueError(f"images[{i}]: expected shape [3, H, W], got {tuple(img.shape)}")
            h, w = img.shape[1:]
            scale = t / max(h, w)
            th, tw = max(1, round(h * scale)), max(1, round(w * scale))
            small = F.interpolate(
                img[None].to(device=device, dtype=torch.float32),
                size=(th, tw),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
            if normalize:
                small = (small - self.pixel_mean) / self.pixel_std
            thumbs[i, :, :th, :tw] = small
            mask[i, :th, :tw] = False
        return thumbs, mask

    def forward_thumbnails(self, thumbs: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Predict from a normalised thumbnail batch.

        Args:
            thumbs: [B, 3, T, T]; mask: [B, T, T] bool, True = padding.
        Returns:
            dict with ``logit`` [B] (z), ``u`` [B] = sigmoid(z) and
            ``phi`` [B] = tau_min + (tau_max - tau_min)·u; with a size head also
            ``size_map`` [B, K, h, w] logits and ``size_map_valid`` [B, h, w] (True on cells
            of the unpadded thumbnail).
        """
        trunk = self.trunk(thumbs)  # [B, C, h, w]
        feats = self.input_proj(trunk)  # [B, d, h, w]
        b, _, h, w = feats.shape
        fmask = F.interpolate(mask[:, None].float(), size=(h, w))[:, 0].bool()  # [B, h, w]
        pos = self.position(fmask)  # [B, d, h, w], over the unpadded extent
        tokens = (feats + pos).flatten(2).transpose(1, 2)  # [B, h·w, d]
        scale = self.scale_token.repeat(b, 1, 1)  # [B, 1, d]; repeat, not expand (FLOP counter)
        tokens = torch.cat((scale, tokens), dim=1)  # [B, 1 + h·w, d]
        key_mask = torch.cat((fmask.new_zeros(b, 1), fmask.flatten(1)), dim=1)  # [B, 1 + h·w]
        memory = self.encoder(tokens, src_key_padding_mask=key_mask)
        logit = self.head(memory[:, 0]).squeeze(-1).float()  # [B], float32 under autocast too
        u = torch.sigmoid(logit)
        phi = phi_from_u(u, self.tau_min, self.tau_max)
        out = {"logit": logit, "u": u, "phi": phi}
        if self.size_head is not None:
            out["size_map"] = self.size_head(trunk).float()  # [B, K, h, w]
            out["size_map_valid"] = ~fmask  # [B, h, w]
        return out

    def forward(self, images: list[Tensor]) -> dict[str, Tensor]:
        """Predict a scale factor per image.

        Args:
            images: B tensors [3, H_i, W_i] in [0, 1], any sizes.
        Returns:
            dict: ``logit`` [B], ``u`` [B] in (0, 1), ``phi`` [B] in [tau_min, tau_max].
        """
        return self.forward_thumbnails(*self.thumbnails(images))

