"""DOTA horizontal-box evaluation: VOC07 11-point mAP@0.5 (DOTA's metric) with COCO AP beside it.

DOTA metric (``voc07_map``), as in the DOTA devkit's task-2 (horizontal box) evaluation:
per class, detections of all images are sorted by score; each one is matched to the ground
truth box (same image, same class, difficult ones included) of highest IoU. IoU > 0.5 with a
difficult box: the detection is ignored (neither TP nor FP); with a free non-difficult box: TP;
with an already matched one: FP (duplicate); otherwise FP. Recall is over non-difficult boxes.
AP is the 11-point VOC07 interpolation; mAP averages the classes that have at least one
non-difficult box (the others are absent from ``AP_per_class``). Boxes are continuous pixel
coordinates (torchvision ``box_iou``); ``plus_one=True`` uses the devkit's legacy "+1" pixel
widths instead (it lowers the IoU of tiny boxes slightly less).

COCO AP (``coco_ap``, pycocotools): difficult boxes become ``iscrowd=1``, so COCOeval ignores
detections that fall on them (crowd rule: intersection over the detection's area) and they
never count as misses. ``maxDets`` is raised to 1000, as DOTA images hold hundreds of objects.

``evaluate_detector_on_dota`` runs a caller-supplied ``predict_fn`` over the patches of a
``dota-split`` output, merges patch detections back per source image and evaluates them
against the source's full-image labels.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou
from tqdm import tqdm

from elastic_lab.data.dota import DotaObject, read_label_txt
from elastic_lab.data.dota_split import load_patch_map, merge_patch_detections

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes [N,4] xyxy, scores, labels
PredictFn = Callable[[list[Image.Image]], Sequence[tuple]]


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t."""
    ap = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t]
        ap += (float(above.max()) if above.size else 0.0) / 11.0
    return ap


def _as_dets(dets: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels) as numpy arrays [N, 4], [N], [N] from tensors, arrays or lists."""
    boxes, scores, labels = (torch.as_tensor(v).detach().cpu() for v in dets)
    return (boxes.to(torch.float64).reshape(-1, 4).numpy(),
            scores.to(torch.float64).reshape(-1).numpy(),
            labels.to(torch.int64).reshape(-1).numpy())


def _gt_arrays(
    objects: Sequence[DotaObject], class_index: Mapping[str, int], image: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT of one image as (boxes [G, 4] xyxy, labels [G], difficult [G] bool)."""
    unknown = [o.category for o in objects if o.category not in class_index]
    if unknown:
        raise ValueError(
            f"ground truth of image {image!r}: class {unknown[0]!r} not in class_names")
    boxes = np.array([o.hbox for o in objects], dtype=np.float64).reshape(-1, 4)
    labels = np.array([class_index[o.category] for o in objects], dtype=np.int64)
    difficult = np.array([bool(o.difficult) for o in objects], dtype=bool)
    return boxes, labels, difficult


def voc07_map(
    gt: Mapping[str, Sequence[DotaObject]], dets: Mapping[str, tuple],
    class_names: Sequence[str], iou_threshold: float = 0.5, plus_one: bool = False,
) -> tuple[float, dict[str, float], dict[str, int]]:
    """DOTA's horizontal-box metric (see module docstring).

    gt: {image: [DotaObject]}; dets: {image: (boxes [N, 4] xyxy pixels, scores [N], labels [N]
    indices into class_names)}. Images missing from ``dets`` have no detections; images missing
    from ``gt`` have no objects. Returns (mAP, {class: AP}, {class: number of non-difficult GT}).
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    gts = {img: _gt_arrays(objs, class_index, img) for img, objs in gt.items()}
    dts = {img: _as_dets(d) for img, d in dets.items()}
    for img, (_, _, labels) in dts.items():
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"detections of image {img!r}: labels span {lo}..{hi}, outside "
                             f"0..{len(class_names) - 1} (indices into class_names)")
    pad = 1.0 if plus_one else 0.0
    ap_per_class, npos_per_class = {}, {}
    for c, name in enumerate(class_names):
        npos = sum(int((g[1] == c).sum() - (g[2] & (g[1] == c)).sum()) for g in gts.values())
        if npos == 0:
            continue
        # Per image: IoU [n_det_c, n_gt_c]; then all detections of class c in score order.
        records = []  # (score, image, row in that image's IoU matrix)
        ious, difficult, matched = {}, {}, {}
        for img, (boxes, scores, labels) in dts.items():
            sel = labels == c
            if not sel.any():
                continue
            g_boxes, g_labels, g_diff = gts.get(img, (np.zeros((0, 4)), np.zeros(0, int), None))
            gsel = g_labels == c
            a = torch.from_numpy(boxes[sel]) + torch.tensor([0, 0, pad, pad])
            b = torch.from_numpy(g_boxes[gsel]) + torch.tensor([0, 0, pad, pad])
            ious[img] = torch.nan_to_num(box_iou(a, b)).numpy()
            difficult[img] = g_diff[gsel] if g_diff is not None else np.zeros(0, bool)
            matched[img] = np.zeros(int(gsel.sum()), dtype=bool)
            records += [(float(s), img, row) for row, s in enumerate(scores[sel])]
        records.sort(key=lambda r: -r[0])  # stable: ties keep image/detection order
        tp = np.zeros(len(records))
        fp = np.zeros(len(records))
        for k, (_, img, row) in enumerate(records):
            iou_row = ious[img][row]
            j = int(iou_row.argmax()) if iou_row.size else -1
            if j >= 0 and iou_row[j] > iou_threshold:
                if difficult[img][j]:
                    continue  # on a difficult object: neither TP nor FP
                if not matched[img][j]:
                    tp[k], matched[img][j] = 1, True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap_per_class[name] = voc07_ap(recall, precision)
        npos_per_class[name] = npos
    m_ap = float(np.mean(list(ap_per_class.values()))) if ap_per_class else float("nan")
    return m_ap, ap_per_class, npos_per_class


def coco_ap(
    gt: Mapping[str, Sequence[DotaObject]], dets: Mapping[str, tuple],
    class_names: Sequence[str], max_dets: int = 1000,
) -> tuple[float, float]:
    """COCO box AP and AP50 with pycocotools; difficult ground truth as iscrowd=1.

    Returns (AP@[.5:.95], AP50); 0.0 when there are no detections, nan when there is no
    non-difficult ground truth.
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    image_ids = {img: k + 1 for k, img in enumerate(sorted(set(gt) | set(dets)))}
    annotations = []
    for img, objects in gt.items():
        boxes, labels, diff = _gt_arrays(objects, class_index, img)
        for (x0, y0, x1, y1), lab, d in zip(boxes.tolist(), labels.tolist(), diff.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[img],
                                "category_id": lab + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": int(d)})
    if not any(a["iscrowd"] == 0 for a in annotations):
        return float("nan"), float("nan")
    results = []
    for img, d in dets.items():
        boxes, scores, labels = _as_dets(d)
        for (x0, y0, x1, y1), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": image_ids[img], "category_id": lab + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    if not results:
        return 0.0, 0.0
    dataset = {"info": {}, "licenses": [], "annotations": annotations,
               "images": [{"id": i, "file_name": img} for img, i in image_ids.items()],
               "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", max_dets
    at50 = precision[int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))]

    def mean_valid(p: np.ndarray) -> float:
        return float(p[p > -1].mean()) if (p > -1).any() else float("nan")

    return mean_valid(precision), mean_valid(at50)


