"""The configuration of a training run: what ``train(config)`` reads.

:class:`TrainConfig` holds the model options (models/build.py), the optimisation options
(:class:`TrainOptions`), the loss options (models/criterion.py), where the data and the run live
and how the run executes. ``elastic-lab train`` only turns its command line into one
(train.config_from_args); notebooks, the benchmark and the tests build it directly::

    config = TrainConfig(data="data/synth", out="runs/elastic",
                         model=ModelOptions(mode="elastic"), train=TrainOptions(max_steps=300))
    train(config)

:func:`smoke_config` is the one definition of the seconds-long runs of the tests, the notebooks'
smoke mode and their fallback models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .models.build import ModelOptions
from .models.criterion import ElasticLossOptions
from .models.detr import DetrOptions


@dataclass
class TrainOptions:
    """Optimisation settings of a run (stored in the checkpoint)."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    lr_backbone: float | None = None
    weight_decay: float = 1e-4
    clip_norm: float = 0.1
    warmup_steps: int = 100
    lr_drop: float | None = None
    seed: int = 0
    pool_batches: int = 48
    log_every: int = 10
    checkpoint_every: int = 1
    warmup_epochs: int = 0
    explore_noise: float = 0.0
    hflip: float = 0.0               # probability of a horizontal flip per training image
    max_bad_steps: int = 5
    lambda_scale: float = 1.0        # weight of loss_scale
    lambda_dist: float = 1.0         # weight of loss_dist
    lambda_size_map: float = 1.0     # weight of loss_size_map (predictors with a size head)
    fixed_phi_steps: int = 0         # elastic: the detector sees phi = 1 for these first steps
    pretrain_steps: int = 0          # elastic: predictor warm start (predictor_pretrain.py)
    pretrain_batch_size: int = 16
    pretrain_lr: float = 5e-4
    probe_images: int = 64           # elastic: val images whose predictor fidelity is logged
    batching: str = "grouped"        # grouped | mixed: how a pool becomes steps (engine.py)


BATCHING = ("grouped", "mixed")  # TrainOptions.batching (engine.py's module docstring)

# where and how a run executes (folders, device, precision, loader processes), as opposed to
# what it trains
EXECUTION_FIELDS = ("data", "out", "device", "amp", "workers", "resume", "warm_start_cache")


@dataclass
class TrainConfig:
    """Everything one training run needs.

    ``loss`` None means the options ``elastic-lab train`` uses by default at the model's base
    size (:meth:`ElasticLossOptions.for_base_size`); :meth:`loss_options` resolves it, so a
    Python caller and a command-line user get the same loss. With ``resume`` the model, train
    and loss options stored in ``out/checkpoint.pt`` are used instead, except ``max_steps``
    (when given) and ``epochs`` (the larger of the two).
    """

    data: str                        # COCO-format folder (images/, annotations/)
    out: str                         # run folder (checkpoint.pt, metrics.jsonl, options.json)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    loss: ElasticLossOptions | None = None
    split: str = "train"
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: bool = False                # float16 autocast on CUDA, bfloat16 on the CPU
    workers: int = 2                 # data-loader worker processes
    resume: bool = False             # continue from out/checkpoint.pt
    max_minutes: float | None = None  # stop (and checkpoint) after this much training time
    warm_start_cache: str | None = None  # folder where predictor warm starts are kept and reused

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        if not 0.0 <= self.train.hflip <= 1.0:
            raise ValueError(f"hflip (--hflip) is a probability in [0, 1], got {self.train.hflip}")
        if self.train.batching not in BATCHING:
            raise ValueError(f"batching (--batching) is one of {', '.join(BATCHING)}, got "
                             f"{self.train.batching!r}")

    def loss_options(self) -> ElasticLossOptions:
        """``loss``, or the command line's default for the model's base size."""
        if self.loss is not None:
            return self.loss
        return ElasticLossOptions.for_base_size(self.model.base_size)

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready), with ``loss`` resolved."""
        return {**asdict(self), "loss": asdict(self.loss_options())}

    def recipe_dict(self) -> dict:
        """:meth:`to_dict` without :data:`EXECUTION_FIELDS`: what the run trains, not where or
        how it executed (two configs with equal recipe dicts train the same model)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    @classmethod
    def stored_recipe(cls, d: dict) -> dict | None:
        """The :meth:`recipe_dict` of a stored :meth:`to_dict` (a run's stamp, a benchmark
        cell), read through today's options: an option added since it was written takes the
        value it trained with (the dataclass default, or the legacy value of
        models.build.LEGACY_*), so adding an option does not make old runs look different.
        None when the dict no longer reads (an option was removed or renamed)."""
        try:
            return json.loads(json.dumps(cls.from_dict(d).recipe_dict()))
        except (TypeError, ValueError, KeyError):
            return None

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` (also accepts ``loss`` None)."""
        d = dict(d)
        model, train, loss = d.pop("model"), d.pop("train"), d.pop("loss", None)
        return cls(model=ModelOptions.from_dict(model), train=TrainOptions(**train),
                   loss=None if loss is None else ElasticLossOptions(**loss), **d)


def smoke_config(data: str, out: str, mode: str = "fixed", max_steps: int = 2) -> TrainConfig:
    """A run of seconds: a 32-wide detector with one encoder and two decoder layers at base size
    64 (thumbnail 32), batches of 4, pools of 2 batches, no loader workers, a row per step."""
    detr = DetrOptions(d_model=32, num_encoder_layers=1, num_decoder_layers=2)
    return TrainConfig(
        data=data, out=out,
        model=ModelOptions(mode=mode, base_size=64, thumb_size=32, detr=detr),
        train=TrainOptions(max_steps=max_steps, batch_size=4, pool_batches=2, log_every=1),
        workers=0)
