"""COCO-format detection data (real COCO or any set in its format) through pycocotools.

A dataset item is ``(image, target)``:

- ``image``: float32 tensor [3, H, W] in [0, 1] at the original resolution (EXIF orientation
  applied, converted to RGB);
- ``target``: ``boxes`` float32 [N, 4] normalised (cx, cy, w, h) relative to the image,
  ``labels`` int64 [N] contiguous 0-based labels, ``image_id`` int, ``orig_size`` int64 [2] = (h, w).

Labels follow ``categories`` (a list of COCO dicts {"id", "name"} in label order): label ``i``
is category ``categories[i]["id"]``. Without an explicit list the categories of the annotation
file are used, sorted by id, so non-contiguous ids (COCO's 1..90 with gaps) map to 0..C-1.

Annotation problems are handled once, when the dataset is built:

- ``iscrowd`` annotations are not training targets (COCOeval handles them from the file);
- boxes partly outside the image are clipped; boxes that end up with a side <= 1 px, lie
  entirely outside, or have a negative size are dropped with a :class:`DataWarning` naming the
  annotation file and the annotation id (one warning per annotation, not per epoch);
- an unknown category id, a missing field or malformed JSON raise ``ValueError`` naming the
  file and the annotation id (or JSON line / column).

Missing or unreadable images raise when the item is loaded; :meth:`CocoDetection.check_files`
checks all of them up front.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

MIN_BOX_SIDE = 1.0  # px; boxes with a side <= this after clipping are dropped
MAX_WARNINGS = 20   # individual warnings per file; the rest are summed up in one warning


class DataWarning(UserWarning):
    """A problem in a data set that was repaired or skipped (e.g. a degenerate box)."""


def read_annotation_json(ann_file: str | Path) -> dict:
    """Read a COCO annotation file; ValueError naming the file (and line/column) when malformed."""
    ann_file = Path(ann_file)
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{ann_file}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{ann_file}: not a UTF-8 JSON file ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - bad file content, not a bad argument
            f"{ann_file}: expected a JSON object at top level, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{ann_file}: field '{key}' must be a list")  # noqa: TRY004
    data.setdefault("annotations", [])
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{ann_file}: missing field '{key}'")
    _check_fields(ann_file, data)
    return data


def _check_fields(ann_file: Path, data: dict) -> None:
    """ValueError naming the file, the record and the field for records that lack required fields."""
    required = {"categories": ("id", "name"), "images": ("id", "file_name", "width", "height"),
                "annotations": ("id", "image_id", "category_id", "bbox")}
    for key, fields in required.items():
        for position, record in enumerate(data[key]):
            if not isinstance(record, dict):
                raise ValueError(f"{ann_file}: {key}[{position}] is not an object")  # noqa: TRY004
            for field in fields:
                if field not in record:
                    ident = f"id {record['id']}" if "id" in record else f"at position {position}"
                    raise ValueError(f"{ann_file}: {key[:-1]} {ident} lacks field '{field}'")
    image_ids = {img["id"] for img in data["images"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{ann_file}: annotation id {ann['id']}: field 'image_id' "
                             f"{ann['image_id']} is not an image of the file")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise ValueError(f"{ann_file}: annotation id {ann['id']}: field 'bbox' must be "
                             f"[x, y, w, h] numbers, got {bbox!r}")


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools ``COCO`` object for ``ann_file`` (validated, without pycocotools' prints)."""
    coco = COCO()
    coco.dataset = read_annotation_json(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_categories(ann_file: str | Path) -> list[dict]:
    """Categories of ``ann_file`` as [{"id", "name"}], sorted by id (the default label order)."""
    data = read_annotation_json(ann_file)
    return [{"id": int(c["id"]), "name": str(c["name"])}
            for c in sorted(data["categories"], key=lambda c: c["id"])]


def load_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied; errors name the path.

    With ``expected_size`` = (width, height) from the annotation file: when the EXIF-rotated
    image does not have that size but the stored pixels do (annotations made on the stored
    pixels, as in some COCO images), the stored pixels are returned with a DataWarning; when
    neither matches, ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as stored:
            stored.load()
            upright = ImageOps.exif_transpose(stored)
            if expected_size is None or upright.size == tuple(expected_size):
                return upright.convert("RGB")
            if stored.size == tuple(expected_size):
                warnings.warn(f"{path}: annotations match the stored pixels, not the EXIF "
                              f"orientation; EXIF orientation ignored", DataWarning, stacklevel=2)
                return stored.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    raise ValueError(f"image {path} is {upright.size[0]} x {upright.size[1]} px but its "
                     f"annotations record {expected_size[0]} x {expected_size[1]}")


class CocoDetection(Dataset):
    """COCO-format detection data set with explicit category -> label mapping.

    Args:
        image_dir: folder that holds the images (``file_name`` is relative to it).
        ann_file: COCO annotation json.
        categories: label order as [{"id", "name"}] (e.g. from a checkpoint); default: the
            file's categories sorted by id.

    Attributes:
        categories: [{"id", "name"}] in label order.
        cat_id_to_label: {COCO category id: label}.
        label_to_cat_id: [COCO category id of label i].
        coco: the pycocotools ``COCO`` object (for COCOeval).
        ids: image ids in item order (sorted).
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path,
                 categories: list[dict] | None = None) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.coco = load_coco(self.ann_file)
        file_categories = {int(c["id"]): c for c in self.coco.dataset["categories"]}
        if categories is None:
            categories = [{"id": i, "name": file_categories[i]["name"]} for i in sorted(file_categories)]
        else:
            for cat in categories:
                if int(cat["id"]) not in file_categories:
                    raise ValueError(
                        f"{self.ann_file}: category id {cat['id']} ({cat.get('name', '?')!r}) of the "
                        f"given categories is not in the file (file ids: {sorted(file_categories)})")
            categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
        self.categories = categories
        self.label_to_cat_id = [c["id"] for c in categories]
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)}
        if len(self.cat_id_to_label) != len(categories):
            raise ValueError(f"duplicate category ids in {self.label_to_cat_id}")
        self.ids = sorted(self.coco.imgs)
        self._targets = self._build_targets()

    def _build_targets(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Clipped xyxy pixel boxes [N, 4] and labels [N] per image id; warns once per dropped box."""
        problems: list[str] = []
        targets = {}
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            width, height = float(info["width"]), float(info["height"])
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["category_id"] not in self.cat_id_to_label:
                    raise ValueError(
                        f"{self.ann_file}: annotation id {ann['id']} has unknown category id "
                        f"{ann['category_id']} (known: {self.label_to_cat_id})")
                if ann.get("iscrowd", 0):
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                if w < 0 or h < 0:
                    problems.append(f"annotation id {ann['id']}: negative box size {ann['bbox']}")
                    continue
                x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
                x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
                if x1 <= x0 or y1 <= y0:
                    problems.append(f"annotation id {ann['id']}: box {ann['bbox']} lies outside "
                                    f"the image ({width:g} x {height:g})")
                    continue
                if x1 - x0 <= MIN_BOX_SIDE or y1 - y0 <= MIN_BOX_SIDE:
                    problems.append(f"annotation id {ann['id']}: degenerate box {ann['bbox']} "
                                    f"(side <= {MIN_BOX_SIDE:g} px after clipping)")
                    continue
                boxes.append((x0, y0, x1, y1))
                labels.append(self.cat_id_to_label[ann["category_id"]])
            targets[image_id] = (np.asarray(boxes, np.float32).reshape(-1, 4),
                                 np.asarray(labels, np.int64))
        for problem in problems[:MAX_WARNINGS]:
            warnings.warn(f"{self.ann_file}: {problem}; dropped", DataWarning, stacklevel=3)
        if len(problems) > MAX_WARNINGS:
            warnings.warn(f"{self.ann_file}: {len(problems) - MAX_WARNINGS} more boxes dropped",
                          DataWarning, stacklevel=3)
        return targets

    @property
    def num_classes(self) -> int:
        """Number of labels (len(categories))."""
        return len(self.categories)

    def image_path(self, index: int) -> Path:
        """Path of the image of item ``index``."""
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def check_files(self) -> None:
        """FileNotFoundError listing (up to 10 of) the images that do not exist."""
        missing = [str(self.image_path(i)) for i in range(len(self)) if not self.image_path(i).is_file()]
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise FileNotFoundError(f"{len(missing)} image(s) of {self.ann_file} not found: "
                                    f"{', '.join(missing[:10])}{more}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        """Item ``index``: image [3, H, W] float32 in [0, 1] and target (see module docstring)."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        width, height = int(info["width"]), int(info["height"])
        image = load_image(path, (width, height))
        boxes_xyxy, labels = self._targets[image_id]
        boxes = box_convert(torch.from_numpy(boxes_xyxy), "xyxy", "cxcywh")
        boxes = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
        target = {
            "boxes": boxes,                                   # [N, 4] normalised cxcywh
            "labels": torch.from_numpy(labels),               # [N] int64
            "image_id": int(image_id),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        tensor = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)  # [3, H, W]
        return tensor, target


def collate_fn(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Batch of items -> (list of images [3, H_i, W_i], list of targets); no padding here."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def boxes_to_coco(boxes: Tensor, orig_size: Tensor | tuple[int, int]) -> Tensor:
    """Normalised cxcywh boxes [N, 4] -> COCO [x, y, w, h] pixels [N, 4] for an image of (h, w)."""
    height, width = (int(v) for v in orig_size)
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return box_convert(boxes * scale, "cxcywh", "xywh")
