"""Synthetic aerial scenes written as a DOTA folder (images/*.png, labelTxt/*.txt).

``elastic-lab synth-aerial --out DIR --images N --seed S``

Each scene (1024-2048 px per side) has textured ground noise, crop fields with row stripes,
a water body along one side, a few roads with dashed centre lines, parking lots, an apron,
and many small rotated objects of five DOTA classes, each with a class-specific detail:

- small-vehicle: 14-22 px car, dark windscreen and rear window; on roads and in parking rows;
- large-vehicle: 30-55 px truck, a cab separated from the trailer by a gap;
- plane: fuselage, swept wings and tail (label: the rotated box of length x span);
- ship: pointed hull with a white superstructure, on the water;
- storage-tank: disc with a ring and a shadow (label: the axis-aligned square), in clusters;

plus a few large ones (planes, ships, tanks of 80-350 px). About 10 % of the objects are marked
difficult=1 and drawn faded toward the ground colour. Every object lies fully inside its image.
Deterministic per (seed, image index); numpy + PIL only.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from elastic_lab.data.dota import DotaLabel, DotaObject, write_label_txt

log = logging.getLogger(__name__)

SYNTH_CLASSES: tuple[str, ...] = (
    "small-vehicle", "large-vehicle", "plane", "ship", "storage-tank",
)
DIFFICULT_FRACTION = 0.1


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    """Smooth multi-octave noise [h, w], roughly zero mean and unit scale."""
    out = np.zeros((h, w), dtype=np.float32)
    for k, cell in enumerate(cells):
        small = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
        up = Image.fromarray(small, mode="F").resize((w + 2 * cell, h + 2 * cell),
                                                     Image.Resampling.BICUBIC)
        out += np.asarray(up)[cell:cell + h, cell:cell + w] / (k + 1)
    return out / len(cells)


def _rot(points: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate local points [K, 2] by ``angle`` (radians) and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def _rect(length: float, width: float, dx: float = 0.0) -> np.ndarray:
    """Local rectangle corners [4, 2] along x (length) centred at (dx, 0)."""
    hl, hw = length / 2, width / 2
    return np.array([[dx - hl, -hw], [dx + hl, -hw], [dx + hl, hw], [dx - hl, hw]])


def _shade(color, ground, fade: float) -> tuple[int, int, int]:
    """Colour blended toward the ground colour by ``fade`` (0 = unchanged)."""
    return tuple(round((1 - fade) * a + fade * b) for a, b in zip(color, ground))


class _Scene:
    """Drawing state of one scene: the image, occupied boxes and the labels written so far."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng, self.w, self.h = rng, width, height
        self.boxes = np.zeros((0, 4))
        self.objects: list[DotaObject] = []
        sun = rng.uniform(0, 2 * math.pi)
        self.shadow = np.array([math.cos(sun), math.sin(sun)])
        base = np.array([rng.uniform(95, 130), rng.uniform(100, 130), rng.uniform(70, 95)])
        tex = _value_noise(rng, height, width, (4, 24, 96, 384))
        fine = rng.standard_normal((height, width)).astype(np.float32)
        arr = base[None, None, :] * (1 + 0.22 * tex[..., None]) + 6 * fine[..., None]
        self.image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        self.draw = ImageDraw.Draw(self.image)

    def ground(self, x: float, y: float) -> tuple[int, int, int]:
        return self.image.getpixel((int(np.clip(x, 0, self.w - 1)), int(np.clip(y, 0, self.h - 1))))

    def free(self, poly: np.ndarray, margin: float = 2.0) -> bool:
        """True when ``poly`` is inside the image and clear of every placed object."""
        x0, y0 = poly.min(axis=0) - margin
        x1, y1 = poly.max(axis=0) + margin
        if x0 < 0 or y0 < 0 or x1 > self.w or y1 > self.h:
            return False
        b = self.boxes
        return not np.any((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))

    def add(self, poly: np.ndarray, category: str) -> float:
        """Record a labelled object; returns the fade to draw it with (difficult ones fade)."""
        difficult = int(self.rng.random() < DIFFICULT_FRACTION)
        self.boxes = np.vstack([self.boxes, np.r_[poly.min(axis=0), poly.max(axis=0)]])
        coords = tuple(round(float(v), 1) for v in poly.ravel())
        self.objects.append(DotaObject(coords, category, difficult))
        return float(self.rng.uniform(0.45, 0.65)) if difficult else 0.0

    def polygon(self, pts: np.ndarray, color, shadow: float = 0.0) -> None:
        if shadow > 0:
            g = self.ground(*pts.mean(axis=0))
            off = self.shadow * shadow
            self.draw.polygon([tuple(p) for p in pts + off], fill=_shade(g, (0, 0, 0), 0.45))
        self.draw.polygon([tuple(p) for p in pts], fill=tuple(int(c) for c in color))

    # --- background structures -------------------------------------------------------------
    def tint(self, poly: np.ndarray, color, keep: float = 0.35, stripe_period: float = 0.0,
             angle: float = 0.0) -> None:
        """Paint a region: ``keep`` of the ground texture plus ``color``, with optional rows."""
        x0, y0 = np.clip(np.floor(poly.min(axis=0)), 0, [self.w, self.h]).astype(int)
        x1, y1 = np.clip(np.ceil(poly.max(axis=0)), 0, [self.w, self.h]).astype(int)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        mask = Image.new("L", (x1 - x0, y1 - y0))
        ImageDraw.Draw(mask).polygon([tuple(q) for q in poly - [x0, y0]], fill=255)
        crop = np.asarray(self.image.crop((x0, y0, x1, y1))).astype(np.float32)
        paint = np.asarray(color, dtype=np.float32)[None, None, :]
        if stripe_period > 0:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            rows = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) / stripe_period)
            paint = paint * (1 + 0.12 * rows[..., None])
        tinted = keep * crop + (1 - keep) * paint
        inside = (np.asarray(mask) > 0)[..., None]
        out = np.where(inside, tinted, crop).clip(0, 255).astype(np.uint8)
        self.image.paste(Image.fromarray(out), (x0, y0))

    def field(self) -> None:
        rng = self.rng
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        length, width, angle = rng.uniform(250, 800), rng.uniform(200, 600), rng.uniform(0, math.pi)
        color = (rng.uniform(70, 170), rng.uniform(100, 170), rng.uniform(40, 90))
        rows = rng.uniform(1.5, 4)
        self.tint(_rot(_rect(length, width), cx, cy, angle), color, 0.35, rows, angle)

    def water(self) -> np.ndarray:
        """A water body along one image side; returns its polygon [K, 2]."""
        rng, w, h = self.rng, self.w, self.h
        depth = rng.uniform(0.15, 0.4)
        t = np.linspace(0, 1, 24)
        wobble = depth + 0.06 * np.sin(2 * math.pi * (t * rng.uniform(1, 3) + rng.random()))
        side = rng.integers(4)
        edge = {0: np.c_[t * w, wobble * h], 1: np.c_[t * w, (1 - wobble) * h],
                2: np.c_[wobble * w, t * h], 3: np.c_[(1 - wobble) * w, t * h]}[side]
        corners = {0: [[w, 0], [0, 0]], 1: [[w, h], [0, h]], 2: [[0, h], [0, 0]],
                   3: [[w, h], [w, 0]]}[side]
        poly = np.vstack([edge, corners])
        self.tint(poly, (rng.uniform(25, 55), rng.uniform(55, 85), rng.uniform(90, 120)), 0.15)
        return poly

    def road(self) -> tuple[np.ndarray, float, float]:
        """A straight road across the scene; returns (a point on it, angle, width)."""
        rng = self.rng
        p = np.array([rng.uniform(0.15, 0.85) * self.w, rng.uniform(0.15, 0.85) * self.h])
        angle, width = rng.uniform(0, math.pi), rng.uniform(16, 26)
        d = np.array([math.cos(angle), math.sin(angle)]) * 2 * max(self.w, self.h)
        grey = int(rng.uniform(60, 90))
        self.draw.line([tuple(p - d), tuple(p + d)], fill=(grey, grey, grey + 4), width=int(width))
        for k in np.arange(-2 * max(self.w, self.h), 2 * max(self.w, self.h), 30):
            a = p + d / np.linalg.norm(d) * k
            b = a + d / np.linalg.norm(d) * 12
            self.draw.line([tuple(a), tuple(b)], fill=(200, 200, 190), width=2)
        return p, angle, width

    def pad(self, cx: float, cy: float, length: float, width: float, angle: float) -> None:
        """A concrete area (parking lot, apron) drawn below the objects placed on it."""
        g = self.rng.uniform(150, 200)
        self.tint(_rot(_rect(length, width), cx, cy, angle), (g, g, g - 5), 0.2)

    # --- objects ---------------------------------------------------------------------------
    def small_vehicle(self, cx: float, cy: float, angle: float) -> bool:
        rng = self.rng
        length, width = rng.uniform(14, 22), rng.uniform(7, 10)
        poly = _rot(_rect(length, width), cx, cy, angle)
        if not self.free(poly):
            return False
        fade = self.add(poly, "small-vehicle")
        g = self.ground(cx, cy)
        body = [(200, 30, 30), (230, 230, 230), (30, 30, 35), (40, 70, 160), (180, 180, 185),
                (150, 130, 40)][rng.integers(6)]
        self.polygon(poly, _shade(body, g, fade), shadow=2.0)
        glass = _shade((25, 30, 40), g, fade)
        self.polygon(_rot(_rect(length * 0.16, width * 0.8, length * 0.2), cx, cy, angle), glass)
        self.polygon(_rot(_rect(length * 0.1, width * 0.7, -length * 0.33), cx, cy, angle), glass)
        return True

    def large_vehicle(self, cx: float, cy: float, angle: float) -> bool:
        rng = self.rng
        length, width = rng.uniform(30, 55), rng.uniform(10, 14)
        poly = _rot(_rect(length, width), cx, cy, angle)
        if not self.free(poly):
            return False
        fade = self.add(poly, "large-vehicle")
        g = self.ground(cx, cy)
        cab = length * 0.2
        self.polygon(poly, _shade((50, 50, 50), g, 0.3 + 0.7 * fade), shadow=3.0)
        trailer = [(235, 235, 235), (190, 60, 40), (60, 110, 60), (200, 170, 60)][rng.integers(4)]
        self.polygon(_rot(_rect(length - cab - 2, width, -(cab + 2) / 2), cx, cy, angle),
                     _shade(trailer, g, fade))
        self.polygon(_rot(_rect(cab, width * 0.9, (length - cab) / 2), cx, cy, angle),
                     _shade((40, 60, 150), g, fade))
        return True

    def plane(self, cx: float, cy: float, angle: float, length: float) -> bool:
        span = length * self.rng.uniform(0.9, 1.1)
        poly = _rot(_rect(length, span), cx, cy, angle)
        if not self.free(poly, margin=4):
            return False
        fade = self.add(poly, "plane")
        color = _shade((225, 225, 230), self.ground(cx, cy), fade)
        L, S = length, span
        fuselage = np.array([[-L / 2, -L * 0.05], [L * 0.4, -L * 0.05], [L / 2, 0],
                             [L * 0.4, L * 0.05], [-L / 2, L * 0.05]])
        wings = np.array([[L * 0.12, -L * 0.05], [-L * 0.12, -S / 2], [-L * 0.2, -S / 2],
                          [-L * 0.1, 0], [-L * 0.2, S / 2], [-L * 0.12, S / 2],
                          [L * 0.12, L * 0.05]])
        tail = np.array([[-L * 0.36, 0], [-L * 0.48, -S * 0.18], [-L / 2, -S * 0.18],
                         [-L * 0.46, 0], [-L / 2, S * 0.18], [-L * 0.48, S * 0.18]])
        for part in (wings, tail, fuselage):
            self.polygon(_rot(part, cx, cy, angle), color, shadow=length * 0.08)
        self.polygon(_rot(_rect(L * 0.05, L * 0.06, L * 0.4), cx, cy, angle),
                     _shade((40, 50, 70), self.ground(cx, cy), fade))
        return True

    def ship(self, cx: float, cy: float, angle: float, length: float) -> bool:
        width = length * self.rng.uniform(0.18, 0.28)
        poly = _rot(_rect(length, width), cx, cy, angle)
        if not self.free(poly):
            return False
        fade = self.add(poly, "ship")
        g = self.ground(cx, cy)
        L, W = length, width
        hull = np.array([[-L / 2, -W / 2], [L * 0.25, -W / 2], [L / 2, 0], [L * 0.25, W / 2],
                         [-L / 2, W / 2]])
        self.polygon(_rot(hull, cx, cy, angle), _shade((90, 40, 40), g, fade), shadow=W * 0.25)
        self.polygon(_rot(_rect(L * 0.22, W * 0.6, -L * 0.28), cx, cy, angle),
                     _shade((245, 245, 240), g, fade))
        return True

    def storage_tank(self, cx: float, cy: float, diameter: float) -> bool:
        r = diameter / 2
        poly = _rect(diameter, diameter) + np.array([cx, cy])
        if not self.free(poly):
            return False
        fade = self.add(poly, "storage-tank")
        g = self.ground(cx, cy)
        off = self.shadow * r * 0.3
        self.draw.ellipse([cx - r + off[0], cy - r + off[1], cx + r + off[0], cy + r + off[1]],
                          fill=_shade(g, (0, 0, 0), 0.45))
        self.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_shade((210, 210, 205), g, fade))
        r2 = r * 0.7
        self.draw.ellipse([cx - r2, cy - r2, cx + r2, cy + r2],
                          outline=_shade((120, 120, 120), g, fade), width=max(1, int(r * 0.08)))
        return True


