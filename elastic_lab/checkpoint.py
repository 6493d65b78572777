"""Versioned, safe checkpoints: atomic writes, ``weights_only`` loads, RNG state capture.

A checkpoint is one ``torch.save`` zip archive holding a plain dict::

    {"format": "elastic-lab", "format_version": 1, "code_version": "0.1.0", "model_half": False,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "rng": rng_state(),
     "options": {...plain dict...}, "categories": [{"id": 1, "name": "..."}, ...], ...}

Only tensors, ``bool``/``int``/``float``/``str``, ``None`` and lists/tuples/dicts of those are
accepted on save, so every checkpoint can be read back with ``torch.load(weights_only=True)``,
which refuses to run code hidden in a pickle. Loading never uses ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import elastic_lab

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_NAME = "elastic-lab"
FORMAT_VERSION = 1
_HEADER_KEYS = ("format", "format_version", "code_version", "model_half")
_SCALARS = (bool, int, float, str)
_ZIP_MAGIC = b"PK\x03\x04"
_KNOWN_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x80\x02": "a raw pickle (legacy torch.save format), which elastic-lab never writes",
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, corrupt, foreign, too new or unsafe."""


# --------------------------------------------------------------------------- save
def _check_plain(value: Any, key_path: str, path: Path) -> None:
    """Raise ``TypeError`` naming ``key_path`` if ``value`` is not a weights_only-safe object."""
    if value is None or isinstance(value, torch.Tensor) or type(value) in _SCALARS:
        # exact type check: numpy scalars subclass float/int but do not survive weights_only
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise TypeError(
                    f"save_checkpoint({path}): key {key!r} in {key_path} has type "
                    f"{type(key).__module__}.{type(key).__qualname__}; keys must be str/int"
                )
            _check_plain(item, f"{key_path}[{key!r}]", path)
        return
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{key_path}[{i}]", path)
        return
    hint = ""
    if isinstance(value, (np.ndarray, np.generic)):
        hint = " (convert with torch.as_tensor(...) or .tolist())"
    elif hasattr(value, "__dataclass_fields__"):
        hint = " (convert with dataclasses.asdict(...))"
    raise TypeError(
        f"save_checkpoint({path}): {key_path} has unsupported type "
        f"{type(value).__module__}.{type(value).__qualname__}{hint}; a checkpoint may hold only "
        "tensors, bool/int/float/str, None, and lists/tuples/dicts of those"
    )


def _to_half(state: dict[str, Any]) -> dict[str, Any]:
    """Copy of a state_dict with floating tensors stored as float16 (others unchanged)."""
    return {
        k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in state.items()
    }


def save_checkpoint(
    path: str | os.PathLike,
    payload: dict[str, Any],
    *,
    half: bool = False,
    model_key: str = "model",
) -> Path:
    """Write ``payload`` plus the format header to ``path`` atomically; return the path.

    The archive is written to a temporary file in the same directory, flushed, fsync'ed and
    moved over ``path`` with ``os.replace``: a crash leaves either the old file or the new one,
    never a partial file. With ``half=True`` the floating tensors of ``payload[model_key]``
    are stored as float16 (to ship small checkpoints); ``load_checkpoint`` returns them as
    stored and the caller casts. Header keys in ``payload`` are overwritten.
    Raises ``TypeError`` naming the key path of any value that is not plain data.
    """
    path = Path(path)
    if not isinstance(payload, dict):
        raise TypeError(f"save_checkpoint({path}): payload must be a dict, got {type(payload)}")
    body = {k: v for k, v in payload.items() if k not in _HEADER_KEYS}
    _check_plain(body, "payload", path)
    if half:
        if not isinstance(body.get(model_key), dict):
            raise ValueError(
                f"save_checkpoint({path}): half=True needs a state_dict at payload[{model_key!r}]"
            )
        body[model_key] = _to_half(body[model_key])
    obj = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "code_version": str(getattr(elastic_lab, "__version__", "unknown")),
        "model_half": bool(half),
        **body,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the directory entry of a rename (best effort; not possible on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- load
def _sniff(path: Path) -> None:
    """Reject files that are not zip archives before ``torch.load`` sees them."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): was the save interrupted?")
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({size} bytes, the zip archive "
                "written by torch.save is incomplete)"
            )
        return
    kind = next((name for magic, name in _KNOWN_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        kind = "a text file" if text else "unrecognised binary data"
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint: expected the zip archive written by torch.save, "
        f"found {kind}"
    )


def _unpickler_reason(error: Exception) -> str:
    """The one informative sentence of torch's long weights-only error message."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\.?$)", text, flags=re.MULTILINE)
    if match:
        return match.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    Returns the whole dict (header keys included); float16 model tensors are returned as
    stored. Raises ``CheckpointError`` naming the file when it is missing, empty, truncated,
    not a torch file, a foreign torch file (e.g. a bare state_dict), of another
    ``format_version``, or refused as unsafe by the weights-only unpickler.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    _sniff(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path} as unsafe: it contains objects other than tensors and plain "
            "containers, which could run code when unpickled (weights_only=True rejected it: "
            f"{_unpickler_reason(e)}). Only load checkpoints from sources you trust."
        ) from e
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"could not read checkpoint {path} (truncated, corrupt or not written by "
            f"torch.save): {e}"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        what = type(obj).__name__
        if isinstance(obj, dict):
            tensors = obj and all(isinstance(v, torch.Tensor) for v in obj.values())
            what = (
                "a plain state_dict" if tensors else f"a dict with keys {sorted(map(str, obj))[:8]}"
            )
        raise CheckpointError(
            f"{path} is not an elastic-lab checkpoint (it holds {what} without "
            f"format={FORMAT_NAME!r}); elastic-lab checkpoints are written by save_checkpoint"
        )
    version = obj.get("format_version")
    if type(version) is not int:
        raise CheckpointError(f"checkpoint {path} has an invalid format_version: {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version} (written by elastic-lab "
            f"{obj.get('code_version', '?')}); this elastic-lab reads format_version "
            f"{FORMAT_VERSION}: upgrade elastic-lab"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has unsupported format_version {version}; expected {FORMAT_VERSION}"
        )
    return obj


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """State of python ``random``, numpy's global RNG and torch (CPU + all CUDA devices).

    Everything is converted to tensors/ints/floats so it survives ``weights_only`` loading.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),  # 625 values < 2**32
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # [624] uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by ``rng_state`` (CUDA only if it is available here)."""
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate(
            (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
        )
        np.random.set_state(
            (
                npy["bit_generator"],
                npy["keys"].numpy().astype(np.uint32),
                int(npy["pos"]),
                int(npy["has_gauss"]),
                float(npy["cached_gaussian"]),
            )
        )
        torch.set_rng_state(state["torch"].cpu())
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"set_rng_state: malformed RNG state (missing or bad field: {e})") from e
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            warnings.warn(
                f"set_rng_state: saved {len(cuda)} CUDA RNG states but {torch.cuda.device_count()} "
                "devices are visible; CUDA RNG states not restored",
                stacklevel=2,
            )
