"""``elastic-lab bench``: the paper's claim, measured on the synthetic scale-diverse set.

Trains ``fixed``, ``multiscale`` and ``elastic`` with the same budget (steps, batch, seed, base
size, detector), plus the seed's experiments (an elastic run without the scale loss, and a
tau_max sweep), then evaluates every run on a split that no setting was chosen on (``test``):

- ``fixed`` and ``multiscale`` at each forced test scale phi (one point per scale),
- every elastic run at its own predicted scales (GFLOPs include the predictor).

Compute saved is stated two ways against each baseline: (1) the elastic GFLOPs over the
baseline's GFLOPs at the lowest test scale where the baseline reaches the elastic AP (and, in
between tested scales, on the baseline's piecewise-linear Pareto front), with the latency
saving measured the same way beside it; (2) the AP gain at equal GFLOPs.

Writes OUT/results.json, OUT/results.md, OUT/figures.html and one PNG per figure (kaleido, when
it can run a browser). Runs live in OUT/runs/NAME; a finished run with the same options is
reused, so an interrupted benchmark starts again at its first unfinished run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .analysis import compare_to_baseline, phi_object_size_table
from .bench_report import write_report
from .compare_hf import markdown_table, speed_comparison
from .config import TrainConfig, smoke_config
from .data.coco import CocoDetection
from .evaluate import evaluate
from .experiments import (
    ExperimentRun,
    comparison_runs,
    ensure_synth,
    first_images,
    train_run,
    trained_seconds,
)
from .models.build import load_model
from .models.detr import DetrOptions
from .runtime import add_device_arguments, resolve_device, split_paths

# the paper's goal (issue 5): >= 26 % fewer GFLOPs at the baseline's best AP, or +3.5 AP
GOAL_COMPUTE_SAVED, GOAL_AP_GAIN, GOAL_LATENCY_RATIO = 0.26, 0.035, 0.8
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class BenchOptions:
    """Settings of the benchmark; every run trains the same budget with the same options."""

    data: str = "data/synth"
    out: str = "benchmarks"
    budget_steps: int = 300
    batch_size: int = 8
    base_size: int = 256
    seed: int = 0
    tau_min: float = 0.5
    tau_max: float = 1.5
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    tau_max_sweep: tuple[float, ...] = (1.25, 2.0)
    split: str = "test"
    eval_images: int = 300
    latency_images: int = 20
    freeze_stem: bool = True     # train options of every run (make bench's recipe)
    lr_drop: float | None = 0.8
    workers: int = 1
    amp: bool = False
    synth_sizes: tuple[int, int, int] = (2000, 300, 300)
    compare_hf: str = "auto"     # auto | yes | no
    device: str = "auto"
    reuse: bool = True
    smoke: bool = False
    notes: list[str] = field(default_factory=list)


def smoke_options(out: str) -> BenchOptions:
    """Seconds, not minutes: the smoke detector (config.smoke_config), 2 steps per run, 4 test
    images."""
    return BenchOptions(data=str(Path(out) / "synth"), out=out, budget_steps=2, batch_size=4,
                        base_size=64, scales=(0.75, 1.0), tau_max_sweep=(1.25,), eval_images=4,
                        latency_images=1, freeze_stem=False, lr_drop=None, workers=0,
                        synth_sizes=(8, 0, 4), smoke=True)


def base_config(opts: BenchOptions) -> TrainConfig:
    """The training config every run starts from (the default detector, or the smoke one)."""
    config = smoke_config(opts.data, opts.out) if opts.smoke else TrainConfig(opts.data, opts.out)
    config.model.base_size, config.model.tau_min = opts.base_size, opts.tau_min
    config.model.tau_max = opts.tau_max
    config.model.detr.freeze_stem = opts.freeze_stem
    config.train.max_steps, config.train.batch_size = opts.budget_steps, opts.batch_size
    config.train.seed, config.train.lr_drop = opts.seed, opts.lr_drop
    config.device, config.amp, config.workers = opts.device, opts.amp, opts.workers
    return config


def bench_runs(opts: BenchOptions) -> list[ExperimentRun]:
    """The runs: both baselines, elastic, elastic without L_scale, and the tau_max sweep."""
    return comparison_runs(base_config(opts), Path(opts.out) / "runs", opts.tau_max_sweep)


def _point(run: str, role: str, scale: float | None, m: dict) -> dict:
    p = {"run": run, "role": role, "scale": scale, **{k: m[k] for k in METRIC_KEYS},
         "gflops": m["gflops_per_image"], "predictor_gflops": m["predictor_gflops"],
         "ms": m["latency_ms"], "mean_phi": m["mean_scale"], "phi_std": m["scale_std"]}
    if scale is None:
        p["spearman"] = m.get("spearman_phi_vs_median_side")
        p["compute_saved_vs_phi1"] = m["compute_saved"]
    return p


def evaluate_run(opts: BenchOptions, spec: ExperimentRun, ckpt: Path, dataset_cache: dict
                 ) -> tuple[list[dict], dict | None]:
    """Points of one run on the report split; for elastic runs also the phi-vs-size table."""
    model, meta = load_model(ckpt, resolve_device(opts.device))
    key = json.dumps(meta["categories"])
    if key not in dataset_cache:
        image_dir, ann = split_paths(opts.data, opts.split)
        dataset_cache[key] = first_images(
            CocoDetection(image_dir, ann, categories=meta["categories"]), opts.eval_images)
    data = dataset_cache[key]
    if spec.mode != "elastic":
        return [_point(spec.name, spec.role, s, evaluate(model, data, 8, s, opts.latency_images,
                                                         progress=False))
                for s in sorted(opts.scales)], None
    point = _point(spec.name, spec.role, None, evaluate(model, data, 8, None,
                                                        opts.latency_images, progress=False))
    table = phi_object_size_table(model, data)
    keep = np.isfinite(table["median_side"])
    return [point], {"median_side": table["median_side"][keep].tolist(),
                     "phi": table["phi"][keep].tolist()}


def lowest_scale_reaching(points: Sequence[dict], ap: float) -> dict | None:
    """The baseline point at the lowest tested scale whose AP is at least ``ap`` (or None)."""
    ok = [p for p in sorted(points, key=lambda p: p["scale"]) if p["AP"] >= ap]
    return ok[0] if ok else None


def compare(elastic: dict, baseline: Sequence[dict]) -> dict:
    """The elastic point against a baseline's per-scale points (both ways, FLOPs and latency)."""
    front = [{"ap": p["AP"], "gflops": p["gflops"]} for p in baseline]
    flops = compare_to_baseline(front, elastic["AP"], elastic["gflops"])
    lat = compare_to_baseline([{"ap": p["AP"], "gflops": p["ms"]} for p in baseline],
                              elastic["AP"], elastic["ms"])
    out = {"ap_gain_at_equal_gflops": flops["ap_gain"],
           "baseline_ap_at_equal_gflops": flops["baseline_ap_at_equal_gflops"],
           "gflops_extrapolated": flops["extrapolated"],
           "compute_saved_interpolated": flops["compute_saved"],
           "latency_saved_interpolated": lat["compute_saved"],
           "baseline_best_ap": max(p["AP"] for p in baseline)}
    hit = lowest_scale_reaching(baseline, elastic["AP"])
    out["lowest_scale_reaching_elastic_ap"] = None if hit is None else hit["scale"]
    out["compute_saved"] = None if hit is None else 1 - elastic["gflops"] / hit["gflops"]
    out["latency_saved"] = None if hit is None else 1 - elastic["ms"] / hit["ms"]
    out["latency_to_flops_saving"] = (out["latency_saved"] / out["compute_saved"]
                                      if hit is not None and out["compute_saved"] > 0 else None)
    best = max(baseline, key=lambda p: p["AP"])
    out["goal_met"] = bool(
        (elastic["AP"] >= best["AP"] and 1 - elastic["gflops"] / best["gflops"]
         >= GOAL_COMPUTE_SAVED) or out["ap_gain_at_equal_gflops"] >= GOAL_AP_GAIN)
    return out


