"""Helpers for the tutorial notebooks, so that the notebooks stay thin.

- Smoke mode, random object sizes, and a small simulation of how the distribution loss moves
  the boundary parameter g = log γ (notebooks 02-03). The simulation is a teaching device, not a
  training run: the per-bin localization losses are held fixed, the images are random sets of
  object sides, and the "predictor" is the ideal one that outputs, per image, the u that
  minimises the scale loss at the current γ.
- Paths, data and runs (notebooks 01, 04-07): :func:`project_path`, :func:`work_dir`,
  :func:`ensure_synth`, :func:`train_run` (the training code of ``elastic-lab train``),
  :func:`load_or_train` (a shipped checkpoint, or a tiny model trained for a few steps when the
  file is missing), :func:`first_images`, :func:`holdout_split`, :func:`coco_size_counts`.
- Analysis of the seed experiments lives in :mod:`elastic_lab.analysis` (re-exported here).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from elastic_lab import train
from elastic_lab.data.coco import load_coco, read_annotation_json
from elastic_lab.data.synth import generate_split
from elastic_lab.distribution_loss import (
    distribution_loss,
    fit_beta_moments,
    target_beta,
)
from elastic_lab.models.build import load_model
from elastic_lab.runtime import resolve_device, split_paths
from elastic_lab.scale_loss import ideal_scale, scale_loss

__all__ = [
    "PROJECT_ROOT",
    "SMOKE_ENV",
    "SMOKE_MODEL_ARGS",
    "LoadedModel",
    "coco_size_counts",
    "compare_to_baseline",
    "ensure_synth",
    "first_images",
    "gradient_step_on_g",
    "holdout_split",
    "ideal_scale",
    "image_scale_sweep",
    "load_or_train",
    "median_object_sides",
    "phi_object_size_table",
    "project_path",
    "random_object_sides",
    "simulate_boundary_learning",
    "smoke_mode",
    "spearman",
    "train_run",
    "work_dir",
]

SMOKE_ENV = "ELASTIC_LAB_SMOKE"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout (editable install)
# A detector small enough to train for a few steps in seconds (smoke runs and fallbacks).
SMOKE_MODEL_ARGS: tuple[str, ...] = (
    "--hidden-dim", "32", "--enc-layers", "1", "--dec-layers", "2", "--base-size", "64",
    "--batch-size", "4", "--pool-batches", "2", "--workers", "0", "--thumb-size", "32")


def smoke_mode() -> bool:
    """True when the environment variable ELASTIC_LAB_SMOKE is "1" (tests: shrink the work)."""
    return os.environ.get(SMOKE_ENV, "0").strip() == "1"


def random_object_sides(num_images: int, seed: int = 0, min_side: float = 8.0,
                        max_side: float = 384.0, max_objects: int = 8,
                        spread: float = 0.3) -> list[Tensor]:
    """Random object sides (px) for ``num_images`` images, like the synthetic set's scenes.

    Each image draws a log-uniform typical side in [min_side, max_side] and 1..max_objects
    objects whose sides are that typical side times exp(N(0, spread²)), clamped to the range.
    The default range is centred (in log) on √(32·96) = 55 px, where P_up = 1/2 at γ = 1.
    Returns a list of float32 tensors [N_i] (deterministic in ``seed``).
    """
    if num_images < 1 or max_objects < 1 or not 0 < min_side < max_side:
        raise ValueError(f"random_object_sides: need num_images ≥ 1, max_objects ≥ 1 and "
                         f"0 < min_side < max_side, got {num_images}, {max_objects}, "
                         f"{min_side}, {max_side}")
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(min_side), math.log(max_side)
    out = []
    for _ in range(num_images):
        typical = lo + (hi - lo) * float(torch.rand((), generator=g))
        n = int(torch.randint(1, max_objects + 1, (), generator=g))
        log_s = typical + spread * torch.randn(n, generator=g)
        out.append(log_s.clamp(lo, hi).exp())
    return out


def gradient_step_on_g(sides_per_image: Sequence[Tensor], log_gamma: float,
                       ema: Sequence[float], lr: float = 0.05, b_s: float = 32.0,
                       b_l: float = 96.0, k: float = 6.0,
                       concentration: float = 8.0) -> tuple[float, float, float]:
    """One plain gradient-descent step on g for L_dist.

    Returns (new log_gamma, W1 before, W1 after the step).
    """
    g = torch.tensor(float(log_gamma), dtype=torch.float64, requires_grad=True)
    before = distribution_loss(sides_per_image, g, ema, b_s, b_l, k, concentration)
    (grad,) = torch.autograd.grad(before, g)
    new_g = float(g.detach() - lr * grad)
    after = distribution_loss(sides_per_image, torch.tensor(new_g, dtype=torch.float64), ema,
                              b_s, b_l, k, concentration)
    return new_g, float(before.detach()), float(after)


def simulate_boundary_learning(ema: Sequence[float] = (0.9, 0.6, 0.3), num_steps: int = 300,
                               batch_size: int = 16, lr: float = 0.05, log_gamma: float = 0.0,
                               seed: int = 0, log_every: int = 10, tau_min: float = 0.5,
                               tau_max: float = 1.5, b_s: float = 32.0, b_l: float = 96.0,
                               k: float = 6.0, concentration: float = 8.0) -> list[dict]:
    """SIMULATED metrics rows: gradient descent on g with the distribution loss alone.

    Every step draws ``batch_size`` random images (:func:`random_object_sides`, sides at base
    resolution: the feedback of φ on the sides is ignored), computes L_dist against the target
    Beta of the fixed per-bin losses ``ema``, and takes one SGD step on g. Predicted scales are
    those of the ideal predictor (:func:`ideal_scale`). Every ``log_every`` steps a row with the
    keys of a training run's metrics.jsonl is appended (averaged over the logging window where
    it makes sense): step, loss_dist, loss_scale, gamma, boundary_small_px, boundary_large_px,
    bin_loc_loss, target_alpha, target_beta, u_beta_alpha, u_beta_beta, phi_mean, phi_std,
    phi_min, phi_max, plus "simulated": True.
    """
    if num_steps < 1 or log_every < 1 or batch_size < 2:
        raise ValueError(f"simulate_boundary_learning: need num_steps ≥ 1, log_every ≥ 1, "
                         f"batch_size ≥ 2, got {num_steps}, {log_every}, {batch_size}")
    ema = [float(v) for v in ema]
    alpha, beta = target_beta(ema, concentration)
    g = torch.tensor(float(log_gamma), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([g], lr=lr)
    rows, window = [], {"loss_dist": [], "loss_scale": [], "u": []}
    for step in range(1, num_steps + 1):
        sides = random_object_sides(batch_size, seed=seed * 1_000_003 + step)
        loss = distribution_loss(sides, g, ema, b_s, b_l, k, concentration)
        opt.zero_grad()
        loss.backward()
        opt.step()
        u = ideal_scale(sides, float(g.detach()), b_s, b_l, k)
        window["loss_dist"].append(float(loss.detach()))
        window["loss_scale"].append(float(scale_loss(u, sides, float(g.detach()), b_s, b_l, k)))
        window["u"].append(u)
        if step % log_every == 0 or step == num_steps:
            u_all = torch.cat(window["u"])
            phi = tau_min + (tau_max - tau_min) * u_all
            a_fit, b_fit = fit_beta_moments(u_all)
            gamma = math.exp(float(g.detach()))
            rows.append({
                "step": step, "simulated": True,
                "loss_dist": sum(window["loss_dist"]) / len(window["loss_dist"]),
                "loss_scale": sum(window["loss_scale"]) / len(window["loss_scale"]),
                "gamma": gamma, "boundary_small_px": b_s * gamma,
                "boundary_large_px": b_l * gamma, "bin_loc_loss": ema,
                "target_alpha": alpha, "target_beta": beta,
                "u_beta_alpha": a_fit, "u_beta_beta": b_fit,
                "phi_mean": float(phi.mean()), "phi_std": float(phi.std()),
                "phi_min": float(phi.min()), "phi_max": float(phi.max()),
            })
            window = {"loss_dist": [], "loss_scale": [], "u": []}
    return rows


# ----------------------------------------------------------------------------- paths, data, runs
def project_path(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute; otherwise relative to the project root (the folder with
    ``notebooks/`` and ``elastic_lab/``), so notebooks find ``checkpoints/`` and ``data/``
    whatever their working folder. Outside a checkout: relative to the working folder."""
    path = Path(path)
    if path.is_absolute():
        return path
    root = PROJECT_ROOT if (PROJECT_ROOT / "notebooks").is_dir() else Path.cwd()
    return root / path


