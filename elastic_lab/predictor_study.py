"""``elastic-lab predictor-study``: how fast each scale-predictor design learns its targets.

The scale loss needs no detector, so every design can be trained on its own (the warm start of
predictor_pretrain.py) and measured the way that matters: on held-out images, the correlation
and mean absolute difference between the predicted u and the scale loss's optimum u*
(analysis.predictor_fidelity), every ``--eval-every`` steps. One JSON file per design is
written to ``OUT/predictor_<name>.json`` (the learning curve, the predictor's GFLOPs and its
share of the detector's); a finished design is not trained again.

The designs (:data:`VARIANTS`) separate the choices made for the default predictor: trunk and
thumbnail size (ResNet-18 on 64 px, the paper's and DyRA's trunk, vs MobileNetV3-Large or
-Small on 128-160 px), normalisation (batch statistics vs group norm), the dense size map, and
zoom-in crops.

FLOPs are not time: at batch 1 a small network of many thin layers runs far below the speed
per FLOP of the detector. ``--latency-only`` therefore times every design without training it
(weights do not change the time): the predictor and the detector at φ = 1, interleaved, at
batch 1, in float32 and under autocast, written to ``OUT/latency.json`` with the machine and the
number of threads. The share of the detector's time is what a latency saving has to pay for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .analysis import predictor_fidelity
from .data.coco import CocoDetection
from .experiments import first_images
from .flops import FlopTable, measure_latency_ms
from .models.build import ModelOptions, build_model
from .models.criterion import ElasticLossOptions
from .oracles import image_sizes
from .predictor_pretrain import PretrainOptions, pretrain_predictor
from .runtime import autocast_context, cpu_model, split_paths

__all__ = ["VARIANTS", "PredictorVariant", "run_variant"]


@dataclass(frozen=True)
class PredictorVariant:
    """One predictor design of the study."""

    name: str
    trunk: str
    norm: str
    thumb_size: int
    size_bins: int
    crop_prob: float


VARIANTS: tuple[PredictorVariant, ...] = (
    PredictorVariant("resnet18-batch-64", "resnet18", "batch", 64, 0, 0.0),  # the first design
    PredictorVariant("resnet18-batch-64-sizemap-crop", "resnet18", "batch", 64, 10, 0.5),
    PredictorVariant("mnv3l-group-160-crop", "mobilenet_v3_large", "group", 160, 0, 0.5),
    PredictorVariant("mnv3l-batch-160-sizemap-crop", "mobilenet_v3_large", "batch", 160, 10, 0.5),
    PredictorVariant("mnv3l-group-160-sizemap-crop", "mobilenet_v3_large", "group", 160, 10, 0.5),
    # cheaper at batch 1 on a CPU (OUT/latency.json)
    PredictorVariant("resnet18-group-64-sizemap-crop", "resnet18", "group", 64, 10, 0.5),
    PredictorVariant("mnv3s-group-160-sizemap-crop", "mobilenet_v3_small", "group", 160, 10, 0.5),
    PredictorVariant("mnv3s-group-128-sizemap-crop", "mobilenet_v3_small", "group", 128, 10, 0.5),
)
RECIPE_VARIANT = "mnv3l-group-160-sizemap-crop"  # recipes.py's predictor


def _write_json(path: Path, result: dict) -> None:
    """Write ``result`` atomically (a stopped study leaves no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def run_variant(variant: PredictorVariant, data: str | Path, eval_split: str, out: Path,
                steps: int, eval_every: int, eval_images: int | None = None,
                base_size: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Train ``variant`` alone on the train split; its fidelity curve on ``eval_split``."""
    train_set = CocoDetection(*split_paths(data, "train"))
    eval_set = first_images(CocoDetection(*split_paths(data, eval_split),
                                          categories=train_set.categories), eval_images)
    torch.manual_seed(seed)
    opts = ModelOptions(mode="elastic", base_size=base_size, thumb_size=variant.thumb_size,
                        predictor_trunk=variant.trunk, predictor_norm=variant.norm,
                        predictor_size_bins=variant.size_bins)
    model = build_model(opts, len(train_set.categories))
    loss = ElasticLossOptions.for_base_size(base_size)
    flops = FlopTable(model)  # mean GFLOPs over the eval images (memoised per size)
    sizes = image_sizes(eval_set)
    detector_gflops = sum(flops.detector(*model.sizes([hw], torch.ones(1))[0])
                          for hw in sizes) / len(sizes)
    predictor_gflops = sum(flops.predictor(*hw) for hw in sizes) / len(sizes)
    start = time.perf_counter()

    def fidelity(step: int) -> dict:
        f = predictor_fidelity(model, eval_set, vars(loss))
        return {"seconds": round(time.perf_counter() - start, 1),
                **{k: v for k, v in f.items() if k not in ("u", "u_star")}}

    rows = pretrain_predictor(model, train_set, PretrainOptions(
        steps=steps, crop_prob=variant.crop_prob, log_every=eval_every), loss, seed,
        progress=progress, on_log=fidelity)
    result = {"variant": asdict(variant), "steps": steps, "seed": seed, "base_size": base_size,
              "eval_split": eval_split, "eval_images": len(eval_set),
              "predictor_gflops": predictor_gflops, "detector_gflops": detector_gflops,
              "predictor_share": predictor_gflops / detector_gflops,
              "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "curve": rows}
    _write_json(out / f"predictor_{variant.name}.json", result)
    return result


def _median_ms(times: list[float]) -> float:
    return round(float(np.median(times)), 3)


@torch.inference_mode()
def time_design(model, image: torch.Tensor, repeats: int = 30, warmup: int = 3,
                amp: bool = False) -> dict:
    """Batch-1 time of ``model``'s predictor and of its detector at φ = 1 on ``image``
    ([3, H, W], on the model's device), the two calls interleaved ``repeats`` times.

    Returns:
        dict: ``predictor_ms`` and ``detector_ms`` (medians), ``share_of_detector_ms`` (their
        ratio) and ``share_interval`` (2.5th and 97.5th percentiles of the per-repeat ratio).
    """
    if repeats < 2:
        raise ValueError(f"time_design: repeats must be ≥ 2, got {repeats}")
    device = image.device
    one = torch.ones(1, device=device)
    calls = (lambda: model.predict_phi([image]), lambda: model.detect([image], one))
    times: tuple[list[float], list[float]] = ([], [])
    with autocast_context(device, amp):
        for _ in range(warmup):
            for call in calls:
                call()
        for r in range(repeats):
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[k].append(measure_latency_ms(calls[k], warmup=0, repeats=1,
                                                   device=device))
    ratio = np.asarray(times[0]) / np.asarray(times[1])
    return {"predictor_ms": _median_ms(times[0]), "detector_ms": _median_ms(times[1]),
            "share_of_detector_ms": round(float(np.median(times[0]) / np.median(times[1])), 4),
            "share_interval": [round(float(q), 4) for q in np.percentile(ratio, [2.5, 97.5])]}


def time_variants(variants: list[PredictorVariant], data: str | Path, out: Path,
                  eval_split: str = "test", repeats: int = 30, base_size: int = 256,
                  amp_modes: tuple[bool, ...] = (False, True)) -> dict:
    """Time every design (random weights: the time does not depend on them) on the first
    image of ``eval_split``, in float32 and under autocast; write ``out/latency.json``."""
    images = CocoDetection(*split_paths(data, eval_split))
    image, _ = images[0]
    hw = tuple(image.shape[1:])
    rows = []
    for variant in variants:
        torch.manual_seed(0)
        model = build_model(ModelOptions(
            mode="elastic", base_size=base_size, thumb_size=variant.thumb_size,
            predictor_trunk=variant.trunk, predictor_norm=variant.norm,
            predictor_size_bins=variant.size_bins), len(images.categories)).eval()
        flops = FlopTable(model)
        pred_gflops = flops.predictor(*hw)
        det_gflops = flops.detector(*model.sizes([hw], torch.ones(1))[0])
        row = {"variant": variant.name, "trunk": variant.trunk, "norm": variant.norm,
               "thumb_size": variant.thumb_size, "recipe": variant.name == RECIPE_VARIANT,
               "predictor_gflops": round(pred_gflops, 4), "detector_gflops": round(det_gflops, 4),
               "share_of_detector_gflops": round(pred_gflops / det_gflops, 4)}
        for amp in amp_modes:
            row["autocast" if amp else "float32"] = time_design(model, image, repeats, amp=amp)
        rows.append(row)
    result = {"image_size": list(hw), "base_size": base_size, "batch_size": 1,
              "repeats": repeats, "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "load_average": list(os.getloadavg())},
              "rows": rows}
    _write_json(out / "latency.json", result)
    return result


def latency_summary(result: dict) -> str:
    """The sentence docs/method.md quotes from ``latency.json`` (a test checks the quote)."""
    def pct(x: float) -> str:
        return f"{100 * x:.0f} %"

    recipe = next(r for r in result["rows"] if r["recipe"])
    modes = [m for m in ("autocast", "float32") if m in recipe]
    row, mode = min(((r, m) for r in result["rows"] for m in modes),
                    key=lambda rm: rm[0][rm[1]]["share_of_detector_ms"])
    machine = result["machine"]
    times = [f"{recipe[m]['predictor_ms']:.1f} ms in {m} "
             f"({pct(recipe[m]['share_of_detector_ms'])} of the detector's time at φ = 1 in the "
             f"same mode)" for m in modes]
    return (f"At batch 1 on {machine['torch_threads']} thread of {machine['cpu']} "
            f"({result['date']}, load average {machine['load_average'][0]:.1f}, "
            f"`benchmarks/predictor/latency.json`) the recipe's predictor takes "
            + " and ".join(times)
            + f" for {100 * recipe['share_of_detector_gflops']:.1f} % of the detector's FLOPs; "
            f"the lowest share of any design is {pct(row[mode]['share_of_detector_ms'])} "
            f"({row['variant']}, {mode}, {row[mode]['predictor_ms']:.1f} ms, "
            f"{100 * row['share_of_detector_gflops']:.1f} % of the FLOPs).")


def read_study(out: Path) -> list[dict]:
    """The finished designs' result files in ``out``, in the order of :data:`VARIANTS`."""
    found = [out / f"predictor_{v.name}.json" for v in VARIANTS]
    return [json.loads(path.read_text()) for path in found if path.exists()]


def fidelity_summary(results: list[dict], latency: dict | None = None) -> str:
    """The sentence docs/method.md quotes from the finished designs (a test checks the quote):
    each design's Pearson(u, u*) and MAE after its last step, with its share of the detector's
    time under autocast when ``latency`` (latency.json) has it."""
    share = {r["variant"]: r["autocast"]["share_of_detector_ms"]
             for r in (latency or {}).get("rows", []) if "autocast" in r}
    r0 = results[0]
    budgets = {(r["steps"], r["seed"], r["eval_split"], r["eval_images"]) for r in results}
    if len(budgets) > 1:
        raise ValueError(f"the designs were trained or read differently ({sorted(budgets)}); "
                         "rerun them with the same --steps, --seed and evaluation")
    parts = []
    for r in results:
        last, name = r["curve"][-1], r["variant"]["name"]
        cost = (f", {100 * share[name]:.0f} % of the detector's time under autocast"
                if name in share else "")
        recipe = " (the recipe's)" if name == RECIPE_VARIANT else ""
        parts.append(f"{name}{recipe} {last['pearson_u']:.3f} (MAE {last['mae_u']:.3f}{cost})")
    return (f"Trained alone for {r0['steps']} steps (seed {r0['seed']}) and read on "
            f"{r0['eval_images']} {r0['eval_split']} images, Pearson(u, u*) of the designs "
            f"finished so far: " + "; ".join(parts) + ".")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="COCO-format folder with train and eval splits")
    p.add_argument("--eval-split", default="test", help="held-out split the fidelity is read on")
    p.add_argument("--out", default="benchmarks/predictor")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-images", type=int, default=None, help="default: the whole split")
    p.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                   help="comma-separated names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="train finished designs again")
    p.add_argument("--latency-only", action="store_true",
                   help="time every design at batch 1 (no training) into OUT/latency.json")
    p.add_argument("--repeats", type=int, default=30,
                   help="timed calls per design (--latency-only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for --latency-only (default 1, as the latency cell)")


def run(args: argparse.Namespace) -> int:
    known = {v.name: v for v in VARIANTS}
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown predictor variants {unknown}; known: {sorted(known)}")
    out = Path(args.out)
    if args.latency_only:
        torch.set_num_threads(args.threads)
        r = time_variants([known[n] for n in names], args.data, out, args.eval_split,
                          args.repeats)
        for row in r["rows"]:
            print(f"{row['variant']}: {row['predictor_gflops']:.3f} GFLOPs "
                  f"({100 * row['share_of_detector_gflops']:.1f} % of the detector's), "
                  + ", ".join(f"{mode} {row[mode]['predictor_ms']:.1f} ms "
                              f"({100 * row[mode]['share_of_detector_ms']:.0f} % of its time)"
                              for mode in ("float32", "autocast") if mode in row))
        return 0
    for name in names:
        if (out / f"predictor_{name}.json").exists() and not args.force:
            print(f"{name}: done (OUT/predictor_{name}.json)")
            continue
        r = run_variant(known[name], args.data, args.eval_split, out, args.steps,
                        args.eval_every, args.eval_images, seed=args.seed)
        last = r["curve"][-1]
        print(f"{name}: pearson {last['pearson_u']:.3f}, MAE {last['mae_u']:.3f} after "
              f"{r['steps']} steps; predictor {100 * r['predictor_share']:.1f} % of the detector")
    return 0
