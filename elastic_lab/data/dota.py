"""DOTA labelTxt reading and writing, class lists, and folder loading.

A DOTA label file (one per image, ``labelTxt/<stem>.txt``) holds two optional header lines,
then one object per line::

    imagesource:GoogleEarth
    gsd:0.146343590398
    x1 y1 x2 y2 x3 y3 x4 y4 category difficult

The four corners are image pixels (integers in v1.0, floats in v1.5/v2.0), in the order the
annotator clicked them. ``difficult`` is 0 or 1.

Missing-difficult rule: a line with exactly 9 fields (no difficult flag) gets ``difficult = 0``,
the same rule as the official DOTA_devkit parser (``parse_dota_poly``). Any other field count
is an error. Blank lines are skipped; ``gsd:null`` (present in real files) reads as ``None``.

Every malformed line raises a ``ValueError`` naming the file, the 1-based line number and the
field at fault; an unknown class raises too (pick the class list with ``version``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)
DOTA_V15_CLASSES: tuple[str, ...] = DOTA_V1_CLASSES + ("container-crane",)
DOTA_V2_CLASSES: tuple[str, ...] = DOTA_V15_CLASSES + ("airport", "helipad")

_CLASSES_BY_VERSION = {"1.0": DOTA_V1_CLASSES, "1.5": DOTA_V15_CLASSES, "2.0": DOTA_V2_CLASSES}
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def dota_classes(version: str = "1.0") -> tuple[str, ...]:
    """Class names of a DOTA version ("1.0": 15, "1.5": 16, "2.0": 18), in official order."""
    key = {"1": "1.0", "2": "2.0", "1.0": "1.0", "1.5": "1.5", "2.0": "2.0"}.get(str(version))
    if key is None:
        raise ValueError(f"unknown DOTA version {version!r}; expected one of 1.0, 1.5, 2.0")
    return _CLASSES_BY_VERSION[key]


def poly_to_hbox(poly: Sequence[float]) -> tuple[float, float, float, float]:
    """Horizontal box (xmin, ymin, xmax, ymax) enclosing a flat polygon [x1, y1, ..., xk, yk]."""
    xs, ys = poly[0::2], poly[1::2]
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


@dataclass(frozen=True)
class DotaObject:
    """One annotated object: a quadrilateral ``poly`` (x1, y1, ..., x4, y4) in image pixels."""

    poly: tuple[float, ...]
    category: str
    difficult: int = 0

    def __post_init__(self) -> None:
        if len(self.poly) != 8:
            raise ValueError(f"DotaObject.poly needs 8 numbers, got {len(self.poly)}")
        if self.difficult not in (0, 1):
            raise ValueError(f"DotaObject.difficult must be 0 or 1, got {self.difficult!r}")

    @property
    def hbox(self) -> tuple[float, float, float, float]:
        """Horizontal box (xmin, ymin, xmax, ymax) of the polygon."""
        return poly_to_hbox(self.poly)


@dataclass
class DotaLabel:
    """Contents of one labelTxt file: optional header values and the objects."""

    objects: list[DotaObject] = field(default_factory=list)
    image_source: str | None = None
    gsd: float | None = None


def _format_number(value: float) -> str:
    """Shortest text that reads back to the same float; integers without a trailing '.0'."""
    text = repr(float(value))
    return text.removesuffix(".0")


def parse_label_txt(
    text: str, source: str = "<string>", version: str = "1.0",
    classes: Sequence[str] | None = None,
) -> DotaLabel:
    """Parse labelTxt content; ``source`` names the file in error messages.

    ``classes`` overrides the class list of ``version`` (e.g. for a custom subset).
    """
    known = set(classes if classes is not None else dota_classes(version))
    label = DotaLabel()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        where = f"{source}, line {lineno}"
        lower = line.lower()
        if lower.startswith("imagesource:"):
            label.image_source = line.split(":", 1)[1].strip() or None
            continue
        if lower.startswith("gsd:"):
            value = line.split(":", 1)[1].strip()
            if value.lower() in ("", "null", "none"):
                label.gsd = None
            else:
                try:
                    label.gsd = float(value)
                except ValueError:
                    raise ValueError(f"{where}: field 'gsd' is not a number: {value!r}") from None
            continue
        parts = line.split()
        if len(parts) not in (9, 10):
            raise ValueError(
                f"{where}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]' (9 or 10 fields),"
                f" got {len(parts)} fields: {line!r}"
            )
        coords = []
        for i, token in enumerate(parts[:8]):
            name = f"{'xy'[i % 2]}{i // 2 + 1}"
            try:
                value = float(token)
            except ValueError:
                raise ValueError(f"{where}: coordinate {name} is not a number: {token!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: coordinate {name} is not finite: {token!r}")
            coords.append(value)
        category = parts[8]
        if category not in known:
            raise ValueError(
                f"{where}: unknown class {category!r} for DOTA v{version}"
                f" (known: {', '.join(sorted(known))})"
            )
        difficult = 0
        if len(parts) == 10:
            if parts[9] not in ("0", "1"):
                raise ValueError(f"{where}: field 'difficult' must be 0 or 1, got {parts[9]!r}")
            difficult = int(parts[9])
        label.objects.append(DotaObject(tuple(coords), category, difficult))
    return label


def read_label_txt(
    path: str | Path, version: str = "1.0", classes: Sequence[str] | None = None
) -> DotaLabel:
    """Read one DOTA labelTxt file (see the module docstring for the format and rules)."""
    path = Path(path)
    return parse_label_txt(path.read_text(encoding="utf-8"), str(path), version, classes)


def format_label_txt(label: DotaLabel) -> str:
    """labelTxt text of ``label``: header lines (when set), then one line per object."""
    lines = []
    if label.image_source is not None:
        lines.append(f"imagesource:{label.image_source}")
    if label.gsd is not None:
        lines.append(f"gsd:{_format_number(label.gsd)}")
    for obj in label.objects:
        coords = " ".join(_format_number(v) for v in obj.poly)
        lines.append(f"{coords} {obj.category} {int(obj.difficult)}")
    return "\n".join(lines) + "\n"


def write_label_txt(path: str | Path, label: DotaLabel) -> None:
    """Write ``label`` as a DOTA labelTxt file (round-trips exactly through read_label_txt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_label_txt(label), encoding="utf-8")


