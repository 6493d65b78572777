"""Checkpoints: round trip, atomic writes, clear errors on bad files, refusal of unsafe pickles."""

import builtins
import dataclasses
import os
import random
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from elastic_lab.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _training_payload() -> dict:
    """A realistic payload: model, AdamW and scheduler state after one step, options, categories."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "options": {"tau_min": 0.5, "tau_max": 1.5, "base_size": 256, "name": "run", "x": None},
        "categories": [{"id": 1, "name": "circle"}, {"id": 7, "name": "ring"}],
        "epoch": 3,
    }


def _assert_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip(tmp_path):
    payload = _training_payload()
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", payload)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "elastic-lab"
    assert loaded["format_version"] == FORMAT_VERSION
    assert isinstance(loaded["code_version"], str) and loaded["model_half"] is False
    for key in payload:
        _assert_equal(payload[key], loaded[key])
    # the loaded states are usable
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    model.load_state_dict(loaded["model"])
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.load_state_dict(loaded["optimizer"])
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["ckpt.pt"]  # no temp file left


def test_half_stores_float16_model_only(tmp_path):
    payload = _training_payload()
    save_checkpoint(tmp_path / "half.pt", payload, half=True)
    loaded = load_checkpoint(tmp_path / "half.pt")
    assert loaded["model_half"] is True
    for k, v in loaded["model"].items():
        if payload["model"][k].is_floating_point():
            assert v.dtype == torch.float16
            torch.testing.assert_close(v.float(), payload["model"][k], atol=1e-2, rtol=1e-2)
        else:  # e.g. BatchNorm's num_batches_tracked stays int64
            assert v.dtype == payload["model"][k].dtype
    assert loaded["optimizer"]["state"][0]["exp_avg"].dtype == torch.float32
    assert payload["model"]["0.weight"].dtype == torch.float32  # caller's payload untouched
    with pytest.raises(ValueError, match="half=True"):
        save_checkpoint(tmp_path / "x.pt", {"weights": {}}, half=True)


@pytest.mark.parametrize(
    ("value", "key_path", "hint"),
    [
        ({"model": {"w": np.zeros(3)}}, r"payload\['model'\]\['w'\]", "numpy.ndarray"),
        (
            {"options": dataclasses.make_dataclass("Opt", [("a", int)])(1)},
            r"payload\['options'\]",
            "asdict",
        ),
        ({"best": [1.0, np.float64(0.5)]}, r"payload\['best'\]\[1\]", "numpy.float64"),
        ({"fn": print}, r"payload\['fn'\]", "builtin_function_or_method"),
    ],
)
def test_save_rejects_non_plain_values(tmp_path, value, key_path, hint):
    path = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=key_path) as info:
        save_checkpoint(path, value)
    assert hint in str(info.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})
    old_bytes = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during replace")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"epoch": 2, "w": torch.randn(100)})
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "temp file left behind"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.randn(2000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="ckpt.pt is truncated or corrupt"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(CheckpointError, match="noise.pt is not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert "unsafe" not in str(info.value)  # torch alone would call this a weights-only failure


def test_png_and_text(tmp_path):
    from PIL import Image

    png = tmp_path / "image.pt"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with pytest.raises(CheckpointError, match="image.pt is not a PyTorch checkpoint.*PNG image"):
        load_checkpoint(png)
    text = tmp_path / "notes.pt"
    text.write_text("epoch: 3\nlr: 0.001\n")
    with pytest.raises(CheckpointError, match="notes.pt is not a PyTorch checkpoint.*text file"):
        load_checkpoint(text)


def test_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="could not read checkpoint .*other.pt"):
        load_checkpoint(path)


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(
        CheckpointError, match="resnet.pth is not an elastic-lab checkpoint.*state_dict"
    ):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not an elastic-lab checkpoint.*list"):
        load_checkpoint(path)


def test_version_mismatch(tmp_path):
    path = tmp_path / "future.pt"
    torch.save(
        {"format": "elastic-lab", "format_version": FORMAT_VERSION + 1, "code_version": "9.0"}, path
    )
    with pytest.raises(CheckpointError, match="future.pt has format_version 2.*9.0.*upgrade"):
        load_checkpoint(path)
    torch.save({"format": "elastic-lab", "format_version": 0}, path)
    with pytest.raises(CheckpointError, match="unsupported format_version 0"):
        load_checkpoint(path)
    torch.save({"format": "elastic-lab", "format_version": "1"}, path)
    with pytest.raises(CheckpointError, match="invalid format_version"):
        load_checkpoint(path)


class _Evil:
    """Unpickling this object calls ``open(marker, "w")``: arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.mark.parametrize("wrapped", [False, True])
def test_malicious_pickle_is_refused(tmp_path, wrapped):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = _Evil(marker)
    obj = (
        {"format": "elastic-lab", "format_version": FORMAT_VERSION, "model": evil}
        if wrapped
        else evil
    )
    torch.save(obj, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load .*evil.pt as unsafe") as info:
        load_checkpoint(path)
    assert "open" in str(info.value)  # names the refused global
    assert not marker.exists(), "the payload's code ran"
    # the file is really malicious: an unsafe load runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def _draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [float(np.random.standard_normal())],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_set_rng_state_rejects_malformed():
    with pytest.raises(ValueError, match="malformed RNG state"):
        set_rng_state({"python": {}})
