"""The benchmark's cells: which (run, seed) pairs exist, in which order they are trained, and
how one is trained (or resumed) from the recipe.

A cell is one named run of :mod:`elastic_lab.recipes` at one seed, named ``<run>_s<seed>``
(``elastic_s0``, ``fixed_1.00_s2``), plus the paired latency cell ``latency``. Its run folder
is ``<out>/runs/<cell>/`` (not committed); its result is one small committed file,
``<out>/cells/<cell>.json``: a cell is done when that file exists.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import recipes
from .calibrate import calibrate_checkpoint
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .experiments import train_run, trained_seconds
from .runtime import cpu_model

CELL_FORMAT = 1
MAIN_RUNS = ("fixed_1.00", "elastic", "multiscale", "fixed_0.75", "fixed_1.25", "fixed_1.50")
# the fixed-resolution front: the main fixed runs, φ = 0.75 … 1.5 (the multi-scale sweep's top)
FIXED_FRONT = tuple(sorted((r for r in MAIN_RUNS if recipes.RUNS[r].mode == "fixed"),
                           key=lambda r: recipes.RUNS[r].fixed_phi))
# every fixed resolution the recipe names: the front and the studies past it; the best single
# fixed resolution is sought among all of them that are trained
FIXED_RUNS = tuple(name for name, spec in recipes.RUNS.items() if spec.mode == "fixed")
ABLATIONS = tuple(name for name, spec in recipes.RUNS.items() if spec.role == "ablation")
SEEDS = (0, 1, 2)
LATENCY = "latency"
LATENCY_PAIR = ("elastic", "fixed_1.00")  # (model, reference), both at seed 0


@dataclass(frozen=True)
class Cell:
    """One (run, seed) of the benchmark."""

    run: str
    seed: int

    @property
    def name(self) -> str:
        return cell_name(self.run, self.seed)

    @property
    def spec(self) -> recipes.RunSpec:
        return recipes.RUNS[self.run]


def cell_name(run: str, seed: int) -> str:
    """``<run>_s<seed>``."""
    return f"{run}_s{seed}"


def parse_cell(name: str) -> Cell:
    """The Cell named ``name`` (ValueError for names the recipe does not know)."""
    run, sep, seed = name.rpartition("_s")
    if not sep or not seed.isdigit() or run not in recipes.RUNS:
        raise ValueError(f"not a benchmark cell: {name!r} (expected <run>_s<seed> with a run of "
                         f"{', '.join(recipes.RUNS)}, or {LATENCY!r})")
    return Cell(run, int(seed))


def all_cells(seeds: Sequence[int] = SEEDS, ablations: Sequence[str] = ABLATIONS) -> list[str]:
    """Every cell, in training order: the main runs at the first seed, the latency cell (it
    needs elastic and fixed_1.00 at seed 0), the main runs at the other seeds, the ablations at
    the first seed."""
    first, rest = seeds[0], seeds[1:]
    return ([cell_name(r, first) for r in MAIN_RUNS] + [LATENCY]
            + [cell_name(r, s) for s in rest for r in MAIN_RUNS]
            + [cell_name(a, first) for a in ablations])


def cell_file(cells_dir: str | os.PathLike, name: str) -> Path:
    """``cells_dir/<name>.json``."""
    return Path(cells_dir) / f"{name}.json"


def missing_cells(cells_dir: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """The cells of ``names`` without a result file, in their order."""
    return [n for n in names if not cell_file(cells_dir, n).is_file()]


def read_cells(cells_dir: str | os.PathLike) -> dict[str, dict]:
    """Every result file of ``cells_dir`` by cell name (sorted)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(cells_dir).glob("*.json"))}


