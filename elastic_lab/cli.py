"""``elastic-lab`` command line: one subcommand per module that implements it."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help); each module exposes add_arguments(parser) and run(args)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("elastic_lab.data.synth", "generate the synthetic scale-diverse COCO-format set"),
    "coco-subset": ("elastic_lab.data.subset", "write a smaller COCO-format set"),
    "train": ("elastic_lab.train", "train a detector (fixed, multiscale or elastic)"),
    "eval": ("elastic_lab.evaluate", "COCO AP, GFLOPs, latency and scale statistics"),
    "predict": ("elastic_lab.predict", "detect objects in images"),
    "overview": ("elastic_lab.overview", "draw predictions on a few images side by side (PNG)"),
    "recipe": ("elastic_lab.recipes", "train a named run of the recipe (or --show its config)"),
    "bench": ("elastic_lab.bench", "the research benchmark: cells of (run, seed), report"),
    "predictor-study": ("elastic_lab.predictor_study",
                        "how fast each scale-predictor design learns its targets"),
    "calibrate": ("elastic_lab.calibrate",
                  "fill a trained detector's per-scale batch-norm statistics"),
    "export": ("elastic_lab.export", "write a small inference checkpoint"),
    "dota-split": ("elastic_lab.data.dota_split", "split DOTA images into COCO-format patches"),
    "synth-aerial": ("elastic_lab.data.synth_aerial", "generate a DOTA-format aerial set"),
    "download-coco": ("elastic_lab.download", "download COCO images and annotations"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastic-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / error
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sp = argparse.ArgumentParser(prog=f"elastic-lab {name}", description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sp)
    args = sp.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"elastic-lab {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
