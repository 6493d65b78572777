"""``elastic-lab bench`` (``make bench``): does a learned per-image resolution beat the best
single resolution, beyond the noise? (issue 16)

The benchmark is a set of *cells*, each one named run of the recipe (``elastic_lab/recipes.py``)
at one seed, trained with the same data, detector and budget (bench_cells.py):

- ``fixed_0.75``, ``fixed_1.00``, ``fixed_1.25``, ``fixed_1.50``: fixed-resolution detectors,
  each trained and tested at its φ (together: the fixed-resolution front, up to the sweep's
  top); ``multiscale`` (the paper's baseline, tested at every φ of the sweep 0.5, 0.625, …,
  1.5); ``elastic`` (its predicted φ): seeds 0, 1, 2;
- the ablations at seed 0 (more seeds when named): ``elastic_no_scale_loss``,
  ``elastic_no_dist_loss``, ``elastic_paper_dist``, ``elastic_tau_max_1.25``,
  ``elastic_tau_max_2``;
- studies, trained only when named (``--cells fixed_1.75_s0``): ``fixed_1.75`` (past the
  sweep's top), ``elastic_budget_0.9``, ``elastic_budget_1.0``;
- ``latency``: elastic against fixed_1.00 (seed 0), paired in one process (bench_latency.py),
  at the size they were trained at and, time only, at larger processing sizes.

Each finished cell writes one small result file ``OUT/cells/<cell>.json`` (committed; the run
folders ``OUT/runs/<cell>/`` are not). ``make bench`` trains only the cells without a file, in
order (the main runs at seed 0 first), resumes a run that was stopped half-way, and can be
stopped at any time; ``--max-cells N`` and ``--cells a,b`` bound a session. Every cell is
evaluated on the test split (nothing is tuned on it; bench_eval.py), and the report
(``OUT/results.md``, ``OUT/results.json``, figures) is assembled from the cell files alone
(bench_summary.py, bench_report.py): ``--report-only`` rebuilds it without training.
``--smoke`` runs the whole pipeline in seconds on a tiny generated set (default ``OUT``
``benchmarks/smoke``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .bench_cells import (
    ABLATIONS,
    CELL_FORMAT,
    LATENCY,
    LATENCY_PAIR,
    SEEDS,
    Cell,
    all_cells,
    calibrate_cell,
    cell_config,
    machine,
    missing_cells,
    parse_cell,
    train_cell,
    write_cell,
)
from .bench_eval import SWEEP, EvalOptions, SharedFlops, evaluate_cell
from .bench_latency import latency_by_base_size, paired_latency
from .bench_report import write_report
from .data.coco import CocoDetection
from .experiments import ensure_synth, first_images
from .models.build import load_model
from .runtime import add_device_arguments, autocast_context, resolve_device, split_paths

SMOKE_OUT = "benchmarks/smoke"


@dataclass
class BenchOptions:
    """What one ``elastic-lab bench`` session does."""

    data: str = "data/synth"
    out: str = "benchmarks"
    seeds: tuple[int, ...] = SEEDS
    ablations: tuple[str, ...] = ABLATIONS
    cells: tuple[str, ...] | None = None   # only these cells (default: every cell, in order)
    max_cells: int | None = None           # train at most this many missing cells
    report_only: bool = False
    split: str = "test"
    eval_images: int = 300
    replicas: int = 200
    scales: tuple[float, ...] = SWEEP
    latency_images: int = 30
    latency_repeats: int = 20
    latency_files: tuple[str, str] | None = None  # time these (elastic, fixed) checkpoint files
    latency_base_sizes: tuple[int, ...] = (512, 800)  # time the pair at these short sides too
    synth_sizes: tuple[int, int, int] = (2000, 300, 300)
    device: str = "auto"
    amp: bool = False
    threads: int | None = None             # torch CPU threads (None: torch's default)
    smoke: bool = False
    png: bool = True


def smoke_options(out: str = SMOKE_OUT) -> BenchOptions:
    """Seconds, not hours: the smoke recipe at one seed with one ablation, 3 test images, a
    3-point sweep, 10 replicas, the latency of 2 images x 2 repeats (and at one larger
    processing size), one CPU thread (tiny models on a busy 2-core machine run far slower on
    two), no PNGs."""
    return BenchOptions(data=str(Path(out) / "synth"), out=out, seeds=(0,),
                        ablations=("elastic_no_scale_loss",), eval_images=3, replicas=10,
                        scales=(0.75, 1.0, 1.25), latency_images=2, latency_repeats=2,
                        latency_base_sizes=(96,),
                        synth_sizes=(8, 4, 3), threads=1, smoke=True, png=False)


def report_dataset(opts: BenchOptions, categories: list[dict]) -> CocoDetection:
    """The first ``eval_images`` images of the report split, in the model's category order."""
    image_dir, ann = split_paths(opts.data, opts.split)
    return first_images(CocoDetection(image_dir, ann, categories=categories), opts.eval_images)


