"""COCO AP of any multiset of a data set's images from one matching pass.

pycocotools' ``COCOeval.evaluate()`` matches detections to ground truth image by image; its
``accumulate()`` then pools those per-image results over ``params.imgIds``. Because matching
never looks across images, the AP of a subset of the images, or of a bootstrap resample (with
repeats), only needs a re-pooling of the stored per-image results. :class:`SubsetAP` runs
``evaluate()`` once and answers:

- :meth:`SubsetAP.metrics` for any list of image positions (repeats allowed),
- :meth:`SubsetAP.per_image` (one image at a time: the per-image AP the oracle of a scale
  sweep maximises),
- :meth:`SubsetAP.bootstrap` for a list of resamples (bootstrap intervals over test images).

The pooling itself is pycocotools' own ``accumulate`` and ``summarize``; this module only lays
out ``evalImgs`` for the chosen images.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

__all__ = ["COCO_KEYS", "SubsetAP", "bootstrap_indices", "detections_json"]

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_json(dataset, results: Sequence[dict]) -> list[dict]:
    """Detections of ``results`` ({"image_id", "boxes" xyxy px, "scores", "labels"}) as COCO
    result dicts (category ids through the data set's label mapping)."""
    dets = []
    for r in results:
        xywh = box_convert(r["boxes"], "xyxy", "xywh")
        for box, score, label in zip(xywh.tolist(), r["scores"].tolist(), r["labels"].tolist()):
            dets.append({"image_id": int(r["image_id"]),
                         "category_id": dataset.label_to_cat_id[int(label)],
                         "bbox": box, "score": float(score)})
    return dets


def bootstrap_indices(num_images: int, replicas: int, seed: int = 0) -> np.ndarray:
    """[replicas, num_images] positions drawn with replacement (numpy, deterministic in seed).

    Every caller that uses the same (num_images, replicas, seed) gets the same resamples, so
    results evaluated separately can be paired replica by replica."""
    return np.random.default_rng([seed, num_images]).integers(0, num_images,
                                                               (replicas, num_images))


class SubsetAP:
    """AP of image multisets of one evaluation (see the module docstring).

    Args:
        dataset: a CocoDetection (its ``coco`` ground truth and label mapping).
        results: detections per image, in the data set's item order or any order; the images
            evaluated are those of ``results``.
    Attributes:
        image_ids: the evaluated image ids, in the order positions refer to.
    """

    def __init__(self, dataset, results: Sequence[dict]):
        self.image_ids = [int(r["image_id"]) for r in results]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("results hold an image twice")
        dets = detections_json(dataset, results)
        self._ev = None
        if dets:
            with contextlib.redirect_stdout(io.StringIO()):
                ev = COCOeval(dataset.coco, dataset.coco.loadRes(dets), "bbox")
                ev.params.imgIds = list(self.image_ids)
                ev.evaluate()
            self._ev = ev
            # evaluate() sorts and dedups imgIds; map our positions onto its layout
            self._layout = {i: n for n, i in enumerate(ev.params.imgIds)}
        gt_count = {i: 0 for i in self.image_ids}
        for ann in dataset.coco.dataset.get("annotations", []):
            if ann["image_id"] in gt_count and not ann.get("iscrowd", 0):
                gt_count[ann["image_id"]] += 1
        self.has_objects = np.array([gt_count[i] > 0 for i in self.image_ids])

    def _pooled(self, positions: Sequence[int], all_only: bool) -> COCOeval:
        """A shallow copy of the evaluation whose evalImgs hold the images at ``positions``,
        accumulated (``all_only``: only area "all" and 100 detections, all that AP needs)."""
        ev = self._ev
        src = ev.params.imgIds
        n_img, n_area = len(src), len(ev.params.areaRng)
        cols = [self._layout[self.image_ids[int(p)]] for p in positions]
        areas = [0] if all_only else list(range(n_area))
        sub = copy.copy(ev)
        sub.params = copy.copy(ev.params)
        sub.params.imgIds = [src[c] for c in cols]
        if all_only:
            sub.params.areaRng, sub.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
            sub.params.maxDets = [ev.params.maxDets[-1]]
        sub._paramsEval = copy.copy(sub.params)
        sub.evalImgs = [ev.evalImgs[k * n_area * n_img + a * n_img + c]
                        for k in range(len(ev.params.catIds)) for a in areas for c in cols]
        with contextlib.redirect_stdout(io.StringIO()):
            sub.accumulate()
        return sub

    def metrics(self, positions: Sequence[int]) -> dict[str, float]:
        """COCO AP, AP50, AP75, APs, APm, APl of the images at ``positions`` (repeats count)."""
        if self._ev is None:
            return {k: 0.0 for k in COCO_KEYS}
        sub = self._pooled(positions, all_only=False)
        with contextlib.redirect_stdout(io.StringIO()):
            sub.summarize()
        return {k: float(max(v, 0.0)) for k, v in zip(COCO_KEYS, sub.stats[:6])}

    def ap(self, positions: Sequence[int]) -> float:
        """COCO AP (IoU 0.50:0.95, all areas, 100 detections) of the images at ``positions``:
        the first number of :meth:`metrics`, pooled over the "all" area range only (faster)."""
        if self._ev is None:
            return 0.0
        precision = self._pooled(positions, all_only=True).eval["precision"]  # [T, R, K, 1, 1]
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else 0.0

    def per_image(self) -> np.ndarray:
        """[N] AP of every image on its own (NaN for images without ground truth)."""
        return np.array([self.ap([n]) if self.has_objects[n] else np.nan
                         for n in range(len(self.image_ids))])

    def bootstrap(self, index_sets: np.ndarray) -> np.ndarray:
        """[R] AP of each resample (rows of positions, e.g. :func:`bootstrap_indices`)."""
        return np.array([self.ap(row) for row in np.asarray(index_sets)])
