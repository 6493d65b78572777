"""engine.plan_pool: how each mode chooses the detector's phi for the batches of a pool, and the
TrainState that a checkpoint carries."""

import pytest
import torch

from elastic_lab.data.sampler import group_by_size
from elastic_lab.engine import (
    StepPolicy,
    TrainState,
    plan_pool,
    scale_sample,
    step_generator,
    train_step,
)
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.criterion import ElasticLossOptions, build_criterion
from tests.test_model import TINY

SIZES = [(96, 64), (64, 96), (80, 80), (120, 60), (64, 64), (100, 70), (72, 90), (60, 60)]
SEED, STEP, BATCH = 3, 11, 2


def pool(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def model(mode):
    torch.manual_seed(0)
    return build_model(ModelOptions(mode=mode, base_size=64, thumb_size=32, detr=TINY), 3).train()


def check_partition(plan):
    positions = sorted(i for batch, _ in plan for i in batch)
    assert positions == list(range(len(SIZES)))
    assert all(len(batch) == BATCH for batch, _ in plan)


def test_fixed_mode_plans_phi_one():
    plan = plan_pool(model("fixed"), pool(), BATCH, StepPolicy("fixed"), SEED, STEP)
    check_partition(plan)
    assert all(torch.equal(phi, torch.ones(len(b))) for b, phi in plan)


def test_multiscale_draws_one_uniform_phi_per_batch_reproducibly():
    m, images = model("multiscale"), pool()
    policy = StepPolicy("multiscale", 0.5, 1.5)
    plan = plan_pool(m, images, BATCH, policy, SEED, STEP)
    check_partition(plan)
    per_batch = [float(phi[0]) for _, phi in plan]
    assert all(torch.equal(phi, phi[:1].repeat(len(b))) for b, phi in plan)  # one phi a batch
    assert len(set(per_batch)) == len(plan)
    # the batches are grouped by size at phi = 1; batch i of that grouping gets draw i
    draws = 0.5 + torch.rand(len(SIZES), generator=step_generator(SEED, STEP))
    grouping = group_by_size(m.sizes([tuple(im.shape[-2:]) for im in images],
                                     torch.ones(len(images))), BATCH)
    expected = {tuple(b): float(draws[i]) for i, b in enumerate(grouping)}
    assert {tuple(b): float(phi[0]) for b, phi in plan} == pytest.approx(expected)
    again = plan_pool(m, images, BATCH, policy, SEED, STEP)
    assert [(b, phi.tolist()) for b, phi in again] == [(b, phi.tolist()) for b, phi in plan]
    other = plan_pool(m, images, BATCH, policy, SEED, STEP + 1)
    assert sorted(float(phi[0]) for _, phi in other) != sorted(per_batch)


def test_elastic_plans_the_predictors_phi_without_touching_batch_norm_statistics():
    m, images = model("elastic"), pool()
    stats = {k: v.clone() for k, v in m.predictor.state_dict().items() if "running" in k}
    plan = plan_pool(m, images, BATCH, StepPolicy("elastic", 0.5, 1.5), SEED, STEP)
    check_partition(plan)
    assert all(torch.equal(v, m.predictor.state_dict()[k]) for k, v in stats.items())
    with torch.no_grad():  # train mode (batch statistics), as the planner runs it
        u = m.predictor(images)["u"].float()
    phi = torch.empty(len(images))
    for b, p in plan:
        phi[b] = p
    torch.testing.assert_close(phi, 0.5 + u, rtol=0, atol=1e-6)
    # batches are grouped by the processed size at the predicted phi
    sizes = m.sizes([tuple(im.shape[-2:]) for im in images], phi)
    assert sorted(map(sorted, group_by_size(sizes, BATCH))) == sorted(sorted(b) for b, _ in plan)


def test_elastic_warm_up_draws_uniform_phi_per_image_without_the_predictor(monkeypatch):
    m, images = model("elastic"), pool()
    monkeypatch.setattr(m.predictor, "forward", lambda *a: pytest.fail("predictor called"))
    policy = StepPolicy("elastic", 0.5, 1.5, random_phi=True)
    plan = plan_pool(m, images, BATCH, policy, SEED, STEP)
    check_partition(plan)
    draws = 0.5 + torch.rand(len(SIZES), generator=step_generator(SEED, STEP))
    phi = torch.empty(len(images))
    for b, p in plan:
        phi[b] = p
    torch.testing.assert_close(phi, draws, rtol=0, atol=1e-6)
    assert any(len(set(p.tolist())) > 1 for _, p in plan)  # per image, not per batch


def test_exploration_noise_perturbs_u_with_the_steps_generator():
    m, images = model("elastic"), pool()
    clean = plan_pool(m, images, BATCH, StepPolicy("elastic", 0.5, 1.5), SEED, STEP)
    noisy = plan_pool(m, images, BATCH, StepPolicy("elastic", 0.5, 1.5, explore_noise=0.2),
                      SEED, STEP)
    phi_clean, phi_noisy = torch.empty(len(images)), torch.empty(len(images))
    for (b, p), (bn, pn) in zip(clean, noisy):
        phi_clean[b], phi_noisy[bn] = p, pn
    noise = 0.2 * torch.randn(len(images), generator=step_generator(SEED, STEP))
    expected = 0.5 + ((phi_clean - 0.5) + noise).clamp(0, 1)
    torch.testing.assert_close(phi_noisy, expected, rtol=0, atol=1e-6)
    assert (phi_noisy - phi_clean).abs().max() > 0.05


def test_train_state_round_trips_through_a_checkpoint_dict():
    state = TrainState(epoch=2, next_pool=5, step=40, total_steps=100,
                       pending_plan=[([3, 1], torch.tensor([1.25, 0.75])), ([0, 2], None)])
    state.started -= 2.0  # this session has run for 2 s
    saved = state.to_checkpoint()
    assert 2.0 <= saved.pop("seconds") < 60.0
    assert saved == {"epoch": 2, "next_pool": 5, "step": 40,
                     "pending_plan": [[[3, 1], [1.25, 0.75]], [[0, 2], None]]}
    back = TrainState.from_checkpoint({**saved, "seconds": 30.0}, total_steps=100)
    assert (back.epoch, back.next_pool, back.step, back.done) == (2, 5, 40, False)
    assert 30.0 <= back.elapsed() < 40.0  # a resumed run counts its earlier sessions
    assert back.pending_plan[0][0] == [3, 1] and back.pending_plan[1][1] is None
    assert torch.equal(back.pending_plan[0][1], torch.tensor([1.25, 0.75]))
    assert TrainState.from_checkpoint(saved, total_steps=40).done


def test_elastic_phase_at_phi_one_and_fixed_mode_at_its_own_scale():
    m, images = model("elastic"), pool()
    early = plan_pool(m, images, BATCH, StepPolicy("elastic", fixed_phi_steps=STEP + 1), SEED,
                      STEP)
    assert all(torch.equal(phi, torch.ones(len(b))) for b, phi in early)
    late = plan_pool(m, images, BATCH, StepPolicy("elastic", fixed_phi_steps=STEP), SEED, STEP)
    assert any(not torch.equal(phi, torch.ones(len(b))) for b, phi in late)
    f = plan_pool(model("fixed"), images, BATCH, StepPolicy("fixed", fixed_phi=0.75), SEED, STEP)
    assert all(torch.allclose(phi, torch.full((len(b),), 0.75)) for b, phi in f)


def test_the_predictor_learns_from_a_random_sample_of_the_pool():
    """Detector batches hold images of similar size; the predictor's losses are computed on a
    random sample of the pool instead: reproducible per (seed, step), different per step,
    mixing the size groups of the plan."""
    a = scale_sample(48, 8, SEED, STEP)
    assert a == scale_sample(48, 8, SEED, STEP) and len(set(a)) == 8
    assert a != scale_sample(48, 8, SEED, STEP + 1)
    m, images = model("elastic"), pool()
    plan = plan_pool(m, images, BATCH, StepPolicy("elastic"), SEED, STEP)
    sample = set(scale_sample(len(images), BATCH * 2, SEED, STEP))
    assert len({k for k, (b, _) in enumerate(plan) if sample & set(b)}) > 1  # mixes batches
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([0]),
                "orig_size": torch.tensor(im.shape[-2:])} for im in images]
    crit = build_criterion(3, TINY.num_decoder_layers, ElasticLossOptions.for_base_size(64))
    batch, phi = plan[0]
    idx = sorted(sample)
    out = m([images[i] for i in batch], phi, scale_images=[images[i] for i in idx])
    assert out["scale"]["u"].shape == (len(idx),) and out["phi"].shape == (len(batch),)
    losses = crit(out, [targets[i] for i in batch], scale_targets=[targets[i] for i in idx])
    losses["loss_scale"].backward()
    assert all(p.grad is None for p in m.detector.parameters())