def speed_vs_hf(opts: BenchOptions) -> dict:
    """Inference speed ratio against transformers' DetrForObjectDetection (the [compare] extra)."""
    if opts.compare_hf == "no":
        return {"skipped": "--compare-hf no"}
    try:
        detr = DetrOptions(d_model=32, num_encoder_layers=1, num_decoder_layers=2) \
            if opts.smoke else DetrOptions()
        size = (opts.base_size, opts.base_size)
        rows = speed_comparison(detr, size=size, batch_sizes=(1, 2) if opts.smoke else (1, 8),
                                repeats=1 if opts.smoke else 5)
    except ImportError as exc:
        if opts.compare_hf == "yes":
            raise
        return {"skipped": str(exc)}
    return {"rows": rows, "markdown": markdown_table(rows)}


def run_bench(opts: BenchOptions, progress: bool = True) -> dict:
    """Train, evaluate, compare; write results.json/.md and the figures. Returns the results."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_val, n_test = opts.synth_sizes
    ensure_synth(opts.data, n_train, n_val, n_test, seed=0)
    split_paths(opts.data, opts.split)  # a clear error when the report split is missing
    specs = bench_runs(opts)
    runs, tables, cache = {}, {}, {}
    for i, spec in enumerate(specs):
        if progress:
            print(f"[bench {i + 1}/{len(specs)}] {spec.name}: train {opts.budget_steps} steps, "
                  f"evaluate on {opts.split}", flush=True)
        ckpt = train_run(spec.config, reuse=opts.reuse)
        points, table = evaluate_run(opts, spec, ckpt, cache)
        runs[spec.name] = {"name": spec.name, "mode": spec.mode, "role": spec.role,
                           "tau_max": spec.tau_max,
                           "use_scale_loss": spec.config.loss_options().use_scale_loss,
                           "checkpoint": str(ckpt), "train_seconds": trained_seconds(ckpt),
                           "points": points}
        if table is not None:
            tables[spec.name] = table
    elastic = runs["elastic"]["points"][0]
    results = {
        "settings": {k: v for k, v in asdict(opts).items() if k != "notes"},
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "comparisons": {b: compare(elastic, runs[b]["points"]) for b in ("multiscale", "fixed")},
        "seed_experiments": {
            "phi_vs_object_size": {name: {"spearman": runs[name]["points"][0]["spearman"],
                                          **tables[name]} for name in tables},
            "ablation_no_scale_loss": runs["elastic_no_scale_loss"]["points"][0],
            "tau_max_sweep": sorted(({"tau_max": runs[s.name]["tau_max"],
                                      **runs[s.name]["points"][0]}
                                     for s in specs if s.mode == "elastic" and s.role != "ablation"),
                                    key=lambda r: r["tau_max"]),
        },
        "speed_vs_hf": speed_vs_hf(opts),
    }
    write_report(results, out)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    p.add_argument("--data", default=d.data, help="synthetic set (generated when missing)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--budget-steps", type=int, default=d.budget_steps,
                   help="training steps of every run (same batch, seed, base size, detector)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--base-size", type=int, default=d.base_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tau-min", type=float, default=d.tau_min)
    p.add_argument("--tau-max", type=float, default=d.tau_max)
    p.add_argument("--scales", type=float, nargs="+", default=list(d.scales),
                   help="forced test scales of the fixed and multiscale baselines")
    p.add_argument("--tau-max-sweep", type=float, nargs="*", default=list(d.tau_max_sweep),
                   help="extra elastic runs with these tau_max (the main run has --tau-max)")
    p.add_argument("--split", default=d.split, help="report split (never tuned on)")
    p.add_argument("--eval-images", type=int, default=d.eval_images)
    p.add_argument("--latency-images", type=int, default=d.latency_images)
    p.add_argument("--compare-hf", choices=["auto", "yes", "no"], default=d.compare_hf,
                   help="speed ratio vs transformers DetrForObjectDetection ([compare] extra)")
    p.add_argument("--no-reuse", action="store_true", help="retrain runs that already finished")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of the whole pipeline")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.smoke:
        opts = smoke_options(args.out)
    else:
        opts = BenchOptions(
            data=args.data, out=args.out, budget_steps=args.budget_steps,
            batch_size=args.batch_size, base_size=args.base_size, seed=args.seed,
            tau_min=args.tau_min, tau_max=args.tau_max, scales=tuple(args.scales),
            tau_max_sweep=tuple(args.tau_max_sweep), split=args.split,
            eval_images=args.eval_images, latency_images=args.latency_images)
    opts.compare_hf, opts.device, opts.reuse = args.compare_hf, args.device, not args.no_reuse
    opts.amp = args.amp
    results = run_bench(opts)
    print((Path(opts.out) / "results.md").read_text())
    c = results["comparisons"]["multiscale"]
    print(f"goal met vs multiscale: {c['goal_met']}")
    return 0
