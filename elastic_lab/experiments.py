"""Experiments: prepare data, train a run or reuse it, hold out splits.

Shared by the notebooks and the benchmark (``elastic-lab bench``):

- data: :func:`ensure_synth` (the synthetic set, generated where missing), :func:`first_images`,
  :func:`holdout_split`, :func:`coco_size_counts`;
- runs: :func:`budget_config` (a run bounded by its number of steps), :func:`train_run`
  (train a :class:`~elastic_lab.config.TrainConfig`, or reuse the finished run of the same
  config), :func:`trained_seconds`, :func:`load_or_train` (a shipped checkpoint, or a tiny
  model trained for a few steps when the file is missing).

The named runs of the benchmark and the shipped checkpoints are :mod:`elastic_lab.recipes`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import TrainConfig, smoke_config
from .data.coco import load_coco, read_annotation_json
from .data.synth import generate_split
from .models.build import load_model
from .runtime import resolve_device, split_paths
from .train import train

RUN_STAMP = "experiment_run.json"  # in a run folder: the config and data it was trained with


# ----------------------------------------------------------------------------- data
def ensure_synth(data_dir: str | os.PathLike, train: int, val: int, test: int = 0,
                 seed: int = 0, backgrounds: Sequence[str | os.PathLike] | None = None) -> Path:
    """The synthetic set at ``data_dir``, generating the splits whose annotation file is missing.

    Existing splits are kept whatever their size. Image i of a split depends only on (seed,
    split, i) and the background photographs (``backgrounds``: None for the shipped ones), so
    a small set holds the first images of a larger one with the same seed.
    """
    data_dir = Path(data_dir)
    for split, n in (("train", train), ("val", val), ("test", test)):
        if n > 0 and not (data_dir / "annotations" / f"instances_{split}.json").is_file():
            generate_split(data_dir, split, n, seed=seed, backgrounds=backgrounds)
    return data_dir


def first_images(dataset, n: int | None):
    """A shallow copy of a CocoDetection limited to its first ``n`` images (None: all).

    It keeps ``coco`` and the category mapping, so ``evaluate`` (COCOeval on the evaluated
    image ids) works on it.
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"first_images: n must be >= 1, got {n}")
    out = copy.copy(dataset)
    out.ids = list(dataset.ids[:n])
    return out


def holdout_split(data_dir: str | os.PathLike, split: str, val_fraction: float = 0.25,
                  seed: int = 0, names: tuple[str, str] = ("train", "val")) -> dict[str, Path]:
    """Split the COCO-format ``split`` of ``data_dir`` into two disjoint splits by image.

    Writes ``images/{name}/`` (hard links, or copies) and ``annotations/instances_{name}.json``
    for both ``names``; returns {name: annotation file}. Deterministic in ``seed``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"holdout_split: val_fraction must be in (0, 1), got {val_fraction}")
    image_dir, ann_file = split_paths(data_dir, split)
    data = read_annotation_json(ann_file)
    ids = sorted(img["id"] for img in data["images"])
    if len(ids) < 2:
        raise ValueError(f"{ann_file}: need at least 2 images to split, found {len(ids)}")
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val_ids = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n_val]}
    out = {}
    for name, keep in ((names[0], lambda i: i not in val_ids), (names[1], val_ids.__contains__)):
        images = [img for img in data["images"] if keep(img["id"])]
        target_dir = Path(data_dir) / "images" / name
        for img in images:
            src, dst = image_dir / img["file_name"], target_dir / img["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        kept = {img["id"] for img in images}
        part = {**data, "images": images,
                "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}
        out[name] = Path(data_dir) / "annotations" / f"instances_{name}.json"
        out[name].write_text(json.dumps(part))
    return out


def coco_size_counts(ann_file: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Non-crowd objects per category in COCO's size bins (by ``area``, as COCOeval counts them:
    small < 32², medium < 96², large): {category name: {"small", "medium", "large"}}."""
    coco = load_coco(ann_file)
    out = {c["name"]: {"small": 0, "medium": 0, "large": 0}
           for c in coco.loadCats(coco.getCatIds())}
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        area = float(ann["area"])
        size = "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"
        out[coco.cats[ann["category_id"]]["name"]][size] += 1
    return out


