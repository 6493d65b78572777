"""Distribution loss L_dist of Elastic-DETR (docs/method.md §4) and DyRA's balance loss.

The detector's per-scale ability is tracked as an exponential moving average of the mean
matched localization loss per size bin (:class:`BinLossEMA`). From it a target Beta(α*, β*)
over the normalised scale u ∈ [0, 1] is built (:func:`target_beta`): when small objects are
the harder ones its mass moves towards up-scaling. The loss is the 1-Wasserstein distance
between the empirical distribution of the per-image mean up-scaling targets
P̄_i = mean_j P_up,ij (computed with the **non-detached** γ) and that Beta
(:func:`beta_w1`); its gradient moves only the boundary parameter g = log γ, which is how
the boundaries are learned.

:func:`budget_target_beta` is the project's compute-aware target (``--distribution-loss
budget``): the same Beta-W1 loss, but the target's mean is set by a compute budget instead of
the loss ratio, which is above ½ whenever small objects are the harder ones and so pushes φ up
whatever it costs.
:func:`balance_loss` is DyRA's alternative ("balance loss"), offered as an ablation switch.
:func:`fit_beta_moments` fits a Beta to predicted scales for plots and logs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats
from torch import Tensor, nn

from elastic_lab.scale_loss import LARGE, SMALL, concat_sides, up_probability

__all__ = [
    "BinLossEMA",
    "balance_loss",
    "balance_target",
    "beta_w1",
    "budget_target_beta",
    "distribution_loss",
    "fit_beta_moments",
    "mean_up_probability",
    "target_beta",
]


class BinLossEMA(nn.Module):
    """Per-size-bin EMA of the mean matched localization loss (L1 + GIoU), L̄ = [L̄_s, L̄_m, L̄_l].

    Each :meth:`update` takes the detached per-object losses of the Hungarian-matched pairs of
    the last decoder layer and their size bins (0 small / 1 medium / 2 large, as
    :func:`elastic_lab.scale_loss.size_bins`). For each bin observed in the step,
    L̄ ← momentum·L̄ + (1 - momentum)·mean(losses in bin); the first observation of a bin
    initialises it; bins without matches keep their value. Unobserved bins read 1.0 (neutral:
    the target Beta is symmetric while neither small nor large has been seen).

    An ``nn.Module`` with buffers ``ema`` [3] and ``seen`` [3] (bool), so that ``.to(device)``
    and ``state_dict()`` / ``load_state_dict()`` work as for any module (tensors only).
    """

    def __init__(self, momentum: float = 0.9, num_bins: int = 3):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("ema", torch.ones(num_bins))
        self.register_buffer("seen", torch.zeros(num_bins, dtype=torch.bool))

    @property
    def value(self) -> Tensor:
        """[3] current EMA (a detached copy)."""
        return self.ema.detach().clone()

    @torch.no_grad()
    def update(self, losses: Tensor, bins: Tensor) -> Tensor:
        """Fold one step's matched losses into the EMA.

        Args:
            losses: [M] per-object localization losses (detached here).
            bins: [M] LongTensor of size bins in [0, num_bins).
        Returns:
            [3] the updated EMA (detached copy).
        """
        losses = losses.detach().reshape(-1).to(self.ema)
        bins = bins.reshape(-1).to(device=self.ema.device, dtype=torch.long)
        if losses.shape != bins.shape:
            raise ValueError(f"losses {tuple(losses.shape)} and bins {tuple(bins.shape)} differ")
        num_bins = self.ema.numel()
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= num_bins):
            raise ValueError(f"bins must lie in [0, {num_bins}), got {bins.unique().tolist()}")
        sums = torch.zeros_like(self.ema).index_add_(0, bins, losses)
        counts = torch.zeros_like(self.ema).index_add_(0, bins, torch.ones_like(losses))
        observed = counts > 0
        means = sums / counts.clamp_min(1.0)
        blended = self.momentum * self.ema + (1.0 - self.momentum) * means
        new = torch.where(self.seen, blended, means)
        self.ema.copy_(torch.where(observed, new, self.ema))
        self.seen |= observed
        return self.value

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


def _ema_tensor(ema: Tensor | BinLossEMA | Sequence[float]) -> Tensor:
    if isinstance(ema, BinLossEMA):
        return ema.value
    ema = torch.as_tensor(ema, dtype=torch.float64).detach()
    if ema.shape != (3,):
        raise ValueError(
            f"ema: expected 3 per-bin losses (small, medium, large), got {tuple(ema.shape)}"
        )
    return ema


def target_beta(
    ema: Tensor | BinLossEMA | Sequence[float],
    concentration: float = 8.0,
    r_min: float = 0.05,
    r_max: float = 0.95,
) -> tuple[float, float]:
    """Target Beta(α*, β*) from per-bin losses: r = clip(L̄_s/(L̄_s+L̄_l), r_min, r_max),
    α* = c·r, β* = c·(1-r) (mean r). r = 1/2 when L̄_s + L̄_l ≤ 0."""
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    ema = _ema_tensor(ema)
    small, large = float(ema[SMALL]), float(ema[LARGE])
    r = small / (small + large) if small + large > 0 else 0.5
    r = min(max(r, r_min), r_max)
    return concentration * r, concentration * (1.0 - r)


def budget_target_beta(budget: float, tau_min: float, tau_max: float,
                       concentration: float = 8.0, r_min: float = 0.05,
                       r_max: float = 0.95) -> tuple[float, float]:
    """Compute-aware target Beta(c·r, c·(1-r)) (ours): r such that E[(φ(u)/1)²] = ``budget``.

    The detector's cost grows with the processed pixels, i.e. with φ² (measured: 3.04 / 5.35
    / 8.38 GFLOPs at φ = 0.75 / 1 / 1.25 on the synthetic set, ratios 0.57 / 1 / 1.57). For
    u ~ Beta(c·r, c·(1-r)) and φ = τmin + Δ·u, E[φ²] = (τmin + Δr)² + Δ²·r(1-r)/(c+1), a
    quadratic in r; its root in [0, 1] is the target mean. ``budget`` is the mean detector
    cost relative to φ = 1 (e.g. 0.8: 20 % fewer detector FLOPs than at φ = 1 on average).
    The boundaries then move until the scales the scale loss asks for cost that much, and the
    scale loss decides which images get the larger and which the smaller scales.
    """
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    a, span = float(tau_min), float(tau_max) - float(tau_min)
    v = 1.0 / (concentration + 1.0)
    qa, qb, qc = span**2 * (1.0 - v), 2.0 * a * span + span**2 * v, a * a - budget
    if qa == 0.0:  # tau_min == tau_max: every u gives the same φ
        r = 0.5
    else:
        r = (-qb + math.sqrt(max(qb * qb - 4.0 * qa * qc, 0.0))) / (2.0 * qa)
    r = min(max(r, r_min), r_max)
    return concentration * r, concentration * (1.0 - r)


def beta_w1(samples: Tensor, alpha: float, beta: float) -> Tensor:
    """W1 between the empirical distribution of ``samples`` and Beta(alpha, beta).

    (1/n)·Σ_k |x_(k) - F*⁻¹((k - ½)/n)| with x sorted and F*⁻¹ the Beta quantile
    (scipy, constant). Differentiable in ``samples`` (through the sort).

    Args:
        samples: [n] values in [0, 1], n ≥ 1.
    Returns:
        0-d tensor.
    """
    samples = samples.reshape(-1)
    n = samples.numel()
    if n == 0:
        raise ValueError("beta_w1 needs at least one sample")
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    quantiles = torch.as_tensor(
        stats.beta.ppf(levels.numpy(), alpha, beta), dtype=samples.dtype, device=samples.device
    )
    return (samples.sort().values - quantiles).abs().mean()


def mean_up_probability(
    sides_per_image: Sequence[Tensor],
    log_gamma: float | Tensor,
    b_s: float = 32.0,
    b_l: float = 96.0,
    k: float = 6.0,
) -> tuple[Tensor, Tensor]:
    """P̄_i = mean_j P_up,ij per image with the **non-detached** γ.

    Returns:
        p_mean: [B'] for the B' images that have objects (differentiable in ``log_gamma``).
        has_objects: [B] bool.
    """
    like = log_gamma if isinstance(log_gamma, Tensor) else torch.zeros(())
    like = like if like.is_floating_point() else like.float()
    sides, image_index, counts = concat_sides(sides_per_image, like.detach())
    p_up = up_probability(sides, log_gamma, b_s, b_l, k)  # [N], attached to g
    sums = p_up.new_zeros(len(sides_per_image)).index_add(0, image_index, p_up)
    has_objects = counts > 0
    p_mean = sums[has_objects] / counts[has_objects].to(sums)
    return p_mean, has_objects


def distribution_loss(
    sides_per_image: Sequence[Tensor],
    log_gamma: Tensor,
    ema: Tensor | BinLossEMA | Sequence[float],
    b_s: float = 32.0,
    b_l: float = 96.0,
    k: float = 6.0,
    concentration: float = 8.0,
    r_min: float = 0.05,
    r_max: float = 0.95,
    target: tuple[float, float] | None = None,
) -> Tensor:
    """Distribution loss L_dist = W1({P̄_i}, Beta(α*, β*)) (method.md §4).

    Args:
        sides_per_image: B tensors [N_i] of object sides in pixels at the processed resolution
            (data: detached). Images without objects are skipped.
        log_gamma: the learnable g (γ = exp(g)); the only thing that receives a gradient.
        ema: [3] per-bin mean localization losses (or a :class:`BinLossEMA`).
        target: (α*, β*) to use instead of :func:`target_beta` of ``ema`` (e.g.
            :func:`budget_target_beta`).
    Returns:
        0-d tensor; 0 (still attached to g) when fewer than 2 images have objects.
    """
    g = log_gamma if isinstance(log_gamma, Tensor) else torch.tensor(float(log_gamma))
    p_mean, _ = mean_up_probability(sides_per_image, g, b_s, b_l, k)
    if p_mean.numel() < 2:
        return g.sum() * 0.0
    alpha, beta = target if target is not None else target_beta(ema, concentration, r_min,
                                                                 r_max)
    return beta_w1(p_mean, alpha, beta)


def balance_target(
    ema: Tensor | BinLossEMA | Sequence[float],
    b_s: float = 32.0,
    b_l: float = 96.0,
    clamp_min: float = 0.1,
    dyra_shift: bool = False,
) -> float:
    """Target side factor γ* of DyRA's balance loss (method.md §4, "for comparison").

    Interpretation (DyRA's ``DynamicResizer.balance_loss``, re-expressed for our γ):
      1. Two size groups, small and large, with losses L̄_s = ema[0], L̄_l = ema[2]
         (DyRA splits its matches in two at the mean boundary; the medium bin is left out).
      2. w_g = 1 / clamp(1 - L̄_g, clamp_min), normalised to sum 1 ("weights ∝ ...").
         ``dyra_shift=True`` additionally applies DyRA's ``get_least_one``
         (w ← 2w - min(w) + 1, so the smaller weight becomes 1).
      3. On areas: γ*_area = mean(flip(w) · [A_1, A_2]) / mean(b_s², b_l²) with
         [A_1, A_2] = [(2·b_s)², (8·b_s)²] = [64², 256²] for b_s = 32 (the constants scale
         with b_s/32); flip puts the small group's weight on the large area, so a harder
         small group raises the boundaries.
      4. DyRA's γ multiplies areas, ours multiplies sides (B = b·γ), so γ* = sqrt(γ*_area).
    With b_s, b_l = 32, 96, clamp_min = 0.1 and losses ≥ 0, γ* lies in [0.97, 2.42]; equal
    losses give 1.84 (DyRA's boundaries also start above COCO's). Losses ≥ 1 - clamp_min all
    get the same weight 1/clamp_min, so this variant cannot rank groups whose losses exceed 0.9.
    """
    if b_s <= 0 or b_l <= b_s:
        raise ValueError(f"size boundaries need 0 < b_s < b_l, got b_s={b_s}, b_l={b_l}")
    ema = _ema_tensor(ema)
    losses = torch.stack([ema[SMALL], ema[LARGE]])  # [2] small, large
    w = 1.0 / (1.0 - losses).clamp_min(clamp_min)
    w = w / w.sum()
    if dyra_shift:
        w = w * w.numel()
        w = w - w.min() + 1.0
    areas = torch.tensor([(2.0 * b_s) ** 2, (8.0 * b_s) ** 2], dtype=w.dtype)
    gamma_area = (w.flip(-1) * areas).mean() / ((b_s**2 + b_l**2) / 2.0)
    return math.sqrt(float(gamma_area))


def balance_loss(
    log_gamma: Tensor,
    ema: Tensor | BinLossEMA | Sequence[float],
    b_s: float = 32.0,
    b_l: float = 96.0,
    clamp_min: float = 0.1,
    dyra_shift: bool = False,
) -> Tensor:
    """DyRA's balance loss |γ - γ*| with γ = exp(g) and γ* from :func:`balance_target`.

    Returns a 0-d tensor whose gradient reaches ``log_gamma`` only.
    """
    target = balance_target(ema, b_s, b_l, clamp_min, dyra_shift)
    return (log_gamma.exp() - target).abs().sum()


def fit_beta_moments(u: Tensor) -> tuple[float, float]:
    """Method-of-moments Beta fit to values in (0, 1): with mean m and variance v,
    α̂ = m·c, β̂ = (1-m)·c, c = m(1-m)/v - 1. Returns (nan, nan) when no Beta has these
    moments (fewer than 2 values, v = 0 or v ≥ m(1-m))."""
    u = u.detach().reshape(-1).double()
    if u.numel() < 2:
        return math.nan, math.nan
    m = float(u.mean())
    v = float(u.var(correction=1))
    if v <= 0.0 or v >= m * (1.0 - m):
        return math.nan, math.nan
    c = m * (1.0 - m) / v - 1.0
    return m * c, (1.0 - m) * c
