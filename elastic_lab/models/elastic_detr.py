"""Elastic-DETR: a scale predictor chooses phi per image, the detector sees the image resized by phi.

The same wrapper serves every mode: ``fixed`` and ``multiscale`` models have no predictor and
take phi from the caller; ``elastic`` models predict it (method.md §1). phi is detached before
the resize, so the predictor learns only from the scale loss (and, through the boundaries,
the distribution loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..resize import pad_batch, phi_from_u, processed_size, resize_image
from .detr import DETR, postprocess
from .scale_norm import scale_bins
from .scale_predictor import ScalePredictor


class ElasticDETR(nn.Module):
    """Detector + optional ScalePredictor + learnable boundary parameter g (gamma = exp g).

    forward(images: list of [3, Hi, Wi] in [0, 1] at original size, phi: [B] or None)
        -> detector outputs (see DETR) plus
           "phi": [B] scale factors used, "image_sizes": [B, 2] processed (h, w),
           "scale": the predictor's outputs ("u", "phi" [B] predicted, optional "size_map")
                    plus "image_sizes", "log_gamma" and the resize settings (base_size,
                    max_size, tau_min, tau_max), when a predictor exists.
    """

    def __init__(self, detector: DETR, predictor: ScalePredictor | None, base_size: int,
                 max_size: int | None, tau_min: float = 0.5, tau_max: float = 1.5,
                 fixed_phi: float = 1.0):
        super().__init__()
        self.detector = detector
        self.predictor = predictor
        self.base_size, self.max_size = base_size, max_size
        self.tau_min, self.tau_max = tau_min, tau_max
        self.fixed_phi = float(fixed_phi)  # the scale used when there is no predictor
        self.log_gamma = nn.Parameter(torch.zeros(())) if predictor is not None else None

    @property
    def stride(self) -> int:
        return self.detector.stride

    def phi_from_u(self, u: Tensor) -> Tensor:
        """phi = tau_min + (tau_max - tau_min) * u (resize.phi_from_u)."""
        return phi_from_u(u, self.tau_min, self.tau_max)

    def sizes(self, orig_sizes: list[tuple[int, int]], phi: Tensor) -> list[tuple[int, int]]:
        """Processed (h, w) of each image for scale factors phi [B]."""
        return [processed_size(h, w, float(p), self.base_size, self.max_size, self.stride)
                for (h, w), p in zip(orig_sizes, phi.tolist())]

    @torch.no_grad()
    def predict_phi(self, images: list[Tensor]) -> Tensor:
        """Predicted scale factors [B] (no gradient)."""
        if self.predictor is None:
            return torch.full((len(images),), self.fixed_phi)
        return self.predictor(images)["phi"].float().cpu()

    def forward(self, images: list[Tensor], phi: Tensor | None = None,
                scale_images: list[Tensor] | None = None) -> dict:
        """See the class docstring. ``scale_images``: the images the predictor runs on (with
        gradient) when they are not the detector's batch, ``phi`` given: training feeds it a
        random sample of the pool, and an empty list when this call is one part of a step
        whose predictor runs in another part (engine.train_step)."""
        scale = None
        if scale_images is not None:
            if phi is None or (scale_images and self.predictor is None):
                raise ValueError("scale_images needs a predictor and the detector's phi")
            scale = self.predictor(scale_images) if scale_images else None
        elif self.predictor is not None and (self.training or phi is None):
            scale = self.predictor(images)
        if phi is None:
            phi = (scale["phi"].detach() if scale is not None
                   else torch.full((len(images),), self.fixed_phi))
        phi = phi.detach().float().cpu()
        resized = [resize_image(im, float(p), self.base_size, self.max_size, self.stride)
                   for im, p in zip(images, phi.tolist())]
        batch, mask = pad_batch(resized, self.stride)
        with scale_bins(self.detector, phi):  # per-scale statistics, if any (scale_norm.py)
            out = self.detector(batch, mask)
        image_sizes = torch.tensor([tuple(r.shape[-2:]) for r in resized], device=batch.device)
        out["phi"] = phi
        out["image_sizes"] = image_sizes
        if scale is not None:
            out["scale"] = {**scale, "image_sizes": image_sizes, "log_gamma": self.log_gamma,
                            "base_size": self.base_size, "max_size": self.max_size,
                            "tau_min": self.tau_min, "tau_max": self.tau_max}
        return out

    @torch.no_grad()
    def detect(self, images: list[Tensor], phi: Tensor | None = None, top_k: int = 100
               ) -> tuple[list[dict[str, Tensor]], dict]:
        """Inference: detections in original pixels per image, and the raw outputs."""
        out = self.forward(images, phi)
        orig = torch.tensor([tuple(im.shape[-2:]) for im in images])
        return postprocess(out, orig, top_k), out