def _stamp(opts: BenchOptions, device) -> dict:
    return {"format": CELL_FORMAT, "split": opts.split, "smoke": opts.smoke,
            "date": datetime.date.today().isoformat(), "machine": machine(device, opts.amp)}


def run_cell(opts: BenchOptions, name: str) -> dict:
    """Train (or reuse, or resume) and evaluate one cell; returns its result (also written)."""
    if name == LATENCY:
        return run_latency(opts)
    cell = parse_cell(name)
    device = resolve_device(opts.device)
    config = cell_config(cell, Path(opts.out) / "runs", opts.data, opts.device, opts.amp,
                         opts.smoke)
    ckpt, training = train_cell(config)
    start = time.perf_counter()
    ckpt, calibration = calibrate_cell(ckpt, config, opts.smoke)
    model, meta = load_model(ckpt, device)
    dataset = report_dataset(opts, meta["categories"])
    cache = load_flops_cache(opts)
    with autocast_context(device, opts.amp):
        result = evaluate_cell(model, meta, dataset,
                               EvalOptions(scales=opts.scales, replicas=opts.replicas), cache)
    save_flops_cache(opts, cache)
    out = {"cell": name, "run": cell.run, "seed": cell.seed, "role": cell.spec.role,
           "note": cell.spec.note, **_stamp(opts, device), "recipe": config.to_dict(),
           "training": training, "evaluated": ckpt.name, "calibration": calibration, **result,
           "evaluation_seconds": round(time.perf_counter() - start, 1)}
    write_cell(Path(opts.out) / "cells", name, out)
    return out


def run_latency(opts: BenchOptions) -> dict:
    """The latency cell: elastic against fixed_1.00 at the first seed (trained when their run
    folders are missing), interleaved in this process. With ``opts.latency_files`` it times
    those two checkpoint files instead (e.g. the shipped exports of the same runs: time depends
    on the architecture and the chosen φ, not on the run folder), and records each file's
    origin (its card's ``checkpoint``)."""
    device = resolve_device(opts.device)
    models, names, origins = [], [], []
    for run, given in zip(LATENCY_PAIR, opts.latency_files or (None, None)):
        if given is None:
            cell = Cell(run, opts.seeds[0])
            config = cell_config(cell, Path(opts.out) / "runs", opts.data, opts.device,
                                 opts.amp, opts.smoke)
            ckpt, _ = calibrate_cell(train_cell(config)[0], config, opts.smoke)
            name = cell.name
        else:
            ckpt = name = str(given)
        models.append(load_model(ckpt, device))
        names.append(name)
        origins.append((models[-1][1].get("card") or {}).get("checkpoint", str(ckpt)))
    (model, meta), (reference, ref_meta) = models
    dataset = report_dataset(opts, meta["categories"])
    cache = load_flops_cache(opts)
    start = time.perf_counter()
    timing = {"images": opts.latency_images, "repeats": opts.latency_repeats, "amp": opts.amp,
              "flops": SharedFlops(model, meta, cache),
              "reference_flops": SharedFlops(reference, ref_meta, cache)}
    result = paired_latency(model, reference, dataset, **timing)
    others = latency_by_base_size(model, reference, dataset,
                                  [s for s in opts.latency_base_sizes if s != model.base_size],
                                  **timing)
    save_flops_cache(opts, cache)
    out = {"cell": LATENCY, "model": names[0], "reference": names[1],
           "origins": origins, **_stamp(opts, device), **result,
           "base_size": model.base_size, "max_size": model.max_size, "other_sizes": others,
           "seconds": round(time.perf_counter() - start, 1)}
    write_cell(Path(opts.out) / "cells", LATENCY, out)
    return out


def flops_cache_file(opts: BenchOptions) -> Path:
    """``OUT/runs/flops_cache.json``: GFLOPs per architecture and input size (bench_eval.
    SharedFlops), kept between cells and sessions (FlopCounterMode takes ~0.3 s a size)."""
    return Path(opts.out) / "runs" / "flops_cache.json"


def load_flops_cache(opts: BenchOptions) -> dict:
    path = flops_cache_file(opts)
    return json.loads(path.read_text()) if path.is_file() else {}


def save_flops_cache(opts: BenchOptions, cache: dict) -> None:
    path = flops_cache_file(opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, path)


