"""Teaching simulations of the distribution loss (notebooks 02-03): not training runs.

:func:`simulate_boundary_learning` shows how L_dist alone moves the boundary parameter
g = log γ. The per-bin localization losses are held fixed, the images are random sets of
object sides (:func:`random_object_sides`), and the "predictor" is the ideal one that outputs,
per image, the u that minimises the scale loss at the current γ (scale_loss.ideal_scale).
Its rows carry the keys of a training run's metrics.jsonl and ``"simulated": True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .distribution_loss import distribution_loss, fit_beta_moments, target_beta
from .resize import phi_from_u
from .scale_loss import ideal_scale, scale_loss

__all__ = ["gradient_step_on_g", "random_object_sides", "simulate_boundary_learning"]


def random_object_sides(num_images: int, seed: int = 0, min_side: float = 8.0,
                        max_side: float = 384.0, max_objects: int = 8,
                        spread: float = 0.3) -> list[Tensor]:
    """Random object sides (px) for ``num_images`` images, like the synthetic set's scenes.

    Each image draws a log-uniform typical side in [min_side, max_side] and 1..max_objects
    objects whose sides are that typical side times exp(N(0, spread²)), clamped to the range.
    The default range is centred (in log) on √(32·96) = 55 px, where P_up = 1/2 at γ = 1.
    Returns a list of float32 tensors [N_i] (deterministic in ``seed``).
    """
    if num_images < 1 or max_objects < 1 or not 0 < min_side < max_side:
        raise ValueError(f"random_object_sides: need num_images ≥ 1, max_objects ≥ 1 and "
                         f"0 < min_side < max_side, got {num_images}, {max_objects}, "
                         f"{min_side}, {max_side}")
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(min_side), math.log(max_side)
    out = []
    for _ in range(num_images):
        typical = lo + (hi - lo) * float(torch.rand((), generator=g))
        n = int(torch.randint(1, max_objects + 1, (), generator=g))
        log_s = typical + spread * torch.randn(n, generator=g)
        out.append(log_s.clamp(lo, hi).exp())
    return out


def gradient_step_on_g(sides_per_image: Sequence[Tensor], log_gamma: float,
                       ema: Sequence[float], lr: float = 0.05, b_s: float = 32.0,
                       b_l: float = 96.0, k: float = 6.0,
                       concentration: float = 8.0) -> tuple[float, float, float]:
    """One plain gradient-descent step on g for L_dist.

    Returns (new log_gamma, W1 before, W1 after the step).
    """
    g = torch.tensor(float(log_gamma), dtype=torch.float64, requires_grad=True)
    before = distribution_loss(sides_per_image, g, ema, b_s, b_l, k, concentration)
    (grad,) = torch.autograd.grad(before, g)
    new_g = float(g.detach() - lr * grad)
    after = distribution_loss(sides_per_image, torch.tensor(new_g, dtype=torch.float64), ema,
                              b_s, b_l, k, concentration)
    return new_g, float(before.detach()), float(after)


def simulate_boundary_learning(ema: Sequence[float] = (0.9, 0.6, 0.3), num_steps: int = 300,
                               batch_size: int = 16, lr: float = 0.05, log_gamma: float = 0.0,
                               seed: int = 0, log_every: int = 10, tau_min: float = 0.5,
                               tau_max: float = 1.5, b_s: float = 32.0, b_l: float = 96.0,
                               k: float = 6.0, concentration: float = 8.0) -> list[dict]:
    """SIMULATED metrics rows: gradient descent on g with the distribution loss alone.

    Every step draws ``batch_size`` random images (:func:`random_object_sides`, sides at base
    resolution: the feedback of φ on the sides is ignored), computes L_dist against the target
    Beta of the fixed per-bin losses ``ema``, and takes one SGD step on g. Predicted scales are
    those of the ideal predictor (:func:`ideal_scale`). Every ``log_every`` steps a row with the
    keys of a training run's metrics.jsonl is appended (averaged over the logging window where
    it makes sense): step, loss_dist, loss_scale, gamma, boundary_small_px, boundary_large_px,
    bin_loc_loss, target_alpha, target_beta, u_beta_alpha, u_beta_beta, phi_mean, phi_std,
    phi_min, phi_max, plus "simulated": True.
    """
    if num_steps < 1 or log_every < 1 or batch_size < 2:
        raise ValueError(f"simulate_boundary_learning: need num_steps ≥ 1, log_every ≥ 1, "
                         f"batch_size ≥ 2, got {num_steps}, {log_every}, {batch_size}")
    ema = [float(v) for v in ema]
    alpha, beta = target_beta(ema, concentration)
    g = torch.tensor(float(log_gamma), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([g], lr=lr)
    rows, window = [], {"loss_dist": [], "loss_scale": [], "u": []}
    for step in range(1, num_steps + 1):
        sides = random_object_sides(batch_size, seed=seed * 1_000_003 + step)
        loss = distribution_loss(sides, g, ema, b_s, b_l, k, concentration)
        opt.zero_grad()
        loss.backward()
        opt.step()
        u = ideal_scale(sides, float(g.detach()), b_s, b_l, k)
        window["loss_dist"].append(float(loss.detach()))
        window["loss_scale"].append(float(scale_loss(u, sides, float(g.detach()), b_s, b_l, k)))
        window["u"].append(u)
        if step % log_every == 0 or step == num_steps:
            u_all = torch.cat(window["u"])
            phi = phi_from_u(u_all, tau_min, tau_max)
            a_fit, b_fit = fit_beta_moments(u_all)
            gamma = math.exp(float(g.detach()))
            rows.append({
                "step": step, "simulated": True,
                "loss_dist": sum(window["loss_dist"]) / len(window["loss_dist"]),
                "loss_scale": sum(window["loss_scale"]) / len(window["loss_scale"]),
                "gamma": gamma, "boundary_small_px": b_s * gamma,
                "boundary_large_px": b_l * gamma, "bin_loc_loss": ema,
                "target_alpha": alpha, "target_beta": beta,
                "u_beta_alpha": a_fit, "u_beta_beta": b_fit,
                "phi_mean": float(phi.mean()), "phi_std": float(phi.std()),
                "phi_min": float(phi.min()), "phi_max": float(phi.max()),
            })
            window = {"loss_dist": [], "loss_scale": [], "u": []}
    return rows