def work_dir(name: str, root: str | os.PathLike = "runs/notebooks") -> Path:
    """Folder for a notebook's generated data and runs (created).

    Normally ``project_path(root) / name`` (``runs/`` is git-ignored); in smoke mode
    ``./smoke_work/name`` under the working folder, so that tests write only to their own
    temporary folder.
    """
    out = Path.cwd() / "smoke_work" / name if smoke_mode() else project_path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def ensure_synth(data_dir: str | os.PathLike, train: int, val: int, test: int = 0,
                 seed: int = 0) -> Path:
    """The synthetic set at ``data_dir``, generating the splits whose annotation file is missing.

    Existing splits are kept whatever their size. Image i of a split depends only on (seed,
    split, i), so a small set holds the first images of a larger one with the same seed.
    """
    data_dir = Path(data_dir)
    for split, n in (("train", train), ("val", val), ("test", test)):
        if n > 0 and not (data_dir / "annotations" / f"instances_{split}.json").is_file():
            generate_split(data_dir, split, n, seed=seed)
    return data_dir


def _train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="elastic-lab train")
    train.add_arguments(parser)
    return parser.parse_args(argv)


def train_run(data_dir: str | os.PathLike, out_dir: str | os.PathLike, mode: str,
              max_steps: int, extra: Sequence[str] = (), split: str = "train",
              device: str = "auto", seed: int = 0, log_every: int | None = None,
              reuse: bool = True) -> Path:
    """Train like ``elastic-lab train`` and return ``out_dir/checkpoint.pt``.

    ``extra``: more command-line options (e.g. :data:`SMOKE_MODEL_ARGS`, ``--no-scale-loss``,
    ``--tau-max 2``). ``--max-steps`` alone bounds the run (epochs are not limited). With
    ``reuse``, a finished run of exactly the same options and the same training annotation
    file (SHA-1) in ``out_dir`` is returned without training; otherwise ``out_dir`` is cleared
    first (metrics.jsonl is appended to, never mixed). A non-empty ``out_dir`` that is not a
    run folder raises ValueError.
    """
    # absolute paths: the same run is recognised from the project root (make bench) and from
    # notebooks/ (the notebooks' working folder)
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    argv = ["--data", str(data_dir), "--split", split, "--out", str(out_dir), "--mode", mode,
            "--max-steps", str(max_steps), "--epochs", "1000000", "--seed", str(seed),
            "--device", device, "--log-every", str(log_every or max(1, max_steps // 25)),
            *map(str, extra)]
    args = _train_args(argv)
    digest = hashlib.sha1(split_paths(data_dir, split)[1].read_bytes()).hexdigest()
    wanted = {"argv": argv, "annotations_sha1": digest}
    stamp, ckpt = out_dir / "notebook_run.json", out_dir / "checkpoint.pt"
    if reuse and ckpt.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return ckpt
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "options.json").is_file():
            raise ValueError(f"{out_dir}: exists and is not a training run folder; refusing to "
                             "clear it (choose another folder)")
        shutil.rmtree(out_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("once", category=UserWarning)
        path = train.train(args)
    stamp.write_text(json.dumps(wanted))
    return path


class LoadedModel(NamedTuple):
    """What :func:`load_or_train` returns."""

    model: torch.nn.Module       # ElasticDETR in eval mode
    checkpoint: dict             # model_options, categories, ...
    path: Path                   # the checkpoint file that was loaded
    fallback: bool               # True: the shipped file was missing, a tiny model was trained
    note: str                    # one line saying which of the two happened


def load_or_train(checkpoint: str | os.PathLike | None, mode: str, data_dir: str | os.PathLike,
                  out_dir: str | os.PathLike, max_steps: int = 4,
                  extra: Sequence[str] = SMOKE_MODEL_ARGS, device: str = "auto",
                  fallback_images: int = 16) -> LoadedModel:
    """Load ``checkpoint`` (via :func:`project_path`); when it does not exist, train a tiny
    ``mode`` model for ``max_steps`` steps on the synthetic set ``data_dir`` (its train split
    generated with ``fallback_images`` images when missing) into ``out_dir`` instead."""
    path = project_path(checkpoint) if checkpoint else None
    fallback = path is None or not path.is_file()
    if fallback:
        ensure_synth(data_dir, train=fallback_images, val=0)
        path = train_run(data_dir, out_dir, mode, max_steps, extra, device=device)
    model, ckpt = load_model(path, resolve_device(device))
    if fallback:
        note = (f"{checkpoint or 'no checkpoint'} not found: trained a tiny {mode} model for "
                f"{max_steps} steps instead ({path}); its numbers show the mechanics only")
    else:
        note = f"loaded {mode} checkpoint {path} (step {ckpt.get('step', '?')})"
    return LoadedModel(model, ckpt, Path(path), fallback, note)


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


# ----------------------------------------------------------------------------- seed experiments


# re-exported for the notebooks
from elastic_lab.analysis import (
    compare_to_baseline,
    image_scale_sweep,
    median_object_sides,
    phi_object_size_table,
    spearman,
)
