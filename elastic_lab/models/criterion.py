"""Set criterion: named loss terms with a weight dict (facebookresearch/detr style).

Detection terms (Deformable-DETR flavour, a convergence aid on CPU): ``loss_ce`` sigmoid focal
classification, ``loss_bbox`` L1 on normalised boxes, ``loss_giou``; repeated with suffix
``_{i}`` for decoder layer i and ``_enc`` for the first-stage proposals. Elastic terms (when the
model outputs a "scale" entry): ``loss_scale`` (scale_loss.py) and ``loss_dist``
(distribution_loss.py). The training loop sums ``losses[k] * weight_dict[k]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ..distributed import all_sum, world_mean
from ..distribution_loss import BinLossEMA, balance_loss, distribution_loss
from ..scale_loss import scale_loss, size_bins
from .matcher import HungarianMatcher


@dataclass
class ElasticLossOptions:
    """Options of the scale and distribution losses (method.md §3-4)."""

    b_s: float = 32.0                   # small/medium boundary side in pixels at gamma = 1
    b_l: float = 96.0                   # medium/large boundary side
    k: float = 6.0                      # slope of the up-probability map
    empty_target: float | None = 0.0    # target P_up for images without objects (None: skip)
    concentration: float = 8.0          # of the target Beta
    ema_momentum: float = 0.9
    distribution: str = "beta-w1"       # "beta-w1" (ours) or "balance" (DyRA)
    use_scale_loss: bool = True
    use_distribution_loss: bool = True


def weight_dict(num_decoder_layers: int, elastic: bool, ce: float = 2.0, bbox: float = 5.0,
                giou: float = 2.0, scale: float = 1.0, dist_w: float = 1.0) -> dict[str, float]:
    """Loss weights for every named term the criterion returns."""
    base = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    weights.update({f"{k}_enc": v for k, v in base.items()})
    if elastic:
        weights.update({"loss_scale": scale, "loss_dist": dist_w})
    return weights


class SetCriterion(nn.Module):
    """Hungarian matching + named loss terms.

    forward(outputs, targets) -> dict of scalar losses. In elastic mode ``self.bin_ema`` keeps
    the per-bin EMA of matched localization losses (synchronised over ranks).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, focal_alpha: float = 0.25,
                 elastic: ElasticLossOptions | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.elastic = elastic
        self.bin_ema = BinLossEMA(momentum=elastic.ema_momentum) if elastic else None

    def detection_losses(self, outputs: dict, targets: list[dict], indices, num_boxes: float
                         ) -> dict[str, Tensor]:
        """loss_ce, loss_bbox, loss_giou for one set of predictions."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        onehot = torch.zeros_like(logits)
        tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        onehot[batch_idx, src_idx, tgt_labels] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=2.0,
                                     reduction="sum") / num_boxes
        src_boxes = boxes[batch_idx, src_idx]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
        giou = torch.diag(generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"),
                                              box_convert(tgt_boxes, "cxcywh", "xyxy")))
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox.sum() / num_boxes,
                "loss_giou": (1 - giou).sum() / num_boxes,
                "_per_object_loc": (loss_bbox.sum(1) + (1 - giou)).detach()}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        # boxes per process, averaged over ranks (DDP averages the gradients): DETR's normaliser
        local = torch.tensor([float(sum(len(t["labels"]) for t in targets))])
        num_boxes = max(float(world_mean(local)), 1.0)

        indices = self.matcher(outputs, targets)
        main = self.detection_losses(outputs, targets, indices, num_boxes)
        per_object_loc = main.pop("_per_object_loc")
        losses = dict(main)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.detection_losses(aux, targets, self.matcher(aux, targets), num_boxes)
            aux_losses.pop("_per_object_loc")
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            enc_losses = self.detection_losses(enc, targets, self.matcher(enc, targets), num_boxes)
            enc_losses.pop("_per_object_loc")
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        if self.elastic is not None and "scale" in outputs:
            losses.update(self.elastic_losses(outputs["scale"], targets, indices, per_object_loc))
        return losses

    def elastic_losses(self, scale: dict, targets: list[dict], indices, per_object_loc: Tensor
                       ) -> dict[str, Tensor]:
        """loss_scale and loss_dist (method.md §3-4); updates the per-bin loss EMA when training.

        scale: {"u": [B], "image_sizes": [B, 2] processed (h, w) pixels, "log_gamma": scalar}.
        """
        opt = self.elastic
        u, sizes, log_gamma = scale["u"], scale["image_sizes"].float(), scale["log_gamma"]
        sides = [(t["boxes"][:, 2] * s[1] * t["boxes"][:, 3] * s[0]).clamp(min=0).sqrt()
                 for t, s in zip(targets, sizes)]                    # pixels at processed size
        if self.training:  # per-bin EMA of matched localization losses (last decoder layer)
            matched_sides = torch.cat([sd[j] for sd, (_, j) in zip(sides, indices)])
            bins = size_bins(matched_sides, log_gamma.detach(), opt.b_s, opt.b_l)
            sums = torch.zeros(3).index_add_(0, bins.cpu(), per_object_loc.float().cpu())
            counts = torch.zeros(3).index_add_(0, bins.cpu(), torch.ones(len(bins)))
            sums, counts = all_sum(sums), all_sum(counts)
            seen = counts > 0
            if seen.any():
                self.bin_ema.update((sums[seen] / counts[seen]), torch.arange(3)[seen])
        ema = self.bin_ema.value
        zero = u.sum() * 0.0 + log_gamma * 0.0
        losses = {"loss_scale": zero, "loss_dist": zero}
        if opt.use_scale_loss:
            losses["loss_scale"] = scale_loss(u, sides, log_gamma, opt.b_s, opt.b_l, opt.k,
                                              opt.empty_target)
        if opt.use_distribution_loss and ema is not None:
            if opt.distribution == "balance":
                losses["loss_dist"] = balance_loss(log_gamma, ema, opt.b_s, opt.b_l)
            else:
                losses["loss_dist"] = distribution_loss(sides, log_gamma, ema, opt.b_s, opt.b_l,
                                                        opt.k, opt.concentration)
        return losses
