"""Scale loss L_scale of Elastic-DETR (docs/method.md §3).

The predictor's normalised scale u_i ∈ (0, 1) is read as an *up-scaling probability*. Each
ground-truth object j of image i votes for up-scaling with probability

    P_up,ij = sigmoid(-m(s_ij)),   m linear in log s,  m(B_s) = -k,  m(B_l) = +k,

where s_ij = sqrt(w_ij · h_ij) is the object's side in pixels at the processed resolution and
B_s = b_s·γ, B_l = b_l·γ are learnable size boundaries (γ = exp(g), g a learnable scalar that
only the distribution loss trains). The per-object loss is BCE(u_i, P_up,ij); it is averaged
inside each size bin (small / medium / large, DyRA's "Pareto" grouping), summed over the
bins, and averaged over the images.

All functions are pure and work on plain tensors so that notebooks can plot them directly.
``log_gamma`` may be a Python float, a 0-d tensor or the learnable ``nn.Parameter`` g.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .resize import phi_from_u

__all__ = [
    "LARGE",
    "MEDIUM",
    "SMALL",
    "concat_sides",
    "ideal_scale",
    "object_sides",
    "scale_loss",
    "scale_loss_per_image",
    "scale_optimum",
    "size_bins",
    "size_boundaries",
    "up_probability",
]

SMALL, MEDIUM, LARGE = 0, 1, 2
_MIN_SIDE = 1e-6  # sides are clamped to this (pixels) before the log: degenerate boxes are "small"


def _as_tensor(x: float | Tensor, like: Tensor) -> Tensor:
    """``x`` as a tensor with ``like``'s dtype and device (keeps the autograd graph of ``x``)."""
    if isinstance(x, Tensor):
        return x.to(dtype=like.dtype, device=like.device)
    return torch.tensor(float(x), dtype=like.dtype, device=like.device)


def _check_bounds(b_s: float, b_l: float) -> None:
    if not (0.0 < b_s < b_l):
        raise ValueError(f"size boundaries need 0 < b_s < b_l, got b_s={b_s}, b_l={b_l}")


