"""Prediction on user images: ``elastic-lab predict --checkpoint CKPT IMAGE... [--json]``.

For each image: the scale factor phi (predicted, or forced with ``--scale``), the processed
size next to the base one, the detections in original pixels with label names, and the compute
of the elastic choice (predictor included) against the same detector at phi = 1, in GFLOPs and in
measured milliseconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from .data.coco import load_image
from .data.image import image_tensor
from .flops import FlopTable, measure_latency_ms
from .models.build import load_model
from .models.elastic_detr import ElasticDETR
from .runtime import add_device_arguments, autocast_context, resolve_device


@torch.no_grad()
def predict_image(model: ElasticDETR, categories: list[dict], image: Image.Image,
                  threshold: float = 0.3, scale: float | None = None, timing: bool = True,
                  flops: FlopTable | None = None) -> dict:
    """Everything the CLI and the app show for one image (JSON-serialisable dict)."""
    device = next(model.parameters()).device
    x = image_tensor(image).to(device)
    phi_t = None if scale is None else torch.full((1,), float(scale))
    dets, out = model.detect([x], phi_t)
    phi = float(out["phi"][0])
    h0, w0 = x.shape[-2:]
    size = tuple(out["image_sizes"][0].tolist())
    base = model.sizes([(h0, w0)], torch.ones(1))[0]
    flops = flops or FlopTable(model)
    uses_predictor = model.predictor is not None and scale is None
    pred_g = flops.predictor(h0, w0) if uses_predictor else 0.0
    g_elastic = flops.detector(*size) + pred_g
    g_base = flops.detector(*base)
    d = dets[0]
    keep = d["scores"] >= threshold
    detections = [{"label": categories[int(lab)]["name"], "category_id": categories[int(lab)]["id"],
                   "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                  for s, lab, b in zip(d["scores"][keep], d["labels"][keep], d["boxes"][keep])]
    result = {"width": int(w0), "height": int(h0), "phi": phi,
              "phi_source": "predicted" if uses_predictor else ("forced" if scale else "fixed"),
              "processed_size": list(size), "base_size": list(base),
              "detections": detections, "gflops": g_elastic, "gflops_predictor": pred_g,
              "gflops_phi1": g_base, "compute_saved": 1.0 - g_elastic / g_base}
    if timing:
        result["latency_ms"] = measure_latency_ms(lambda: model.detect([x], phi_t), 2, 5)
        result["latency_ms_phi1"] = measure_latency_ms(
            lambda: model.detect([x], torch.ones(1)), 2, 5)
    return result


@torch.no_grad()
def scale_sweep(model: ElasticDETR, image: Image.Image, scales: list[float],
                threshold: float = 0.3, flops: FlopTable | None = None) -> dict[str, list]:
    """Detections count, mean confidence and GFLOPs of the detector at each forced phi."""
    device = next(model.parameters()).device
    x = image_tensor(image).to(device)
    flops = flops or FlopTable(model)
    rows: dict[str, list] = {"phi": [], "num_detections": [], "mean_score": [], "gflops": []}
    for s in scales:
        dets, out = model.detect([x], torch.full((1,), float(s)))
        sc = dets[0]["scores"]
        kept = sc[sc >= threshold]
        rows["phi"].append(float(s))
        rows["num_detections"].append(int(kept.numel()))
        rows["mean_score"].append(float(kept.mean()) if kept.numel() else 0.0)
        rows["gflops"].append(flops.detector(*out["image_sizes"][0].tolist()))
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
              f"{r['processed_size'][1]}x{r['processed_size'][0]} (base {r['base_size'][1]}x"
              f"{r['base_size'][0]}), {r['gflops']:.2f} GFLOPs vs {r['gflops_phi1']:.2f} at phi=1 "
              f"({100 * r['compute_saved']:+.0f}% saved)"
              + (f", {r['latency_ms']:.0f} ms vs {r['latency_ms_phi1']:.0f} ms"
                 if "latency_ms" in r else ""))
        for d in r["detections"]:
            print(f"  {d['label']:<14} {d['score']:.2f}  box {d['box']}")
    return 0
