"""Detector pieces: matcher, boxes, resize, criterion, FLOPs of the transformer, overfitting."""

import itertools

import pytest
import torch
from torchvision.ops import box_convert

from elastic_lab.flops import count_flops, linear_flops, mha_flops
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.criterion import build_criterion
from elastic_lab.models.detr import DetrOptions, postprocess
from elastic_lab.models.matcher import HungarianMatcher
from elastic_lab.resize import pad_batch, padding_ratio, processed_size, resize_image

TINY = DetrOptions(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2,
                   dim_feedforward=64, num_queries=10)


def random_outputs(B, Q, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(B, Q, C, generator=g),
            "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.5 + 0.25}


def random_targets(counts, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, C, (n,), generator=g),
             "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.25} for n in counts]


def _pair_cost(matcher, outputs, target, q, t):
    """Cost of matching prediction q to target t, written out independently of the matcher."""
    prob = outputs["pred_logits"][0, q].sigmoid()
    a, g = matcher.alpha, matcher.gamma
    lab = target["labels"][t]
    p = prob[lab]
    cls = a * (1 - p) ** g * -(p + 1e-8).log() - (1 - a) * p ** g * -(1 - p + 1e-8).log()
    b1, b2 = outputs["pred_boxes"][0, q], target["boxes"][t]
    from torchvision.ops import generalized_box_iou
    giou = generalized_box_iou(box_convert(b1[None], "cxcywh", "xyxy"),
                               box_convert(b2[None], "cxcywh", "xyxy"))[0, 0]
    return float(matcher.cost_class * cls + matcher.cost_bbox * (b1 - b2).abs().sum()
                 - matcher.cost_giou * giou)


@pytest.mark.parametrize("Q,n", [(4, 3), (5, 5), (6, 2)])
def test_matcher_is_optimal_against_brute_force(Q, n):
    matcher = HungarianMatcher()
    outputs = random_outputs(1, Q, 3, seed=Q * 10 + n)
    target = random_targets([n], 3, seed=n)[0]
    rows, cols = matcher(outputs, [target])[0]
    best = min(sum(_pair_cost(matcher, outputs, target, q, t) for t, q in enumerate(perm))
               for perm in itertools.permutations(range(Q), n))
    got = sum(_pair_cost(matcher, outputs, target, int(q), int(t)) for q, t in zip(rows, cols))
    assert got == pytest.approx(best, abs=1e-4)
    assert sorted(cols.tolist()) == list(range(n))


def test_matcher_batch_equals_single():
    matcher = HungarianMatcher()
    outputs = random_outputs(3, 7, 4)
    targets = random_targets([2, 0, 5], 4)
    batched = matcher(outputs, targets)
    for i, t in enumerate(targets):
        single = matcher({k: v[i:i + 1] for k, v in outputs.items()}, [t])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])


def test_postprocess_maps_normalised_boxes_to_original_pixels():
    boxes_px = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 200.0, 100.0]])
    h, w = 100, 200
    norm = box_convert(boxes_px / torch.tensor([w, h, w, h]), "xyxy", "cxcywh")
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 10.0
    det = postprocess({"pred_logits": logits, "pred_boxes": norm[None]},
                      torch.tensor([[h, w]]), top_k=2)[0]
    order = det["labels"].argsort()
    assert det["labels"][order].tolist() == [1, 2]
    assert torch.allclose(det["boxes"][order], boxes_px, atol=1e-3)


@pytest.mark.parametrize("mode", ["fixed", "elastic"])
def test_detection_keeps_to_the_models_device(mode):
    """The meta device stands in for a GPU (no data, but every op checks its devices): a model
    and images there, φ on the CPU as callers pass it, give detections on the model's device.
    A size or box tensor left on the CPU inside detect() fails here as it would on CUDA."""
    model = build_model(ModelOptions(mode=mode, base_size=64, thumb_size=32, detr=TINY), 6)
    model = model.eval().to("meta")
    images = [torch.empty(3, 60, 80, device="meta"), torch.empty(3, 70, 50, device="meta")]
    dets, out = model.detect(images, torch.tensor([1.0, 0.75]))
    assert [d["boxes"].device.type for d in dets] == ["meta", "meta"]
    assert out["pred_boxes"].device.type == "meta" and out["phi"].device.type == "cpu"


def test_processed_size_is_phi_relative_and_stride_rounded():
    assert processed_size(480, 640, 1.0, 256, None, 32) == (256, 352)  # 341.3 -> 352
    for phi in (0.5, 0.75, 1.0, 1.5):
        h, w = processed_size(300, 200, phi, 256, None, 32)
        assert h % 32 == 0 and w % 32 == 0
        assert abs(w - 256 * phi) <= 16
    assert processed_size(200, 1000, 1.0, 256, 512, 32)[1] == 512  # long side capped
    assert processed_size(10, 10, 0.01, 256) == (32, 32)


