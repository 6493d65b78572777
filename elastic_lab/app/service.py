"""The app's model service: loaded checkpoints, detection, scale sweeps and generated scenes.

Plain Python without a UI (``app.py`` calls it from its Gradio events, the tests call it
directly). ``DetectorService`` keeps one loaded model per checkpoint and runs every model call
under one lock: a call that cannot get it within ``busy_after_s`` seconds is refused with a
``BusyError`` ("busy, try again") instead of waiting behind a long queue. Decoding and checking
an upload happen before, outside the lock (``elastic_lab.data.image``), and every image is
held to the pixel budget of ``predict_image``, so no single request holds the model for long.

A generated scene (``generate_scene``: regime + seed -> ``render_scene``) comes with its ground
truth, so a detection on it also reports the recall at the threshold and phi*, the scale the
model's own scale loss asks for (``analysis.loss_optimum``): the predictor's choice can be
judged on an image whose answer is known.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis import loss_optimum
from ..checkpoint import CheckpointError
from ..data.image import Upload, image_tensor, reduce_to_budget, to_rgb
from ..data.synth import EXAMPLE_SIZE, REGIMES, categories_for, render_scene
from ..flops import FlopTable
from ..models.build import load_model
from ..models.elastic_detr import ElasticDETR
from ..predict import match_ground_truth, paired_latency, predict_image, scale_sweep
from ..resize import base_size_scale, processed_size

__all__ = ["BUSY_AFTER_S", "LATENCY_PAIRS", "MAX_PROCESSED_PIXELS", "SWEEP_POINTS", "BusyError",
           "DetectorService",
           "LoadedModel", "Scene", "check_phi", "check_processed_size", "generate_scene",
           "sweep_scales"]

BUSY_AFTER_S = 10.0                # a model call waiting longer than this is refused as busy
MAX_PROCESSED_PIXELS = 4_000_000   # the detector's input at tau_max (catches 1 x 5000 strips)
SWEEP_POINTS = 9
LATENCY_PAIRS = 5
MAX_SEED = 2**31 - 1


class BusyError(RuntimeError):
    """The model was busy with other requests for too long; the caller should try again."""


@dataclass
class LoadedModel:
    """One checkpoint, loaded: the model, its categories, options and FLOP memo table."""

    model: ElasticDETR
    categories: list[dict]
    mode: str
    flops: FlopTable
    loss_options: dict | None   # the run's scale-loss options (None in older checkpoints)

    @property
    def trained_on_generated_shapes(self) -> bool:
        """True when its classes are those of the synthetic shapes data set."""
        return [c["name"] for c in self.categories] == [c["name"] for c in categories_for()]


@dataclass
class Scene:
    """A generated scene: the picture as an upload, and its ground truth in pixels."""

    regime: str
    seed: int
    upload: Upload
    ground_truth: list[dict]    # {"box": x1y1x2y2, "label": class name}


def generate_scene(regime: str, seed: int, size: tuple[int, int] = EXAMPLE_SIZE) -> Scene:
    """The synthetic scene of (regime, seed): ``render_scene(default_rng(seed), regime, size)``."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime}: choose one of {', '.join(REGIMES)}")
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}")
    seed = int(seed)
    image, annotations = render_scene(np.random.default_rng(seed), regime, size)
    truth = []
    for a in annotations:
        x, y, w, h = a["bbox"]
        truth.append({"box": [x, y, x + w, y + h], "label": a["category"]})
    upload = Upload(image, f"scene_{regime}_{seed}.png", "PNG", "RGB", image.size,
                    [f"generated scene: regime {regime}, seed {seed}, {len(truth)} objects"])
    return Scene(regime, seed, upload, truth)


def sweep_scales(tau_min: float, tau_max: float, n: int = SWEEP_POINTS) -> list[float]:
    """``n`` evenly spaced scale factors from tau_min to tau_max (rounded to 1e-4)."""
    return [round(float(s), 4) for s in np.linspace(tau_min, tau_max, n)]


def check_processed_size(model: ElasticDETR, width: int, height: int,
                         limit: int = MAX_PROCESSED_PIXELS, name: str = "image") -> None:
    """Refuse images whose detector input at tau_max would exceed ``limit`` pixels.

    The base size fixes the short side, so only extreme aspect ratios (long thin strips)
    reach the limit; the message says how to fix it.
    """
    h, w = processed_size(height, width, model.tau_max, model.base_size, model.max_size,
                          model.stride)
    if h * w > limit:
        ratio = max(width, height) / min(width, height)
        raise ValueError(
            f"{name}: a {width} x {height} px image (aspect ratio 1:{ratio:.0f}) would reach "
            f"the detector as {w} x {h} px at phi = {model.tau_max:g}, more than "
            f"{limit / 1e6:.0f} megapixels; crop it to a less elongated shape")


