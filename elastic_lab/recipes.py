"""The training recipe: one definition of every named run, used by the shipped checkpoints
(``make checkpoints``), the benchmark (``make bench``) and the notebooks.

:func:`recipe_config` returns the :class:`~elastic_lab.config.TrainConfig` of a named run at a
seed; :func:`smoke_recipe_config` the same run with the seconds-long detector of the tests;
:func:`demo_config` the run cut to a few minutes (notebook 04's live demonstration).
Every run shares the data, the detector, the budget and the optimisation below; a run differs
from the others only in what it is named after (:data:`RUNS`). The values are the module's
constants, so that changing the recipe is an edit of this file alone.

``elastic-lab recipe RUN --out DIR`` (or ``python -m elastic_lab.recipes RUN --out DIR``)
trains one run (RUN: a key of :data:`RUNS`, or fixed / multiscale / elastic for the shipped
checkpoints' runs, :data:`SHIPPED`) with ``experiments.train_run``: a finished run of the same
config in DIR is kept, a stopped one resumed, anything else there replaced; ``--show`` prints
the config as JSON instead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace

from .config import TrainConfig, TrainOptions, smoke_config
from .experiments import train_run
from .models.build import ModelOptions
from .models.criterion import ElasticLossOptions
from .models.detr import DetrOptions
from .runtime import add_device_arguments

# ----------------------------------------------------------------------------- the recipe
# data and budget (the same for every run)
DATA = "data/synth"
BASE_SIZE = 256
MAX_STEPS = 2650                 # 2,650 steps x 8 images = 10.6 epochs of the 2,000 images
EPOCHS = 100                     # an upper bound only: max_steps ends the run
BATCH_SIZE = 8
LR = 5e-4
LR_DROP = 0.8                    # lr / 10 after this fraction of the steps
FREEZE_STEM = True
NUM_QUERIES = 60
HFLIP = 0.5
WORKERS = 1
LOG_EVERY = 50
AMP = False                      # bf16/fp16 autocast: --amp on GPUs and on CPUs with bf16 units
ANCHOR_CELLS = 1.6               # pixel-sized detector anchors, every mode
BACKBONE_NORM = None             # the detector's backbone norm (norms.py): None = trainable batch norm
TAU_MIN, TAU_MAX = 0.5, 1.5
# the elastic model's predictor and losses
BATCHING = "mixed"               # elastic: steps are random samples run in parts (engine.py)
PREDICTOR_TRUNK = "mobilenet_v3_large"
PREDICTOR_NORM = "group"
THUMB_SIZE = 160
PREDICTOR_SIZE_BINS = 10
PRETRAIN_STEPS = 1200            # predictor warm start (predictor_pretrain.py)
PRETRAIN_BATCH_SIZE = 16
PRETRAIN_LR = 5e-4
DISTRIBUTION_LOSS = "budget"
COMPUTE_BUDGET = 0.8
# after training, models trained at many scales (multi-scale, elastic) get per-scale batch-norm
# statistics (models/scale_norm.py, calibrate.py); fixed models keep their one scale's
SCALE_STATS_BINS = 9             # φ = 0.5, 0.625, …, 1.5
CALIBRATION_IMAGES = 600         # unlabelled training images
CALIBRATION_BIN_IMAGES = 64      # fewest per bin
# the smoke variant (seconds per run)
SMOKE_STEPS = 2
SMOKE_PRETRAIN_STEPS = 2
SMOKE_CALIBRATION_IMAGES = 8


@dataclass(frozen=True)
class RunSpec:
    """What makes a named run differ from the recipe."""

    mode: str                          # fixed | multiscale | elastic
    fixed_phi: float = 1.0             # fixed mode: train and test scale
    tau_max: float = TAU_MAX
    use_scale_loss: bool = True
    use_distribution_loss: bool = True
    distribution: str = DISTRIBUTION_LOSS
    compute_budget: float = COMPUTE_BUDGET
    role: str = "main"                 # main | ablation | study (trained only when named)
    note: str = ""


RUNS: dict[str, RunSpec] = {
    "fixed_0.75": RunSpec("fixed", fixed_phi=0.75, note="fixed resolution at phi = 0.75"),
    "fixed_1.00": RunSpec("fixed", note="fixed resolution at phi = 1"),
    "fixed_1.25": RunSpec("fixed", fixed_phi=1.25, note="fixed resolution at phi = 1.25"),
    "fixed_1.50": RunSpec("fixed", fixed_phi=1.5, note="fixed resolution at phi = 1.5"),
    "multiscale": RunSpec("multiscale", note="multi-scale training (the paper's baseline)"),
    "elastic": RunSpec("elastic", note="learned per-image phi"),
    "elastic_no_scale_loss": RunSpec("elastic", use_scale_loss=False, role="ablation",
                                     note="without L_scale (no warm start either)"),
    "elastic_no_dist_loss": RunSpec("elastic", use_distribution_loss=False, role="ablation",
                                    note="without L_dist (gamma stays 1)"),
    "elastic_paper_dist": RunSpec("elastic", distribution="beta-w1", role="ablation",
                                  note="the paper's distribution target (beta-w1)"),
    "elastic_tau_max_1.25": RunSpec("elastic", tau_max=1.25, role="ablation",
                                    note="tau_max 1.25"),
    "elastic_tau_max_2": RunSpec("elastic", tau_max=2.0, role="ablation", note="tau_max 2"),
    # studies, not cells of the benchmark: trained when named
    # (elastic-lab bench --cells elastic_budget_0.9_s0)
    "elastic_budget_0.9": RunSpec("elastic", compute_budget=0.9, role="study",
                                  note="compute budget 0.9 instead of 0.8"),
    "elastic_budget_1.0": RunSpec("elastic", compute_budget=1.0, role="study",
                                  note="compute budget 1.0 instead of 0.8"),
    # past the fixed front's top (the sweep's top, φ = 1.5): where does fixed AP stop rising?
    "fixed_1.75": RunSpec("fixed", fixed_phi=1.75, role="study",
                          note="fixed resolution at phi = 1.75 (past the sweep's top)"),
}
# the shipped checkpoints: checkpoints/<name>_synth.pt from these runs at seed 0
SHIPPED = {"fixed": "fixed_1.00", "multiscale": "multiscale", "elastic": "elastic"}


def loss_options(spec: RunSpec) -> ElasticLossOptions:
    """The run's loss options: the command line's defaults at the base size, plus the recipe's
    distribution target for elastic runs."""
    if spec.mode != "elastic":
        return ElasticLossOptions.for_base_size(BASE_SIZE)
    return ElasticLossOptions.for_base_size(
        BASE_SIZE, distribution=spec.distribution, compute_budget=spec.compute_budget,
        use_scale_loss=spec.use_scale_loss, use_distribution_loss=spec.use_distribution_loss)


def recipe_config(run: str, seed: int = 0, out: str | None = None, data: str = DATA,
                  device: str = "auto", amp: bool = AMP) -> TrainConfig:
    """The TrainConfig of the named run (a key of :data:`RUNS`) at ``seed``, in ``out``
    (default ``runs/<run>``)."""
    spec = _spec(run)
    detr = DetrOptions(num_queries=NUM_QUERIES, freeze_stem=FREEZE_STEM,
                       anchor_cells=ANCHOR_CELLS, norm=BACKBONE_NORM)
    model = ModelOptions(mode=spec.mode, base_size=BASE_SIZE, tau_min=TAU_MIN,
                         tau_max=spec.tau_max, fixed_phi=spec.fixed_phi, detr=detr)
    opts = TrainOptions(epochs=EPOCHS, max_steps=MAX_STEPS, batch_size=BATCH_SIZE, lr=LR,
                         lr_drop=LR_DROP, seed=seed, hflip=HFLIP, log_every=LOG_EVERY)
    if spec.mode == "elastic":
        model = replace(model, predictor_trunk=PREDICTOR_TRUNK, predictor_norm=PREDICTOR_NORM,
                        thumb_size=THUMB_SIZE, predictor_size_bins=PREDICTOR_SIZE_BINS)
        opts = replace(opts, pretrain_steps=PRETRAIN_STEPS, batching=BATCHING,
                       pretrain_batch_size=PRETRAIN_BATCH_SIZE, pretrain_lr=PRETRAIN_LR)
    return TrainConfig(data=data, out=out or f"runs/{run}", model=model, train=opts,
                       loss=loss_options(spec), device=device, amp=amp, workers=WORKERS)


def smoke_recipe_config(run: str, seed: int = 0, out: str | None = None, data: str = DATA,
                        device: str = "auto", amp: bool = False) -> TrainConfig:
    """The named run with the smoke detector (config.smoke_config): the same modes, predictor
    design, warm start and losses as :func:`recipe_config`, trained for seconds."""
    spec = _spec(run)
    full = recipe_config(run, seed, out, data, device, amp)
    small = smoke_config(data, full.out, spec.mode, max_steps=SMOKE_STEPS)
    model = replace(full.model, base_size=small.model.base_size,
                    thumb_size=small.model.thumb_size,
                    detr=replace(small.model.detr, anchor_cells=ANCHOR_CELLS,
                                 norm=BACKBONE_NORM))
    opts = replace(small.train, seed=seed, hflip=HFLIP, lr=LR, batching=full.train.batching,
                   pretrain_steps=SMOKE_PRETRAIN_STEPS if full.train.pretrain_steps else 0,
                   pretrain_batch_size=4, probe_images=4)
    loss = replace(full.loss, **{k: getattr(ElasticLossOptions.for_base_size(model.base_size), k)
                                 for k in ("b_s", "b_l")})
    return replace(full, model=model, train=opts, loss=loss, workers=0)


def demo_config(run: str, steps: int, warm_start_steps: int, seed: int = 0,
                out: str | None = None, data: str = DATA, device: str = "auto",
                amp: bool = AMP, smoke: bool = False) -> TrainConfig:
    """The named run of the recipe (the smoke recipe with ``smoke``) cut to a demonstration:
    ``steps`` detector steps, at most ``warm_start_steps`` predictor warm-start steps, the
    learning-rate warmup at most a tenth of the steps, ten metrics rows and a fidelity probe of
    at most 16 images. Everything else is the benchmark cell's recipe; its numbers show what a
    run logs, not a result (notebook 04 reads those from the cells)."""
    full = (smoke_recipe_config if smoke else recipe_config)(run, seed, out, data, device, amp)
    t = full.train
    train = replace(t, max_steps=steps, pretrain_steps=min(t.pretrain_steps, warm_start_steps),
                    warmup_steps=min(t.warmup_steps, max(1, steps // 10)),
                    log_every=max(1, steps // 10), probe_images=min(t.probe_images, 16))
    return replace(full, train=train)


def _spec(run: str) -> RunSpec:
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; the recipe has {', '.join(RUNS)}")
    return RUNS[run]


def run_name(name: str) -> str:
    """A run of :data:`RUNS`, or the run of a shipped checkpoint's mode (:data:`SHIPPED`)."""
    return SHIPPED.get(name, name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``elastic-lab recipe``."""
    p.add_argument("run", choices=[*RUNS, *SHIPPED],
                   help="the named run (fixed / multiscale / elastic: the shipped checkpoints')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/RUN)")
    p.add_argument("--data", default=DATA)
    p.add_argument("--smoke", action="store_true", help="the seconds-long variant")
    p.add_argument("--no-reuse", action="store_true",
                   help="train from scratch even when OUT holds this run (finished or stopped)")
    p.add_argument("--show", action="store_true", help="print the config as JSON, train nothing")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Train the named run (or print its config)."""
    make = smoke_recipe_config if args.smoke else recipe_config
    config = make(run_name(args.run), args.seed, args.out or f"runs/{args.run}", args.data,
                  args.device, args.amp or (AMP and not args.smoke))
    if args.show:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    print(f"checkpoint: {train_run(config, reuse=not args.no_reuse)}")
    return 0


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m elastic_lab.recipes",
                                          description=__doc__)
    add_arguments(main_parser)
    raise SystemExit(run(main_parser.parse_args()))
