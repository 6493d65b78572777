"""Training loop, elastic joint training, evaluation and the CLI, on the synthetic set."""

import argparse
import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from elastic_lab.checkpoint import CheckpointError, load_checkpoint
from elastic_lab.cli import main as cli
from elastic_lab.config import TrainConfig, smoke_config
from elastic_lab.data.coco import CocoDetection, collate_fn
from elastic_lab.data.sampler import group_by_size
from elastic_lab.data.synth import sample_size
from elastic_lab.engine import hflip_pool, train_step
from elastic_lab.evaluate import coco_metrics, phi_by_regime
from elastic_lab.models.build import ModelOptions, build_model, load_model
from elastic_lab.models.criterion import ElasticLossOptions, build_criterion
from elastic_lab.resize import processed_size
from elastic_lab.runtime import split_paths
from elastic_lab.train import add_arguments, config_from_args, train
from tests.test_model import TINY

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def smoke(data, out, mode="fixed", max_steps=2, **train_changes) -> TrainConfig:
    """smoke_config with some TrainOptions changed."""
    config = smoke_config(str(data), str(out), mode, max_steps)
    config.train = replace(config.train, **train_changes)
    return config


@pytest.fixture(scope="module")
def elastic_run(synth_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("elastic_run")
    assert train(smoke(synth_dir, run, "elastic", 4)) == run / "checkpoint.pt"
    return run


def test_elastic_step_updates_both_networks_and_gamma(synth_dir):
    torch.manual_seed(0)
    ds = CocoDetection(*split_paths(synth_dir, "train"))
    model = build_model(ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY),
                        ds.num_classes).train()
    # boundaries scaled with the 64 px base size (32/96 px belong to base sizes ~256)
    crit = build_criterion(ds.num_classes, TINY.num_decoder_layers, ElasticLossOptions(8, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = collate_fn([ds[i] for i in range(4)])
    # parameters only: BatchNorm running statistics change in any forward, gradient or not
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    values, outputs = train_step(model, crit, opt, images, targets, None, 0.1)
    assert all(np.isfinite(v) for v in values.values())
    assert values["loss_scale"] > 0 and "loss_dist" in values
    after = dict(model.named_parameters())
    changed = lambda prefix: any(not torch.equal(before[k], after[k])
                                 for k in before if k.startswith(prefix))
    assert changed("detector.") and changed("predictor.trunk.") and changed("predictor.head.")
    assert not torch.equal(before["log_gamma"], after["log_gamma"])
    assert crit.bin_ema.seen.any()  # the step folded its matches into the per-bin EMA
    phi = outputs["phi"]
    assert not phi.requires_grad
    assert ((phi >= model.tau_min) & (phi <= model.tau_max)).all()


def test_resize_is_detached_detection_loss_does_not_reach_predictor(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "train"))
    model = build_model(ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY),
                        ds.num_classes).train()
    images, targets = collate_fn([ds[i] for i in range(2)])
    out = model(images)
    crit = build_criterion(ds.num_classes, TINY.num_decoder_layers)  # detection terms only
    sum(crit(out, targets).values()).backward()
    assert all(p.grad is None for p in model.predictor.parameters())
    assert any(p.grad is not None for p in model.detector.parameters())


def test_bucketed_pools_keep_padding_under_15_percent():
    """Default pools (48 batches of 8), the detector's stride 16, phi ~ U[0.5, 1.5]."""
    rng = np.random.default_rng(0)
    padded = used = 0
    for _ in range(5):
        sizes = [processed_size(h, w, phi, 256, None, 16)
                 for (w, h), phi in ((sample_size(rng), rng.uniform(0.5, 1.5))
                                     for _ in range(48 * 8))]
        for batch in group_by_size(sizes, 8):
            assert len(batch) == 8
            hs, ws = zip(*(sizes[i] for i in batch))
            padded += len(batch) * max(hs) * max(ws)
            used += sum(h * w for h, w in zip(hs, ws))
    assert 1 - used / padded <= 0.15


