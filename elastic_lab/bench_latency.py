"""The benchmark's latency cell: the elastic model against the fixed detector, paired.

On a noisy, shared machine two latencies measured minutes apart are not comparable. Here both
models run in one process, interleaved: for every image of a fixed subset of the report split
(batch 1), each repeat times one call of each model, in alternating order, and each model's
per-image time is the median of its repeats. The latency saving is a ratio of totals over the
subset, 1 − Σ elastic time / Σ fixed time, as the FLOPs saving on the same images is (the
elastic GFLOPs include the predictor), with a paired bootstrap interval over the images
(scipy.stats.bootstrap); their ratio is the issue's "latency saving ≥ 0.8 × the FLOPs saving".
The median per-image time ratio, with its interval, is reported beside the median per-image
FLOPs ratio.

A third call, interleaved with the other two, runs the elastic detector alone at the φ the
predictor chose, so the cell also tells where the time goes: the detector's own saving against
its FLOPs saving, and the predictor's time (elastic minus its detector, per image) against its
share of the FLOPs. At batch 1 on a CPU a small network of many thin layers costs far more time
than its FLOPs suggest, and that is what this split shows.

The same pair is then timed at larger processing sizes (:func:`latency_by_base_size`): the
short side the detectors resize to (their ``base_size``, ``max_size`` in proportion) is raised,
say from the 256 pixels they were trained at to 512 or 800 (COCO's), with the φ each image was
given unchanged, since the predictor sees a fixed thumbnail. Only time and FLOPs are measured
there (accuracy at a size the detectors never saw means nothing), and it shows how much of the
gap between the latency and the FLOPs saving is a fixed cost per call that larger images
dilute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from scipy import stats

from .flops import FlopTable, measure_latency_ms
from .oracles import image_sizes
from .runtime import autocast_context


def subset_positions(num_items: int, count: int) -> list[int]:
    """``count`` positions spread evenly over ``num_items`` items (the first and last
    included): a fixed subset, the same in every run."""
    count = min(count, num_items)
    return sorted({int(x) for x in np.rint(np.linspace(0, num_items - 1, count))})


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """One timed call (synchronised on CUDA) in milliseconds."""
    return measure_latency_ms(fn, warmup=0, repeats=1, device=device)


def median_interval(values: np.ndarray, level: float = 0.95, seed: int = 0
                    ) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the median of ``values`` (None for < 2 values)."""
    values = np.asarray(values, np.float64)
    if values.size < 2 or np.ptp(values) == 0:
        v = float(values[0]) if values.size else None
        return v, v
    res = stats.bootstrap((values,), np.median, n_resamples=2000, confidence_level=level,
                          method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@torch.inference_mode()
def paired_latency(model, reference, dataset, images: int = 30, repeats: int = 20,
                   warmup: int = 2, amp: bool = False, flops=None, reference_flops=None
                   ) -> dict:
    """``model`` (e.g. elastic at its predicted φ) against ``reference`` (e.g. fixed at its
    own φ) on ``images`` evenly spread items of ``dataset``, ``repeats`` interleaved calls
    each (see the module docstring). Both models must sit on the same device. ``flops`` /
    ``reference_flops``: FlopTable-like counters to use (default: new FlopTables)."""
    device = next(model.parameters()).device
    flops_m, flops_r = flops or FlopTable(model), reference_flops or FlopTable(reference)
    positions = subset_positions(len(dataset), images)
    orig = image_sizes(dataset)
    rows = []
    with autocast_context(device, amp):
        for i in positions:
            image = dataset[i][0].to(device)
            phi = model.predict_phi([image])
            calls = (lambda x=image: model.detect([x]), lambda x=image: reference.detect([x]),
                     lambda x=image, p=phi: model.detect([x], p))  # elastic, fixed, detector
            for _ in range(warmup):
                for call in calls:
                    call()
            times: tuple[list[float], ...] = ([], [], [])
            for r in range(repeats):
                order = (0, 1, 2) if r % 2 == 0 else (2, 1, 0)
                for k in order:
                    times[k].append(_timed(calls[k], device))
            size_m = model.sizes([orig[i]], phi)[0]
            size_r = reference.sizes([orig[i]], torch.tensor([reference.fixed_phi]))[0]
            g_det = flops_m.detector(*size_m)
            g_m = g_det + flops_m.predictor(*orig[i])
            g_r = flops_r.detector(*size_r) + flops_r.predictor(*orig[i])
            ms_m, ms_r, ms_d = (float(np.median(t)) for t in times)
            rows.append({"position": i, "image_id": int(dataset.ids[i]),
                         "phi": round(float(phi[0]), 4), "ms": round(ms_m, 3),
                         "reference_ms": round(ms_r, 3), "detector_ms": round(ms_d, 3),
                         "ratio": round(ms_m / ms_r, 5), "detector_ratio": round(ms_d / ms_r, 5),
                         "gflops": round(g_m, 4), "detector_gflops": round(g_det, 4),
                         "reference_gflops": round(g_r, 4)})
    return summarize_latency(rows, repeats, warmup)


@contextmanager
def processing_size(models: Sequence, base_size: int) -> Iterator[None]:
    """Within the block every model of ``models`` (ElasticDETR) resizes images to short side
    ``base_size`` (times φ), its ``max_size`` scaled by the same factor; restored after."""
    saved = [(m.base_size, m.max_size) for m in models]
    try:
        for m in models:
            factor = base_size / m.base_size
            m.base_size = int(base_size)
            m.max_size = None if m.max_size is None else round(m.max_size * factor)
        yield
    finally:
        for m, (base, top) in zip(models, saved):
            m.base_size, m.max_size = base, top


def latency_by_base_size(model, reference, dataset, base_sizes: Sequence[int], **options
                         ) -> list[dict]:
    """:func:`paired_latency` of the same pair at each processing size of ``base_sizes`` (see
    the module docstring), each result with its ``base_size`` and ``max_size``; ``options``
    go to :func:`paired_latency`."""
    out = []
    for size in base_sizes:
        with processing_size((model, reference), size):
            out.append({"base_size": int(size), "max_size": model.max_size,
                        **paired_latency(model, reference, dataset, **options)})
    return out


def total_ratio_interval(ms: np.ndarray, reference_ms: np.ndarray, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Paired percentile bootstrap interval over images of Σ ms / Σ reference_ms."""
    if ms.size < 2:
        v = float(ms.sum() / reference_ms.sum())
        return v, v
    res = stats.bootstrap((ms, reference_ms), lambda a, b, axis: a.sum(axis) / b.sum(axis),
                          paired=True, vectorized=True, n_resamples=2000,
                          confidence_level=level, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _finite(x: float, digits: int) -> float | None:
    return round(float(x), digits) if np.isfinite(x) else None


def summarize_latency(rows: list[dict], repeats: int, warmup: int) -> dict:
    """The cell's numbers from its per-image rows (see :func:`paired_latency`).

    Savings are totals over the subset, as the FLOPs saving is: latency saved = 1 − Σ elastic
    time / Σ fixed time (the time to process the whole subset), with a paired bootstrap
    interval over the images. The median per-image time ratio is kept beside the median
    per-image FLOPs ratio; it is not set against the total FLOPs saving, because the per-image
    ratios are skewed (small φ: large savings, large φ: losses) and a median of ratios and a
    ratio of totals answer different questions."""
    def col(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], np.float64)

    ms, ref, det = col("ms"), col("reference_ms"), col("detector_ms")
    gflops, ref_gflops, det_gflops = col("gflops"), col("reference_gflops"), col("detector_gflops")
    ratios = ms / ref
    low, high = median_interval(ratios)
    total = float(ms.sum() / ref.sum())
    t_low, t_high = total_ratio_interval(ms, ref)
    flops_saved = float(1.0 - gflops.sum() / ref_gflops.sum())
    detector_flops_saved = float(1.0 - det_gflops.sum() / ref_gflops.sum())
    latency_saved = 1.0 - total
    detector_saved = float(1.0 - det.sum() / ref.sum())
    predictor_ms = ms - det
    # the detector's time against its GFLOPs: the intercept is the time that φ does not shrink
    slope, intercept = (np.polyfit(det_gflops, det, 1) if np.ptp(det_gflops) > 0
                        else (float("nan"), float("nan")))

    def share(saved: float, flops: float) -> float | None:
        return round(saved / flops, 4) if abs(flops) > 1e-9 else None

    return {"images": len(rows), "repeats": repeats, "warmup": warmup, "batch_size": 1,
            "total_ratio": round(total, 5),
            "total_ratio_interval": [round(t_low, 5), round(t_high, 5)],
            "latency_saved": round(latency_saved, 5),
            "latency_saved_interval": [round(1 - t_high, 5), round(1 - t_low, 5)],
            "flops_saved": round(flops_saved, 5),
            "latency_to_flops_saving": share(latency_saved, flops_saved),
            "median_ratio": round(float(np.median(ratios)), 5),
            "median_ratio_interval": [round(low, 5), round(high, 5)],
            "median_flops_ratio": round(float(np.median(gflops / ref_gflops)), 5),
            "median_ms": round(float(np.median(ms)), 3),
            "reference_median_ms": round(float(np.median(ref)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "reference_mean_ms": round(float(ref.mean()), 3),
            "detector": {"median_ms": round(float(np.median(det)), 3),
                         "mean_ms": round(float(det.mean()), 3),
                         "latency_saved": round(detector_saved, 5),
                         "flops_saved": round(detector_flops_saved, 5),
                         "latency_to_flops_saving": share(detector_saved, detector_flops_saved),
                         "fit_intercept_ms": _finite(intercept, 3),
                         "fit_ms_per_gflop": _finite(slope, 3)},
            "predictor": {"median_ms": round(float(np.median(predictor_ms)), 3),
                          "share_of_reference_ms": round(float(predictor_ms.sum() / ref.sum()), 5),
                          "gflops": round(float((gflops - det_gflops).mean()), 4),
                          "share_of_reference_gflops": round(
                              float((gflops - det_gflops).sum() / ref_gflops.sum()), 5)},
            "per_image": rows}
