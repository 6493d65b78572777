"""Prediction on user images: ``elastic-lab predict --checkpoint CKPT IMAGE... [--json]``.

For each image: the scale factor phi (predicted, or forced with ``--scale``), the processed
size next to the base one, the detections in original pixels with label names, and the compute
of the elastic choice (predictor included) against the same detector at phi = 1, in GFLOPs and in
measured milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.ops import box_iou

from .data.coco import load_image
from .data.image import PIXEL_BUDGET, image_tensor, reduce_to_budget, to_rgb
from .flops import FlopTable, measure_latency_ms
from .models.build import load_model
from .models.elastic_detr import ElasticDETR
from .runtime import add_device_arguments, autocast_context, resolve_device


def _detections(d: dict, categories: list[dict], threshold: float, sx: float, sy: float,
                width: int, height: int) -> list[dict]:
    """Post-processed tensors -> JSON detections in original pixels (score >= threshold)."""
    keep = d["scores"] >= threshold
    out = []
    for s, lab, b in zip(d["scores"][keep].tolist(), d["labels"][keep].tolist(),
                         d["boxes"][keep].tolist()):
        x1, y1, x2, y2 = (min(v * f, lim) for v, f, lim in
                          zip(b, (sx, sy, sx, sy), (width, height, width, height)))
        out.append({"label": categories[int(lab)]["name"],
                    "category_id": categories[int(lab)]["id"], "score": round(float(s), 4),
                    "box": [round(v, 1) + 0.0 for v in (x1, y1, x2, y2)]})
    return out


@torch.no_grad()
def predict_image(model: ElasticDETR, categories: list[dict], image: Image.Image,
                  threshold: float = 0.3, scale: float | None = None, timing: bool = True,
                  flops: FlopTable | None = None, pixel_budget: int = PIXEL_BUDGET,
                  latency_pairs: int = 5) -> dict:
    """Everything the CLI, the README picture and the app show for one image (JSON-ready).

    Images above ``pixel_budget`` pixels are box-filtered below it first (``reduce_to_budget``;
    the detector sees at most a few hundred pixels a side anyway); boxes are reported in the
    original image's pixels (x1, y1, x2, y2, clipped to it). ``timing`` adds the paired
    latency against phi = 1 (``paired_latency``, ``latency_pairs`` pairs). Sizes: "width", "height" of the
    image; "processed_size" and "base_size" are [height, width] like every size tensor of the
    package, and are also given by name ("processed_width", ..., "base_height").
    """
    device = next(model.parameters()).device
    image = to_rgb(image)
    work = reduce_to_budget(image, pixel_budget)
    x = image_tensor(work).to(device)
    phi_t = None if scale is None else torch.full((1,), float(scale))
    dets, out = model.detect([x], phi_t)
    phi = float(out["phi"][0])
    h1, w1 = x.shape[-2:]
    size = tuple(out["image_sizes"][0].tolist())
    base = model.sizes([(h1, w1)], torch.ones(1))[0]
    flops = flops or FlopTable(model)
    uses_predictor = model.predictor is not None and scale is None
    pred_g = flops.predictor(h1, w1) if uses_predictor else 0.0
    g_elastic = flops.detector(*size) + pred_g
    g_base = flops.detector(*base)
    detections = _detections({k: v.cpu() for k, v in dets[0].items()}, categories, threshold,
                             image.width / w1, image.height / h1, image.width, image.height)
    result = {"width": image.width, "height": image.height, "phi": phi,
              "phi_source": "predicted" if uses_predictor
              else ("forced" if scale is not None else "fixed"),
              "processed_size": list(size), "base_size": list(base),
              "processed_width": size[1], "processed_height": size[0],
              "base_width": base[1], "base_height": base[0],
              "detections": detections, "gflops": g_elastic, "gflops_predictor": pred_g,
              "gflops_phi1": g_base, "compute_saved": 1.0 - g_elastic / g_base}
    if work is not image:
        result["reduced_to"] = [work.height, work.width]
    if timing:
        result.update(paired_latency(lambda: model.detect([x], phi_t),
                                     lambda: model.detect([x], torch.ones(1)),
                                     latency_pairs, device=device))
    return result


def paired_latency(run: Callable[[], Any], run_phi1: Callable[[], Any], pairs: int = 5,
                   warmup: int = 1, device: torch.device | str | None = None) -> dict:
    """Wall-clock milliseconds of ``run`` against ``run_phi1``, timed in interleaved pairs.

    A single timing of each, taken at different moments, mostly measures the machine's load
    (it can make a cheaper input look slower). Here every pair runs back to back, in
    alternating order, and the ratio is taken per pair, so a load change affects both sides.
    Returns "latency_ms" / "latency_ms_phi1" (medians), "latency_ratio" (median of the per-pair
    ratios), "latency_ratio_range" [min, max] and "latency_pairs".
    """
    if pairs < 1:
        raise ValueError(f"paired_latency: pairs must be >= 1, got {pairs}")
    for _ in range(warmup):
        run()
        run_phi1()
    a, b = [], []
    for i in range(pairs):
        first, second = (run, run_phi1) if i % 2 == 0 else (run_phi1, run)
        t1 = measure_latency_ms(first, 0, 1, device)
        t2 = measure_latency_ms(second, 0, 1, device)
        a.append(t1 if i % 2 == 0 else t2)
        b.append(t2 if i % 2 == 0 else t1)
    ratios = [x / y for x, y in zip(a, b)]
    return {"latency_ms": statistics.median(a), "latency_ms_phi1": statistics.median(b),
            "latency_ratio": statistics.median(ratios),
            "latency_ratio_range": [min(ratios), max(ratios)], "latency_pairs": pairs}


def match_ground_truth(detections: Sequence[dict], ground_truth: Sequence[dict],
                       iou: float = 0.5) -> list[bool]:
    """Per ground-truth object ({"box" x1y1x2y2, "category_id"}): is it found?

    Found = some detection of the same category overlaps it with IoU >= ``iou`` (the recall
    rule of ``analysis.image_scale_sweep``). Recall is the mean of the returned flags.
    """
    if not ground_truth:
        return []
    if not detections:
        return [False] * len(ground_truth)
    gt = torch.tensor([g["box"] for g in ground_truth], dtype=torch.float64)
    det = torch.tensor([d["box"] for d in detections], dtype=torch.float64)
    same = (torch.tensor([g["category_id"] for g in ground_truth])[:, None]
            == torch.tensor([d["category_id"] for d in detections])[None, :])
    return ((box_iou(gt, det) >= iou) & same).any(dim=1).tolist()


@torch.no_grad()
def scale_sweep(model: ElasticDETR, image: Image.Image, scales: Sequence[float],
                threshold: float = 0.3, flops: FlopTable | None = None,
                categories: list[dict] | None = None, ground_truth: Sequence[dict] = (),
                pixel_budget: int = PIXEL_BUDGET) -> dict[str, list]:
    """Detections count, mean confidence and GFLOPs of the detector at each forced phi.

    With ``ground_truth`` (and the ``categories`` that name the model's labels) a "recall"
    series is added: the share of objects found (``match_ground_truth``) at each phi.
    """
    device = next(model.parameters()).device
    image = to_rgb(image)
    work = reduce_to_budget(image, pixel_budget)
    x = image_tensor(work).to(device)
    flops = flops or FlopTable(model)
    rows: dict[str, list] = {"phi": [], "num_detections": [], "mean_score": [], "gflops": []}
    if ground_truth:
        if categories is None:
            raise ValueError("scale_sweep: ground_truth needs the categories of the model")
        rows["recall"] = []
    sx, sy = image.width / x.shape[-1], image.height / x.shape[-2]
    for s in scales:
        dets, out = model.detect([x], torch.full((1,), float(s)))
        sc = dets[0]["scores"]
        kept = sc[sc >= threshold]
        rows["phi"].append(float(s))
        rows["num_detections"].append(int(kept.numel()))
        rows["mean_score"].append(float(kept.mean()) if kept.numel() else 0.0)
        rows["gflops"].append(flops.detector(*out["image_sizes"][0].tolist()))
        if ground_truth:
            found = match_ground_truth(
                _detections({k: v.cpu() for k, v in dets[0].items()}, categories, threshold,
                            sx, sy, image.width, image.height), ground_truth)
            rows["recall"].append(sum(found) / len(found))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--scale", type=float, default=None, help="force this phi")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score shown")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-timing", action="store_true", help="skip the latency measurement")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    flops = FlopTable(model)
    results = []
    for path in args.images:
        with autocast_context(device, args.amp):
            r = predict_image(model, ckpt["categories"], load_image(path), args.threshold,
                              args.scale, not args.no_timing, flops)
        results.append({"image": str(path), **r})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{Path(r['image']).name}: phi {r['phi']:.2f} ({r['phi_source']}), processed "
              f"{r['processed_width']} x {r['processed_height']} px (base {r['base_width']} x "
              f"{r['base_height']}; width x height), {r['gflops']:.2f} GFLOPs vs "
              f"{r['gflops_phi1']:.2f} at phi=1 "
              f"({100 * r['compute_saved']:+.0f}% saved)"
              + (f", {r['latency_ms']:.0f} ms vs {r['latency_ms_phi1']:.0f} ms"
                 + f" (ratio {r['latency_ratio']:.2f}, {r['latency_ratio_range'][0]:.2f}-"
                   f"{r['latency_ratio_range'][1]:.2f} over {r['latency_pairs']} pairs)"
                 if "latency_ms" in r else ""))
        for d in r["detections"]:
            print(f"  {d['label']:<14} {d['score']:.2f}  box {d['box']}")
    return 0
