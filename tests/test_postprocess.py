"""The detector's shared post-processing (models/detr.postprocess) and predict_image's output.

One post-processing serves ``elastic-lab predict``, evaluation and the app: boxes clipped to
the image with torchvision's ``clip_boxes_to_image`` and no negative zeros.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from PIL import Image

from elastic_lab.data.synth import categories_for
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.detr import postprocess
from elastic_lab.predict import match_ground_truth, paired_latency, predict_image
from tests.test_model import TINY


def _outputs(boxes_cxcywh: list[list[float]], scores: list[float]) -> dict:
    """A DETR output dict with one image, one class, the given normalised boxes and scores."""
    logits = torch.logit(torch.tensor(scores))[None, :, None]  # [1, Q, 1]
    return {"pred_logits": logits, "pred_boxes": torch.tensor([boxes_cxcywh])}


def test_boxes_that_overhang_the_image_are_clipped_to_it():
    # image 100 px wide, 50 px high; the first box overhangs left and bottom, the second right
    out = _outputs([[0.1, 0.9, 0.4, 0.4], [0.95, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]],
                   [0.9, 0.8, 0.7])
    (det,) = postprocess(out, torch.tensor([[50, 100]]), top_k=3)
    boxes = det["boxes"].tolist()
    assert boxes[0] == pytest.approx([0.0, 35.0, 30.0, 50.0])   # x1 = -10 -> 0, y2 = 55 -> 50
    assert boxes[1] == pytest.approx([85.0, 20.0, 100.0, 30.0])  # x2 = 105 -> 100
    assert boxes[2] == pytest.approx([40.0, 20.0, 60.0, 30.0])   # inside: unchanged


def test_no_negative_zero_in_boxes():
    # cx = -0.0 and w = 0 give x1 = x2 = -0.0 after box_convert; clamping keeps the sign
    out = _outputs([[-0.0, 0.5, 0.0, 0.2], [0.0, 0.0, 0.2, 0.2]], [0.9, 0.8])
    (det,) = postprocess(out, torch.tensor([[64, 64]]), top_k=2)
    assert all(math.copysign(1.0, v) > 0 for v in det["boxes"].flatten().tolist())


def test_predict_image_boxes_inside_the_image_and_json_has_no_minus_zero():
    torch.manual_seed(0)
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY)
    cats = categories_for()
    model = build_model(opts, len(cats)).eval()
    image = Image.new("RGB", (90, 70), (120, 30, 200))
    r = predict_image(model, cats, image, threshold=0.0, timing=False)
    assert r["detections"], "threshold 0 keeps the top-k"
    for d in r["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 90 and 0 <= y1 <= y2 <= 70
    assert "-0.0" not in json.dumps(r)
    # sizes by name agree with the [height, width] lists
    assert r["processed_size"] == [r["processed_height"], r["processed_width"]]
    assert r["base_size"] == [r["base_height"], r["base_width"]]


def test_predict_image_holds_large_images_to_the_pixel_budget():
    torch.manual_seed(0)
    opts = ModelOptions(mode="fixed", base_size=64, detr=TINY)
    cats = categories_for()
    model = build_model(opts, len(cats)).eval()
    big = Image.new("RGB", (900, 700), (10, 200, 30))
    full = predict_image(model, cats, big, threshold=0.0, timing=False, pixel_budget=10**7)
    small = predict_image(model, cats, big, threshold=0.0, timing=False, pixel_budget=100_000)
    assert "reduced_to" not in full and small["reduced_to"] == [234, 300]  # reduce(3)
    assert (small["width"], small["height"]) == (900, 700)  # boxes in original pixels
    for d in small["detections"]:
        assert 0 <= d["box"][0] <= d["box"][2] <= 900 and 0 <= d["box"][1] <= d["box"][3] <= 700
    # a uniform image looks the same at both resolutions: the same boxes up to the resampling
    a = torch.tensor([d["box"] for d in full["detections"][:5]])
    b = torch.tensor([d["box"] for d in small["detections"][:5]])
    assert torch.allclose(a, b, atol=15.0)


def test_match_ground_truth_needs_class_and_overlap():
    truth = [{"box": [0, 0, 10, 10], "category_id": 1}, {"box": [20, 20, 40, 40], "category_id": 2}]
    dets = [{"box": [1, 1, 10, 10], "category_id": 1},    # IoU 0.81, same class: found
            {"box": [20, 20, 40, 40], "category_id": 1}]  # exact box, other class: not found
    assert match_ground_truth(dets, truth) == [True, False]
    assert match_ground_truth([], truth) == [False, False]
    assert match_ground_truth(dets, []) == []
    assert match_ground_truth([{"box": [5, 5, 15, 15], "category_id": 1}], truth[:1]) == [False]


def test_paired_latency_times_both_sides_in_alternating_pairs():
    calls: list[str] = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)

    def fast():
        calls.append("fast")
        time.sleep(0.01)

    r = paired_latency(slow, fast, pairs=4, warmup=1)
    assert calls[:2] == ["slow", "fast"]  # warm-up
    assert calls[2:] == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert r["latency_pairs"] == 4 and r["latency_ms"] >= 20 and r["latency_ms_phi1"] >= 10
    lo, hi = r["latency_ratio_range"]
    assert lo <= r["latency_ratio"] <= hi and 1.2 < r["latency_ratio"] < 2.5
    with pytest.raises(ValueError, match="pairs must be >= 1"):
        paired_latency(slow, fast, pairs=0)