@dataclass(frozen=True)
class DotaImage:
    """One image of a DOTA folder and its label file (``label_path`` None if labels are absent)."""

    stem: str
    image_path: Path
    label_path: Path | None

    def read_label(self, version: str = "1.0") -> DotaLabel:
        """Parsed labels of this image (empty when the folder has no labels for it)."""
        if self.label_path is None:
            return DotaLabel()
        return read_label_txt(self.label_path, version)


def list_dota_images(root: str | Path, require_labels: bool = True) -> list[DotaImage]:
    """Pair ``root/images/<stem>.<ext>`` with ``root/labelTxt/<stem>.txt``, sorted by stem.

    Raises FileNotFoundError naming the missing folder, a missing label file (when
    ``require_labels``) or a label file whose image is missing.
    """
    root = Path(root)
    image_dir, label_dir = root / "images", root / "labelTxt"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"DOTA folder {root}: missing images/ directory {image_dir}")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in images:
                raise ValueError(f"{image_dir}: two images share the stem {path.stem!r}")
            images[path.stem] = path
    labels: dict[str, Path] = {}
    if label_dir.is_dir():
        labels = {p.stem: p for p in sorted(label_dir.glob("*.txt"))}
    elif require_labels:
        raise FileNotFoundError(f"DOTA folder {root}: missing labelTxt/ directory {label_dir}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise FileNotFoundError(
            f"{labels[orphans[0]]}: label file has no image {image_dir / orphans[0]}.* "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)}; {len(orphans)} label file(s) lack one)"
        )
    out = []
    for stem, image_path in images.items():
        label_path = labels.get(stem)
        if label_path is None and require_labels:
            raise FileNotFoundError(f"{image_path}: no label file {label_dir / (stem + '.txt')}")
        out.append(DotaImage(stem, image_path, label_path))
    return out


def load_dota_folder(
    root: str | Path, version: str = "1.0", require_labels: bool = True
) -> list[tuple[DotaImage, DotaLabel]]:
    """List a DOTA folder and parse every label file: [(image entry, labels)], sorted by stem."""
    return [(item, item.read_label(version)) for item in list_dota_images(root, require_labels)]
