"""Acceptance tests of the scale loss (method.md §3)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from elastic_lab.scale_loss import (
    LARGE,
    MEDIUM,
    SMALL,
    object_sides,
    scale_loss,
    scale_loss_per_image,
    size_bins,
    size_boundaries,
    up_probability,
)


def bce(u: float, p: torch.Tensor) -> torch.Tensor:
    u = torch.tensor(u, dtype=p.dtype)
    return -(p * u.log() + (1 - p) * (1 - u).log())


def test_up_probability_anchors_and_monotonicity():
    k = 6.0
    p = up_probability(torch.tensor([32.0, 96.0, math.sqrt(32 * 96)]), 0.0, k=k)
    at_small, at_large = math.exp(k) / (1 + math.exp(k)), 1 / (1 + math.exp(k))
    torch.testing.assert_close(p, torch.tensor([at_small, at_large, 0.5]))
    # boundaries follow gamma: at g = log 2, B_s = 64 and B_l = 192
    p2 = up_probability(torch.tensor([64.0, 192.0]), math.log(2.0), k=k)
    torch.testing.assert_close(p2, torch.tensor([at_small, at_large]))
    sides = torch.logspace(0, 3, 50)
    p = up_probability(sides, 0.0)
    assert (p.diff() <= 0).all(), "P_up must fall with object size"
    mid = up_probability(torch.linspace(10.0, 300.0, 50, dtype=torch.float64), 0.0)
    assert (mid.diff() < 0).all()
    assert p[0] > 0.999 and p[-1] < 0.001
    # larger boundaries -> every object more "small"
    assert (up_probability(sides, 0.3) >= p).all()
    mid_sides = torch.linspace(10.0, 300.0, 50, dtype=torch.float64)
    assert (up_probability(mid_sides, 0.3) > up_probability(mid_sides, 0.0)).all()
    # broadcasting for landscapes: sides [S, 1] x gammas [G] -> [S, G]
    grid = up_probability(sides[:, None], torch.linspace(-1, 1, 7))
    assert grid.shape == (50, 7)


def test_size_boundaries_and_bins():
    b_small, b_large = size_boundaries(math.log(1.5))
    assert float(b_small) == pytest.approx(48.0) and float(b_large) == pytest.approx(144.0)
    sides = torch.tensor([10.0, 31.9, 32.0, 50.0, 95.9, 96.0, 400.0])
    assert size_bins(sides, 0.0).tolist() == [SMALL, SMALL, MEDIUM, MEDIUM, MEDIUM, LARGE, LARGE]
    # doubling gamma moves 32 and 50 into "small", 96 into "medium"
    assert size_bins(sides, math.log(2.0)).tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert size_bins(sides, 0.0, b_s=16.0, b_l=48.0).tolist() == [0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError):
        size_bins(sides, 0.0, b_s=96.0, b_l=32.0)


def test_object_sides_in_pixels():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.1, 0.1, 0.0, 0.3]])
    sides = object_sides(boxes, (100, 200))  # h=100, w=200: box 100 x 25 px
    torch.testing.assert_close(sides, torch.tensor([50.0, 0.0]))
    with pytest.raises(ValueError):
        object_sides(torch.zeros(3), (10, 10))


@pytest.mark.parametrize("sides, direction", [([6.0, 9.0, 14.0], "down"), ([250.0, 400.0], "up")])
def test_loss_pushes_u_towards_the_object_sizes(sides, direction):
    """Only small objects: loss falls as u rises; only large objects: loss rises with u."""
    us = torch.linspace(0.02, 0.98, 49)
    losses = torch.stack([scale_loss(u[None], [torch.tensor(sides)], 0.0) for u in us])
    diffs = losses.diff()
    assert (diffs < 0).all() if direction == "down" else (diffs > 0).all()
    u = torch.tensor([0.5], requires_grad=True)
    scale_loss(u, [torch.tensor(sides)], 0.0).backward()
    assert (u.grad < 0).all() if direction == "down" else (u.grad > 0).all()


def test_gradient_reaches_u_only():
    z = torch.tensor([0.3, -0.2], requires_grad=True)  # predictor logits
    g = nn.Parameter(torch.tensor(0.1))  # boundary parameter, trained by L_dist only
    detector = nn.Parameter(torch.tensor([[0.1, 0.1], [0.5, 0.4], [0.2, 0.3]]))  # w, h normalised
    size = 320.0
    sides_all = (detector[:, 0] * size * detector[:, 1] * size).sqrt()  # attached to "detector"
    sides = [sides_all[:1], sides_all[1:]]
    loss = scale_loss(torch.sigmoid(z), sides, g)
    loss.backward()
    assert z.grad is not None and z.grad.abs().min() > 0
    assert g.grad is None or float(g.grad.abs()) == 0.0
    assert detector.grad is None or float(detector.grad.abs().sum()) == 0.0


def test_per_bin_grouping_gives_one_small_object_equal_weight():
    small = torch.tensor([12.0])
    large = torch.linspace(150.0, 400.0, 10)
    sides = torch.cat([small, large])
    u = 0.4
    loss = scale_loss(torch.tensor([u]), [sides], 0.0)
    expected = bce(u, up_probability(small, 0.0)).mean() + bce(u, up_probability(large, 0.0)).mean()
    torch.testing.assert_close(loss, expected)
    plain_mean = bce(u, up_probability(sides, 0.0)).mean()
    assert abs(float(loss - plain_mean)) > 0.5  # the grouping matters here
    # three bins: each bin's mean, summed
    three = torch.tensor([10.0, 20.0, 50.0, 300.0])
    loss3 = scale_loss(torch.tensor([u]), [three], 0.0)
    p = up_probability(three, 0.0)
    expected3 = bce(u, p[:2]).mean() + bce(u, p[2:3]).mean() + bce(u, p[3:]).mean()
    torch.testing.assert_close(loss3, expected3)


def test_bins_use_gamma():
    """With a larger gamma, 50 px joins 20 px in the small bin: one bin, not two."""
    sides = torch.tensor([20.0, 50.0])
    g = math.log(2.0)
    p = up_probability(sides, g)
    torch.testing.assert_close(scale_loss(torch.tensor([0.3]), [sides], g), bce(0.3, p).mean())
    p0 = up_probability(sides, 0.0)
    torch.testing.assert_close(scale_loss(torch.tensor([0.3]), [sides], 0.0), bce(0.3, p0).sum())


def test_batch_mean_and_empty_images():
    a, b = torch.tensor([10.0]), torch.tensor([300.0])
    empty = torch.zeros(0)
    u = torch.tensor([0.3, 0.6, 0.8], requires_grad=True)
    la = bce(0.3, up_probability(a, 0.0)).sum()
    lb = bce(0.6, up_probability(b, 0.0)).sum()
    # default: an empty image targets P_up = 0 (cheapest scale): BCE(0.8, 0) = -log(0.2)
    loss = scale_loss(u, [a, b, empty], 0.0)
    torch.testing.assert_close(loss, (la + lb - math.log(0.2)) / 3)
    loss.backward()
    assert u.grad[2] > 0  # pushes the empty image's u down
    # other target
    loss_half = scale_loss(u, [a, b, empty], 0.0, empty_target=0.5)
    torch.testing.assert_close(loss_half, (la + lb + bce(0.8, torch.tensor(0.5))) / 3)
    # None: ignored, mean over images with objects only
    torch.testing.assert_close(scale_loss(u, [a, b, empty], 0.0, empty_target=None), (la + lb) / 2)
    per_image, valid = scale_loss_per_image(u, [a, b, empty], 0.0, empty_target=None)
    assert valid.tolist() == [True, True, False] and per_image.shape == (3,)


def test_no_images_gives_zero_with_grad_path():
    u = torch.tensor([0.7, 0.2], requires_grad=True)
    loss = scale_loss(u, [torch.zeros(0), torch.zeros(0)], 0.0, empty_target=None)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(u.grad, torch.zeros(2))


def test_saturated_u_stays_finite():
    u = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = scale_loss(u, [torch.tensor([300.0]), torch.tensor([5.0])], 0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(u.grad).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="sides_per_image"):
        scale_loss(torch.tensor([0.5, 0.5]), [torch.tensor([3.0])], 0.0)
    with pytest.raises(ValueError, match="u: expected"):
        scale_loss(torch.tensor([[0.5]]), [torch.tensor([3.0])], 0.0)
    with pytest.raises(ValueError, match="empty_target"):
        scale_loss(torch.tensor([0.5]), [torch.tensor([3.0])], 0.0, empty_target=2.0)


def test_scale_optimum_is_where_the_scale_loss_gradient_vanishes_at_its_own_size():
    """u* is self-consistent: with the sides measured at φ(u), the gradient of L_scale in u
    points towards u* from both sides (bin changes can make it jump at u*, so no exact zero)."""
    from elastic_lab.scale_loss import scale_optimum

    g = torch.Generator().manual_seed(3)
    base = [torch.exp(torch.empty(int(n)).uniform_(1.5, 4.5, generator=g))
            for n in torch.randint(1, 9, (12,), generator=g)]
    u_star, phi_star = scale_optimum(base, 0.1, 0.5, 1.5, b_s=10.0, b_l=30.0)
    assert torch.allclose(phi_star, 0.5 + u_star)
    inside = 0
    for sides, u0 in zip(base, u_star.tolist()):
        if not 1e-3 < u0 < 1 - 1e-3:
            continue
        inside += 1
        for du, sign in ((-1e-3, -1.0), (1e-3, 1.0)):
            u = torch.tensor([u0 + du], dtype=torch.float64, requires_grad=True)
            loss = scale_loss(u, [sides * (0.5 + u0 + du)], 0.1, 10.0, 30.0)
            (grad,) = torch.autograd.grad(loss, u)
            assert sign * float(grad) > 0
    assert inside >= 6
    # larger objects ask for smaller scales; an image without objects gets empty_target
    u_small, _ = scale_optimum([torch.full((3,), 6.0)], 0.0, 0.5, 1.5, 10.0, 30.0)
    u_large, _ = scale_optimum([torch.full((3,), 60.0)], 0.0, 0.5, 1.5, 10.0, 30.0)
    assert float(u_small) > 0.9
    assert float(u_large) < 0.1
    u_empty, phi_empty = scale_optimum([torch.zeros(0)], 0.0, 0.5, 1.5, empty_target=0.25)
    assert float(u_empty) == 0.25 and float(phi_empty) == 0.75


def test_fidelity_summary_reports_agreement_and_regimes():
    from elastic_lab.analysis import fidelity_summary

    u_star = np.linspace(0.05, 0.95, 20)
    perfect = fidelity_summary(u_star, u_star, 0.5, 1.5, ["a"] * 10 + ["b"] * 10)
    assert perfect["pearson_u"] == pytest.approx(1.0) and perfect["mae_u"] == 0.0
    assert perfect["by_regime"]["a"]["phi"] == pytest.approx(perfect["by_regime"]["a"]["phi_star"])
    constant = fidelity_summary(np.full(20, 0.5), u_star, 0.5, 1.5)
    assert np.isnan(constant["pearson_u"]) and constant["mae_u"] == pytest.approx(np.abs(u_star - 0.5).mean())
    assert constant["sd_u"] == 0.0 < constant["sd_u_star"]
