"""DOTA path end to end: aerial set -> patches -> elastic training -> merged full-image eval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.cli import main as cli
from elastic_lab.config import smoke_config
from elastic_lab.data.dota_split import load_patch_map, split_dota
from elastic_lab.data.image import image_tensor
from elastic_lab.data.synth_aerial import write_synth_aerial
from elastic_lab.models.build import load_model
from elastic_lab.train import train


def test_split_train_elastic_and_evaluate_on_full_images(tmp_path):
    src, split = tmp_path / "aerial", tmp_path / "split"
    write_synth_aerial(src, 2, seed=0, min_size=400, max_size=520, progress=False)
    split_dota(src, split, split="val", patch=256, gap=64, progress=False)
    run = tmp_path / "run"
    config = smoke_config(str(split), str(run), "elastic", max_steps=2)
    config.split, config.model.base_size, config.train.pool_batches = "val", 128, 1
    train(config)
    out = tmp_path / "dota.json"
    assert cli(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(split),
                "--split", "val", "--dota", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    with_gt = [c for c, n in m["num_gt_per_class"].items() if n]
    assert with_gt and m["mAP"] == pytest.approx(np.mean([m["AP_per_class"][c] for c in with_gt]))
    assert m["num_images"] == 2 and m["num_patches"] == len(m["patch_phi"]) > 2
    # the phi of each patch, in patch-map order, is the elastic model's prediction for it
    model, _ = load_model(run / "checkpoint.pt")
    names = list(load_patch_map(split, "val")["patches"])
    with torch.no_grad():
        phi = [float(model.predictor([image_tensor(Image.open(split / "images" / "val" / n)
                                                   .convert("RGB"))])
                     ["phi"][0]) for n in names]
    assert m["patch_phi"] == pytest.approx(phi, abs=1e-5)
    assert m["mean_scale"] == pytest.approx(np.mean(phi), abs=1e-5)