def generate_aerial_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[Image.Image, list[DotaObject]]:
    """One synthetic aerial scene: RGB image [height x width] and its DOTA objects."""
    s = _Scene(rng, width, height)
    two_pi = 2 * math.pi
    # Ground structures first: objects are drawn on top and never painted over.
    for _ in range(rng.integers(3, 8)):
        s.field()
    water = s.water()
    roads = [s.road() for _ in range(rng.integers(2, 5))]
    apron = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0, 3))
    s.pad(*apron[:2], 420, 260, apron[2])
    lots = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, math.pi))
            for _ in range(rng.integers(2, 5))]
    for cx, cy, ang in lots:
        s.pad(cx, cy, 200, 110, ang)
    mask = Image.new("1", (width, height))
    ImageDraw.Draw(mask).polygon([tuple(q) for q in water], fill=1)
    water_mask = np.asarray(mask)

    def on_water() -> tuple[float, float]:
        for _ in range(20):
            cx, cy = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
            if water_mask[int(cy), int(cx)]:
                break
        return cx, cy

    # A few large objects (they need the most room), retried until placed (or 10 tries).
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(3)
        for _try in range(10):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if kind == 0:
                placed = s.plane(cx, cy, rng.uniform(0, two_pi), rng.uniform(150, 300))
            elif kind == 1:
                placed = s.ship(*on_water(), rng.uniform(0, two_pi), rng.uniform(200, 350))
            else:
                placed = s.storage_tank(cx, cy, rng.uniform(80, 150))
            if placed:
                break
    # Planes on the apron.
    ax, ay, a_ang = apron
    for _ in range(rng.integers(3, 9)):
        for _try in range(5):
            off = _rot(np.array([[rng.uniform(-170, 170), rng.uniform(-100, 100)]]), 0, 0, a_ang)[0]
            if s.plane(ax + off[0], ay + off[1], rng.uniform(0, two_pi), rng.uniform(40, 90)):
                break
    # Parking rows.
    for cx, cy, ang in lots:
        for row in (-30, 30):
            for k in range(-4, 5):
                if rng.random() < 0.7:
                    q = _rot(np.array([[k * 20.0, row]]), cx, cy, ang)[0]
                    s.small_vehicle(q[0], q[1], ang + math.pi / 2 + rng.normal(0, 0.05))
    # Traffic: cars and trucks in both lanes of every road.
    side = max(width, height)
    for p, angle, road_w in roads:
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-math.sin(angle), math.cos(angle)])
        for _ in range(rng.integers(15, 40)):
            lane = road_w * 0.25 * (1 if rng.random() < 0.5 else -1)
            q = p + d * rng.uniform(-side, side) + n * lane
            heading = angle + (0 if lane > 0 else math.pi)
            if rng.random() < 0.2:
                s.large_vehicle(q[0], q[1], heading)
            else:
                s.small_vehicle(q[0], q[1], heading)
    # Ships on the water.
    for _ in range(rng.integers(5, 20)):
        s.ship(*on_water(), rng.uniform(0, two_pi), rng.uniform(30, 90))
    # Storage-tank clusters (small grids of tanks).
    for _ in range(rng.integers(1, 4)):
        cx, cy, dia = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 60)
        for i in range(rng.integers(2, 4)):
            for j in range(rng.integers(2, 5)):
                s.storage_tank(cx + j * dia * 1.4, cy + i * dia * 1.4, dia)
    image = s.image.filter(ImageFilter.GaussianBlur(0.6))
    return image, s.objects


