"""analysis.py: phi against object size, compare-to-baseline on a Pareto front, per-image scale
sweeps (the seed experiments of the notebooks and the benchmark)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.ops import box_convert

from elastic_lab.analysis import (
    compare_to_baseline,
    image_scale_sweep,
    loss_optimum,
    median_object_sides,
    phi_object_size_table,
    phi_on_generated_scenes,
    spearman,
)
from elastic_lab.data.coco import CocoDetection
from elastic_lab.data.image import image_tensor
from elastic_lab.data.synth import render_scene
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.detr import DetrOptions
from elastic_lab.resize import base_size_scale
from elastic_lab.runtime import split_paths


def _tiny_model(mode="elastic"):
    torch.manual_seed(0)
    opts = ModelOptions(mode=mode, base_size=64, thumb_size=32,
                        detr=DetrOptions(d_model=32, num_encoder_layers=1, num_decoder_layers=2))
    return build_model(opts, 6).eval()


class _MeanPhiModel(torch.nn.Module):
    """A stand-in predictor whose phi is a known function of each image: 0.5 + its mean."""

    base_size, max_size = 64, None
    tau_min, tau_max, log_gamma = 0.5, 1.5, None

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def predict_phi(self, images):
        self.calls.append(len(images))
        return torch.stack([0.5 + im.mean() for im in images])



def test_median_object_sides_at_original_and_base_resolution(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    sides = median_object_sides(ds)
    base = median_object_sides(ds, base_size=128)
    for i, image_id in enumerate(ds.ids):
        anns = ds.coco.imgToAnns.get(image_id, [])
        if not anns:
            assert math.isnan(sides[i]) and math.isnan(base[i])
            continue
        expected = np.median([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
        info = ds.coco.imgs[image_id]
        assert sides[i] == pytest.approx(expected)
        assert base[i] == pytest.approx(expected * base_size_scale(
            info["height"], info["width"], 128, None))


def test_phi_object_size_table_is_the_predictor_per_image(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    model = _MeanPhiModel()
    table = phi_object_size_table(model, ds, batch_size=3)
    assert {len(v) for v in table.values()} == {len(ds)} and model.calls == [3, 3, 2]
    expected = [0.5 + float(ds[i][0].mean()) for i in range(len(ds))]  # in dataset order
    np.testing.assert_allclose(table["phi"], expected, rtol=1e-6)
    np.testing.assert_allclose(table["median_side"], median_object_sides(ds, 64), equal_nan=True)
    assert list(table["regime"]) == [ds.coco.imgs[i]["regime"] for i in ds.ids]
    assert list(table["num_objects"]) == [len(ds.coco.imgToAnns.get(i, [])) for i in ds.ids]
    assert list(table["image_id"]) == ds.ids


def test_phi_on_generated_scenes_runs_the_predictor_on_fresh_scenes_of_each_regime():
    model = _MeanPhiModel()
    t = phi_on_generated_scenes(model, ["tiny", "large", "empty"], 3, seed=5, size=(160, 128))
    assert list(t["regime"]) == ["tiny"] * 3 + ["large"] * 3 + ["empty"] * 3
    for r, regime in enumerate(["tiny", "large", "empty"]):
        for k in range(3):
            image, anns = render_scene(np.random.default_rng([5, 7920, r, k]), regime,
                                       (160, 128))
            assert t["phi"][3 * r + k] == pytest.approx(0.5 + float(image_tensor(image).mean()),
                                                        rel=1e-6)
            if anns:
                side = np.median([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
                assert t["median_side"][3 * r + k] == pytest.approx(
                    side * base_size_scale(128, 160, 64, None))
    assert np.all(np.isnan(t["median_side"][6:]))  # empty scenes have no objects
    assert np.nanmax(t["median_side"][:3]) < np.nanmin(t["median_side"][3:6])  # tiny < large


def test_phi_on_generated_scenes_with_loss_options_gives_each_scenes_optimum():
    model, opts = _MeanPhiModel(), {"b_s": 10.0, "b_l": 30.0, "k": 6.0, "empty_target": 0.0}
    regimes = ["tiny", "large", "empty"]
    t = phi_on_generated_scenes(model, regimes, 2, seed=1, size=(160, 128), loss_options=opts)
    to_base = base_size_scale(128, 160, 64, None)
    sides = []
    for r, regime in enumerate(regimes):
        for k in range(2):
            _, anns = render_scene(np.random.default_rng([1, 7920, r, k]), regime, (160, 128))
            sides.append(torch.tensor([math.sqrt(a["bbox"][2] * a["bbox"][3]) * to_base
                                       for a in anns], dtype=torch.float64))
    _, phi_star = loss_optimum(model, sides, opts)
    np.testing.assert_allclose(t["phi_star"], phi_star)
    assert t["phi_star"][0] > 1.0 > t["phi_star"][2] and t["phi_star"][4] == pytest.approx(0.5)
    f = t["fidelity"]
    assert f["num_images"] == 6 and f["mean_phi_star"] == pytest.approx(phi_star.mean())
    assert f["mean_phi"] == pytest.approx(t["phi"].mean())
    assert set(f["by_regime"]) == set(regimes)


def test_spearman_ignores_missing_pairs():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([6.0, 4.0, 1.0, 3.0, np.inf, 0.5])
    keep = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic)
    assert spearman(x, y) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [1, 1, 1])) and math.isnan(spearman([1, 2], [2, 1]))


def test_compare_to_baseline_interpolates_along_the_front():
    base = [{"ap": 0.1, "gflops": 1.0}, {"ap": 0.2, "gflops": 2.0}, {"ap": 0.3, "gflops": 4.0},
            {"ap": 0.15, "gflops": 3.0}]  # the last one is dominated
    c = compare_to_baseline(base, ap=0.25, gflops=2.0)
    assert c["baseline_ap_at_equal_gflops"] == pytest.approx(0.2)
    assert c["ap_gain"] == pytest.approx(0.05)
    assert c["baseline_gflops_at_equal_ap"] == pytest.approx(3.0)  # halfway from 2 to 4
    assert c["compute_saved"] == pytest.approx(1 - 2.0 / 3.0) and not c["extrapolated"]
    best = compare_to_baseline(base, ap=0.4, gflops=5.0)
    assert best["baseline_gflops_at_equal_ap"] is None and best["compute_saved"] is None
    assert best["extrapolated"] and best["baseline_ap_at_equal_gflops"] == pytest.approx(0.3)
    low = compare_to_baseline(base, ap=0.05, gflops=0.5)
    assert low["baseline_gflops_at_equal_ap"] == 1.0 and low["compute_saved"] == 0.5


class _OracleModel(torch.nn.Module):
    """Detects exactly the ground truth of one image (label of object 0 wrong at φ < 1)."""

    def __init__(self, boxes, labels):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.boxes, self.labels = boxes, labels

    def detect(self, images, phi):
        labels = self.labels.clone()
        if float(phi[0]) < 1:
            labels[0] = (labels[0] + 1) % 6
        dets = {"boxes": self.boxes, "labels": labels,
                "scores": torch.full((len(labels),), 0.9)}
        size = round(100 * float(phi[0]))
        return [dets], {"image_sizes": torch.tensor([[size, size]])}

    def predict_phi(self, images):
        return torch.tensor([1.25])


class _PixelFlops:
    def detector(self, h, w):
        return h * w / 1e4


def test_image_scale_sweep_recall_against_ground_truth(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    idx = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 2)
    _, target = ds[idx]
    h, w = target["orig_size"].tolist()
    gt = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
    sweep = image_scale_sweep(_OracleModel(gt, target["labels"]), ds, idx, [1.5, 0.5, 1.0],
                              threshold=0.3, flops=_PixelFlops())
    n = len(target["labels"])
    assert sweep["phi"] == [0.5, 1.0, 1.5]  # sorted
    assert sweep["recall"] == pytest.approx([(n - 1) / n, 1.0, 1.0])
    assert sweep["num_detections"] == [n] * 3 and sweep["mean_score"] == pytest.approx([0.9] * 3)
    assert sweep["gflops"] == pytest.approx([0.25, 1.0, 2.25])
    assert sweep["predicted_phi"] == 1.25 and sweep["image_id"] == target["image_id"]
    model = _tiny_model()
    real = image_scale_sweep(model, ds, idx, [0.5, 1.5], threshold=0.0)
    assert real["phi"] == [0.5, 1.5] and real["gflops"][0] < real["gflops"][1]
    with torch.no_grad():
        assert real["predicted_phi"] == pytest.approx(float(model.predictor([ds[idx][0]])["phi"]),
                                                      abs=1e-6)

