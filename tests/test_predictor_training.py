"""The scale predictor's training: trunks and normalisation, the size map, the losses it learns
from (sides at the predicted φ), the warm start, and the compute-aware distribution target."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from elastic_lab.analysis import predictor_fidelity
from elastic_lab.data.coco import CocoDetection, collate_fn
from elastic_lab.distribution_loss import budget_target_beta
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.criterion import ElasticLossOptions, build_criterion
from elastic_lab.models.predictor_criterion import predictor_losses, sides_at_phi
from elastic_lab.models.scale_predictor import ScalePredictor
from elastic_lab.predictor_pretrain import (
    PretrainOptions,
    cached_warm_start,
    pretrain_predictor,
    random_zoom,
    warm_start_key,
)
from elastic_lab.size_map import size_bin_edges, size_map_loss, size_map_targets
from tests.test_model import TINY


@pytest.mark.parametrize("budget", [0.6, 0.8, 1.0, 1.3])
def test_budget_target_has_the_asked_mean_detector_cost(budget):
    a, b = budget_target_beta(budget, 0.5, 1.5, concentration=8.0)
    u = stats.beta(a, b).rvs(400_000, random_state=0)
    assert float(((0.5 + u) ** 2).mean()) == pytest.approx(budget, abs=0.005)
    assert a + b == pytest.approx(8.0)


def test_budget_target_mean_rises_with_the_budget():
    means = [a / (a + b) for a, b in (budget_target_beta(x, 0.5, 1.5) for x in (0.5, 0.8, 1.2))]
    assert means == sorted(means) and means[0] < 0.5 < means[-1]


def test_size_map_targets_mark_each_object_centre_in_its_bin():
    edges = size_bin_edges(256, 4)  # 4, 11.3, 32, 90.5, 256
    valid = torch.zeros(1, 4, 6, dtype=torch.bool)
    valid[0, :3, :5] = True  # the image covers the top-left 3 x 5 cells
    boxes = [torch.tensor([[0.1, 0.9, 0.1, 0.1], [0.7, 0.2, 0.3, 0.3]])]
    sides = [torch.tensor([6.0, 100.0])]
    t = size_map_targets(boxes, sides, valid, edges)
    assert t.shape == (1, 4, 4, 6) and t.sum() == 2
    assert t[0, 0, 2, 0] == 1  # 6 px: bin 0, centre (x 0.1, y 0.9) -> row 2, col 0
    assert t[0, 3, 0, 3] == 1  # 100 px: bin 3, centre (0.7, 0.2) -> row 0, col 3
    logits = torch.randn(1, 4, 4, 6)
    moved = logits.clone()
    moved[:, :, 3, :] += 5.0  # padded row: the loss must not see it
    assert size_map_loss(moved, t, valid) == pytest.approx(float(size_map_loss(logits, t, valid)))


def test_group_norm_predictor_is_the_same_function_in_training_and_inference():
    """Training batches are grouped by size; batch statistics would change u. Group norm may not."""
    torch.manual_seed(0)
    images = [torch.rand(3, 200, 260) * (0.3 + 0.1 * i) for i in range(6)]  # similar sizes
    for norm, same in (("group", True), ("batch", False)):
        p = ScalePredictor(trunk="mobilenet_v3_small", norm=norm, thumb_size=64, d_model=32)
        p.train()
        train_u = p(images)["u"].detach()
        p.eval()
        eval_u = p(images)["u"].detach()
        single = torch.cat([p([im])["u"].detach() for im in images])
        assert torch.allclose(eval_u, single, atol=1e-5)  # batch-independent in inference
        assert torch.allclose(train_u, eval_u, atol=1e-5) == same


def test_scale_loss_measures_sides_at_the_size_the_predicted_phi_gives():
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.2]]), "orig_size": torch.tensor([200, 400])}
    one, two = sides_at_phi([target, target], torch.tensor([0.6, 1.2]), 256, None)
    assert float(two) == pytest.approx(2 * float(one))
    assert float(one) == pytest.approx(0.6 * 256 / 200 * (0.1 * 400 * 0.2 * 200) ** 0.5)
    u = torch.tensor([0.3, 0.3], requires_grad=True)
    losses, sides = predictor_losses({"u": u, "phi": 0.5 + u}, [target, target], 256, None, 0.0,
                                     10.0, 30.0)
    assert torch.allclose(sides[1], 1.0 * sides[0])  # same φ, same sides
    losses["loss_scale"].backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_random_zoom_keeps_object_pixels_and_flips_boxes():
    image = torch.rand(3, 100, 200)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]]), "orig_size": torch.tensor([100, 200])}
    g = torch.Generator().manual_seed(0)
    flipped, t = random_zoom(image, target, g, crop_prob=0.0, min_crop=0.5, hflip=1.0)
    assert torch.equal(flipped, image.flip(-1)) and float(t["boxes"][0, 0]) == pytest.approx(0.5)
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        crop, t = random_zoom(image, target, g, crop_prob=1.0, min_crop=0.6, hflip=0.0)
        h, w = crop.shape[-2:]
        assert tuple(t["orig_size"].tolist()) == (h, w) and h * w < 100 * 200
        for cx, cy, bw, bh in t["boxes"].tolist():  # kept objects: >= half visible, same pixels
            assert 10.0 - 1e-3 <= bw * w <= 20.0 + 1e-3 and 5.0 - 1e-3 <= bh * h <= 10.0 + 1e-3
            assert bw * w * bh * h >= 0.5 * 20 * 10 - 1e-3
            if 0.05 < cx - bw / 2 and cx + bw / 2 < 0.95 and 0.05 < cy - bh / 2 and cy + bh / 2 < 0.95:
                assert bw * w == pytest.approx(20.0, abs=1e-3)


def test_warm_start_learns_the_scale_loss_optimum(synth_dir):
    """A predictor-only run on a small generated set reaches corr(u, u*) >= 0.8 within 120
    steps (on its 24 training images: the machinery, not generalisation, is under test)."""
    torch.manual_seed(0)
    opts = ModelOptions(mode="elastic", base_size=128, thumb_size=64, detr=TINY,
                        predictor_trunk="mobilenet_v3_small", predictor_norm="group",
                        predictor_size_bins=8, predictor_d_model=32)
    model = build_model(opts, 6)
    ds = CocoDetection(synth_dir / "images" / "train",
                       synth_dir / "annotations" / "instances_train.json")
    loss = ElasticLossOptions.for_base_size(128)
    before = predictor_fidelity(model.eval(), ds, vars(loss))
    rows = pretrain_predictor(model, ds, PretrainOptions(steps=120, batch_size=8, lr=3e-3,
                                                         crop_prob=0.0, log_every=40),
                              loss, progress=False)
    after = predictor_fidelity(model.eval(), ds, vars(loss))
    assert rows[-1]["loss_scale"] < rows[0]["loss_scale"]
    assert after["pearson_u"] >= 0.8 > before["pearson_u"]
    assert after["mae_u"] < 0.5 * before["mae_u"]


def test_on_the_full_model_loss_scale_reaches_only_the_predictor_and_loss_dist_only_gamma(
        synth_dir):
    """Backpropagate each elastic term alone through a full elastic model and criterion."""
    torch.manual_seed(0)
    ds = CocoDetection(synth_dir / "images" / "train",
                       synth_dir / "annotations" / "instances_train.json")
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=64, detr=TINY,
                        predictor_trunk="mobilenet_v3_small", predictor_norm="group",
                        predictor_size_bins=6)
    model = build_model(opts, ds.num_classes).train()
    crit = build_criterion(ds.num_classes, TINY.num_decoder_layers,
                           ElasticLossOptions.for_base_size(64, distribution="budget"),
                           lambda_size_map=1.0)
    images, targets = collate_fn([ds[i] for i in range(6)])
    out = model(images)
    losses = crit(out, targets)
    assert {"loss_scale", "loss_dist", "loss_size_map"} <= set(losses)

    def grads(name: str) -> dict[str, float]:
        model.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        return {n: float(p.grad.abs().sum()) for n, p in model.named_parameters()
                if p.grad is not None and float(p.grad.abs().sum()) > 0}

    scale = grads("loss_scale")
    assert scale and all(n.startswith("predictor.") for n in scale)
    assert not any(n.startswith("predictor.size_head") for n in scale)
    assert grads("loss_dist").keys() == {"log_gamma"}
    size_map = grads("loss_size_map")
    assert any(n.startswith("predictor.size_head") for n in size_map)
    assert all(n.startswith("predictor.") for n in size_map)
    detection = grads("loss_ce")
    assert detection and not any(n.startswith("predictor.") or n == "log_gamma"
                                 for n in detection)


def test_a_warm_start_is_trained_once_and_reused_by_runs_that_share_it(synth_dir, tmp_path):
    ds = CocoDetection(synth_dir / "images" / "train",
                       synth_dir / "annotations" / "instances_train.json")
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=64, detr=TINY,
                        predictor_trunk="mobilenet_v3_small", predictor_norm="group")
    loss = ElasticLossOptions.for_base_size(64)
    warm = PretrainOptions(steps=3, batch_size=4, log_every=1)
    ann = synth_dir / "annotations" / "instances_train.json"
    key = warm_start_key(opts.to_dict(), vars(loss), warm, 0, ann)
    torch.manual_seed(0)
    first = build_model(opts, 6)
    assert not cached_warm_start(first, ds, warm, loss, 0, key, tmp_path / "cache",
                                 tmp_path / "a.jsonl", progress=False)
    torch.manual_seed(1)  # another initialisation: the cache must overwrite it
    second = build_model(opts, 6)
    assert cached_warm_start(second, ds, warm, loss, 0, key, tmp_path / "cache",
                             tmp_path / "b.jsonl", progress=False)
    for a, b in zip(first.predictor.parameters(), second.predictor.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    other = warm_start_key(opts.to_dict(), vars(loss), warm, 1, ann)  # another seed
    assert other != key and warm_start_key(
        {**opts.to_dict(), "thumb_size": 32}, vars(loss), warm, 0, ann) != key