def write_synth_aerial(
    out_dir: str | Path, num_images: int, seed: int = 0, min_size: int = 1024,
    max_size: int = 2048, progress: bool = True,
) -> list[Path]:
    """Write ``num_images`` scenes as a DOTA folder; returns the image paths.

    Image i depends only on (seed, i), so a larger set extends a smaller one.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(num_images), desc="synth-aerial", disable=not progress):
        rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image, objects = generate_aerial_scene(rng, width, height)
        stem = f"P{i:04d}"
        image.save(out_dir / "images" / f"{stem}.png", compress_level=1)
        gsd = round(float(rng.uniform(0.1, 0.6)), 6)
        write_label_txt(out_dir / "labelTxt" / f"{stem}.txt",
                        DotaLabel(objects, image_source="elastic-lab-synth", gsd=gsd))
        paths.append(out_dir / "images" / f"{stem}.png")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-lab synth-aerial``."""
    parser.add_argument("--out", required=True, type=Path, help="output DOTA folder")
    parser.add_argument("--images", type=int, default=8, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=1024, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=2048, help="largest image side (px)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``elastic-lab synth-aerial``."""
    paths = write_synth_aerial(args.out, args.images, args.seed, args.min_size, args.max_size)
    log.info("synth-aerial: wrote %d DOTA images to %s", len(paths), args.out)
    return 0
