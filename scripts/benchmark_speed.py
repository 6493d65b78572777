"""Training images/s and inference ms/image of the default detector at several base sizes.

    python scripts/benchmark_speed.py [--sizes 128 256 384] [--batch-size 8] [--steps 5]
        [--device auto] [--amp] [--mode fixed|elastic] [--json OUT]

Random images of the base size (square), random initialisation; medians over --steps timed
steps (engine.train_step, as training runs them) after one warm-up. Prints a Markdown table. A benchmark, not a test: numbers depend on
the machine (README quotes those of the 2-core development CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from elastic_lab.engine import train_step
from elastic_lab.flops import FlopTable
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.criterion import ElasticLossOptions, build_criterion
from elastic_lab.models.detr import DetrOptions
from elastic_lab.runtime import autocast_context, resolve_device


def fake_batch(n: int, size: int, device, num_classes: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 20, (1,), generator=g))
        boxes = torch.rand(k, 4, generator=g) * 0.4 + 0.3
        boxes[:, 2:] *= 0.3
        targets.append({"boxes": boxes.to(device),
                        "labels": torch.randint(0, num_classes, (k,), generator=g).to(device)})
    return images, targets


def bench(size: int, args, device) -> dict:
    opts = ModelOptions(mode=args.mode, base_size=size,
                        detr=DetrOptions(freeze_stem=args.freeze_stem))
    model = build_model(opts, 6).to(device)
    crit = build_criterion(6, opts.detr.num_decoder_layers,
                           ElasticLossOptions.for_base_size(size) if args.mode == "elastic"
                           else None)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images, targets = fake_batch(args.batch_size, size, device)
    phi = None if args.mode == "elastic" else torch.ones(len(images))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    model.train()
    for i in range(args.steps + 1):
        sync()
        t0 = time.perf_counter()
        train_step(model, crit, optim, images, targets, phi, 0.1, None,
                   autocast_context(device, args.amp))
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    train_ips = args.batch_size / statistics.median(times)
    model.eval()
    lat = []
    with torch.inference_mode(), autocast_context(device, args.amp):
        for i in range(args.steps + 1):
            sync()
            t0 = time.perf_counter()
            model.detect(images[:1], None if phi is None else torch.ones(1))
            sync()
            if i:
                lat.append(1000 * (time.perf_counter() - t0))
    flops = FlopTable(model)
    g = flops.detector(size, size) + flops.predictor(size, size)
    return {"base_size": size, "train_images_per_s": train_ips,
            "inference_ms_per_image": statistics.median(lat), "gflops_per_image": g}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mode", choices=["fixed", "elastic"], default="fixed")
    p.add_argument("--freeze-stem", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (bfloat16 on CPU: AMX/AVX-512 BF16 units, float16 on CUDA)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    rows = [bench(s, args, device) for s in args.sizes]
    print(f"device: {device}, threads: {torch.get_num_threads()}, mode: {args.mode}, amp: {args.amp}, "
          f"batch {args.batch_size}, freeze_stem={args.freeze_stem}")
    print("| base size | train images/s | inference ms/image | GFLOPs/image |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['base_size']} | {r['train_images_per_s']:.1f} | "
              f"{r['inference_ms_per_image']:.1f} | {r['gflops_per_image']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