def test_mixed_batching_plans_random_samples_with_the_same_phi():
    """batching="mixed": the pool becomes random samples of the batch size (a function of seed
    and step), each image keeping the phi the grouped plan gives it."""
    m, images = model("elastic"), pool()
    grouped = plan_pool(m, images, BATCH, StepPolicy("elastic", 0.5, 1.5), SEED, STEP)
    policy = StepPolicy("elastic", 0.5, 1.5, batching="mixed")
    mixed = plan_pool(m, images, BATCH, policy, SEED, STEP)
    check_partition(mixed)
    order = torch.randperm(len(SIZES), generator=step_generator(SEED, STEP)).tolist()
    assert [b for b, _ in mixed] == [order[k:k + BATCH] for k in range(0, len(SIZES), BATCH)]
    phi_grouped, phi_mixed = torch.empty(len(images)), torch.empty(len(images))
    for (b, p), (bm, pm) in zip(grouped, mixed):
        phi_grouped[b], phi_mixed[bm] = p, pm
    torch.testing.assert_close(phi_mixed, phi_grouped, rtol=0, atol=0)
    assert [b for b, _ in plan_pool(m, images, BATCH, policy, SEED, STEP + 1)] != \
        [b for b, _ in mixed]


def test_group_by_size_closes_a_batch_at_the_padding_bound():
    sizes = [(256, 256), (256, 240), (128, 128), (128, 112), (384, 128), (64, 64)]
    parts = group_by_size(sizes, len(sizes), max_padding=0.2)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    for p in parts:
        hs, ws = zip(*(sizes[i] for i in p))
        assert 1 - sum(h * w for h, w in zip(hs, ws)) / (len(p) * max(hs) * max(ws)) <= 0.2
    assert [0, 1] in parts and [2, 3] in parts  # similar sizes share a part
    assert len(group_by_size(sizes, len(sizes))) == 1  # no bound: one batch


