"""Per-scale batch-norm statistics (models/scale_norm.py) and their calibration (calibrate.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elastic_lab.calibrate import calibrate_checkpoint, calibrate_scale_stats
from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.data.coco import CocoDetection
from elastic_lab.models.build import ModelOptions, build_model, load_model
from elastic_lab.models.detr import DetrOptions
from elastic_lab.models.scale_norm import (
    ScaleBatchNorm2d,
    bin_centres,
    convert_scale_norm,
    scale_bins,
    scale_norms,
)
from elastic_lab.resize import pad_batch, resize_image
from elastic_lab.runtime import split_paths

TINY = DetrOptions(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                   dim_feedforward=64, num_queries=10)


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_conversion_keeps_the_function_until_calibration():
    net = _net()
    x = torch.randn(3, 3, 10, 12)
    before = net(x)
    convert_scale_norm(net, bin_centres(0.5, 1.5, 9))
    assert isinstance(net[1], ScaleBatchNorm2d)
    with scale_bins(net, torch.tensor([0.5, 1.0, 1.5])):
        torch.testing.assert_close(net(x), before)
    torch.testing.assert_close(net(x), before)  # no bins set: the running statistics


def test_each_image_is_normalised_with_the_statistics_of_its_own_bin():
    net = convert_scale_norm(_net(), bin_centres(0.5, 1.5, 5))  # centres 0.5 .. 1.5 by 0.25
    bn = net[1]
    bn.scale_mean.copy_(torch.randn(5, 8))
    bn.scale_var.copy_(torch.rand(5, 8) + 0.5)
    x = torch.randn(3, 3, 6, 6)
    phi = torch.tensor([0.55, 1.1, 1.45])  # nearest centres 0.5, 1.0, 1.5
    with scale_bins(net, phi):
        out = net(x)
    for b, k in enumerate([0, 2, 4]):
        ref = F.relu(F.batch_norm(net[0](x[b:b + 1]), bn.scale_mean[k], bn.scale_var[k],
                                  bn.weight, bn.bias, False, 0.0, bn.eps))
        torch.testing.assert_close(out[b:b + 1], ref)
    assert bn.bins is None  # the bins hold only inside the block
    # a batch whose images share one bin (batch 1, a size-grouped batch) takes the fused
    # kernel: the same outputs as those images in a mixed batch, and not the running average
    with scale_bins(net, torch.tensor([1.1, 0.95])):  # both in bin 2
        same = net(x[1:3])
    torch.testing.assert_close(same[0], out[1])
    assert not torch.allclose(same, net(x[1:3]))
    net.train()
    with scale_bins(net, phi):  # training normalises with batch statistics, bins or not
        torch.testing.assert_close(net(x), F.relu(F.batch_norm(
            net[0](x), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)))


@pytest.fixture()
def calibrated(synth_dir):
    torch.manual_seed(0)
    model = build_model(ModelOptions(mode="multiscale", base_size=256, scale_stats_bins=3,
                                     detr=TINY), 6)
    # a trained-looking state: non-trivial running statistics
    model.train()
    images = [torch.rand(3, 64, 64) for _ in range(4)]
    model(images, torch.ones(4))
    model.eval()
    data = CocoDetection(*split_paths(synth_dir, "train"))
    ref = [(m.running_mean.clone(), m.running_var.clone()) for m in scale_norms(model)]
    summary = calibrate_scale_stats(model, data, num_images=4, bin_images=4, batch_size=4)
    return model, data, summary, ref


def test_calibration_makes_inference_normalise_like_training(calibrated):
    model, data, summary, ref = calibrated
    assert summary["centres"] == [0.5, 1.0, 1.5] and summary["images"] == [4, 4, 4]
    for m, (mean, var) in zip(scale_norms(model), ref):  # running statistics untouched
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)
    first = scale_norms(model)[0]
    assert not torch.allclose(first.scale_mean[0], first.scale_mean[2])  # the bins differ
    # synthetic images share one size: each bin was calibrated on exactly one batch, so the
    # detector at that bin's φ in inference computes what training mode computes on that batch
    idx = np.random.default_rng(0).choice(len(data), 4, replace=False).tolist()
    for phi in (0.5, 1.0):
        batch, mask = pad_batch([resize_image(data[i][0], phi, 256, None, model.stride)
                                 for i in idx], model.stride)
        with torch.no_grad(), scale_bins(model.detector, torch.full((4,), phi)):
            inference = model.detector.backbone(batch, mask)[0]
        model.detector.backbone.train()
        with torch.no_grad():
            training = model.detector.backbone(batch, mask)[0]
        model.eval()
        uncalibrated = model.detector.backbone(batch, mask)[0]  # no bins: running statistics
        # (the stored variance is unbiased, training divides by n: a small, size-dependent gap)
        assert (inference - training).abs().max() < (uncalibrated - training).abs().max() / 50


def test_calibrated_checkpoints_round_trip(synth_dir, tmp_path):
    torch.manual_seed(0)
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY)
    model = build_model(opts, 6)
    src = save_checkpoint(tmp_path / "run.pt", {
        "model": model.state_dict(), "model_options": opts.to_dict(),
        "categories": CocoDetection(*split_paths(synth_dir, "train")).categories})
    out = calibrate_checkpoint(src, synth_dir, tmp_path / "calibrated.pt", bins=3,
                               num_images=6, bin_images=2)
    loaded, ckpt = load_model(out)
    assert ckpt["model_options"]["scale_stats_bins"] == 3
    assert sum(ckpt["calibration"]["own_phi_images"]) == 6  # elastic: bins by predicted φ
    assert all(n >= 2 for n in ckpt["calibration"]["images"])
    norms = scale_norms(loaded)
    assert len(norms) == len([m for m in model.detector.modules() if isinstance(m, nn.BatchNorm2d)])
    for p, q in zip(model.parameters(), loaded.parameters()):  # calibration leaves the weights
        torch.testing.assert_close(p, q)
    image = [CocoDetection(*split_paths(synth_dir, "val"))[0][0]]
    a = loaded.detect(image, torch.tensor([0.5]))[1]["pred_logits"]
    model.eval()
    c = model.detect(image, torch.tensor([0.5]))[1]["pred_logits"]
    assert a.shape == c.shape and not torch.allclose(a, c)  # the calibrated statistics are used