# ----------------------------------------------------------------------------- runs
def budget_config(base: TrainConfig, out: str | os.PathLike, mode: str | None = None,
                  max_steps: int | None = None) -> TrainConfig:
    """``base`` (not modified) as one run of an experiment in ``out``: ``max_steps`` steps
    (default: base's), bounded by them alone (epochs unlimited), about 25 metrics rows."""
    config = copy.deepcopy(base)
    config.out = str(out)
    if mode is not None:
        config.model.mode = mode
    steps = max_steps if max_steps is not None else config.train.max_steps
    if steps is None:
        raise ValueError("budget_config: the run needs max_steps")
    config.train = replace(config.train, max_steps=steps, epochs=1_000_000,
                           log_every=max(1, steps // 25))
    return config


def _stamp(config: TrainConfig) -> dict:
    digest = hashlib.sha1(split_paths(config.data, config.split)[1].read_bytes()).hexdigest()
    return {"config": config.to_dict(), "annotations_sha1": digest}


def _same_run(done: dict, wanted: dict) -> bool:
    """Whether a stamp ``done`` records the run of ``wanted``: the same training annotations and
    the same recipe (config.EXECUTION_FIELDS aside: a run trained with --amp or on another
    device is the same run)."""
    have = TrainConfig.stored_recipe(done["config"]) if done.get("config") else None
    return (done.get("annotations_sha1") == wanted["annotations_sha1"] and have is not None
            and have == TrainConfig.stored_recipe(wanted["config"]))


def train_run(config: TrainConfig, reuse: bool = True) -> Path:
    """Train ``config`` and return ``config.out/checkpoint.pt``.

    With ``reuse``, a finished run of the same recipe (the config but its execution fields:
    device, precision, folders, loader processes; the loss resolved) and the same training
    annotation file (SHA-1) in ``config.out`` is returned
    without training, and a half-trained one (stopped or killed after its first checkpoint) is
    resumed (``resume=True``: it ends as the uninterrupted run would); otherwise the folder is
    cleared first (metrics.jsonl is appended to, never mixed). A non-empty folder that is not
    a run folder raises ValueError. The stamp (``experiment_run.json``, written when training
    starts) records, once the run is finished, its training seconds summed over the sessions of
    a resumed run, as the checkpoint counts them (:func:`trained_seconds`).
    """
    # absolute paths: the same run is recognised from the project root (make bench) and from
    # notebooks/ (the notebooks' working folder)
    config = replace(config, data=str(Path(config.data).resolve()),
                     out=str(Path(config.out).resolve()), resume=False)
    out_dir = Path(config.out)
    wanted = _stamp(config)
    stamp, ckpt = out_dir / RUN_STAMP, out_dir / "checkpoint.pt"
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    same = _same_run(done, wanted)
    if reuse and same and ckpt.is_file() and "seconds" in done:
        return ckpt
    resume = reuse and same and ckpt.is_file()
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        if not ((out_dir / "options.json").is_file() or stamp.is_file()):
            raise ValueError(f"{out_dir}: exists and is not a training run folder; refusing to "
                             "clear it (choose another folder)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted))
    with warnings.catch_warnings():
        warnings.filterwarnings("once", category=UserWarning)
        path = train(replace(config, resume=resume))
    # the checkpoint counts the seconds of every session, a killed one's up to its last save
    seconds = float(load_checkpoint(path).get("seconds", 0.0))
    stamp.write_text(json.dumps({**wanted, "seconds": seconds}))
    return path


def trained_seconds(checkpoint: str | os.PathLike) -> float:
    """Wall-clock seconds of the training that wrote ``checkpoint`` (from train_run's stamp)."""
    return float(json.loads((Path(checkpoint).parent / RUN_STAMP).read_text())["seconds"])


class LoadedModel(NamedTuple):
    """What :func:`load_or_train` returns."""

    model: torch.nn.Module       # ElasticDETR in eval mode
    checkpoint: dict             # model_options, categories, ...
    path: Path                   # the checkpoint file that was loaded
    fallback: bool               # True: the shipped file was missing, a tiny model was trained
    note: str                    # one line saying which of the two happened


def load_or_train(checkpoint: str | os.PathLike | None, mode: str, data_dir: str | os.PathLike,
                  out_dir: str | os.PathLike, max_steps: int = 4, device: str = "auto",
                  fallback_images: int = 16, fallback: TrainConfig | None = None
                  ) -> LoadedModel:
    """Load ``checkpoint`` (a path; relative ones are the caller's to resolve); when it does
    not exist, train a ``mode`` model for ``max_steps`` steps on the synthetic set ``data_dir``
    (its train split generated with ``fallback_images`` images when missing) into ``out_dir``
    instead: ``fallback`` as the base config, default :func:`~elastic_lab.config.smoke_config`."""
    path = Path(checkpoint) if checkpoint else None
    missing = path is None or not path.is_file()
    if missing:
        ensure_synth(data_dir, train=fallback_images, val=0)
        base = fallback or smoke_config(str(data_dir), str(out_dir))
        config = budget_config(replace(base, data=str(data_dir), device=device), out_dir, mode,
                               max_steps)
        path = train_run(config)
    model, ckpt = load_model(path, resolve_device(device))
    if missing:
        note = (f"{checkpoint or 'no checkpoint'} not found: trained a tiny {mode} model for "
                f"{max_steps} steps instead ({path}); its numbers show the mechanics only")
    else:
        note = f"loaded {mode} checkpoint {path} (step {ckpt.get('step', '?')})"
    return LoadedModel(model, ckpt, Path(path), missing, note)
