"""The compact DETR detector: backbone -> 1x1 projection -> two-stage transformer -> heads.

``DETR(backbone, transformer, num_classes)``: constructor injection as in facebookresearch/detr;
``build_detr(options)`` reads the options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, clip_boxes_to_image

from .backbone import Backbone
from .position_encoding import PositionEmbeddingSine
from .transformer import TwoStageTransformer


@dataclass
class DetrOptions:
    """Architecture options of the detector (stored in checkpoints)."""

    backbone: str = "resnet18"
    backbone_weights: str | None = None
    return_layer: str = "layer3"      # stride-16 feature map: a convergence aid on CPU
    d_model: int = 128
    nhead: int = 8
    num_encoder_layers: int = 2
    num_decoder_layers: int = 3
    dim_feedforward: int = 512
    num_queries: int = 30
    anchor_size: float = 0.1          # side of the grid anchors, fraction of the image
    anchor_cells: float | None = None  # if set: anchor side in feature cells (pixels / stride)
    freeze_stem: bool = False         # freeze conv1 + layer1 (as DETR does)
    norm: str | None = None           # backbone norm (norms.py); None: batch, frozen if pretrained


def grid_anchors(mask: Tensor, anchor_size: float, anchor_cells: float | None = None) -> Tensor:
    """One anchor per feature cell: its centre in the unpadded extent and its side.

    The side is ``anchor_size`` of the image, or, with ``anchor_cells``, that many feature
    cells (a fixed size in pixels, normalised by each image's own extent). Box sizes are
    regressed relative to the anchor, so with image-relative anchors a detector trained at one
    resolution predicts sizes in fractions of the canvas it was trained on and mis-sizes every
    box at another φ; anchors of a fixed pixel size make the predicted sizes follow the pixels.

    mask: [B, H, W] True=padding -> anchors [B, H*W, 4] (cx, cy, w, h); padded cells get 0.5.
    """
    not_mask = (~mask).float()
    h_valid = not_mask[:, :, 0].sum(1).clamp(min=1)[:, None, None]  # [B, 1, 1]
    w_valid = not_mask[:, 0, :].sum(1).clamp(min=1)[:, None, None]
    B, H, W = mask.shape
    ys = torch.arange(H, device=mask.device, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(W, device=mask.device, dtype=torch.float32)[None, None, :] + 0.5
    cx = (xs / w_valid).expand(B, H, W)
    cy = (ys / h_valid).expand(B, H, W)
    if anchor_cells is None:
        w = h = torch.full_like(cx, anchor_size)
    else:  # the same pixel size in every image: a fraction of each image's own extent
        w = (anchor_cells / w_valid).expand(B, H, W)
        h = (anchor_cells / h_valid).expand(B, H, W)
    anchors = torch.stack([cx, cy, w, h], dim=-1).clamp(0.01, 0.99)
    return anchors.masked_fill(mask[..., None], 0.5).flatten(1, 2)


class DETR(nn.Module):
    """DETR with two-stage queries.

    forward(images [B, 3, H, W] in [0, 1], mask [B, H, W] True=padding) -> dict
        "pred_logits": [B, K, C] sigmoid class logits (no background class; focal loss)
        "pred_boxes":  [B, K, 4] normalised cx, cy, w, h of the unpadded image
        "aux_outputs": list of the same dicts for the earlier decoder layers
        "enc_outputs": {"pred_logits": [B, N, C], "pred_boxes": [B, N, 4]} token proposals
    """

    def __init__(self, backbone: Backbone, transformer: TwoStageTransformer, num_classes: int,
                 anchor_size: float = 0.1, anchor_cells: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.transformer = transformer
        self.num_classes = num_classes
        self.anchor_size, self.anchor_cells = anchor_size, anchor_cells
        d = transformer.d_model
        self.input_proj = nn.Conv2d(backbone.num_channels, d, 1)
        self.position = PositionEmbeddingSine(d // 2)

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        feats, fmask = self.backbone(images, mask)
        src = self.input_proj(feats)                              # [B, d, h, w]
        pos = self.position(fmask)                                # [B, d, h, w]
        anchors = grid_anchors(fmask, self.anchor_size, self.anchor_cells)  # [B, h*w, 4]
        out = self.transformer(src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2),
                               fmask.flatten(1), anchors)
        logits, boxes = out["logits"], out["boxes"]               # [L, B, K, *]
        return {
            "pred_logits": logits[-1], "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b}
                            for a, b in zip(logits[:-1], boxes[:-1])],
            "enc_outputs": {"pred_logits": out["enc_logits"], "pred_boxes": out["enc_boxes"]},
        }


def build_detr(options: DetrOptions, num_classes: int) -> DETR:
    """Build the detector from its options."""
    backbone = Backbone(options.backbone, options.backbone_weights, options.return_layer,
                        options.freeze_stem, options.norm)
    transformer = TwoStageTransformer(
        num_classes, options.d_model, options.nhead, options.num_encoder_layers,
        options.num_decoder_layers, options.dim_feedforward, options.num_queries)
    return DETR(backbone, transformer, num_classes, options.anchor_size,
                options.anchor_cells)


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: Tensor, top_k: int = 100) -> list[dict[str, Tensor]]:
    """Detections in original image pixels, clipped to the image.

    outputs: the DETR dict; orig_sizes: [B, 2] (h, w) of the original images.
    Returns per image {"scores": [k], "labels": [k] (0-based), "boxes": [k, 4] x1y1x2y2 pixels},
    the top-k (query, class) pairs by sigmoid score. Boxes are clipped to [0, w] x [0, h]
    (``torchvision.ops.clip_boxes_to_image``; a predicted box may overhang the image) and
    carry no negative zeros, so prediction, evaluation and the app report the same numbers.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    _, Q, C = logits.shape
    prob = logits.float().sigmoid().flatten(1)                    # [B, Q*C]
    k = min(top_k, Q * C)
    scores, idx = prob.topk(k, dim=1)
    labels = idx % C
    picked = torch.gather(boxes.float(), 1, (idx // C)[..., None].repeat(1, 1, 4))
    xyxy = box_convert(picked, "cxcywh", "xyxy")
    scale = orig_sizes.to(boxes.device).float()  # the sizes may be on the CPU, the model not
    h, w = scale[:, 0], scale[:, 1]
    xyxy = xyxy * torch.stack([w, h, w, h], dim=1)[:, None, :]
    results = []
    for s, lab, b, (hi, wi) in zip(scores, labels, xyxy, orig_sizes.tolist()):
        b = clip_boxes_to_image(b, (int(hi), int(wi))) + 0.0  # + 0.0 turns -0.0 into 0.0
        results.append({"scores": s, "labels": lab, "boxes": b})
    return results
