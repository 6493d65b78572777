"""Export a training checkpoint as a small inference checkpoint (the files in ``checkpoints/``).

``elastic-lab export --checkpoint RUN/checkpoint.pt --out checkpoints/NAME.pt [--half]
[--card eval.json]`` keeps the model weights (float16 with ``--half``), the model options, the
category mapping and an optional model card (e.g. the eval JSON); it drops the optimiser,
scheduler and RNG states.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .checkpoint import load_checkpoint, save_checkpoint

KEEP = ("model", "model_options", "categories", "train_options", "loss_options", "step",
        "calibration")


def export_checkpoint(src: str | Path, out: str | Path, half: bool = True,
                      card: dict | None = None) -> Path:
    """Write the inference part of ``src`` to ``out``; returns ``out``."""
    ckpt = load_checkpoint(src)
    payload = {k: ckpt[k] for k in KEEP if k in ckpt}
    payload["model"] = dict(payload["model"])
    if card is not None:
        payload["card"] = json.loads(json.dumps(card))  # plain data only
    return save_checkpoint(out, payload, half=half)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint (RUN/checkpoint.pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store weights as float16")
    p.add_argument("--card", default=None, help="JSON file stored as the model card")


def run(args: argparse.Namespace) -> int:
    card = json.loads(Path(args.card).read_text()) if args.card else None
    out = export_checkpoint(args.checkpoint, args.out, args.half, card)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    return 0
