"""Acceptance tests of the distribution loss, its EMA and target (method.md §4), and DyRA's
balance loss."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from elastic_lab.distribution_loss import (
    BinLossEMA,
    balance_loss,
    balance_target,
    beta_w1,
    distribution_loss,
    fit_beta_moments,
    mean_up_probability,
    target_beta,
)
from elastic_lab.scale_loss import up_probability

BALANCED = torch.tensor([1.0, 1.0, 1.0])
SMALL_HARD = torch.tensor([2.0, 1.0, 0.5])
LARGE_HARD = torch.tensor([0.5, 1.0, 2.0])


# ------------------------------------------------------------------------------------ EMA
def test_ema_initialises_blends_and_keeps_unobserved_bins():
    ema = BinLossEMA(momentum=0.9)
    assert ema.value.tolist() == [1.0, 1.0, 1.0]  # neutral before any observation
    ema.update(torch.tensor([2.0, 4.0, 1.0]), torch.tensor([0, 0, 2]))
    torch.testing.assert_close(ema.value, torch.tensor([3.0, 1.0, 1.0]))  # first obs initialise
    ema.update(torch.tensor([1.0, 5.0]), torch.tensor([0, 1]))
    # bin 0 blends, bin 1 initialises, bin 2 (no match this step) keeps its value
    torch.testing.assert_close(ema.value, torch.tensor([0.9 * 3.0 + 0.1 * 1.0, 5.0, 1.0]))
    ema.update(torch.zeros(0), torch.zeros(0, dtype=torch.long))  # no matches at all
    torch.testing.assert_close(ema.value, torch.tensor([2.8, 5.0, 1.0]))


def test_ema_detaches_and_round_trips():
    ema = BinLossEMA(momentum=0.5)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    out = ema.update(losses * 2, torch.tensor([1, 1]))
    assert not out.requires_grad and not ema.ema.requires_grad
    state = ema.state_dict()
    assert set(state) == {"ema", "seen"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = BinLossEMA(momentum=0.5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.value, ema.value)
    assert other.seen.tolist() == [False, True, False]
    v = ema.value
    v += 100.0  # value is a copy
    torch.testing.assert_close(ema.value, other.value)
    with pytest.raises(ValueError, match="bins"):
        ema.update(torch.tensor([1.0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="momentum"):
        BinLossEMA(momentum=1.0)


# ------------------------------------------------------------------------------- target
def test_target_beta_moves_up_when_small_objects_are_harder():
    a0, b0 = target_beta(BALANCED)
    assert (a0, b0) == pytest.approx((4.0, 4.0))
    a, b = target_beta(SMALL_HARD)
    assert a / (a + b) == pytest.approx(2.0 / 2.5) and a / (a + b) > 0.5
    assert a / (a + b) > a0 / (a0 + b0)
    assert a + b == pytest.approx(8.0)
    a, b = target_beta(LARGE_HARD)
    assert a / (a + b) < 0.5
    a, b = target_beta([100.0, 1.0, 0.0], concentration=10.0)  # clipped at r_max
    assert (a, b) == pytest.approx((9.5, 0.5))
    assert target_beta(BinLossEMA()) == pytest.approx((4.0, 4.0))


# ----------------------------------------------------------------------------------- W1
@pytest.mark.parametrize(
    "n, alpha, beta, kind",
    [
        (8, 2.0, 6.0, "uniform"),
        (50, 4.0, 4.0, "uniform"),
        (64, 2.0, 6.0, "beta"),
        (20, 6.4, 1.6, "low"),
    ],
)
def test_beta_w1_matches_scipy(n, alpha, beta, kind):
    rng = np.random.default_rng(n)
    if kind == "uniform":
        x = rng.uniform(size=n)
    elif kind == "beta":
        x = rng.beta(alpha, beta, size=n)
    else:
        x = rng.uniform(0.05, 0.3, size=n)
    reference = stats.wasserstein_distance(x, rng.beta(alpha, beta, size=200_000))
    ours = float(beta_w1(torch.tensor(x), alpha, beta))
    assert ours == pytest.approx(reference, abs=1e-2)


def test_beta_w1_is_differentiable_in_the_samples():
    x = torch.tensor([0.1, 0.2, 0.15], requires_grad=True)  # all below Beta(6, 2)'s quantiles
    beta_w1(x, 6.0, 2.0).backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -1.0 / 3))


# ---------------------------------------------------------------------- distribution loss
def sides_near_boundaries(seed: int = 0, images: int = 8) -> list[torch.Tensor]:
    """Per-image object sides spread around the boundaries, from 20 to 160 px."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.exp(torch.empty(int(n)).uniform_(math.log(20.0), math.log(160.0), generator=gen))
        for n in torch.randint(1, 6, (images,), generator=gen)
    ]


def test_distribution_loss_is_w1_of_the_mean_up_probabilities():
    sides = sides_near_boundaries()
    g = torch.tensor(0.2)
    p_mean = torch.stack([up_probability(s, g).mean() for s in sides])
    a, b = target_beta(SMALL_HARD)
    torch.testing.assert_close(distribution_loss(sides, g, SMALL_HARD), beta_w1(p_mean, a, b))
    # images without objects are skipped
    with_empty = [*sides[:3], torch.zeros(0), *sides[3:]]
    torch.testing.assert_close(distribution_loss(with_empty, g, SMALL_HARD), beta_w1(p_mean, a, b))
    got, has = mean_up_probability(with_empty, g)
    torch.testing.assert_close(got, p_mean)
    assert has.tolist() == [True] * 3 + [False] + [True] * 5