def object_sides(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Object sides s = sqrt(w·h) in pixels, detached.

    Args:
        boxes: [N, 4] normalised (cx, cy, w, h) relative to the unpadded image.
        image_size: (h, w) of the processed (resized) image in pixels.
    Returns:
        [N] sides in pixels at that resolution.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected shape [N, 4], got {tuple(boxes.shape)}")
    h, w = (float(v) for v in image_size)
    area = (boxes[:, 2] * w * boxes[:, 3] * h).clamp_min(0)  # this order: the training losses
    return area.detach().sqrt()


def size_boundaries(
    log_gamma: float | Tensor, b_s: float = 32.0, b_l: float = 96.0
) -> tuple[Tensor, Tensor]:
    """Boundaries (B_s, B_l) = (b_s·γ, b_l·γ) with γ = exp(log_gamma); differentiable in g."""
    _check_bounds(b_s, b_l)
    g = log_gamma if isinstance(log_gamma, Tensor) else torch.tensor(float(log_gamma))
    gamma = g.exp()
    return b_s * gamma, b_l * gamma


def up_probability(
    sides: Tensor, log_gamma: float | Tensor, b_s: float = 32.0, b_l: float = 96.0, k: float = 6.0
) -> Tensor:
    """Up-scaling probability P_up(s) = sigmoid(-m(s)) of objects with side ``s`` (pixels).

    m is the linear map of log s with m(B_s) = -k and m(B_l) = +k, i.e.
    m(s) = 2k / log(b_l/b_s) · (log s - log sqrt(b_s·b_l) - g). Objects at B_s get
    sigmoid(k) ≈ 1, at B_l sigmoid(-k) ≈ 0, at the geometric mean of the boundaries 1/2.
    Increasing g (larger boundaries) increases P_up for every object.

    Args:
        sides: any shape, object sides in pixels (clamped to ≥ 1e-6).
        log_gamma: g, a float or a tensor broadcastable against ``sides``.
    Returns:
        P_up with the broadcast shape of ``sides`` and ``log_gamma``; differentiable in both.
    """
    _check_bounds(b_s, b_l)
    g = _as_tensor(log_gamma, sides)
    slope = 2.0 * k / math.log(b_l / b_s)
    m = slope * (sides.clamp_min(_MIN_SIDE).log() - 0.5 * math.log(b_s * b_l) - g)
    return torch.sigmoid(-m)


@torch.no_grad()
def size_bins(
    sides: Tensor, log_gamma: float | Tensor, b_s: float = 32.0, b_l: float = 96.0
) -> Tensor:
    """Size bin of each object: 0 small (s < B_s), 1 medium (B_s ≤ s < B_l), 2 large (s ≥ B_l).

    Computed with a detached γ; returns a LongTensor with the shape of ``sides``.
    """
    _check_bounds(b_s, b_l)
    g = _as_tensor(log_gamma, sides).detach()
    log_s = sides.clamp_min(_MIN_SIDE).log()
    small = log_s < math.log(b_s) + g
    large = log_s >= math.log(b_l) + g
    bins = torch.full(sides.shape, MEDIUM, dtype=torch.long, device=sides.device)
    bins[small] = SMALL
    bins[large] = LARGE
    return bins


@torch.no_grad()
def ideal_scale(sides_per_image: Sequence[Tensor], log_gamma: float, b_s: float = 32.0,
                b_l: float = 96.0, k: float = 6.0, empty_target: float = 0.0) -> Tensor:
    """Per-image u that minimises the scale loss at γ = exp(log_gamma).

    Setting d/du Σ_bins mean_{j∈bin} BCE(u, P_up,j) = 0 gives u* = mean over the non-empty
    bins of the bin's mean P_up. Images without objects get ``empty_target``. Returns [B].
    """
    like = torch.zeros((), dtype=torch.float64)
    sides, image_index, counts = concat_sides(sides_per_image, like)
    p_up = up_probability(sides, float(log_gamma), b_s, b_l, k)  # [N]
    cell = image_index * 3 + size_bins(sides, float(log_gamma), b_s, b_l)  # [N]
    num = len(sides_per_image)
    sums = like.new_zeros(num * 3).index_add(0, cell, p_up)
    cnt = like.new_zeros(num * 3).index_add(0, cell, torch.ones_like(p_up))
    bin_mean = (sums / cnt.clamp_min(1.0)).view(num, 3)  # [B, 3]
    nonempty = (cnt.view(num, 3) > 0).sum(dim=1)  # [B]
    u = bin_mean.sum(dim=1) / nonempty.clamp_min(1)
    return torch.where(counts > 0, u, torch.full_like(u, empty_target))


@torch.no_grad()
def scale_optimum(base_sides_per_image: Sequence[Tensor], log_gamma: float, tau_min: float,
                  tau_max: float, b_s: float = 32.0, b_l: float = 96.0, k: float = 6.0,
                  empty_target: float = 0.0, iters: int = 40) -> tuple[Tensor, Tensor]:
    """u* and φ* per image: where the scale loss asks each image to be processed.

    The sides the loss sees depend on the scale it chooses (s = s_base·φ(u), φ = tau_min +
    (tau_max - tau_min)·u), so u* is the self-consistent point u* = ideal(s_base·φ(u*)): the
    u at which the gradient of the scale loss in u vanishes with the sides measured at the
    size u* gives. It is where training on L_scale alone converges for that image, and what a
    perfect predictor outputs. ``ideal`` (:func:`ideal_scale`) falls as the sides grow, so
    u - ideal(s_base·φ(u)) rises from ≤ 0 at u = 0 to ≥ 0 at u = 1 and bisection finds the
    crossing (to 2^-iters). The processed size is taken as continuous (no stride rounding).

    Args:
        base_sides_per_image: B tensors [N_i] of object sides in pixels at φ = 1.
        log_gamma, b_s, b_l, k: the scale loss's boundaries (γ = exp(log_gamma)).
    Returns:
        u_star [B], phi_star [B] (float64); images without objects get ``empty_target``.
    """
    base = [torch.as_tensor(s, dtype=torch.float64).reshape(-1) for s in base_sides_per_image]
    lo = torch.zeros(len(base), dtype=torch.float64)
    hi = torch.ones(len(base), dtype=torch.float64)
    for _ in range(iters):
        mid = (lo + hi) / 2
        phi = phi_from_u(mid, tau_min, tau_max)
        target = ideal_scale([s * p for s, p in zip(base, phi.tolist())], log_gamma, b_s, b_l,
                             k, empty_target)
        above = mid >= target  # the crossing lies at or below mid
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    u_star = (lo + hi) / 2
    empty = torch.tensor([s.numel() == 0 for s in base])
    u_star = torch.where(empty, torch.full_like(u_star, empty_target), u_star)
    return u_star, phi_from_u(u_star, tau_min, tau_max)


def _bce(u: Tensor, target: Tensor | float, eps: float) -> Tensor:
    """Elementwise BCE(u, target) = -[t·log u + (1-t)·log(1-u)] with u clamped to [eps, 1-eps]."""
    u = u.clamp(eps, 1.0 - eps)
    return -(target * u.log() + (1.0 - target) * (1.0 - u).log())


def concat_sides(sides_per_image: Sequence[Tensor], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate per-image sides as data (detached, ``like``'s dtype and device).

    Returns:
        sides [N], image index of each side [N] (long), number of sides per image [B] (long).
    """
    sides, counts = [], []
    for i, s in enumerate(sides_per_image):
        if not isinstance(s, Tensor):
            s = torch.as_tensor(s)
        if s.dim() > 1:
            raise ValueError(f"sides_per_image[{i}]: expected a 1-D tensor, got {tuple(s.shape)}")
        s = s.detach().reshape(-1).to(dtype=like.dtype, device=like.device)
        sides.append(s)
        counts.append(s.numel())
    count_t = torch.tensor(counts, dtype=torch.long, device=like.device)
    image_index = torch.repeat_interleave(torch.arange(len(counts), device=like.device), count_t)
    flat = torch.cat(sides) if sides else like.new_zeros(0)
    return flat, image_index, count_t


def scale_loss_per_image(
    u: Tensor,
    sides_per_image: Sequence[Tensor],
    log_gamma: float | Tensor,
    b_s: float = 32.0,
    b_l: float = 96.0,
    k: float = 6.0,
    empty_target: float | None = 0.0,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Per-image scale loss and which images count (see :func:`scale_loss`).

    Args:
        u: [B] normalised scales in (0, 1) (clamped to [eps, 1-eps] inside the logs).
        sides_per_image: B tensors [N_i] of object sides in pixels at the processed resolution.
        log_gamma: g; used detached (targets and bins), so no gradient reaches it.
    Returns:
        loss: [B] Σ_bins mean_{j ∈ bin} BCE(u_i, P_up,ij); for an image without objects
            BCE(u_i, empty_target), or 0 when ``empty_target`` is None.
        valid: [B] bool, images that enter the batch mean.
    """
    if u.dim() != 1:
        raise ValueError(f"u: expected shape [B], got {tuple(u.shape)}")
    if len(sides_per_image) != u.shape[0]:
        raise ValueError(
            f"sides_per_image has {len(sides_per_image)} entries but u has {u.shape[0]} images"
        )
    if empty_target is not None and not 0.0 <= empty_target <= 1.0:
        raise ValueError(f"empty_target must lie in [0, 1] or be None, got {empty_target}")
    num_images = u.shape[0]
    g = _as_tensor(log_gamma, u).detach()
    sides, image_index, counts = concat_sides(sides_per_image, u)

    p_up = up_probability(sides, g, b_s, b_l, k)  # [N], constant targets
    bins = size_bins(sides, g, b_s, b_l)  # [N]
    per_object = _bce(u[image_index], p_up, eps)  # [N], differentiable in u

    # mean within each (image, bin) cell, then sum over the bins of each image
    cell = image_index * 3 + bins  # [N]
    sums = u.new_zeros(num_images * 3).index_add(0, cell, per_object)
    cnt = u.new_zeros(num_images * 3).index_add(0, cell, torch.ones_like(per_object))
    per_image = (sums / cnt.clamp_min(1.0)).view(num_images, 3).sum(dim=1)  # [B]

    has_objects = counts > 0
    if empty_target is None:
        valid = has_objects
        loss = torch.where(has_objects, per_image, torch.zeros_like(per_image))
    else:
        valid = torch.ones_like(has_objects)
        loss = torch.where(has_objects, per_image, _bce(u, float(empty_target), eps))
    return loss, valid


def scale_loss(
    u: Tensor,
    sides_per_image: Sequence[Tensor],
    log_gamma: float | Tensor,
    b_s: float = 32.0,
    b_l: float = 96.0,
    k: float = 6.0,
    empty_target: float | None = 0.0,
    eps: float = 1e-6,
) -> Tensor:
    """Scale loss L_scale (method.md §3): a scalar whose gradient reaches ``u`` only.

    For image i with objects j: ℓ_ij = BCE(u_i, P_up,ij), P_up from a **detached** γ; ℓ is
    averaged within each non-empty size bin (bins from the detached γ) and summed over the
    bins, so one small object weighs as much as ten large ones. The batch loss is the mean
    over images with objects; images without objects use the target ``empty_target``
    (default 0: the cheapest scale) or are ignored when it is None.

    Args:
        u: [B] normalised scales in (0, 1).
        sides_per_image: B tensors [N_i] of object sides sqrt(w·h) in pixels at the processed
            resolution (treated as data: detached).
        log_gamma: g with γ = exp(g) (float or tensor; used detached).
        b_s, b_l: base small / large boundaries in pixels (COCO 32 / 96).
        k: |m| at the boundaries (DyRA ±6).
        empty_target: BCE target for images without objects, None = leave them out.
        eps: clamp of u inside the logs.
    Returns:
        0-d tensor; 0 (still attached to ``u``) when no image counts.
    """
    per_image, valid = scale_loss_per_image(
        u, sides_per_image, log_gamma, b_s, b_l, k, empty_target, eps
    )
    if not bool(valid.any()):
        return u.sum() * 0.0
    return per_image[valid].mean()
