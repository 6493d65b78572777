"""Per-scale normalisation statistics for the detector's batch norm [ours].

A detector trained on images of many sizes with batch norm normalises each training batch with
that batch's own statistics. Elastic and multi-scale training put images of one size in a batch
(elastic: a part of similar processed size, engine.py; multi-scale: one φ per batch), so the
network learns to expect features normalised *per scale*. Plain batch norm then tests with one
running average over every scale, which fits none of them (docs/method.md §5).

``ScaleBatchNorm2d`` keeps, beside the usual running statistics, one (mean, var) per φ bin and
normalises each image of an inference batch with the statistics of its own bin. The bins are
centred on ``K`` evenly spaced values of [τmin, τmax]; the statistics are filled after training
by ``calibrate.calibrate_scale_stats`` (as switchable batch norm keeps private statistics per
network width or input resolution). Training is unchanged: batch statistics, as in BatchNorm2d.

The bin of each image is set for the length of one forward pass by ``scale_bins(module, phi)``
(ElasticDETR.forward does it), since torchvision's ResNet passes only the feature map down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaleBatchNorm2d", "bin_centres", "convert_scale_norm", "scale_bins", "scale_norms"]


def bin_centres(tau_min: float, tau_max: float, bins: int) -> Tensor:
    """The ``bins`` φ values [K] the statistics belong to (evenly spaced, both ends included)."""
    if bins < 1:
        raise ValueError(f"need at least one scale bin, got {bins}")
    if bins == 1:
        return torch.tensor([(tau_min + tau_max) / 2])
    return torch.linspace(tau_min, tau_max, bins)


class ScaleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with one set of inference statistics per φ bin.

    forward(x [B, C, H, W]) -> [B, C, H, W]. Training mode, or no bins set: BatchNorm2d.
    Inference with ``self.bins`` ([B] bin indices) set: image b is normalised with
    ``scale_mean[bins[b]]``, ``scale_var[bins[b]]`` and the shared affine weights.
    """

    def __init__(self, num_features: int, centres: Tensor, eps: float = 1e-5,
                 momentum: float | None = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        k = len(centres)
        self.register_buffer("scale_centres", centres.detach().clone().float())
        self.register_buffer("scale_mean", torch.zeros(k, num_features))
        self.register_buffer("scale_var", torch.ones(k, num_features))
        self.bins: Tensor | None = None

    def bin_of(self, phi: Tensor) -> Tensor:
        """Index [B] of the nearest bin centre to each φ [B]."""
        centres = self.scale_centres.to(phi.device)
        return (phi.float()[:, None] - centres[None]).abs().argmin(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.bins is None:
            return super().forward(x)
        if len(self.bins) != x.shape[0]:
            raise ValueError(f"{len(self.bins)} scale bins set for a batch of {x.shape[0]}")
        bins = self.bins.to(x.device)
        if bool((bins == bins[0]).all()):  # one bin (batch 1, a size-grouped batch): fused kernel
            k = int(bins[0])
            return F.batch_norm(x, self.scale_mean[k], self.scale_var[k], self.weight,
                                self.bias, False, 0.0, self.eps)
        scale = self.weight / torch.sqrt(self.scale_var[bins] + self.eps)  # [B, C]
        shift = self.bias - self.scale_mean[bins] * scale
        return x * scale[:, :, None, None].to(x.dtype) + shift[:, :, None, None].to(x.dtype)


def convert_scale_norm(module: nn.Module, centres: Tensor) -> nn.Module:
    """Replace every BatchNorm2d under ``module`` by a ScaleBatchNorm2d with the same weights
    and running statistics; every bin starts from the running statistics (so the function is
    unchanged until calibration). Returns the module (changed in place where possible)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, ScaleBatchNorm2d):
        new = ScaleBatchNorm2d(module.num_features, centres, module.eps, module.momentum)
        new.load_state_dict(module.state_dict(), strict=False)
        new.weight.requires_grad_(module.weight.requires_grad)
        new.bias.requires_grad_(module.bias.requires_grad)
        with torch.no_grad():
            new.scale_mean.copy_(module.running_mean.expand_as(new.scale_mean))
            new.scale_var.copy_(module.running_var.expand_as(new.scale_var))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_scale_norm(child, centres))
    return module


def scale_norms(module: nn.Module) -> list[ScaleBatchNorm2d]:
    """The ScaleBatchNorm2d layers under ``module`` (empty: plain normalisation)."""
    return [m for m in module.modules() if isinstance(m, ScaleBatchNorm2d)]


@contextmanager
def scale_bins(module: nn.Module, phi: Tensor) -> Iterator[None]:
    """Within the block, every ScaleBatchNorm2d under ``module`` normalises image b of its batch
    with the statistics of the bin nearest to ``phi[b]``."""
    norms = scale_norms(module)
    bins = norms[0].bin_of(phi) if norms else None
    for m in norms:
        m.bins = bins
    try:
        yield
    finally:
        for m in norms:
            m.bins = None