@pytest.mark.parametrize("batching", ["grouped", "mixed"])
def test_resume_reproduces_uninterrupted_losses(synth_dir, tmp_path, batching):
    full, part = tmp_path / "full", tmp_path / "part"
    # hflip: the flips of a resumed pool are those of the interrupted one
    train(smoke(synth_dir, full, "elastic", 6, hflip=0.5, batching=batching))
    train(smoke(synth_dir, part, "elastic", 3, hflip=0.5, batching=batching))  # mid-pool
    assert load_checkpoint(part / "checkpoint.pt")["pending_plan"]
    resumed = smoke(synth_dir, part, "elastic", 6, hflip=0.5, batching=batching)
    resumed.resume = True
    train(resumed)
    a, b = read_metrics(full), read_metrics(part)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["phi_mean"] == pytest.approx(ra["phi_mean"], rel=1e-5)


def test_amp_and_return_layer_options_reach_the_run(synth_dir, tmp_path):
    """--amp (bfloat16 autocast on the CPU) trains to the same losses as float32 within bf16
    precision; --return-layer layer2 gives a stride-8 detector and is stored in the checkpoint."""
    runs = {}
    for name, amp in (("fp32", False), ("amp", True)):
        runs[name] = tmp_path / name
        config = smoke(synth_dir, runs[name], "fixed", 3)
        config.device, config.amp = "cpu", amp
        train(config)
    a, b = read_metrics(runs["fp32"]), read_metrics(runs["amp"])
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert np.isfinite(rb["loss"]) and rb["loss"] == pytest.approx(ra["loss"], rel=0.05)
    assert any(ra["loss"] != rb["loss"] for ra, rb in zip(a, b)), "--amp changed nothing"

    run = tmp_path / "layer2"
    config = smoke(synth_dir, run, "fixed", 1)
    config.model.detr.return_layer = "layer2"
    train(config)
    model, ckpt = load_model(run / "checkpoint.pt")
    assert ckpt["model_options"]["detr"]["return_layer"] == "layer2"
    assert model.stride == 8 and model.detector.backbone.num_channels == 128


def test_hflip_mirrors_images_and_boxes_together():
    """A bright box drawn in the image stays under its (flipped) box; draws are reproducible."""
    images, targets = [], []
    for i in range(16):
        im = torch.zeros(3, 20, 30)
        im[:, 4:10, 2 + i:8 + i] = 1.0                       # x 2+i..8+i, y 4..10 (pixels)
        box = torch.tensor([[(5.0 + i) / 30, 7.0 / 20, 6.0 / 30, 6.0 / 20]])  # cxcywh
        images.append(im)
        targets.append({"boxes": box, "labels": torch.tensor([0])})
    out_i, out_t = hflip_pool(images, targets, 0.5, seed=3, epoch=1, pool=2)
    again_i, _ = hflip_pool(images, targets, 0.5, seed=3, epoch=1, pool=2)
    flipped = [not torch.equal(a, b) for a, b in zip(images, out_i)]
    assert 0 < sum(flipped) < len(images)                  # some, not all, at p = 0.5
    assert all(torch.equal(a, b) for a, b in zip(out_i, again_i))
    for im, t, f, orig in zip(out_i, out_t, flipped, targets):
        cx, cy, w, h = t["boxes"][0].tolist()
        x0, x1 = round((cx - w / 2) * 30), round((cx + w / 2) * 30)
        y0, y1 = round((cy - h / 2) * 20), round((cy + h / 2) * 20)
        assert im[0, y0:y1, x0:x1].min() == 1.0 and im[0].sum() == (x1 - x0) * (y1 - y0)
        assert (t["boxes"][0, 0] != orig["boxes"][0, 0]) == f
    assert hflip_pool(images, targets, 0.0, 3, 1, 2) == (images, targets)


def test_metrics_log_elastic_statistics(elastic_run):
    rows = read_metrics(elastic_run)
    assert len(rows) == 4
    for key in ("phi_mean", "phi_std", "phi_min", "phi_max", "gamma", "boundary_small_px",
                "boundary_large_px", "bin_loc_loss", "target_alpha", "target_beta",
                "loss_scale", "loss_dist", "loss_ce", "padding_ratio", "lr", "images_per_s"):
        assert key in rows[-1], key
    # default boundaries scale with the base size: 96 px at base 800 -> 7.68 px at base 64
    assert rows[-1]["boundary_large_px"] == pytest.approx(96 * 64 / 800 * rows[-1]["gamma"])