def test_resize_and_pad_batch_masks_padding():
    a, b = torch.rand(3, 100, 150), torch.rand(3, 120, 90)
    ra, rb = resize_image(a, 1.0, 64), resize_image(b, 0.5, 64)
    batch, mask = pad_batch([ra, rb], 32)
    assert batch.shape[-2] % 32 == 0 and batch.shape[-1] % 32 == 0
    assert (~mask[0]).sum() == ra.shape[-2] * ra.shape[-1]
    assert (~mask[1]).sum() == rb.shape[-2] * rb.shape[-1]
    assert batch[1][:, mask[1]].abs().sum() == 0
    assert padding_ratio([(64, 64), (64, 32)]) == pytest.approx(0.25)


def test_detector_batch_equals_single():
    """Same-size images: batching changes nothing. (With padding, convolutions near the
    bottom/right edge see padded features instead of zeros, as in DETR: close, not equal.)"""
    torch.manual_seed(0)
    model = build_model(ModelOptions(base_size=64, detr=TINY), 3).eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 70, 90)]
    with torch.no_grad():
        batched = model(images, torch.ones(2))
        for i, im in enumerate(images):
            single = model([im], torch.ones(1))
            assert torch.allclose(single["pred_boxes"][0], batched["pred_boxes"][i], atol=1e-4)
            assert torch.allclose(single["pred_logits"][0], batched["pred_logits"][i], atol=1e-4)


def test_transformer_flops_match_analytic_count():
    torch.manual_seed(0)
    opts = DetrOptions(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                       dim_feedforward=64, num_queries=5)
    model = build_model(ModelOptions(base_size=64, detr=opts), 3).eval()
    tr = model.detector.transformer
    B, N, d, K, C, ff = 1, 24, 32, 5, 3, 64
    src, pos = torch.rand(B, N, d), torch.rand(B, N, d)
    mask = torch.zeros(B, N, dtype=torch.bool)
    anchors = torch.rand(B, N, 4) * 0.5 + 0.25
    measured = count_flops(lambda: tr(src, pos, mask, anchors))
    mlp3 = lambda n, dout: linear_flops(n, d, d) * 2 + linear_flops(n, d, dout)
    enc = 2 * (mha_flops(N, N, d) + linear_flops(N, d, ff) + linear_flops(N, ff, d))
    first = linear_flops(N, d, d) + linear_flops(N, d, C) + mlp3(N, 4)
    queries = linear_flops(K, d, d)
    dec = 2 * (mha_flops(K, K, d) + mha_flops(K, N, d) + linear_flops(K, d, ff)
               + linear_flops(K, ff, d) + linear_flops(K, 2 * d, d) + linear_flops(K, d, d)
               + mlp3(K, 4) + linear_flops(K, d, C))
    assert measured == enc + first + queries + dec


def test_model_overfits_two_images():
    """Two synthetic scenes: after a bounded number of steps the boxes are near-perfect."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) * 0.2 for _ in range(2)]
    targets = []
    for im, (x0, y0, s, lab) in zip(images, [(8, 10, 24, 0), (30, 28, 20, 1)]):
        im[:, y0:y0 + s, x0:x0 + s] = 0.9
        box = torch.tensor([[x0 + s / 2, y0 + s / 2, s, s]]) / 64
        targets.append({"labels": torch.tensor([lab]), "boxes": box})
    model = build_model(ModelOptions(base_size=64, detr=TINY), 2).train()
    crit = build_criterion(2, TINY.num_decoder_layers)
    weights = crit.weight_dict
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for step in range(150):
        losses = crit(model(images, torch.ones(2)), targets)
        total = sum(losses[k] * weights[k] for k in losses)
        first = first if first is not None else float(total.detach())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < 0.3 * first
    model.eval()
    dets, _ = model.detect(images, torch.ones(2), top_k=1)
    for det, t in zip(dets, targets):
        gt = box_convert(t["boxes"] * 64, "cxcywh", "xyxy")
        from torchvision.ops import box_iou
        assert box_iou(det["boxes"], gt).item() > 0.7
        assert det["labels"].item() == t["labels"].item()


def test_group_norm_backbone_is_the_same_function_in_training_and_inference():
    """With norm="group" every image is normalised on its own: a batch of images of one kind
    (an elastic batch) gives each image the output it gets alone and in eval mode, which a
    batch-norm backbone in training mode does not."""
    from elastic_lab.models.backbone import Backbone

    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    images[2:] *= 0.3  # two darker images: batch statistics differ from single-image ones
    mask = torch.zeros(4, 64, 64, dtype=torch.bool)
    for norm, same in (("group", True), ("batch", False)):
        net = Backbone("resnet18", None, "layer3", norm=norm).train()
        batch = net(images, mask)[0]
        alone = net(images[:1], mask[:1])[0]
        assert torch.allclose(batch[:1], alone, atol=1e-5) == same
        if same:
            torch.testing.assert_close(net.eval()(images, mask)[0], batch, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d)
                   for m in Backbone("resnet18", None, norm="group").modules())
    with pytest.raises(ValueError, match="group"):
        Backbone("resnet18", "imagenet", norm="group")
