"""Transformer with two-stage queries and iterative box refinement.

Vanilla DETR converges slowly (DETR trains for hundreds of COCO epochs); for budgets of CPU
minutes we adopt two published convergence aids: *two-stage queries* (Deformable DETR, Zhu et al. 2021): every encoder
token predicts a class and a box relative to its grid anchor, and the top-K tokens become the
decoder's reference boxes; and *iterative box refinement*: each decoder layer predicts a delta on
its reference box (in logit space), detached before the next layer. Attention is plain
``nn.MultiheadAttention`` (no deformable attention), so the FLOP counter sees all of it.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import box_sine_embedding


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with clamping, for boxes in [0, 1]."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """A small multi-layer perceptron (ReLU between layers)."""

    def __init__(self, din: int, dhidden: int, dout: int, num_layers: int):
        super().__init__()
        dims = [din] + [dhidden] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class EncoderLayer(nn.Module):
    """Post-norm encoder layer; positions added to queries and keys (DETR)."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(dim_ff, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        """src, pos: [B, N, d]; key_padding_mask: [B, N] True=padding -> [B, N, d]."""
        q = src + pos
        src = self.norm1(src + self.dropout(
            self.attn(q, q, src, key_padding_mask=key_padding_mask, need_weights=False)[0]))
        return self.norm2(src + self.dropout(self.ff(src)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(dim_ff, d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Tensor) -> Tensor:
        """tgt, query_pos: [B, Q, d]; memory, memory_pos: [B, N, d]; memory_mask: [B, N]."""
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.dropout(self.self_attn(q, q, tgt, need_weights=False)[0]))
        tgt = self.norms[1](tgt + self.dropout(self.cross_attn(
            tgt + query_pos, memory + memory_pos, memory, key_padding_mask=memory_mask,
            need_weights=False)[0]))
        return self.norms[2](tgt + self.dropout(self.ff(tgt)))


class TwoStageTransformer(nn.Module):
    """Encoder -> per-token proposals -> top-K reference boxes -> refining decoder.

    forward(src [B, N, d], pos [B, N, d], mask [B, N], anchors [B, N, 4])
        -> dict with
           "enc_logits" [B, N, C], "enc_boxes" [B, N, 4]   (proposals of every token)
           "logits" [L, B, K, C], "boxes" [L, B, K, 4]      (every decoder layer)
    Boxes are normalised (cx, cy, w, h) relative to the unpadded image.
    """

    def __init__(self, num_classes: int, d_model: int = 128, nhead: int = 8,
                 num_encoder_layers: int = 2, num_decoder_layers: int = 3,
                 dim_feedforward: int = 512, num_queries: int = 30, dropout: float = 0.0):
        super().__init__()
        self.num_queries = num_queries
        self.d_model = d_model
        self.encoder = nn.ModuleList(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_decoder_layers))
        # first stage: every memory token proposes a class and a box around its anchor
        self.enc_output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.enc_class = nn.Linear(d_model, num_classes)
        self.enc_box = MLP(d_model, d_model, 4, 3)
        # second stage: per decoder layer class and box-delta heads
        self.class_heads = nn.ModuleList(
            copy.deepcopy(self.enc_class) for _ in range(num_decoder_layers))
        self.box_heads = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_decoder_layers))
        self.query_pos = MLP(2 * d_model, d_model, d_model, 2)
        self.query_content = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self._reset_heads()

    def _reset_heads(self) -> None:
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01)).item()  # focal-loss prior 0.01
        for head in [self.enc_class, *self.class_heads]:
            nn.init.constant_(head.bias, prior)
        for mlp in [self.enc_box, *self.box_heads]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor, anchors: Tensor) -> dict[str, Tensor]:
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, mask)

        # first stage: proposals relative to the grid anchors
        out = self.enc_output(memory.masked_fill(mask[..., None], 0.0))
        enc_logits = self.enc_class(out)                                  # [B, N, C]
        # box arithmetic in float32 even under autocast: bfloat16 keeps ~3 digits, ~1 px at 256 px
        enc_boxes = (self.enc_box(out).float() + inverse_sigmoid(anchors)).sigmoid()  # [B, N, 4]

        # top-K tokens by best class score (class-aware selection), padding excluded
        score = enc_logits.max(-1).values.masked_fill(mask, float("-inf"))
        k = min(self.num_queries, score.shape[1])
        top = score.topk(k, dim=1).indices                                # [B, K]
        ref = torch.gather(enc_boxes, 1, top[..., None].repeat(1, 1, 4)).detach()
        tgt = self.query_content(torch.gather(
            out, 1, top[..., None].repeat(1, 1, out.shape[-1])).detach())  # [B, K, d]

        logits, boxes = [], []
        for layer, class_head, box_head in zip(self.decoder, self.class_heads, self.box_heads):
            query_pos = self.query_pos(box_sine_embedding(ref, self.d_model // 2))
            tgt = layer(tgt, query_pos, memory, pos, mask)
            new_ref = (box_head(tgt).float() + inverse_sigmoid(ref)).sigmoid()
            logits.append(class_head(tgt))
            boxes.append(new_ref)
            ref = new_ref.detach()
        return {"enc_logits": enc_logits, "enc_boxes": enc_boxes,
                "logits": torch.stack(logits), "boxes": torch.stack(boxes)}
