"""The teaching simulations (simulations.py) and the helpers notebooks 02-03 build on."""
import math

import pytest
import torch

from elastic_lab.distribution_loss import distribution_loss, target_beta
from elastic_lab.notebook_utils import smoke_mode
from elastic_lab.scale_loss import ideal_scale, scale_loss_per_image
from elastic_lab.simulations import (
    gradient_step_on_g,
    random_object_sides,
    simulate_boundary_learning,
)


def test_smoke_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "1")
    assert smoke_mode()
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "0")
    assert not smoke_mode()
    monkeypatch.delenv("ELASTIC_LAB_SMOKE")
    assert not smoke_mode()


def test_random_object_sides_deterministic_and_in_range():
    a, b = random_object_sides(20, seed=7), random_object_sides(20, seed=7)
    assert len(a) == 20 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    flat = torch.cat(a)
    assert flat.min() >= 8.0 - 1e-4 and flat.max() <= 384.0 + 1e-3
    assert all(1 <= x.numel() <= 8 for x in a)
    assert not all(torch.equal(x, y) for x, y in zip(a, random_object_sides(20, seed=8),
                                                      strict=True))
    with pytest.raises(ValueError, match="min_side"):
        random_object_sides(3, min_side=10, max_side=5)


def test_ideal_scale_is_the_minimiser_of_the_scale_loss():
    sides = random_object_sides(12, seed=1) + [torch.zeros(0)]
    u = ideal_scale(sides, 0.2).requires_grad_(True)
    assert u[-1] == 0.0  # no objects: empty target
    loss, _ = scale_loss_per_image(u, sides, 0.2)
    (grad,) = torch.autograd.grad(loss[:-1].sum(), u)
    torch.testing.assert_close(grad[:-1], torch.zeros(12, dtype=grad.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ema,direction", [((0.9, 0.6, 0.3), 1), ((0.3, 0.6, 0.9), -1)])
def test_one_gradient_step_on_g_moves_gamma_towards_the_harder_bin(ema, direction):
    sides = random_object_sides(128, seed=2)  # small batches give a noisy direction
    new_g, before, after = gradient_step_on_g(sides, 0.0, ema, lr=0.05)
    assert math.copysign(1, new_g) == direction and after < before
    assert before == pytest.approx(float(distribution_loss(sides, torch.tensor(0.0), ema)))


def test_simulation_rows_look_like_metrics_and_gamma_drifts():
    up = simulate_boundary_learning((0.9, 0.6, 0.3), num_steps=60, log_every=10, seed=0)
    down = simulate_boundary_learning((0.3, 0.6, 0.9), num_steps=60, log_every=10, seed=0)
    assert [r["step"] for r in up] == [10, 20, 30, 40, 50, 60]
    keys = {"step", "loss_dist", "loss_scale", "gamma", "boundary_small_px", "bin_loc_loss",
            "target_alpha", "target_beta", "u_beta_alpha", "u_beta_beta", "phi_mean", "simulated"}
    assert keys <= set(up[0])
    target = target_beta([0.9, 0.6, 0.3])
    assert (up[0]["target_alpha"], up[0]["target_beta"]) == pytest.approx(target)
    assert up[-1]["gamma"] > up[0]["gamma"] > 1.0 > down[0]["gamma"] > down[-1]["gamma"]
    assert all(r["phi_min"] <= r["phi_mean"] <= r["phi_max"] and r["phi_std"] > 0
               for r in up + down)
    assert up[-1]["phi_mean"] > up[0]["phi_mean"] > down[0]["phi_mean"] > down[-1]["phi_mean"]
    assert up[-1]["boundary_small_px"] == pytest.approx(32.0 * up[-1]["gamma"])
