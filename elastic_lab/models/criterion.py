"""Set criterion: named loss terms with a weight dict (facebookresearch/detr style).

Detection terms (Deformable-DETR flavour, a convergence aid on CPU): ``loss_ce`` sigmoid focal
classification, ``loss_bbox`` L1 on normalised boxes, ``loss_giou``; repeated with suffix
``_{i}`` for decoder layer i and ``_enc`` for the first-stage proposals. Elastic terms (when the
model outputs a "scale" entry): ``loss_scale`` (scale_loss.py, sides at the predicted φ:
predictor_criterion.py), ``loss_dist`` (distribution_loss.py) and, for predictors with a size
head, ``loss_size_map`` (size_map.py). :func:`build_criterion` sets ``criterion.weight_dict`` and the training
loop sums ``losses[k] * weight_dict[k]`` (engine.train_step).

The distribution loss reads a per-size-bin EMA of the matched localization losses. A training
step folds its own matches into that EMA *before* the loss reads it, with an explicit
:meth:`SetCriterion.update_bin_ema` call (a collective under torchrun); the forward itself only
reads the EMA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ..distributed import all_sum, world_mean
from ..distribution_loss import (
    BinLossEMA,
    balance_loss,
    budget_target_beta,
    distribution_loss,
    target_beta,
)
from ..scale_loss import object_sides, size_bins
from ..size_map import size_bin_edges
from .matcher import HungarianMatcher
from .predictor_criterion import predictor_losses

Matches = list[tuple[Tensor, Tensor]]  # per image: (prediction indices [k], target indices [k])


@dataclass
class ElasticLossOptions:
    """Options of the scale and distribution losses (docs/method.md §3-4)."""

    b_s: float = 32.0                   # small/medium boundary side in pixels at gamma = 1
    b_l: float = 96.0                   # medium/large boundary side
    k: float = 6.0                      # slope of the up-probability map
    empty_target: float | None = 0.0    # target P_up for images without objects (None: skip)
    concentration: float = 8.0          # of the target Beta
    ema_momentum: float = 0.9
    distribution: str = "beta-w1"       # "beta-w1" (paper), "budget" (ours) or "balance" (DyRA)
    compute_budget: float = 0.8         # "budget": mean detector cost relative to phi = 1
    use_scale_loss: bool = True
    use_distribution_loss: bool = True

    @classmethod
    def for_base_size(cls, base_size: int, b_s: float | None = None, b_l: float | None = None,
                      **options) -> ElasticLossOptions:
        """The options ``elastic-lab train`` uses at ``base_size``: unless given, the boundaries
        are COCO's small/medium and medium/large sides (32 and 96 px at COCO's base size 800)
        scaled to ours, b_s = 32·base_size/800 and b_l = 96·base_size/800."""
        return cls(b_s=32.0 * base_size / 800 if b_s is None else b_s,
                   b_l=96.0 * base_size / 800 if b_l is None else b_l, **options)


def weight_dict(num_decoder_layers: int, elastic: bool, ce: float = 2.0, bbox: float = 5.0,
                giou: float = 2.0, scale: float = 1.0, dist_w: float = 1.0,
                size_map: float | None = None) -> dict[str, float]:
    """Loss weights for every named term the criterion returns (``size_map``: the weight of
    loss_size_map, for predictors with a size head; None: no such term)."""
    base = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    weights.update({f"{k}_enc": v for k, v in base.items()})
    if elastic:
        weights.update({"loss_scale": scale, "loss_dist": dist_w})
        if size_map is not None:
            weights["loss_size_map"] = size_map
    return weights


def matched_box_losses(outputs: dict, targets: list[dict], indices: Matches
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Box terms of the matched pairs, M = number of matches over the batch.

    outputs: {"pred_boxes": [B, Q, 4] normalised cxcywh}; targets: {"boxes": [Ni, 4]}.
    Returns (batch index [M], L1 [M, 4] per coordinate, 1 - GIoU [M]).
    """
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    src_boxes = outputs["pred_boxes"][batch_idx, src_idx]
    tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
    giou = torch.diag(generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"),
                                          box_convert(tgt_boxes, "cxcywh", "xyxy")))
    return batch_idx, l1, 1 - giou


