"""Device selection, mixed precision, the CPU's name and data-set paths shared by every entry
point."""

from __future__ import annotations

import argparse
import contextlib
import platform
from pathlib import Path

import torch


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda[:N] and --amp."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (float16 on CUDA, bfloat16 on CPU)")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this process's CUDA device when available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast_context(device: torch.device, enabled: bool):
    """torch.autocast for --amp, a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def split_paths(data: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a COCO-format split: DIR/images/SPLIT, DIR/annotations/instances_SPLIT.json."""
    data = Path(data)
    image_dir, ann = data / "images" / split, data / "annotations" / f"instances_{split}.json"
    if not ann.exists():
        raise FileNotFoundError(f"annotation file not found: {ann} (expected a COCO-format folder "
                                f"with images/{split}/ and annotations/instances_{split}.json)")
    return image_dir, ann
