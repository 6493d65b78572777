"""DOTA evaluation: VOC07 11-point mAP with difficult objects, COCO AP beside it, and the
full-image evaluation of a detector run over patches."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from elastic_lab.data.dota import DOTA_V1_CLASSES, DotaLabel, DotaObject, write_label_txt
from elastic_lab.data.dota_split import split_dota
from elastic_lab.dota_eval import (
    coco_ap,
    evaluate_detector_on_dota,
    evaluate_dota,
    voc07_ap,
    voc07_map,
)

CLASSES = ("plane", "ship")


def _box(x0, y0, x1, y1, category="plane", difficult=0) -> DotaObject:
    return DotaObject((x0, y0, x1, y0, x1, y1, x0, y1), category, difficult)


def _dets(rows):
    """rows: [(x0, y0, x1, y1, score, label)] -> (boxes, scores, labels)."""
    arr = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return arr[:, :4], arr[:, 4], arr[:, 5].long()


def _perfect(gt):
    return {img: _dets([(*o.hbox, 1.0 - 0.01 * k, CLASSES.index(o.category))
                        for k, o in enumerate(objs)]) for img, objs in gt.items()}


def test_perfect_predictions_score_one():
    gt = {"A": [_box(0, 0, 10, 10), _box(20, 0, 50, 40, "ship"), _box(60, 60, 90, 95)],
          "B": [_box(5, 5, 25, 25, "ship")]}
    result = evaluate_dota(gt, _perfect(gt), CLASSES)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["AP_per_class"] == pytest.approx({"plane": 1.0, "ship": 1.0})
    assert result["num_gt_per_class"] == {"plane": 2, "ship": 2}
    assert result["coco_AP"] == pytest.approx(1.0) and result["coco_AP50"] == pytest.approx(1.0)


def test_voc07_ap_11_points():
    # Recall reaches 0.5 at precision 1, then nothing: points 0, .1, ..., .5 -> 6/11.
    assert voc07_ap(np.array([0.25, 0.5]), np.array([1.0, 1.0])) == pytest.approx(6 / 11)
    assert voc07_ap(np.array([]), np.array([])) == 0.0


def test_hand_computed_map():
    # Class "plane": 4 non-difficult GT (3 in A, 1 in B), g3 is never found.
    gt = {"A": [_box(0, 0, 10, 10), _box(20, 0, 30, 10), _box(40, 0, 50, 10),
                _box(0, 50, 10, 60, "ship")],
          "B": [_box(0, 0, 10, 10)]}
    dets = {
        "A": _dets([
            (0, 0, 10, 10, 0.9, 0),        # d1 TP (g1)
            (100, 100, 110, 110, 0.8, 0),  # d2 FP (nothing there)
            (0, 0, 10, 10, 0.6, 0),        # d4 FP (duplicate of g1)
            (21, 0, 31, 10, 0.5, 0),       # d5 TP (g2, IoU 90/110 = 0.82)
            (0, 50, 10, 60, 0.4, 1),       # ship: perfect
        ]),
        "B": _dets([(0, 0, 10, 10, 0.7, 0)]),  # d3 TP (g4)
    }
    # Score order d1..d5: TP FP TP FP TP; cumulative tp 1 1 2 2 3, fp 0 1 1 2 2.
    # recall    = .25 .25 .5  .5  .75
    # precision = 1   .5  2/3 .5  .6
    # 11-point:  t = 0, .1, .2 -> 1     (3 points)
    #            t = .3, .4, .5 -> 2/3  (3 points, best precision at recall >= t)
    #            t = .6, .7     -> .6   (2 points)
    #            t = .8, .9, 1  -> 0    (3 points)
    # AP(plane) = (3 * 1 + 3 * 2/3 + 2 * 0.6) / 11 = 6.2 / 11 = 0.563636...
    # mAP = (6.2 / 11 + 1) / 2 = 0.781818...
    m_ap, per_class, npos = voc07_map(gt, dets, CLASSES)
    assert per_class["plane"] == pytest.approx(6.2 / 11)
    assert per_class["ship"] == pytest.approx(1.0)
    assert m_ap == pytest.approx((6.2 / 11 + 1) / 2) and npos == {"plane": 4, "ship": 1}


def test_iou_must_exceed_half():
    gt = {"A": [_box(0, 0, 10, 10)]}
    exactly_half = {"A": _dets([(0, 0, 20, 10, 0.9, 0)])}  # IoU 100 / 200 = 0.5: not a match
    assert voc07_map(gt, exactly_half, CLASSES)[0] == 0.0
    above = {"A": _dets([(0, 0, 19, 10, 0.9, 0)])}  # IoU 100 / 190
    assert voc07_map(gt, above, CLASSES)[0] == pytest.approx(1.0)
    # The devkit's "+1" pixel convention: 11*11 / (21*11) = 0.524 > 0.5 -> a match.
    assert voc07_map(gt, exactly_half, CLASSES, plus_one=True)[0] == pytest.approx(1.0)


def test_difficult_objects_are_ignored():
    gt = {"A": [_box(0, 0, 10, 10), _box(50, 50, 60, 60, difficult=1),
                _box(80, 0, 90, 10, difficult=1)]}
    # Top-scored detection sits on a difficult object: neither TP nor FP, so AP stays 1.
    dets = {"A": _dets([(50, 50, 60, 60, 0.95, 0), (0, 0, 10, 10, 0.9, 0)])}
    result = evaluate_dota(gt, dets, CLASSES)
    assert result["AP_per_class"] == pytest.approx({"plane": 1.0})  # ship: no GT, left out
    assert result["num_gt_per_class"] == {"plane": 1}  # the missed difficult one is no miss
    assert result["coco_AP"] == pytest.approx(1.0)  # difficult = iscrowd: ignored too
    # Were difficult objects normal, the same detections would lose recall and precision.
    plain = {"A": [DotaObject(o.poly, o.category, 0) for o in gt["A"]]}
    assert evaluate_dota(plain, dets, CLASSES)["mAP"] < 0.7
    # A detection beside the difficult object (IoU 25 / 175 <= 0.5) is a false positive:
    # FP then TP -> precision 0.5 at recall 1 -> all 11 points are 0.5.
    fp = {"A": _dets([(55, 55, 65, 65, 0.95, 0), (0, 0, 10, 10, 0.9, 0)])}
    assert voc07_map(gt, fp, CLASSES)[1]["plane"] == pytest.approx(0.5)
    # Only difficult GT in the class: the class is not part of the mAP.
    only_difficult = {"A": [_box(0, 0, 10, 10, "ship", 1), _box(0, 20, 10, 30)]}
    m_ap, per_class, _ = voc07_map(only_difficult, {}, CLASSES)
    assert per_class == {"plane": 0.0} and m_ap == 0.0


def test_edge_cases():
    gt = {"A": [_box(0, 0, 10, 10)]}
    assert evaluate_dota(gt, {}, CLASSES)["coco_AP"] == 0.0
    assert np.isnan(coco_ap({"A": []}, {}, CLASSES)[0])
    with pytest.raises(ValueError, match=r"labels span 5\.\.5, outside 0\.\.1"):
        voc07_map(gt, {"A": _dets([(0, 0, 1, 1, 0.5, 5)])}, CLASSES)
    with pytest.raises(ValueError, match="class 'ship' not in class_names"):
        voc07_map({"A": [_box(0, 0, 1, 1, "ship")]}, {}, ("plane",))


def _colour_detector(images):
    """A 'detector' that finds solid red (plane) and green (ship) rectangles by their colour.

    Like a detector trained on whole objects, it ignores pieces that touch the patch border.
    Labels index the split's categories (all 15 DOTA v1.0 classes), as a trained model's would.
    """
    out = []
    for img in images:
        arr = np.asarray(img).astype(int)
        rows = []
        for label, channel in ((DOTA_V1_CLASSES.index("plane"), 0),
                               (DOTA_V1_CLASSES.index("ship"), 1)):
            others = np.delete(arr, channel, axis=2).max(axis=2)
            mask = (arr[..., channel] > 128) & (others < 100)
            regions, _ = ndimage.label(mask)
            for y, x in ndimage.find_objects(regions):
                if x.start == 0 or y.start == 0 or x.stop == img.width or y.stop == img.height:
                    continue
                score = 0.5 + 0.001 * (x.stop - x.start)
                rows.append((x.start, y.start, x.stop, y.stop, score, label))
        out.append(_dets(rows))
    return out


def test_evaluate_detector_over_patches(tmp_path: Path):
    src = tmp_path / "src"
    objects = [
        _box(950, 100, 1070, 160),            # cut by the first window's edge
        _box(300, 300, 340, 330, "ship"),
        _box(1700, 400, 1790, 470, "ship", difficult=1),
        _box(1960, 20, 2040, 90),              # near the right edge (2048 px wide)
    ]
    img = Image.new("RGB", (2048, 600))
    draw = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = o.hbox
        colour = (255, 0, 0) if o.category == "plane" else (0, 255, 0)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    (src / "images").mkdir(parents=True)
    img.save(src / "images" / "P0001.png")
    write_label_txt(src / "labelTxt" / "P0001.txt", DotaLabel(objects))
    split_dota(src, tmp_path / "out", split="val", patch=512, gap=128, rates=(1.0, 0.5),
               progress=False)
    calls = []

    def predict(images):
        calls.append(len(images))
        return _colour_detector(images)

    result = evaluate_detector_on_dota(predict, tmp_path / "out", "val", batch_size=4,
                                       progress=False)
    # 2048 x 600 at rate 1: 5 x 2 windows; at rate 0.5 (1024 x 300): 3 x 1 windows.
    assert result["num_patches"] == 13 and sum(calls) == 13 and max(calls) == 4
    assert result["num_images"] == 1
    assert result["mAP"] == pytest.approx(1.0)
    assert result["AP_per_class"] == pytest.approx({"plane": 1.0, "ship": 1.0})
    assert result["coco_AP50"] == pytest.approx(1.0)
