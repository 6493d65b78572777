"""The log of a training run: ``metrics.jsonl`` rows and the progress bar.

Every logged row averages the step values of one interval (``--log-every`` steps, and the last
steps of a run whatever their number) and adds phi and padding statistics, the learning rate,
images/s and, in elastic mode, gamma, the boundaries in pixels, the per-bin localization losses
and the target Beta of the distribution loss.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .distributed import world_gather, world_mean
from .distribution_loss import fit_beta_moments
from .models.criterion import SetCriterion
from .models.elastic_detr import ElasticDETR
from .resize import padding_ratio


class MetricsLog:
    """Averages step values over an interval and appends them to metrics.jsonl (rank 0 only,
    ``enabled``); owns the run's progress bar."""

    def __init__(self, path: Path, enabled: bool, total: int, initial: int = 0,
                 desc: str = "train"):
        self.path, self.enabled = Path(path), enabled
        self.rows: list[dict] = []
        self.images, self.t0 = 0, time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                        dynamic_ncols=True)

    @property
    def pending(self) -> bool:
        """Whether steps were added since the last row was written."""
        return bool(self.rows)

    def add(self, num_images: int, row: dict | None) -> None:
        """One finished step over ``num_images`` images; ``row`` None for a skipped step."""
        self.images += num_images
        self.bar.update(1)
        if row is not None:
            self.rows.append(row)

    def flush(self, extra: dict) -> dict | None:
        """Write the row of the interval (its mean values, plus ``extra``) and start a new one."""
        extra = {**extra, "images_per_s": self.images / (time.perf_counter() - self.t0)}
        self.images, self.t0 = 0, time.perf_counter()
        if not self.rows:
            return None
        keys = [k for k in self.rows[-1] if isinstance(self.rows[-1][k], float)]
        out = {k: sum(r.get(k, 0.0) for r in self.rows) / len(self.rows) for k in keys}
        # padding over the interval: padded pixels / all processed pixels (not a mean of ratios)
        out["padding_ratio"] = 1 - sum(r["pixels"] for r in self.rows) / sum(
            r["padded_pixels"] for r in self.rows)
        out["phi_min"] = min(r["phi_min"] for r in self.rows)
        out["phi_max"] = max(r["phi_max"] for r in self.rows)
        u = [v for r in self.rows for v in r.get("u_values", [])]
        if len(u) > 2:
            a, b = fit_beta_moments(torch.tensor(u))
            out["u_beta_alpha"], out["u_beta_beta"] = float(a), float(b)
        out.update(extra)
        self.rows = []
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(out) + "\n")
        self.bar.set_postfix(loss=f"{out['loss']:.3f}", phi=f"{out['phi_mean']:.2f}")
        return out

    def close(self) -> None:
        self.bar.close()


def batch_stats(outputs: dict) -> dict[str, float]:
    """Per-batch numbers for metrics.jsonl (over the global batch under torchrun): phi
    statistics, padding ratio and processed pixels."""
    phi = world_gather(outputs["phi"].float().reshape(-1))
    parts = outputs.get("part_sizes") or [outputs["image_sizes"].tolist()]  # padded batches
    used = [sum(h * w for h, w in p) for p in parts]
    canvas = sum(u / (1 - padding_ratio([tuple(s) for s in p])) for u, p in zip(used, parts))
    pad = world_mean(torch.tensor([1 - sum(used) / canvas]))
    pixels = outputs["image_sizes"].prod(1).sum().float().cpu().reshape(1)
    stats = {"phi_mean": float(phi.mean()), "phi_std": float(phi.std()) if len(phi) > 1 else 0.0,
             "phi_min": float(phi.min()), "phi_max": float(phi.max()),
             "padding_ratio": float(pad), "pixels": float(world_gather(pixels).sum()),
             "padded_pixels": float(world_gather(pixels).sum()) / max(1e-9, 1 - float(pad))}
    if "scale" in outputs:
        stats["u_values"] = world_gather(outputs["scale"]["u"].detach().float()).tolist()
    return stats


def elastic_extra(model: ElasticDETR, criterion: SetCriterion) -> dict:
    """gamma, boundaries in pixels, per-bin localization losses and the target Beta."""
    opts = criterion.elastic
    gamma = float(model.log_gamma.detach().exp())
    extra = {"gamma": gamma, "boundary_small_px": opts.b_s * gamma,
             "boundary_large_px": opts.b_l * gamma}
    ema = criterion.bin_ema.value
    extra["bin_loc_loss"] = [float(v) for v in ema]
    target = criterion.distribution_target(model.tau_min, model.tau_max)
    if target is not None:
        extra["target_alpha"], extra["target_beta"] = float(target[0]), float(target[1])
    return extra


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows written after the checkpoint a run resumes from (a killed run's tail)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
