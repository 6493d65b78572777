"""The CUDA path: training (float32 and --amp with its gradient scaler), a GPU checkpoint read
on the CPU, inference against the CPU, and the benchmark's smoke cells on the GPU.

Skipped where torch sees no CUDA device (this project's own machines); `scripts/gpu_cells.sh`
runs them first on a lent GPU machine.
"""

import json
import math

import pytest
import torch

from elastic_lab import bench
from elastic_lab.bench_cells import LATENCY, read_cells
from elastic_lab.checkpoint import load_checkpoint
from elastic_lab.cli import main
from elastic_lab.data.coco import CocoDetection
from elastic_lab.models.build import build_model, load_model
from elastic_lab.runtime import split_paths
from elastic_lab.train import train
from tests.test_training import read_metrics, smoke

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def no_tf32(monkeypatch):
    """float32 convolutions and matrix products in full precision (no TF32) for one test."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def _train(data, out, mode, device, amp, steps=3):
    config = smoke(data, out, mode, steps)
    config.device, config.amp = device, amp
    return train(config)


@pytest.mark.parametrize("mode", ["fixed", "elastic"])
def test_cuda_float32_training_follows_the_cpu_losses(synth_dir, tmp_path, mode, no_tf32):
    """The same run on the GPU (TF32 off) and on the CPU: the same steps, the same losses up to
    the order of float32 sums (a predicted φ near a stride boundary can change a processed
    size, hence the looser elastic tolerance)."""
    for run, device in (("on_cpu", "cpu"), ("on_gpu", "cuda")):
        _train(synth_dir, tmp_path / run, mode, device, amp=False)
    a, b = read_metrics(tmp_path / "on_cpu"), read_metrics(tmp_path / "on_gpu")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=0.02 if mode == "fixed" else 0.1)
        if mode == "elastic":
            assert rb["phi_mean"] == pytest.approx(ra["phi_mean"], abs=0.02)


@pytest.mark.parametrize("mode", ["fixed", "elastic"])
def test_cuda_amp_training_scales_its_gradients_and_moves_the_weights(synth_dir, tmp_path,
                                                                       mode):
    """--amp on CUDA: float16 autocast with a GradScaler; finite losses, weights that moved
    from their initialisation (a scaler that skipped every step would leave them), a checkpoint
    that loads on the CPU (weights_only) with every tensor there."""
    config = smoke(synth_dir, tmp_path / "amp", mode, 4)
    config.device, config.amp = "cuda", True
    ckpt = train(config)
    rows = read_metrics(tmp_path / "amp")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in rows)
    saved = load_checkpoint(ckpt)
    assert all(t.device.type == "cpu" for t in saved["model"].values() if torch.is_tensor(t))
    model, meta = load_model(ckpt, "cpu")
    torch.manual_seed(config.train.seed)  # train() builds its model right after this
    init = build_model(config.model, len(meta["categories"]))
    moved = [n for (n, p), (_, q) in zip(model.named_parameters(), init.named_parameters())
             if not torch.equal(p, q)]
    assert moved and any(".detector." in f".{n}" for n in moved)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_cuda_model_detects_what_the_cpu_model_detects(synth_dir, tmp_path, no_tf32):
    """One checkpoint, run on both devices in float32 (TF32 off): the same φ, the same raw
    outputs, the same detection scores (compared sorted: near-equal scores may swap places)."""
    ckpt = _train(synth_dir, tmp_path / "run", "elastic", "cpu", amp=False, steps=2)
    cpu, meta = load_model(ckpt, "cpu")
    gpu, _ = load_model(ckpt, "cuda")
    ds = CocoDetection(*split_paths(synth_dir, "val"), categories=meta["categories"])
    images = [ds[i][0] for i in range(3)]
    with torch.inference_mode():
        d_cpu, o_cpu = cpu.detect(images)
        d_gpu, o_gpu = gpu.detect([im.cuda() for im in images])
    torch.testing.assert_close(o_gpu["phi"].cpu(), o_cpu["phi"], atol=1e-3, rtol=0)
    assert o_gpu["image_sizes"].tolist() == o_cpu["image_sizes"].tolist()
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(o_gpu[key].float().cpu(), o_cpu[key].float(), atol=1e-3,
                                   rtol=1e-3)
    for a, b in zip(d_cpu, d_gpu):
        assert b["boxes"].device.type == "cuda"
        torch.testing.assert_close(b["scores"].cpu().sort().values, a["scores"].sort().values,
                                   atol=1e-3, rtol=0)


def test_the_benchmark_smoke_cells_run_on_cuda_with_amp(tmp_path):
    """`elastic-lab bench --smoke --device cuda --amp`: every cell (latency included) is written,
    names the GPU and mixed precision, and holds finite AP and GFLOPs."""
    out = tmp_path / "bench"
    assert main(["bench", "--smoke", "--out", str(out), "--device", "cuda", "--amp"]) == 0
    cells = read_cells(out / "cells")
    assert sorted(cells) == sorted(bench.expected_cells(bench.smoke_options(str(out))))
    for name, cell in cells.items():
        m = cell["machine"]
        assert m["device"].startswith("cuda") and m["amp"] is True
        assert m["device_name"] == torch.cuda.get_device_name()
        if name == LATENCY:
            continue
        row = cell["rows"]["sweep"]["1"]
        assert math.isfinite(row["AP"]) and row["gflops"] > 0
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == []
