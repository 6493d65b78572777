"""DOTA path end to end: aerial set -> patches -> elastic training -> merged full-image eval."""

import json

from elastic_lab.cli import main as cli
from elastic_lab.data.dota_split import split_dota
from elastic_lab.data.synth_aerial import write_synth_aerial


def test_split_train_elastic_and_evaluate_on_full_images(tmp_path):
    src, split = tmp_path / "aerial", tmp_path / "split"
    write_synth_aerial(src, 2, seed=0, min_size=400, max_size=520, progress=False)
    split_dota(src, split, split="val", patch=256, gap=64, progress=False)
    run = tmp_path / "run"
    assert cli(["train", "--data", str(split), "--split", "val", "--out", str(run),
                "--mode", "elastic", "--max-steps", "2", "--hidden-dim", "32",
                "--enc-layers", "1", "--dec-layers", "2", "--base-size", "128",
                "--batch-size", "4", "--pool-batches", "1", "--workers", "0",
                "--thumb-size", "32"]) == 0
    out = tmp_path / "dota.json"
    assert cli(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(split),
                "--split", "val", "--dota", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert 0.0 <= m["mAP"] <= 1.0 and "coco_AP" in m
    assert m["num_images"] == 2 and m["num_patches"] == len(m["patch_phi"]) > 2
    assert all(0.5 <= p <= 1.5 for p in m["patch_phi"])
