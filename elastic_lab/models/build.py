"""Build the model of a run from plain options (stored in checkpoints as a dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from .detr import DetrOptions, build_detr
from .elastic_detr import ElasticDETR
from .scale_norm import bin_centres, convert_scale_norm
from .scale_predictor import ScalePredictor

MODES = ("fixed", "multiscale", "elastic")
# Options added after the first checkpoints were written: a checkpoint without them was trained
# with these values, whatever today's defaults are.
LEGACY_MODEL_OPTIONS = {"predictor_trunk": "resnet18", "predictor_norm": "batch",
                        "predictor_size_bins": 0, "fixed_phi": 1.0}
LEGACY_DETR_OPTIONS = {"anchor_cells": None}


@dataclass
class ModelOptions:
    """Everything needed to rebuild a model: detector, predictor and the resize settings."""

    mode: str = "fixed"
    base_size: int = 256
    max_size: int | None = None       # cap on the long side at phi = 1 (None: uncapped)
    tau_min: float = 0.5
    tau_max: float = 1.5
    thumb_size: int = 64              # long side of the predictor's thumbnail
    predictor_d_model: int = 64
    predictor_layers: int = 2
    predictor_weights: str | None = None
    predictor_trunk: str = "resnet18"     # resnet18 | mobilenet_v3_large | mobilenet_v3_small
    predictor_norm: str = "batch"         # group | batch | frozen (predictor_trunk.py)
    predictor_size_bins: int = 0          # > 0: dense size head with that many bins (size_map.py)
    fixed_phi: float = 1.0            # the scale of models without a predictor (fixed mode)
    scale_stats_bins: int = 0         # > 0: per-scale batch-norm statistics, K bins (scale_norm.py)
    detr: DetrOptions = field(default_factory=DetrOptions)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model options {sorted(unknown)}")
        d = {**LEGACY_MODEL_OPTIONS, **d}
        detr = DetrOptions(**{**LEGACY_DETR_OPTIONS, **d.pop("detr", {})})
        return cls(detr=detr, **d)


def build_model(opts: ModelOptions, num_classes: int) -> ElasticDETR:
    """Detector (+ ScalePredictor in elastic mode) wrapped in ElasticDETR."""
    if opts.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {opts.mode!r}")
    if not 0 < opts.tau_min <= opts.tau_max:
        raise ValueError(f"need 0 < tau_min <= tau_max, got {opts.tau_min}, {opts.tau_max}")
    detector = build_detr(opts.detr, num_classes)
    if opts.scale_stats_bins:
        convert_scale_norm(detector, bin_centres(opts.tau_min, opts.tau_max,
                                                 opts.scale_stats_bins))
    predictor = None
    if opts.mode == "elastic":
        predictor = ScalePredictor(opts.tau_min, opts.tau_max, opts.thumb_size,
                                   opts.predictor_d_model, num_layers=opts.predictor_layers,
                                   weights=opts.predictor_weights, trunk=opts.predictor_trunk,
                                   norm=opts.predictor_norm, size_bins=opts.predictor_size_bins)
    return ElasticDETR(detector, predictor, opts.base_size, opts.max_size, opts.tau_min,
                       opts.tau_max, fixed_phi=opts.fixed_phi)


def load_model(path, device: str | None = "cpu") -> tuple[ElasticDETR, dict]:
    """Rebuild a model from an elastic-lab checkpoint (weights_only loading); eval mode.

    Returns (model, checkpoint dict). Raises CheckpointError naming the file when the file is
    not a usable model checkpoint.
    """
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model", "model_options", "categories") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a model checkpoint (missing {', '.join(missing)})")
    try:
        model = build_model(ModelOptions.from_dict(ckpt["model_options"]),
                            len(ckpt["categories"]))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored options: {exc}") from exc
    model.eval()
    return model.to(torch.device(device) if device else "cpu"), ckpt