def evaluate_dota(
    gt: Mapping[str, Sequence[DotaObject]], dets: Mapping[str, tuple],
    class_names: Sequence[str], iou_threshold: float = 0.5, plus_one: bool = False,
) -> dict:
    """DOTA VOC07 mAP@0.5 plus COCO AP/AP50 for full-image horizontal-box detections.

    Returns {"mAP", "AP_per_class", "num_gt_per_class", "coco_AP", "coco_AP50"}.
    """
    m_ap, per_class, num_gt = voc07_map(gt, dets, class_names, iou_threshold, plus_one)
    ap, ap50 = coco_ap(gt, dets, class_names)
    return {"mAP": m_ap, "AP_per_class": per_class, "num_gt_per_class": num_gt,
            "coco_AP": ap, "coco_AP50": ap50}


def split_class_names(split_dir: str | Path, split: str) -> list[str]:
    """Category names of a dota-split set in label order (label i <-> categories[i])."""
    path = Path(split_dir) / "annotations" / f"instances_{split}.json"
    return [c["name"] for c in json.loads(path.read_text())["categories"]]


def predict_dota_full_images(
    predict_fn: PredictFn, split_dir: str | Path, split: str = "val", batch_size: int = 8,
    nms_iou: float = 0.5, progress: bool = True,
) -> dict[str, Detections]:
    """Run ``predict_fn`` over every patch of a dota-split set and merge per source image.

    predict_fn(list of PIL RGB images) -> [(boxes [N, 4] xyxy in that image's pixels,
    scores [N], labels [N] as indices into the split's categories)], one per image.
    Returns {source stem: (boxes [M, 4] source pixels, scores [M], labels [M])}.
    """
    section = load_patch_map(split_dir, split)
    image_dir = Path(split_dir) / "images" / split
    names = list(section["patches"])
    patch_dets = {}
    batches = range(0, len(names), batch_size)
    for start in tqdm(batches, desc=f"DOTA patches ({split})", disable=not progress):
        chunk = names[start:start + batch_size]
        images = []
        for name in chunk:
            with Image.open(image_dir / name) as img:
                images.append(img.convert("RGB"))
        outputs = predict_fn(images)
        if len(outputs) != len(chunk):
            raise ValueError(f"predict_fn returned {len(outputs)} results for {len(chunk)} images")
        patch_dets.update(zip(chunk, outputs))
    return merge_patch_detections(patch_dets, section["patches"], nms_iou)


def evaluate_detector_on_dota(
    predict_fn: PredictFn, split_dir: str | Path, split: str = "val",
    src_dir: str | Path | None = None, batch_size: int = 8, nms_iou: float = 0.5,
    progress: bool = True,
) -> dict:
    """Full-image DOTA evaluation of a detector run patch by patch (see predict_dota_full_images).

    Ground truth is read from ``src_dir/labelTxt`` (default: the source folder recorded in
    ``patch_map.json``). Returns ``evaluate_dota``'s dict plus "num_images", "num_patches".
    """
    section = load_patch_map(split_dir, split)
    src_dir = Path(src_dir) if src_dir is not None else Path(section["src_dir"])
    class_names = split_class_names(split_dir, split)
    gt = {stem: read_label_txt(src_dir / "labelTxt" / f"{stem}.txt", section["version"]).objects
          for stem in section["sources"]}
    dets = predict_dota_full_images(predict_fn, split_dir, split, batch_size, nms_iou, progress)
    result = evaluate_dota(gt, dets, class_names)
    result.update(num_images=len(gt), num_patches=len(section["patches"]))
    return result