def check_phi(model: ElasticDETR, phi: float) -> None:
    """A forced phi must lie in the model's [tau_min, tau_max] (ValueError otherwise)."""
    if not model.tau_min - 1e-6 <= phi <= model.tau_max + 1e-6:  # False for NaN too
        raise ValueError(f"forced phi = {phi:g} is outside this model's range "
                         f"[{model.tau_min:g}, {model.tau_max:g}]")


class DetectorService:
    """Loads checkpoints on demand (kept loaded) and runs detection and scale sweeps.

    ``checkpoints`` maps the names shown in the app (file names, never server paths) to
    files; only those can be used. Model calls are serialised by one lock (one model, few
    CPU cores) and refused with ``BusyError`` after ``busy_after_s`` seconds of waiting.
    """

    def __init__(self, checkpoints: Mapping[str, str | Path], device: str | torch.device = "cpu",
                 busy_after_s: float = BUSY_AFTER_S):
        if not checkpoints:
            raise ValueError("DetectorService needs at least one checkpoint")
        self.checkpoints = {name: Path(p) for name, p in checkpoints.items()}
        self.device = torch.device(device)
        self.busy_after_s = busy_after_s
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def _model_lock(self) -> Iterator[None]:
        """Hold the model lock; BusyError when it stays taken, RuntimeError after ``close``."""
        if not self._lock.acquire(timeout=self.busy_after_s):
            raise BusyError(f"the app is busy with other requests (waited {self.busy_after_s:.0f}"
                            " s for the model); try again in a moment")
        try:
            if self._closed:
                raise RuntimeError("the app is shutting down")
            yield
        finally:
            self._lock.release()

    def close(self, timeout: float = 120.0) -> None:
        """Wait for the running model call, then refuse new ones.

        Call it before the interpreter exits (app.py registers it with atexit): a server
        thread that is stopped inside a torch operator during interpreter shutdown aborts the
        whole process ("terminate called without an active exception").
        """
        if self._lock.acquire(timeout=timeout):
            self._closed = True
            self._lock.release()

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    def server_paths(self) -> dict[str, str]:
        """{absolute path text: display name}, to keep server paths out of messages."""
        out = {}
        for name, p in self.checkpoints.items():
            out[str(p)] = name
            out[str(p.resolve())] = name
        return out

    def get(self, name: str) -> LoadedModel:
        """The loaded model of checkpoint ``name`` (loads it on first use; CheckpointError)."""
        if name not in self.checkpoints:
            raise ValueError(f"unknown checkpoint: choose one of {', '.join(self.names)}")
        with self._model_lock():
            if name not in self._loaded:
                try:
                    model, ckpt = load_model(self.checkpoints[name], str(self.device))
                except CheckpointError as exc:
                    text = str(exc)
                    for path, shown in self.server_paths().items():
                        text = text.replace(path, shown)
                    raise CheckpointError(text if name in text else f"{name}: {text}") from exc
                mode = ckpt["model_options"].get("mode", "?")
                self._loaded[name] = LoadedModel(model, ckpt["categories"], mode,
                                                 FlopTable(model), ckpt.get("loss_options"))
            return self._loaded[name]

    def describe(self, name: str) -> str:
        """A few words about a checkpoint: mode, phi range, base size and training data."""
        m = self.get(name)
        kind = ("elastic: a scale predictor picks phi per image" if m.model.predictor is not None
                else f"{m.mode}: no predictor, phi = 1 unless forced")
        classes = ", ".join(c["name"] for c in m.categories)
        data = ("trained on generated shapes only" if m.trained_on_generated_shapes
                else "classes")
        return (f"**{name}** ({kind}); phi range [{m.model.tau_min:g}, {m.model.tau_max:g}], "
                f"base short side {m.model.base_size} px; {data}: {classes}")

    def optimum(self, m: LoadedModel, scene: Scene) -> dict | None:
        """phi* and u* of the scene for this model's scale loss (None without loss options)."""
        if m.loss_options is None or "b_s" not in m.loss_options:
            return None
        w, h = scene.upload.image.size
        factor = base_size_scale(h, w, m.model.base_size, m.model.max_size)
        sides = [math.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0)) * factor
                 for x1, y1, x2, y2 in (g["box"] for g in scene.ground_truth)]
        u, phi = loss_optimum(m.model, [torch.tensor(sides, dtype=torch.float64)],
                              m.loss_options)
        return {"phi_star": float(phi[0]), "u_star": float(u[0]),
                "median_side_phi1": float(np.median(sides)) if sides else None}

    def _truth(self, m: LoadedModel, scene: Scene | None) -> list[dict]:
        """The scene's ground truth with the model's category ids (unknown classes: id -1)."""
        if scene is None:
            return []
        ids = {c["name"]: c["id"] for c in m.categories}
        return [{**g, "category_id": ids.get(g["label"], -1)} for g in scene.ground_truth]

    def _check(self, m: LoadedModel, upload: Upload, phi: float | None) -> None:
        check_processed_size(m.model, upload.image.width, upload.image.height, name=upload.name)
        if phi is not None:
            check_phi(m.model, phi)

    def detect(self, name: str, upload: Upload, threshold: float = 0.3,
               phi: float | None = None, measure_latency: bool = False,
               scene: Scene | None = None) -> dict:
        """``predict_image`` on the upload, plus what the page shows next to it.

        Adds "inference_ms" (wall time of this request's model call), the input's format,
        mode and notes, "trained_on_generated_shapes", and with ``measure_latency`` the paired
        latency against phi = 1 (``predict.paired_latency``). With a ``scene``: its
        "ground_truth", "found" (per object), "recall" and "phi_star" / "u_star".
        """
        m = self.get(name)
        self._check(m, upload, phi)
        truth = self._truth(m, scene)
        with self._model_lock():
            start = time.perf_counter()
            result = predict_image(m.model, m.categories, upload.image, threshold, phi,
                                   timing=False, flops=m.flops)
            result["inference_ms"] = (time.perf_counter() - start) * 1e3
            if measure_latency:
                x = image_tensor(reduce_to_budget(to_rgb(upload.image))).to(self.device)
                phi_t = None if phi is None else torch.full((1,), float(phi))
                result.update(paired_latency(lambda: m.model.detect([x], phi_t),
                                             lambda: m.model.detect([x], torch.ones(1)),
                                             LATENCY_PAIRS, device=self.device))
        result.update({"image": upload.name, "checkpoint": name, "mode": m.mode,
                       "tau_range": [m.model.tau_min, m.model.tau_max],
                       "threshold": float(threshold), "input_format": upload.format,
                       "input_mode": upload.mode, "input_notes": upload.notes,
                       "trained_on_generated_shapes": m.trained_on_generated_shapes})
        if scene is not None:
            found = match_ground_truth(result["detections"], truth)
            result.update({"scene": {"regime": scene.regime, "seed": scene.seed},
                           "ground_truth": truth, "found": found,
                           "recall": sum(found) / len(found) if found else None})
            result.update(self.optimum(m, scene) or {})
        return result

    def sweep(self, name: str, upload: Upload, threshold: float = 0.3,
              phi: float | None = None, scene: Scene | None = None,
              n: int = SWEEP_POINTS) -> dict:
        """``scale_sweep`` over ``n`` scales in [tau_min, tau_max] and the phis to mark.

        "predicted_phi" is the predictor's choice (None without a predictor), "used_phi" the
        phi a detection uses (forced, predicted or 1), "phi_source" says which; with a scene
        the rows get a "recall" series and "phi_star".
        """
        m = self.get(name)
        self._check(m, upload, phi)
        truth = self._truth(m, scene)
        scales = sweep_scales(m.model.tau_min, m.model.tau_max, n)
        with self._model_lock():
            rows = scale_sweep(m.model, upload.image, scales, threshold, m.flops, m.categories,
                               truth)
            predicted = None
            if m.model.predictor is not None:
                x = image_tensor(reduce_to_budget(to_rgb(upload.image))).to(self.device)
                predicted = float(m.model.predict_phi([x])[0])
        if phi is not None:
            used, source = float(phi), "forced"
        elif predicted is not None:
            used, source = predicted, "predicted"
        else:
            used, source = 1.0, "fixed"
        rows.update({"predicted_phi": predicted, "used_phi": used, "phi_source": source,
                     "threshold": float(threshold), "image": upload.name, "checkpoint": name})
        if scene is not None:
            rows.update(self.optimum(m, scene) or {})
        return rows
