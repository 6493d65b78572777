"""FLOP counting of what actually runs, checked against analytic formulas.

Convention: 1 multiply-accumulate (MAC) = 2 FLOPs. ``torch.utils.flop_counter.FlopCounterMode``
counts matrix products only: ``mm``/``addmm``/``bmm``/``baddbmm`` (every ``nn.Linear``, the
attention projections, QK^T and AV of the math attention path), convolutions and the
scaled-dot-product-attention kernels it knows. Bias additions, norms, softmax, activations and
other elementwise ops are **not** counted; the analytic helpers below follow the same rule, so
the two agree exactly.

Pitfalls of ``FlopCounterMode`` (found by measurement with torch 2.x; tests/test_flops.py and
tests/test_scale_predictor.py check the counts against analytic ones) and how ``count_flops``
avoids them:

- eval + ``no_grad`` (or frozen parameters): ``nn.TransformerEncoderLayer`` /
  ``nn.MultiheadAttention`` take the "fast path" fused kernel, which counts as 0 FLOPs.
  -> grad is enabled while counting and the fast path is switched off
  (``torch.backends.mha.set_fastpath_enabled(False)``) for the duration.
- eval with grad: CPU SDPA (``_scaled_dot_product_flash_attention_for_cpu``) is not counted.
  -> counting runs inside ``sdpa_kernel(SDPBackend.MATH)``, which lowers attention to ``bmm``.
- ``param[None].expand(...)`` fed into a module under ``no_grad`` raised
  ``AssertionError: Expected gradient function to be set``. -> grad enabled while counting.

Outputs of the counted call are dropped before returning, so no autograd graph survives.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .models.elastic_detr import ElasticDETR

__all__ = [
    "FlopTable",
    "LatencyTable",
    "attention_flops",
    "conv2d_flops",
    "count_flops",
    "count_gflops",
    "linear_flops",
    "measure_latency_ms",
    "mha_flops",
    "transformer_decoder_layer_flops",
    "transformer_encoder_layer_flops",
]


# --------------------------------------------------------------------------- measured counts
def count_flops(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` once under ``FlopCounterMode`` and return the total FLOPs (1 MAC = 2 FLOPs).

    The call runs with grad enabled, the MATH SDPA backend and the MHA fast path disabled (see
    the module docstring); the caller sets train/eval mode of the modules involved. Whatever
    ``fn`` returns is discarded, so no autograd graph is kept alive.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            counter = FlopCounterMode(display=False)
            with counter:
                out = fn()
            del out
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def count_gflops(module: nn.Module, *inputs: Any, **kwargs: Any) -> float:
    """GFLOPs (1e9 FLOPs) of one call ``module(*inputs, **kwargs)``, measured by ``count_flops``.

    The count covers the whole batch given; divide by the batch size for a per-image figure.
    """
    return count_flops(lambda: module(*inputs, **kwargs)) / 1e9


# --------------------------------------------------------------------------- analytic counts
def conv2d_flops(
    cin: int, cout: int, k: int | tuple[int, int], h_out: int, w_out: int, groups: int = 1
) -> int:
    """FLOPs of one ``Conv2d`` on one image: 2 * (cin/groups) * kh * kw * cout * h_out * w_out.

    Bias is not counted (as in ``FlopCounterMode``).
    """
    kh, kw = (k, k) if isinstance(k, int) else k
    if cin % groups or cout % groups:
        raise ValueError(
            f"conv2d_flops: cin={cin} and cout={cout} must be divisible by groups={groups}"
        )
    return 2 * (cin // groups) * kh * kw * cout * h_out * w_out


def linear_flops(n_tokens: int, din: int, dout: int) -> int:
    """FLOPs of ``nn.Linear(din, dout)`` applied to ``n_tokens`` vectors (bias not counted)."""
    return 2 * n_tokens * din * dout


def attention_flops(n_q: int, n_k: int, d_model: int) -> int:
    """FLOPs of the attention products only, summed over heads: QK^T and AV.

    Each is ``n_q * n_k * d_model`` MACs whatever the number of heads (heads split d_model);
    softmax and scaling are elementwise and not counted.
    """
    return 2 * 2 * n_q * n_k * d_model


def mha_flops(n_q: int, n_k: int, d_model: int) -> int:
    """FLOPs of one ``nn.MultiheadAttention`` call for one sample (kdim = vdim = d_model).

    Q projection over n_q tokens, K and V projections over n_k tokens, output projection over
    n_q tokens, plus ``attention_flops``.
    """
    projections = linear_flops(n_q, d_model, d_model) * 2 + linear_flops(n_k, d_model, d_model) * 2
    return projections + attention_flops(n_q, n_k, d_model)


def transformer_encoder_layer_flops(n: int, d: int, d_ff: int) -> int:
    """FLOPs of one ``nn.TransformerEncoderLayer`` on one sequence of ``n`` tokens.

    Self-attention (``mha_flops(n, n, d)``) + feed-forward (d -> d_ff -> d). Norms, dropout,
    activations and residual additions are elementwise and not counted.
    """
    return mha_flops(n, n, d) + linear_flops(n, d, d_ff) + linear_flops(n, d_ff, d)


def transformer_decoder_layer_flops(n_q: int, n_mem: int, d: int, d_ff: int) -> int:
    """FLOPs of one ``nn.TransformerDecoderLayer``: ``n_q`` queries attending to ``n_mem`` tokens.

    Self-attention over the queries + cross-attention to the memory + feed-forward.
    """
    return (
        mha_flops(n_q, n_q, d)
        + mha_flops(n_q, n_mem, d)
        + linear_flops(n_q, d, d_ff)
        + linear_flops(n_q, d_ff, d)
    )


# --------------------------------------------------------------------------- latency
def _synchronize(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work (no-op on CPU or when CUDA was never used)."""
    if device is not None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_latency_ms(
    fn: Callable[[], Any],
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> float:
    """Median wall-clock time of ``fn()`` in milliseconds (``time.perf_counter``).

    ``warmup`` untimed calls come first. On CUDA (``device`` given as cuda, or CUDA already
    initialised when ``device`` is None) the device is synchronised before and after each
    timed call, so the time covers the queued kernels. Gradients are the caller's choice: wrap
    ``fn`` in ``torch.inference_mode()`` to time inference.
    """
    if repeats < 1:
        raise ValueError(f"measure_latency_ms: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


# --------------------------------------------------------------------------- memo tables
class FlopTable:
    """GFLOPs of the detector per processed (h, w) and of the predictor per thumbnail, memoised."""

    def __init__(self, model: ElasticDETR):
        self.model = model
        self._det: dict[tuple[int, int], float] = {}
        self._pred: dict[tuple[int, int], float] = {}

    def detector(self, h: int, w: int) -> float:
        if (h, w) not in self._det:
            p = next(self.model.parameters())
            x = torch.zeros(1, 3, h, w, device=p.device)
            mask = torch.zeros(1, h, w, dtype=torch.bool, device=p.device)
            self._det[(h, w)] = count_flops(lambda: self.model.detector(x, mask)) / 1e9
        return self._det[(h, w)]

    def predictor(self, h: int, w: int) -> float:
        """Predictor GFLOPs for an original image of (h, w) (its thumbnail depends on that only)."""
        if self.model.predictor is None:
            return 0.0
        if (h, w) not in self._pred:
            image = torch.zeros(3, h, w, device=next(self.model.parameters()).device)
            self._pred[(h, w)] = count_flops(lambda: self.model.predictor([image])) / 1e9
        return self._pred[(h, w)]


class LatencyTable:
    """Measured milliseconds of the detector per processed (h, w) and of the predictor, memoised.

    Each entry is the median of ``repeats`` timed calls after ``warmup`` untimed ones, on a
    blank input of that size (a DETR's compute does not depend on pixel values).
    """

    def __init__(self, model: ElasticDETR, warmup: int = 1, repeats: int = 3):
        self.model, self.warmup, self.repeats = model, warmup, repeats
        self._det: dict[tuple[int, int], float] = {}
        self._pred: dict[tuple[int, int], float] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def detector(self, h: int, w: int) -> float:
        if (h, w) not in self._det:
            x = torch.zeros(1, 3, h, w, device=self.device)
            mask = torch.zeros(1, h, w, dtype=torch.bool, device=self.device)
            self._det[(h, w)] = measure_latency_ms(lambda: self.model.detector(x, mask),
                                                   self.warmup, self.repeats, self.device)
        return self._det[(h, w)]

    @torch.inference_mode()
    def predictor(self, h: int, w: int) -> float:
        """Predictor time for an original image of (h, w) (thumbnail resize included)."""
        if self.model.predictor is None:
            return 0.0
        if (h, w) not in self._pred:
            image = torch.zeros(3, h, w, device=self.device)
            self._pred[(h, w)] = measure_latency_ms(lambda: self.model.predictor([image]),
                                                    self.warmup, self.repeats, self.device)
        return self._pred[(h, w)]