def step_num_boxes(targets: list[dict]) -> float:
    """DETR's normaliser of the detection terms: the step's boxes on this process, averaged
    over ranks (DDP averages the gradients), at least 1."""
    local = torch.tensor([float(sum(len(t["labels"]) for t in targets))])
    return max(float(world_mean(local)), 1.0)


def target_sides(targets: list[dict], image_sizes: Tensor) -> list[Tensor]:
    """Object sides sqrt(w·h) in pixels at each image's processed size [B, 2] (h, w)."""
    return [object_sides(t["boxes"], size) for t, size in zip(targets, image_sizes.float())]


class SetCriterion(nn.Module):
    """Hungarian matching + named loss terms.

    forward(outputs, targets, indices=None) -> dict of scalar losses (``indices``: the matches of
    the last decoder layer when the caller already has them). In elastic mode ``self.bin_ema``
    keeps the per-bin EMA of matched localization losses, updated by :meth:`update_bin_ema`.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, elastic: ElasticLossOptions | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.elastic = elastic
        self.bin_ema = BinLossEMA(momentum=elastic.ema_momentum) if elastic else None

    def detection_losses(self, outputs: dict, targets: list[dict], indices: Matches,
                         num_boxes: float) -> dict[str, Tensor]:
        """loss_ce, loss_bbox, loss_giou for one set of predictions."""
        logits = outputs["pred_logits"]
        batch_idx, l1, giou_loss = matched_box_losses(outputs, targets, indices)
        src_idx = torch.cat([src for src, _ in indices])
        onehot = torch.zeros_like(logits)
        tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        onehot[batch_idx, src_idx, tgt_labels] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=2.0,
                                     reduction="sum") / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": l1.sum() / num_boxes,
                "loss_giou": giou_loss.sum() / num_boxes}

    def forward(self, outputs: dict, targets: list[dict], indices: Matches | None = None,
                scale_targets: list[dict] | None = None, num_boxes: float | None = None
                ) -> dict[str, Tensor]:
        """``scale_targets``: the targets of the images the predictor ran on, when those were
        not the detector's batch (ElasticDETR's ``scale_images``). ``num_boxes``: the
        detection terms' normaliser when ``targets`` are only part of the step's images
        (:func:`step_num_boxes` of the whole step); default: that of ``targets``."""
        num_boxes = step_num_boxes(targets) if num_boxes is None else num_boxes

        indices = self.matcher(outputs, targets) if indices is None else indices
        losses = self.detection_losses(outputs, targets, indices, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.detection_losses(aux, targets, self.matcher(aux, targets), num_boxes)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            enc_losses = self.detection_losses(enc, targets, self.matcher(enc, targets), num_boxes)
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        if self.elastic is not None and "scale" in outputs:
            losses.update(self.elastic_losses(outputs["scale"], scale_targets or targets))
        return losses

    @torch.no_grad()
    def matched_bin_losses(self, outputs: dict, targets: list[dict], indices: Matches,
                           log_gamma: Tensor) -> Tensor:
        """Sums and counts [2, 3] of the matched localization losses per size bin, this
        process's images only (no collective).

        The per-object loss is L1 + (1 - GIoU) of each Hungarian-matched pair of the last decoder
        layer (``indices``), binned by the object's side at the processed size against the
        boundaries of ``log_gamma``.
        """
        opt = self.elastic
        _, l1, giou_loss = matched_box_losses(outputs, targets, indices)
        per_object_loc = l1.sum(1) + giou_loss                                   # [M]
        sides = target_sides(targets, outputs["image_sizes"])  # the detector's batch
        matched_sides = torch.cat([sd[j] for sd, (_, j) in zip(sides, indices)])  # [M]
        bins = size_bins(matched_sides, log_gamma.detach(), opt.b_s, opt.b_l).cpu()
        out = torch.zeros(2, 3)
        out[0].index_add_(0, bins, per_object_loc.float().cpu())
        out[1].index_add_(0, bins, torch.ones(len(bins)))
        return out

    @torch.no_grad()
    def fold_bin_losses(self, sums_counts: Tensor) -> None:
        """Fold a step's :meth:`matched_bin_losses` (summed over its parts) into the per-bin
        EMA. Sums and counts are added over ranks: every rank calls this once per step."""
        sums, counts = all_sum(sums_counts.float())
        seen = counts > 0
        if seen.any():
            self.bin_ema.update((sums[seen] / counts[seen]), torch.arange(3)[seen])

    def update_bin_ema(self, outputs: dict, targets: list[dict], indices: Matches) -> None:
        """Fold one training batch's matched localization losses into the per-bin EMA
        (:meth:`matched_bin_losses` then :meth:`fold_bin_losses`: a collective)."""
        self.fold_bin_losses(self.matched_bin_losses(outputs, targets, indices,
                                                     outputs["scale"]["log_gamma"]))

    def distribution_target(self, tau_min: float, tau_max: float) -> tuple[float, float] | None:
        """(α*, β*) of the distribution loss's target Beta now: from the per-bin loss EMA
        ("beta-w1", the paper's) or from the compute budget ("budget"); None for "balance"."""
        opt = self.elastic
        if opt.distribution == "budget":
            return budget_target_beta(opt.compute_budget, tau_min, tau_max, opt.concentration)
        if opt.distribution == "beta-w1":
            return target_beta(self.bin_ema.value, opt.concentration)
        return None

    def elastic_losses(self, scale: dict, targets: list[dict]) -> dict[str, Tensor]:
        """loss_scale, loss_dist (docs/method.md §3-4) and loss_size_map at the current bin EMA.

        scale: the model's "scale" output: "u" [B], "phi" [B] predicted, "log_gamma", the
        resize settings, and "size_map"/"size_map_valid" for predictors with a size head.
        Both L_scale and L_dist measure object sides at the size the predicted φ gives.
        """
        opt = self.elastic
        u, log_gamma = scale["u"], scale["log_gamma"]
        edges = None
        if "size_map" in scale:
            edges = size_bin_edges(scale["base_size"], scale["size_map"].shape[1])
        terms, sides = predictor_losses(scale, targets, scale["base_size"], scale["max_size"],
                                        log_gamma, opt.b_s, opt.b_l, opt.k, opt.empty_target,
                                        edges)
        ema = self.bin_ema.value
        zero = u.sum() * 0.0 + log_gamma * 0.0
        losses = {"loss_scale": terms["loss_scale"] if opt.use_scale_loss else zero,
                  "loss_dist": zero}
        if "loss_size_map" in terms:
            losses["loss_size_map"] = terms["loss_size_map"]
        if opt.use_distribution_loss:
            if opt.distribution == "balance":
                losses["loss_dist"] = balance_loss(log_gamma, ema, opt.b_s, opt.b_l)
            else:
                target = self.distribution_target(scale["tau_min"], scale["tau_max"])
                losses["loss_dist"] = distribution_loss(sides, log_gamma, ema, opt.b_s, opt.b_l,
                                                        opt.k, opt.concentration,
                                                        target=target)
        return losses


def build_criterion(num_classes: int, num_decoder_layers: int,
                    elastic: ElasticLossOptions | None = None, lambda_scale: float = 1.0,
                    lambda_dist: float = 1.0, lambda_size_map: float | None = None
                    ) -> SetCriterion:
    """The criterion of a run: Hungarian matcher, the weight dict of every term it returns
    (detection terms of every decoder layer and the proposals; loss_scale weighted by
    ``lambda_scale``, loss_dist by ``lambda_dist`` when ``elastic`` options are given, and
    loss_size_map by ``lambda_size_map`` when that is given: predictors with a size head)."""
    if elastic is not None and elastic.distribution not in ("beta-w1", "budget", "balance"):
        raise ValueError(f"unknown distribution loss {elastic.distribution!r}: choose "
                         "beta-w1, budget or balance")
    weights = weight_dict(num_decoder_layers, elastic is not None, scale=lambda_scale,
                          dist_w=lambda_dist, size_map=lambda_size_map)
    return SetCriterion(num_classes, HungarianMatcher(), weights, elastic=elastic)
