"""Sine position encodings: 2-D over the unpadded extent of a feature map, and for boxes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """DETR's sine encoding, normalised over the unpadded extent of each image.

    forward(mask [B, H, W] True=padding) -> pos [B, 2 * num_pos_feats, H, W]
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        eps = 1e-6
        y = (y - 0.5) / (y[:, -1:, :] + eps)  # cell centres in (0, 1) of the unpadded extent
        x = (x - 0.5) / (x[:, :, -1:] + eps)
        return torch.cat([sine_embed(y, self.num_pos_feats, self.temperature),
                          sine_embed(x, self.num_pos_feats, self.temperature)], dim=-1
                         ).permute(0, 3, 1, 2)


def sine_embed(coord: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Encode coordinates in [0, 1] (any shape [...]) as [..., num_feats] interleaved sin/cos."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coord.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = coord[..., None] * (2 * math.pi) / dim_t
    return torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)


def box_sine_embedding(boxes: Tensor, num_feats: int) -> Tensor:
    """Encode boxes [..., 4] (cx, cy, w, h in [0, 1]) as [..., 4 * num_feats]."""
    return torch.cat([sine_embed(boxes[..., i], num_feats) for i in range(4)], dim=-1)