def _finite(obj):
    """A JSON-ready copy with NaN and infinities as None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj, indent: int = 1, level: int = 0) -> str:
    """JSON with one key per line and lists of plain values on one line (small, diffable)."""
    pad = " " * (indent * (level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent, level + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * (indent * level) + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [pad + dumps(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * (indent * level) + "]"
    return json.dumps(obj, allow_nan=False, ensure_ascii=False)


def write_cell(cells_dir: str | os.PathLike, name: str, result: dict) -> Path:
    """Write a cell's result atomically (a stopped bench leaves no half-written file)."""
    path = cell_file(cells_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(_finite(result)) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def cell_config(cell: Cell, runs_dir: str | os.PathLike, data: str, device: str, amp: bool,
                smoke: bool) -> TrainConfig:
    """The recipe's config of ``cell`` in ``runs_dir/<cell>`` (the smoke recipe with
    ``smoke``)."""
    make = recipes.smoke_recipe_config if smoke else recipes.recipe_config
    return make(cell.run, cell.seed, str(Path(runs_dir) / cell.name), data, device, amp)


def train_cell(config: TrainConfig) -> tuple[Path, dict]:
    """Train the cell's run, reuse it when it finished, resume it when it was stopped
    (experiments.train_run). Returns (checkpoint, training summary)."""
    ckpt = train_run(config)
    return ckpt, training_summary(ckpt, config)


def calibrate_cell(ckpt: Path, config: TrainConfig, smoke: bool = False
                   ) -> tuple[Path, dict | None]:
    """The checkpoint a cell is evaluated with: for runs trained at many scales (multi-scale,
    elastic) ``calibrated.pt`` beside ``ckpt``, with the recipe's per-scale batch-norm
    statistics (calibrate.py; redone when ``ckpt`` is newer), and its calibration summary;
    fixed runs: ``ckpt`` itself and None."""
    if config.model.mode == "fixed" or not recipes.SCALE_STATS_BINS:
        return ckpt, None
    out = ckpt.parent / "calibrated.pt"
    if not out.is_file() or out.stat().st_mtime < ckpt.stat().st_mtime:
        images = recipes.SMOKE_CALIBRATION_IMAGES if smoke else recipes.CALIBRATION_IMAGES
        bin_images = min(images, recipes.CALIBRATION_BIN_IMAGES)
        calibrate_checkpoint(ckpt, config.data, out, recipes.SCALE_STATS_BINS, config.split,
                             images, bin_images, config.device)
    return out, load_checkpoint(out)["calibration"]


def training_summary(ckpt: Path, config: TrainConfig) -> dict:
    """Steps, wall seconds (all sessions, warm start included), images/s over the run and the
    median images/s of the logged intervals (detector training alone)."""
    step = int(load_checkpoint(ckpt)["step"])
    seconds = trained_seconds(ckpt)
    rates = []
    metrics = ckpt.parent / "metrics.jsonl"
    if metrics.is_file():
        rates = [json.loads(line).get("images_per_s") for line in metrics.read_text().splitlines()
                 if line.strip()]
        rates = sorted(r for r in rates if isinstance(r, (int, float)))
    images = step * config.train.batch_size
    return {"steps": step, "images": images, "seconds": round(seconds, 1),
            "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
            "logged_images_per_s_median": round(rates[len(rates) // 2], 2) if rates else None,
            "warm_start_steps": config.train.pretrain_steps}


def training_time_complete(training: Mapping | None) -> bool | None:
    """Whether a cell's recorded training seconds can cover its steps: the run's mean rate
    (warm start included) cannot beat the median rate of its own logged intervals (detector
    training alone) by half again. A cell trained before the checkpoints counted the seconds of
    every session could miss a session killed without warning. None: nothing to check."""
    if not training or not training.get("images_per_s") or \
            not training.get("logged_images_per_s_median"):
        return None
    return training["images_per_s"] <= 1.5 * training["logged_images_per_s_median"]


def machine(device: torch.device, amp: bool) -> dict:
    """Where a cell ran: CPU model, core count, torch version and threads, the device and its
    name (the GPU's on CUDA), mixed precision."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "device_name": name, "amp": bool(amp), "python": platform.python_version(),
            "platform": platform.platform()}
