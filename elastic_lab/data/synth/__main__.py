"""``python -m elastic_lab.data.synth``: the same as ``elastic-lab synth``."""

import argparse

from .writing import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m elastic_lab.data.synth",
                                     description="Generate the synthetic COCO-format set.")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
