"""Acceptance tests of the ScalePredictor (docs/method.md §2)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

from elastic_lab.data.synth import sample_size
from elastic_lab.flops import FlopTable
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.scale_predictor import ScalePredictor

SIZES = [(50, 80), (120, 40), (64, 64), (17, 300), (200, 199)]


def images(sizes=SIZES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=gen) for h, w in sizes]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScalePredictor().eval()


def test_output_shapes_and_thumbnails(model):
    out = model(images())
    assert set(out) == {"u", "phi", "logit"}
    assert all(v.shape == (len(SIZES),) for v in out.values())
    thumbs, mask = model.thumbnails(images())
    assert thumbs.shape == (5, 3, 64, 64) and mask.shape == (5, 64, 64) and mask.dtype == torch.bool
    # long side = 64, aspect kept: valid extent (h, w) per image
    extents = [((~m).any(1).sum().item(), (~m).any(0).sum().item()) for m in mask]
    assert extents == [(40, 64), (64, 21), (64, 64), (4, 64), (64, 64)]
    assert (thumbs[0, :, 40:] == 0).all()  # padding after normalisation
    raw, _ = model.thumbnails(images(), normalize=False)
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    torch.testing.assert_close(out["u"], torch.sigmoid(out["logit"]))
    torch.testing.assert_close(out["phi"], 0.5 + 1.0 * out["u"])


@pytest.mark.parametrize("tau_min, tau_max", [(0.5, 1.5), (0.4, 2.0)])
def test_phi_stays_in_range_even_for_extreme_logits(tau_min, tau_max):
    torch.manual_seed(1)
    model = ScalePredictor(tau_min=tau_min, tau_max=tau_max).eval()
    with torch.no_grad():
        phi = model(images())["phi"]
        assert ((phi >= tau_min) & (phi <= tau_max)).all()
        assert (phi - (tau_min + tau_max) / 2).abs().max() < (tau_max - tau_min) / 2 * 0.99
        for bias, bound in [(100.0, tau_max), (-100.0, tau_min)]:
            model.head.bias.fill_(bias)
            phi = model(images())["phi"]
            assert ((phi >= tau_min) & (phi <= tau_max)).all()
            torch.testing.assert_close(phi, torch.full_like(phi, bound))


def test_head_bias_starts_at_zero():
    assert ScalePredictor().head.bias.abs().sum() == 0.0


def test_batch_equals_single(model):
    batch = images()
    with torch.no_grad():
        together = model(batch)["logit"]
        alone = torch.cat([model([img])["logit"] for img in batch])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_padded_tokens_do_not_reach_the_output(model):
    """Noise written into the padded tokens' features changes nothing; into valid ones it does."""
    batch = images([(20, 64), (64, 30)])
    _, mask = model.thumbnails(batch)
    fmask = F.interpolate(mask[:, None].float(), size=(4, 4))[:, 0].bool()  # [B, 4, 4]
    assert fmask.any() and (~fmask).any()

    def run(where):
        def hook(_module, _inputs, output):
            noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(0)) * 10
            return output + noise * where[:, None]

        handle = model.input_proj.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return model(batch)["logit"]
        finally:
            handle.remove()

    with torch.no_grad():
        clean = model(batch)["logit"]
    torch.testing.assert_close(run(fmask.float()), clean, atol=1e-5, rtol=1e-5)
    assert (run((~fmask).float()) - clean).abs().min() > 1e-4


def analytic_flops(t: int, d: int, layers: int) -> int:
    """FLOPs (2 per MAC, matmuls and convs only) of ResNet-18 to layer3 + head at T = t."""
    s1 = (t - 1) // 2 + 1  # conv1 7x7/2
    s2 = (s1 - 1) // 2 + 1  # maxpool 3x3/2
    s3 = (s2 - 1) // 2 + 1  # layer2 stride 2
    s4 = (s3 - 1) // 2 + 1  # layer3 stride 2
    macs = 7 * 7 * 3 * 64 * s1**2
    macs += 4 * 9 * 64 * 64 * s2**2
    macs += (9 * 64 * 128 + 3 * 9 * 128 * 128 + 64 * 128) * s3**2
    macs += (9 * 128 * 256 + 3 * 9 * 256 * 256 + 128 * 256) * s4**2
    macs += 256 * d * s4**2  # 1x1 projection
    n = s4**2 + 1  # tokens + [SCALE]
    macs += layers * (4 * d * d * n + 2 * n * n * d + 2 * d * 4 * d * n)  # qkv+out, QK/AV, FFN
    macs += d  # final linear
    return 2 * macs


@pytest.fixture(scope="module")
def detector_gflops():
    """Mean GFLOPs of the default detector on synthetic val images at phi = 1 (base size 256),
    measured as the evaluation counts them: the cost the predictor's 5 % budget refers to."""
    model = build_model(ModelOptions(base_size=256), num_classes=6)
    flops = FlopTable(model)
    sizes = [sample_size(np.random.default_rng([0, 1, i])) for i in range(24)]  # (w, h)
    processed = [model.sizes([(h, w)], torch.ones(1))[0] for w, h in sizes]
    return float(np.mean([flops.detector(h, w) for h, w in processed]))


@pytest.mark.parametrize("thumb_size, d_model, layers", [(64, 64, 2), (48, 32, 1)])
def test_flops_match_analytic_count_and_budget(thumb_size, d_model, layers, detector_gflops):
    model = ScalePredictor(thumb_size=thumb_size, d_model=d_model, num_layers=layers).eval()
    batch = images([(300, 200), (90, 160)])
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(batch)
    per_image = counter.get_total_flops() / len(batch)
    assert per_image == analytic_flops(thumb_size, d_model, layers)
    if (thumb_size, d_model, layers) == (64, 64, 2):
        assert per_image == 232_997_504  # the number reported in the module docstring
        assert per_image <= 0.05 * detector_gflops * 1e9  # predictor within 5 % of it


def test_gradients_reach_trunk_and_head():
    torch.manual_seed(2)
    model = ScalePredictor().train()
    out = model(images())
    loss = F.binary_cross_entropy(out["u"], torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))
    loss.backward()
    for name in ["trunk.0.weight", "trunk.6.1.conv2.weight", "input_proj.weight",
                 "encoder.layers.0.self_attn.in_proj_weight", "scale_token", "head.weight",
                 "head.bias"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_weights_are_loaded_from_the_torch_cache(tmp_path, monkeypatch):
    """``weights=`` is torchvision's: a cached state dict is used (no download here)."""
    torch.manual_seed(3)
    reference = resnet18().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for frozen in (False, True):
        model = ScalePredictor(weights="IMAGENET1K_V1", frozen_bn=frozen)
        torch.testing.assert_close(model.trunk[0].weight, reference["conv1.weight"])
        torch.testing.assert_close(
            model.trunk[6][1].conv2.weight, reference["layer3.1.conv2.weight"]
        )


def test_bad_input_is_rejected(model):
    with pytest.raises(ValueError, match=r"images\[1\]"):
        model([torch.rand(3, 10, 10), torch.rand(1, 10, 10)])
    with pytest.raises(ValueError, match="at least one"):
        model([])
    with pytest.raises(ValueError, match="tau_min"):
        ScalePredictor(tau_min=1.5, tau_max=0.5)