def expected_cells(opts: BenchOptions) -> list[str]:
    """Every cell of this benchmark, in training order."""
    return all_cells(opts.seeds, opts.ablations)


def planned_cells(opts: BenchOptions) -> list[str]:
    """The missing cells this session trains, in order."""
    names = list(opts.cells) if opts.cells else expected_cells(opts)
    for n in names:
        if n != LATENCY:
            parse_cell(n)  # a clear error for a mistyped name, before any training
    todo = missing_cells(Path(opts.out) / "cells", names)
    return todo if opts.max_cells is None else todo[:max(0, opts.max_cells)]


def run_bench(opts: BenchOptions, progress: bool = True) -> dict:
    """Train and evaluate the planned cells, then rebuild the report. Returns results.json."""
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        if not opts.report_only:
            todo = planned_cells(opts)
            if todo:
                ensure_synth(opts.data, *opts.synth_sizes, seed=0)
                split_paths(opts.data, opts.split)  # a clear error when the split is missing
            for i, name in enumerate(todo):
                if progress:
                    print(f"[bench {i + 1}/{len(todo)}] {name}", flush=True)
                run_cell(opts, name)
        return write_report(Path(opts.out), expected_cells(opts), png=opts.png)
    finally:
        torch.set_num_threads(threads)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    p.add_argument("--data", default=d.data, help="synthetic set (generated when missing)")
    p.add_argument("--out", default=None,
                   help=f"benchmark folder (default {d.out}; with --smoke {SMOKE_OUT})")
    p.add_argument("--cells", default=None,
                   help="comma-separated cells to train if missing (e.g. elastic_s0,latency)")
    p.add_argument("--max-cells", type=int, default=None,
                   help="train at most this many missing cells, then write the report")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.md/json and the figures from the cell files")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds),
                   help="seeds of the main runs (the ablations use the first)")
    p.add_argument("--latency-files", default=None, metavar="ELASTIC.pt,FIXED.pt",
                   help="the latency cell times these two checkpoints instead of the seed's "
                        "run folders (e.g. the shipped exports of elastic_s0, fixed_1.00_s0)")
    p.add_argument("--latency-sizes", type=int, nargs="*", default=None, metavar="PIXELS",
                   help="the latency cell also times the pair at these processing sizes (short "
                        f"side; default {' '.join(map(str, d.latency_base_sizes))}; time and "
                        "FLOPs only, the detectors were trained at another)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; recorded in every cell)")
    p.add_argument("--no-png", action="store_true", help="figures as HTML only")
    p.add_argument("--smoke", action="store_true",
                   help="the whole pipeline in seconds (smoke recipe, tiny generated set)")
    add_device_arguments(p)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The BenchOptions of an ``elastic-lab bench`` command line."""
    opts = smoke_options(args.out or SMOKE_OUT) if args.smoke else BenchOptions(
        data=args.data, out=args.out or BenchOptions.out, seeds=tuple(args.seeds))
    return replace(opts, cells=tuple(c for c in args.cells.split(",") if c) if args.cells
                   else None, max_cells=args.max_cells, report_only=args.report_only,
                   device=args.device, amp=args.amp, png=opts.png and not args.no_png,
                   threads=args.threads or opts.threads,
                   latency_files=_file_pair(args.latency_files),
                   latency_base_sizes=opts.latency_base_sizes if args.latency_sizes is None
                   else _sizes(args.latency_sizes))


def _sizes(given: list[int]) -> tuple[int, ...]:
    """``--latency-sizes`` as processing sizes (short sides of at least 32 pixels)."""
    bad = [s for s in given if s < 32]
    if bad:
        raise SystemExit(f"--latency-sizes: a processing size is at least 32 pixels, got {bad}")
    return tuple(given)


def _file_pair(text: str | None) -> tuple[str, str] | None:
    """``--latency-files A,B`` as a pair of existing files (None when not given)."""
    if text is None:
        return None
    files = tuple(f.strip() for f in text.split(","))
    if len(files) != 2 or not all(files):
        raise SystemExit(f"--latency-files: need two files ELASTIC.pt,FIXED.pt, got {text!r}")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"--latency-files: no such file: {', '.join(missing)}")
    return files


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    results = run_bench(opts)
    print(f"report: {Path(opts.out) / 'results.md'}")
    for t in results["targets"]:
        state = {True: "met", False: "NOT met", None: "not measurable yet"}[t["met"]]
        print(f"  {t['name']}: {state}")
    if results["missing"]:
        print(f"missing cells ({len(results['missing'])}): {', '.join(results['missing'])}")
    return 0