@pytest.mark.parametrize(
    "ema, start_g, grows", [(SMALL_HARD, -0.3, True), (LARGE_HARD, 0.3, False)]
)
def test_sgd_step_on_g_moves_the_boundaries_towards_the_target(ema, start_g, grows):
    """Target mean above the current mean of P̄ -> a descent step increases γ (more objects
    count as small, larger P_up); target below -> γ decreases."""
    sides = sides_near_boundaries(seed=1, images=16)
    g = nn.Parameter(torch.tensor(start_g))
    a, b = target_beta(ema)
    p_mean, _ = mean_up_probability(sides, g)
    target_mean = a / (a + b)
    assert (p_mean.mean().item() < target_mean) == grows  # the premise of the test
    opt = torch.optim.SGD([g], lr=0.2)
    loss0 = distribution_loss(sides, g, ema)
    opt.zero_grad()
    loss0.backward()
    assert (g.grad.item() < 0) == grows
    gamma0 = math.exp(start_g)
    opt.step()
    loss1 = distribution_loss(sides, g, ema)
    assert loss1.item() < loss0.item()
    assert (math.exp(g.item()) > gamma0) == grows and math.exp(g.item()) != gamma0


def test_distribution_gradient_reaches_g_only():
    """Sides that carry a graph (as the detector's boxes would) get no gradient: L_dist treats
    them as data; only g moves. The predictor's u is no input of L_dist at all."""
    g = nn.Parameter(torch.tensor(0.0))
    detector = nn.Parameter(torch.tensor([0.1, 0.3, 0.2, 0.5]))  # box sides as fractions
    sides_all = detector * 256.0  # attached to the "detector"
    loss = distribution_loss([sides_all[:2], sides_all[2:]], g, SMALL_HARD)
    assert loss.requires_grad
    grad_g, grad_detector = torch.autograd.grad(loss, [g, detector], allow_unused=True)
    assert grad_g is not None and grad_g.item() != 0.0
    assert grad_detector is None  # not even a zero: the sides are detached inside


def test_fewer_than_two_images_gives_zero_with_grad_path():
    g = nn.Parameter(torch.tensor(0.4))
    loss = distribution_loss([torch.tensor([30.0]), torch.zeros(0)], g, SMALL_HARD)
    assert loss.item() == 0.0
    loss.backward()
    assert g.grad is not None and g.grad.item() == 0.0


# -------------------------------------------------------------------------- balance loss
def test_balance_target_direction_and_formula():
    balanced = balance_target(torch.tensor([0.3, 0.3, 0.3]))
    # equal weights 1/2: mean([64², 256²]/2) / mean(32², 96²) on areas, sqrt for sides
    assert balanced == pytest.approx(math.sqrt((64**2 + 256**2) / 4 / ((32**2 + 96**2) / 2)))
    small_hard = balance_target(torch.tensor([0.6, 0.3, 0.1]))
    large_hard = balance_target(torch.tensor([0.1, 0.3, 0.6]))
    assert large_hard < balanced < small_hard
    # w ∝ 1/clamp(1 - L, 0.1): losses ≥ 0.9 saturate, so [2.0, ., 0.5] is "small-hard"
    w = torch.tensor([1 / 0.1, 1 / 0.5])
    w = w / w.sum()
    expected = math.sqrt(float((w.flip(0) * torch.tensor([64.0**2, 256.0**2])).mean() / 5120.0))
    assert balance_target(SMALL_HARD) == pytest.approx(expected)
    # scaled boundaries (synthetic set): the constants scale with b_s/32, the ratio does not
    assert balance_target(SMALL_HARD, b_s=16.0, b_l=48.0) == pytest.approx(expected)
    assert balance_target(SMALL_HARD, dyra_shift=True) > expected


@pytest.mark.parametrize("ema, start_g", [(SMALL_HARD, 0.0), (LARGE_HARD, math.log(3.0))])
def test_balance_loss_pulls_gamma_towards_its_target(ema, start_g):
    target = balance_target(ema)
    g = nn.Parameter(torch.tensor(start_g))
    opt = torch.optim.SGD([g], lr=0.05)
    loss0 = balance_loss(g, ema)
    assert loss0.item() == pytest.approx(abs(math.exp(start_g) - target))
    opt.zero_grad()
    loss0.backward()
    opt.step()
    assert abs(math.exp(g.item()) - target) < abs(math.exp(start_g) - target)
    assert (math.exp(g.item()) > math.exp(start_g)) == (target > math.exp(start_g))


# --------------------------------------------------------------------------- Beta fit
@pytest.mark.parametrize("alpha, beta", [(2.0, 5.0), (0.7, 0.9), (6.4, 1.6)])
def test_fit_beta_moments_recovers_parameters(alpha, beta):
    u = torch.from_numpy(np.random.default_rng(0).beta(alpha, beta, size=100_000))
    a, b = fit_beta_moments(u)
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)


def test_fit_beta_moments_degenerate():
    assert all(math.isnan(v) for v in fit_beta_moments(torch.full((10,), 0.5)))
    assert all(math.isnan(v) for v in fit_beta_moments(torch.tensor([0.3])))
