"""The losses that train the scale predictor: ``loss_scale`` and ``loss_size_map``.

Shared by the joint criterion (criterion.py) and the predictor's warm start
(predictor_pretrain.py), so the predictor learns the same thing in both.

``loss_scale`` (scale_loss.py, method.md §3) measures object sides **at the processed size the
predicted φ gives**: s = side at φ = 1 · φ(u) (continuous, φ detached). That is the size the
image is processed at in elastic training, and it keeps the scale loss's target the same when
the detector is fed another φ (warm-up phases at φ = 1 or random φ, exploration noise): the
predictor always converges to the self-consistent optimum u* of ``scale_loss.scale_optimum``.
Doubling φ doubles the sides.

``loss_size_map`` (size_map.py, the project's own auxiliary term) trains the predictor's dense
size head, when it has one, on the sides at φ = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..resize import base_size_scale
from ..scale_loss import object_sides, scale_loss
from ..size_map import size_map_loss, size_map_targets

__all__ = ["base_sides", "predictor_losses", "sides_at_phi"]


def sides_at_phi(targets: Sequence[dict], phi: Tensor, base_size: int, max_size: int | None
                 ) -> list[Tensor]:
    """Object sides in pixels at base size × φ_i for every target (continuous sizes).

    targets: dicts with "boxes" [N_i, 4] normalised cxcywh and "orig_size" (h, w).
    phi: [B] scale factors (detached).
    """
    out = []
    for t, p in zip(targets, phi.detach().float().cpu().tolist()):
        h, w = (int(v) for v in t["orig_size"])
        s = base_size_scale(h, w, base_size, max_size) * p
        out.append(object_sides(t["boxes"], (h * s, w * s)))
    return out


def base_sides(targets: Sequence[dict], base_size: int, max_size: int | None) -> list[Tensor]:
    """Object sides in pixels at φ = 1."""
    return sides_at_phi(targets, torch.ones(len(targets)), base_size, max_size)


def predictor_losses(scale: dict, targets: Sequence[dict], base_size: int,
                     max_size: int | None, log_gamma: Tensor | float, b_s: float, b_l: float,
                     k: float = 6.0, empty_target: float | None = 0.0,
                     size_edges: Tensor | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
    """loss_scale (and loss_size_map when ``scale`` holds "size_map" logits).

    Args:
        scale: predictor outputs: "u" [B], "phi" [B]; optionally "size_map" [B, K, h, w] and
            "size_map_valid" [B, h, w].
        log_gamma: the boundary parameter g (used detached: L_scale does not train it).
        size_edges: [K + 1] size-bin edges (size_map.size_bin_edges) for the size map.
    Returns:
        (losses, sides at the predicted φ per image: what the distribution loss reads too).
    """
    u = scale["u"]
    sides = [s.to(u.device) for s in sides_at_phi(targets, scale["phi"], base_size, max_size)]
    g = log_gamma.detach() if isinstance(log_gamma, Tensor) else log_gamma
    losses = {"loss_scale": scale_loss(u, sides, g, b_s, b_l, k, empty_target)}
    if "size_map" in scale and size_edges is not None:
        valid = scale["size_map_valid"]
        target = size_map_targets([t["boxes"] for t in targets],
                                  base_sides(targets, base_size, max_size), valid,
                                  size_edges.to(valid.device))
        losses["loss_size_map"] = size_map_loss(scale["size_map"], target, valid)
    return losses, sides