def test_checkpoint_round_trip_gives_identical_predictions(elastic_run, synth_dir):
    model, ckpt = load_model(elastic_run / "checkpoint.pt")
    assert ckpt["model_options"]["mode"] == "elastic"
    ds = CocoDetection(*split_paths(synth_dir, "val"), categories=ckpt["categories"])
    images = [ds[i][0] for i in range(3)]
    again, _ = load_model(elastic_run / "checkpoint.pt")
    d1, o1 = model.detect(images)
    d2, o2 = again.detect(images)
    assert torch.equal(o1["phi"], o2["phi"])
    for a, b in zip(d1, d2):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_cocoeval_is_one_for_perfect_predictions(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    results = []
    for i in range(len(ds)):
        _, t = ds[i]
        h, w = t["orig_size"].tolist()
        b = t["boxes"].clone()
        xyxy = torch.stack([(b[:, 0] - b[:, 2] / 2) * w, (b[:, 1] - b[:, 3] / 2) * h,
                            (b[:, 0] + b[:, 2] / 2) * w, (b[:, 1] + b[:, 3] / 2) * h], 1)
        results.append({"image_id": t["image_id"], "boxes": xyxy,
                        "scores": torch.ones(len(b)), "labels": t["labels"]})
    m = coco_metrics(ds, results)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    wrong = [{**r, "labels": (r["labels"] + 1) % ds.num_classes} for r in results]
    assert coco_metrics(ds, wrong)["AP"] < 0.05


def test_eval_and_predict_cli(elastic_run, synth_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli(["eval", "--checkpoint", str(elastic_run / "checkpoint.pt"), "--data",
                str(synth_dir), "--json", str(out), "--latency-images", "2"]) == 0
    m = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "gflops_per_image", "latency_ms",
                "mean_scale", "predictor_gflops", "compute_saved", "phi_histogram"):
        assert key in m, key
    model, ckpt = load_model(elastic_run / "checkpoint.pt")
    ds = CocoDetection(*split_paths(synth_dir, "val"), categories=ckpt["categories"])
    with torch.no_grad():  # phi straight from the predictor, one image at a time
        phis = {i: float(model.predictor([ds[k][0]])["phi"][0]) for k, i in enumerate(ds.ids)}
    assert m["mean_scale"] == pytest.approx(np.mean(list(phis.values())), abs=1e-5)
    assert m["gflops_per_image"] == pytest.approx(m["detector_gflops"] + m["predictor_gflops"])
    regimes: dict[str, list[float]] = {}
    for i, phi in phis.items():
        regimes.setdefault(ds.coco.imgs[i]["regime"], []).append(phi)
    assert m["phi_by_regime"] == pytest.approx({r: np.mean(v) for r, v in regimes.items()},
                                               abs=1e-5)
    forced = tmp_path / "forced.json"
    assert cli(["eval", "--checkpoint", str(elastic_run / "checkpoint.pt"), "--data",
                str(synth_dir), "--json", str(forced), "--scale", "1.0",
                "--latency-images", "0"]) == 0
    f = json.loads(forced.read_text())
    assert f["mean_scale"] == 1.0 and f["gflops_per_image"] == pytest.approx(f["gflops_phi1"])
    capsys.readouterr()
    image = min((synth_dir / "images" / "val").glob("*.png"))
    assert cli(["predict", "--checkpoint", str(elastic_run / "checkpoint.pt"), str(image),
                "--json", "--threshold", "0"]) == 0
    r = json.loads(capsys.readouterr().out)[0]
    image_id = next(i for i in ds.ids if ds.coco.imgs[i]["file_name"] == image.name)
    assert r["phi"] == pytest.approx(phis[image_id], abs=1e-5) and r["detections"]
    assert tuple(r["processed_size"]) == processed_size(r["height"], r["width"], r["phi"],
                                                        model.base_size, model.max_size,
                                                        model.stride)
    assert {"processed_size", "base_size", "gflops", "gflops_phi1", "latency_ms",
            "latency_ms_phi1"} <= set(r)
    assert r["detections"][0]["label"] in {c["name"] for c in
                                           json.loads((synth_dir / "annotations" /
                                                       "instances_val.json").read_text())
                                           ["categories"]}


def test_phi_by_regime_averages_phi_per_synthetic_regime(synth_dir):
    ds = CocoDetection(*split_paths(synth_dir, "val"))
    regimes = {i: ds.coco.imgs[i]["regime"] for i in ds.ids}
    results = [{"image_id": i, "phi": 0.5 + k / 10} for k, i in enumerate(ds.ids)]
    expected = {}
    for r in results:
        expected.setdefault(regimes[r["image_id"]], []).append(r["phi"])
    got = phi_by_regime(ds, results)
    assert set(got) == set(expected) and len(got) >= 2
    for g, v in expected.items():
        assert got[g] == pytest.approx(np.mean(v))
    for img in ds.coco.imgs.values():
        del img["regime"]
    assert phi_by_regime(ds, results) == {}


def test_eval_and_predict_honour_amp(elastic_run, synth_dir, tmp_path, capsys):
    """--amp at inference runs under bfloat16 autocast on the CPU: phi and boxes (kept in
    float32 by the model) stay within bf16 precision of the float32 run, AP is recorded as amp."""
    ckpt = str(elastic_run / "checkpoint.pt")
    image = min((synth_dir / "images" / "val").glob("*.png"))
    preds = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        capsys.readouterr()
        assert cli(["predict", "--checkpoint", ckpt, str(image), "--json", "--threshold", "0",
                    "--no-timing", "--device", "cpu", *extra]) == 0
        preds[name] = json.loads(capsys.readouterr().out)[0]
    a, b = preds["fp32"], preds["amp"]
    assert b["phi"] == pytest.approx(a["phi"], abs=0.02)
    best_a = max(a["detections"], key=lambda d: d["score"])
    best_b = max(b["detections"], key=lambda d: d["score"])
    assert best_b["score"] == pytest.approx(best_a["score"], abs=0.05)
    if b["processed_size"] == a["processed_size"] and best_a["label"] == best_b["label"]:
        side = max(a["width"], a["height"])
        assert np.allclose(best_b["box"], best_a["box"], atol=0.05 * side)
    assert [d["score"] for d in a["detections"]] != [d["score"] for d in b["detections"]], \
        "--amp changed nothing"
    evals = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        out = tmp_path / f"{name}.json"
        assert cli(["eval", "--checkpoint", ckpt, "--data", str(synth_dir), "--json", str(out),
                    "--latency-images", "0", "--device", "cpu", *extra]) == 0
        evals[name] = json.loads(out.read_text())
    a, b = evals["fp32"], evals["amp"]
    assert a["amp"] is False and b["amp"] is True
    assert b["mean_scale"] == pytest.approx(a["mean_scale"], abs=0.02)
    assert b["mean_scale"] != a["mean_scale"], "--amp changed nothing in eval"


def test_bad_inputs_give_clear_errors(tmp_path, synth_dir, capsys):
    png = min((synth_dir / "images" / "val").glob("*.png"))
    with pytest.raises(CheckpointError, match=str(png.name)):
        load_model(png)
    assert cli(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 1
    assert "instances_train.json" in capsys.readouterr().err
    assert cli(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data",
                str(synth_dir)]) == 1
    assert "missing.pt" in capsys.readouterr().err


def test_environment_yml_names_the_same_packages_as_pyproject():
    import re
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["dev"] + extras["compare"]
    name = lambda spec: re.split(r"[<>=!\[ ]", spec.strip())[0].lower().replace("_", "-")
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(map(name, pip_lines)) == sorted(map(name, wanted))
    assert "python=3.11" in env["dependencies"]


def test_phi_vs_object_size_spearman(synth_dir):
    from elastic_lab.analysis import median_object_sides
    from elastic_lab.evaluate import phi_vs_object_size
    ds = CocoDetection(*split_paths(synth_dir, "train"))
    sides = {i: s for i, s in zip(ds.ids, median_object_sides(ds)) if not np.isnan(s)}
    assert sides and all(v > 0 for v in sides.values())
    follows = [{"image_id": i, "phi": 2.0 - np.log(sides[i]) / 10} for i in sides]
    assert phi_vs_object_size(ds, follows)["spearman_phi_vs_median_side"] == pytest.approx(-1.0)
    against = [{"image_id": i, "phi": np.log(sides[i])} for i in sides]
    assert phi_vs_object_size(ds, against)["spearman_phi_vs_median_side"] == pytest.approx(1.0)


def test_the_command_line_builds_the_config_a_python_caller_builds(tmp_path):
    """`elastic-lab train` flags -> TrainConfig; the defaults (the boundaries b_s, b_l scaled to
    the base size included) equal those of TrainConfig, so both callers get the same run."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--data", "d", "--out", "o", "--mode", "elastic", "--hidden-dim", "32",
            "--enc-layers", "1", "--dec-layers", "2", "--base-size", "64", "--batch-size", "4",
            "--pool-batches", "2", "--workers", "0", "--thumb-size", "32", "--log-every", "1",
            "--max-steps", "2"]
    assert config_from_args(parser.parse_args(argv)).to_dict() == \
        smoke_config("d", "o", "elastic").to_dict()
    loss = smoke_config("d", "o", "elastic").loss_options()
    assert (loss.b_s, loss.b_l) == (32 * 64 / 800, 96 * 64 / 800)
    custom = config_from_args(parser.parse_args(argv + [
        "--boundary-small", "5", "--lambda-scale", "2.5", "--lambda-dist", "0.5",
        "--no-distribution-loss", "--amp", "--max-minutes", "3"]))
    assert custom.loss.b_s == 5.0 and custom.loss.b_l == 96 * 64 / 800
    assert not custom.loss.use_distribution_loss and custom.amp and custom.max_minutes == 3.0
    assert (custom.train.lambda_scale, custom.train.lambda_dist) == (2.5, 0.5)
    assert TrainConfig.from_dict(custom.to_dict()) == custom
    with pytest.raises(ValueError, match="hflip"):
        config_from_args(parser.parse_args(argv + ["--hflip", "1.5"]))


def test_lambdas_weight_the_elastic_terms_of_the_step_loss(synth_dir):
    torch.manual_seed(0)
    ds = CocoDetection(*split_paths(synth_dir, "train"))
    model = build_model(ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY),
                        ds.num_classes).train()
    crit = build_criterion(ds.num_classes, TINY.num_decoder_layers, ElasticLossOptions(8, 24),
                           lambda_scale=2.5, lambda_dist=0.5)
    assert (crit.weight_dict["loss_scale"], crit.weight_dict["loss_dist"]) == (2.5, 0.5)
    assert crit.weight_dict["loss_bbox_0"] == 5.0 and crit.weight_dict["loss_giou_enc"] == 2.0
    images, targets = collate_fn([ds[i] for i in range(4)])
    values, _ = train_step(model, crit, torch.optim.SGD(model.parameters(), lr=0.0), images,
                           targets, None, 0.0)
    expected = sum(values[k] * w for k, w in crit.weight_dict.items())
    assert values["loss"] == pytest.approx(expected, rel=1e-5)
    assert values["loss_dist"] > 0 and values["loss_scale"] > 0


def test_runs_of_any_length_record_their_last_step(synth_dir, tmp_path):
    """A row every log_every steps and one for the last step: a 2-step run with log_every 10
    has one row (step 2); resumed to 5 steps it adds the row of step 5; a run bounded by its
    epochs records the last step of its last epoch."""
    run = tmp_path / "short"
    train(smoke(synth_dir, run, "elastic", 2, log_every=10))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["loss"])
    assert "gamma" in rows[0] and rows[0]["epoch"] == 0
    resumed = smoke(synth_dir, run, "elastic", 5, log_every=10)
    resumed.resume = True
    train(resumed)
    assert [r["step"] for r in read_metrics(run)] == [2, 5]
    by_epochs = tmp_path / "epochs"
    config = smoke(synth_dir, by_epochs, "fixed", None, log_every=100, epochs=1)
    train(config)
    steps = load_checkpoint(by_epochs / "checkpoint.pt")["step"]
    assert steps == len(CocoDetection(*split_paths(synth_dir, "train"))) // 4
    assert [(r["step"], r["epoch"]) for r in read_metrics(by_epochs)] == [(steps, 0)]