def _step(m, crit, images, targets, phi, parts=None, scale=None):
    """One train_step without clipping and with a zero learning rate; the gradients stay."""
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    values, _ = train_step(m, crit, opt, images, targets, phi, 0.0, scale_images=scale,
                           scale_targets=None if scale is None else targets, parts=parts)
    return values, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def test_a_step_in_parts_is_the_step_of_one_batch():
    """The parts of a mixed step add up to the batch: the same loss values and gradients (eval
    mode and images of one size, so neither batch statistics nor padding differ), the
    predictor's losses once, and the per-bin EMA folded once from every part's matches."""
    m = model("elastic").eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 80, generator=g) for _ in range(4)]
    targets = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.1, 0.1]][:1 + i % 2]),
                "labels": torch.tensor([0, 2][:1 + i % 2]),
                "orig_size": torch.tensor([64, 80])} for i in range(4)]
    phi = torch.tensor([1.0, 1.0, 1.0, 1.0])
    opts = ElasticLossOptions.for_base_size(64)
    results = []
    for parts in (None, [[2, 0], [3], [1]]):
        crit = build_criterion(3, TINY.num_decoder_layers, opts)
        values, grads = _step(m, crit, images, targets, phi, parts, scale=images)
        results.append((values, grads, crit.bin_ema.value))
    (v1, g1, e1), (v2, g2, e2) = results
    assert v1.keys() == v2.keys() and "loss_scale" in v1
    for k in v1:
        assert v2[k] == pytest.approx(v1[k], rel=1e-4, abs=1e-6), k
    assert g1.keys() == g2.keys() and any(k.startswith("predictor.") for k in g1)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(e2, e1)
