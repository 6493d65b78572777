"""Evaluation: COCO AP (pycocotools), GFLOPs of what ran, latency, and scale statistics.

``elastic-lab eval --checkpoint CKPT --data DIR --split val [--scale F] [--json OUT]``.
GFLOPs are counted with FlopCounterMode (flops.py) per processed size (memoised: the cost of
the detector depends only on its input size) plus, for elastic models, the predictor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .analysis import median_object_sides, predictor_fidelity, spearman
from .ap_subsets import SubsetAP
from .data.coco import CocoDetection, collate_fn
from .data.image import image_tensor
from .distributed import init_from_env
from .dota_eval import evaluate_detector_on_dota
from .flops import FlopTable, measure_latency_ms
from .models.build import load_model
from .models.elastic_detr import ElasticDETR
from .oracles import detect_at
from .runtime import add_device_arguments, autocast_context, resolve_device, split_paths


@torch.no_grad()
def run_inference(model: ElasticDETR, dataset: CocoDetection, batch_size: int = 8,
                  scale: float | None = None, workers: int = 0, progress: bool = True
                  ) -> list[dict]:
    """Detections for every image: {"image_id", "scores", "labels", "boxes" (xyxy px), "phi",
    "size", "orig_size"}, in item order.

    The scale of each image is ``scale``, else the model's own (predicted for elastic models,
    its fixed φ otherwise). Images are batched by equal processed size only, so there is no
    padding and the detections do not depend on ``batch_size`` (oracles.detect_at).
    """
    if scale is not None:
        phi = [float(scale)] * len(dataset)
    elif model.predictor is None:
        phi = [model.fixed_phi] * len(dataset)
    else:  # the predictor works per image (its thumbnails do not depend on the batch)
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                             collate_fn=collate_fn, num_workers=workers)
        phi = [p for images, _ in tqdm(loader, desc="scale", disable=not progress,
                                       dynamic_ncols=True)
               for p in model.predict_phi([im.to(device) for im in images]).tolist()]
    return detect_at(model, dataset, phi, batch_size, progress)


def coco_metrics(dataset: CocoDetection, results: list[dict]) -> dict[str, float]:
    """COCOeval bbox AP, AP50, AP75, APs, APm, APl of detections in original pixels."""
    return SubsetAP(dataset, results).metrics(range(len(results)))


def phi_vs_object_size(dataset: CocoDetection, results: list[dict]) -> dict:
    """Seed experiment 1: Spearman rank correlation between the predicted phi and the median
    object side of each image (negative = small objects get up-scaled)."""
    sides = dict(zip(dataset.ids, median_object_sides(dataset)))
    pairs = [(sides[r["image_id"]], r["phi"]) for r in results
             if not np.isnan(sides.get(r["image_id"], np.nan))]
    if len(pairs) < 3:
        return {"spearman_phi_vs_median_side": None}
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    return {"spearman_phi_vs_median_side": float(rho), "num_images_with_objects": len(pairs)}


def phi_by_regime(dataset: CocoDetection, results: list[dict]) -> dict[str, float]:
    """Mean predicted phi per value of the images' "regime" field (the synthetic set records
    tiny / medium / mixed / large / empty per image); {} when the images have no such field."""
    groups: dict[str, list[float]] = {}
    for r in results:
        regime = dataset.coco.imgs[r["image_id"]].get("regime")
        if regime is not None:
            groups.setdefault(str(regime), []).append(r["phi"])
    return {g: float(np.mean(v)) for g, v in sorted(groups.items())}


def evaluate(model: ElasticDETR, dataset: CocoDetection, batch_size: int = 8,
             scale: float | None = None, latency_images: int = 20, progress: bool = True,
             loss_options: dict | None = None) -> dict:
    """AP metrics + gflops_per_image + latency_ms + mean_scale (+ elastic statistics).

    With ``loss_options`` (a checkpoint's "loss_options"), elastic models also report
    "predictor_fidelity": the predicted u against the scale loss's optimum u* on these images
    (analysis.predictor_fidelity, per-image columns left out)."""
    model.eval()
    if dist.is_available() and dist.is_initialized():  # torchrun: shard, gather on every rank
        rank, world = dist.get_rank(), dist.get_world_size()
        part = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
        gathered: list = [None] * world
        dist.all_gather_object(gathered, run_inference(model, part, batch_size, scale,
                                                       progress=progress and rank == 0))
        results = sorted((r for g in gathered for r in g), key=lambda r: r["image_id"])
        if rank != 0:
            return {}
    else:
        results = run_inference(model, dataset, batch_size, scale, progress=progress)
    metrics = coco_metrics(dataset, results)
    flops = FlopTable(model)
    phis = np.array([r["phi"] for r in results])
    det = [flops.detector(*r["size"]) for r in results]
    pred = [flops.predictor(*r["orig_size"]) for r in results] \
        if model.predictor is not None and scale is None else []
    base = [flops.detector(*model.sizes([r["orig_size"]], torch.ones(1))[0]) for r in results]
    total = np.array(det) + (np.array(pred) if pred else 0.0)
    metrics.update({
        "gflops_per_image": float(total.mean()),
        "detector_gflops": float(np.mean(det)),
        "predictor_gflops": float(np.mean(pred)) if pred else 0.0,
        "gflops_phi1": float(np.mean(base)),
        "compute_saved": float(1 - total.mean() / np.mean(base)),
        "mean_scale": float(phis.mean()),
        "scale_std": float(phis.std()),
        "mean_processed_pixels": float(np.mean([h * w for h, w in (r["size"] for r in results)])),
        "num_images": len(results),
        "mode": "elastic" if model.predictor is not None and scale is None else "fixed-scale",
    })
    if metrics["mode"] == "elastic":
        metrics.update(phi_vs_object_size(dataset, results))
        metrics["phi_by_regime"] = phi_by_regime(dataset, results)
        if loss_options is not None:
            f = predictor_fidelity(model, dataset, loss_options, batch_size)
            metrics["predictor_fidelity"] = {k: v for k, v in f.items()
                                             if k not in ("u", "u_star")}
    hist, edges = np.histogram(phis, bins=10, range=(model.tau_min, model.tau_max))
    metrics["phi_histogram"] = {"counts": hist.tolist(), "edges": edges.tolist()}
    n = min(latency_images, len(dataset))
    if n:
        lat = [measure_latency_ms(lambda im=dataset[i][0]: model.detect(
            [im.to(next(model.parameters()).device)],
            None if scale is None else torch.full((1,), float(scale))), warmup=1, repeats=3)
            for i in range(n)]
        metrics["latency_ms"] = float(np.median(lat))
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="COCO-format folder")
    p.add_argument("--split", default="val")
    p.add_argument("--scale", type=float, default=None,
                   help="force this phi for every image (default: 1 for fixed/multiscale "
                        "models, predicted for elastic ones)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--latency-images", type=int, default=20,
                   help="images timed one by one for the median latency")
    p.add_argument("--json", default=None, help="write the metrics to this file")
    p.add_argument("--dota", action="store_true",
                   help="--data is a dota-split folder: detect on patches, merge, and report "
                        "DOTA VOC07 mAP and COCO AP on the full images")
    p.add_argument("--dota-src", default=None, help="DOTA source folder (default: from the patch map)")
    add_device_arguments(p)


def dota_metrics(model: ElasticDETR, split_dir: str, split: str, scale: float | None,
                 src_dir: str | None = None, batch_size: int = 8) -> dict:
    """Full-image DOTA evaluation of a model run patch by patch (dota_eval.py does the merging)."""
    device = next(model.parameters()).device
    phis: list[float] = []

    def predict_fn(pil_images):
        images = [image_tensor(im).to(device) for im in pil_images]
        phi = None if scale is None else torch.full((len(images),), float(scale))
        dets, out = model.detect(images, phi)
        phis.extend(out["phi"].tolist())
        return [(d["boxes"].cpu(), d["scores"].cpu(), d["labels"].cpu()) for d in dets]

    result = evaluate_detector_on_dota(predict_fn, split_dir, split, src_dir, batch_size)
    result["mean_scale"] = float(np.mean(phis)) if phis else None
    result["patch_phi"] = phis
    return result


def run(args: argparse.Namespace) -> int:
    _, _, local_rank = init_from_env()
    device = resolve_device(args.device, local_rank)
    model, ckpt = load_model(args.checkpoint, device)
    amp = autocast_context(device, args.amp)  # --amp: float16 (CUDA) / bfloat16 (CPU) inference
    if args.dota:
        with amp:
            metrics = dota_metrics(model, args.data, args.split, args.scale, args.dota_src,
                                   args.batch_size)
        text = json.dumps(metrics, indent=2)
        if args.json:
            Path(args.json).write_text(text)
        print(text)
        return 0
    image_dir, ann = split_paths(args.data, args.split)
    dataset = CocoDetection(image_dir, ann, categories=ckpt["categories"])
    with amp:
        metrics = evaluate(model, dataset, args.batch_size, args.scale, args.latency_images,
                           loss_options=ckpt.get("loss_options"))
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    metrics.update({"checkpoint": str(args.checkpoint), "split": args.split, "amp": args.amp})
    text = json.dumps(metrics, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)
    return 0
