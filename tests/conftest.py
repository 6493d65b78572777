"""Shared fixtures: a small synthetic COCO-format set generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic_lab.data.synth import generate

SYNTH_SEED = 0
SYNTH_TRAIN = 24
SYNTH_VAL = 8


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic set (24 train / 8 val images, seed 0, category ids 1..6), read-only by convention.

    Layout: images/{train,val}/*.png and annotations/instances_{train,val}.json.
    """
    out = tmp_path_factory.mktemp("synth")
    generate(out, train=SYNTH_TRAIN, val=SYNTH_VAL, seed=SYNTH_SEED, progress=False)
    return out
