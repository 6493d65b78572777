"""Files the app writes and lists: bounded result folders, example images, checkpoint choices.

* ``ResultStore``: every request writes into a fresh private folder; only the ``keep`` newest
  folders are kept, so the disk use of a long-running server stays bounded whatever Gradio's
  hourly cache cleanup does.
* ``prepare_examples``: writes the example images through a private staging folder and moves
  them into place with ``os.replace``, which replaces a planted symlink instead of writing
  through it; by default the folder itself is a fresh ``mkdtemp`` (mode 0700, never reused).
* ``list_checkpoints``: the choices of the checkpoint menu, named by file name, so that no
  server path reaches the page or an error message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from ..data.synth import write_examples

__all__ = ["KEEP_RESULTS", "ResultStore", "list_checkpoints", "prepare_examples", "safe_stem",
           "write_jpeg", "write_png", "write_result_json"]

KEEP_RESULTS = 64  # result folders kept (one per request; the oldest are deleted first)


class ResultStore:
    """Per-request result folders under a private root, at most ``keep`` of them at a time.

    ``root`` is where the private folder is created (e.g. Gradio's cache folder, so the files
    are served without being copied again). Thread-safe; ``close`` removes everything.
    """

    def __init__(self, root: str | Path | None = None, keep: int = KEEP_RESULTS):
        if keep < 1:
            raise ValueError(f"ResultStore: keep must be >= 1, got {keep}")
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="elastic-lab-results-", dir=root))
        self.keep = keep
        self._dirs: deque[Path] = deque()
        self._lock = threading.Lock()

    def new_dir(self) -> Path:
        """A fresh empty folder for one request; the oldest beyond ``keep`` are deleted."""
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._dirs.append(folder)
            old = [self._dirs.popleft() for _ in range(max(0, len(self._dirs) - self.keep))]
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        return folder

    def files(self) -> list[Path]:
        """Every file currently kept (for tests and monitoring)."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def safe_stem(name: str) -> str:
    """A file-name stem made of letters, digits, - and _ only (at most 60 characters)."""
    stem = Path(name).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:60]


def write_result_json(result: Mapping, out_dir: str | Path) -> Path:
    """Write ``result`` as indented JSON named after its image into ``out_dir``; return the path."""
    path = Path(out_dir) / f"detections_{safe_stem(str(result.get('image', 'image')))}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def write_png(image: Image.Image, name: str, out_dir: str | Path,
              prefix: str | None = "detections") -> Path:
    """Save ``image`` as a quickly compressed PNG named after ``name`` (lossless: a generated
    scene read back must be the scene); return the path."""
    path = Path(out_dir) / f"{prefix + '_' if prefix else ''}{safe_stem(name)}.png"
    image.save(path, format="PNG", compress_level=1)
    return path


def write_jpeg(image: Image.Image, name: str, out_dir: str | Path,
               prefix: str = "detections") -> Path:
    """Save a drawn result as a JPEG (quality 92, no chroma subsampling: coloured tags stay
    crisp) named after ``name``; return the path. A tenth of a PNG's bytes and time."""
    path = Path(out_dir) / f"{prefix}_{safe_stem(name)}.jpg"
    image.save(path, format="JPEG", quality=92, subsampling=0)
    return path


def prepare_examples(examples_dir: str | Path | None = None,
                     photos: Mapping[str, str | Path] | None = None) -> tuple[Path, list[Path]]:
    """Write the synthetic examples and copy ``photos`` ({file name: source}); (folder, files).

    ``examples_dir`` None: a fresh private folder (``mkdtemp``). Files are written into a
    staging folder inside the target and renamed into place (``os.replace``), so an existing
    file or a planted symlink at the target name is replaced, never written through. A photo
    whose source cannot be read is skipped.
    """
    folder = Path(tempfile.mkdtemp(prefix="elastic-lab-examples-") if examples_dir is None
                  else examples_dir)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        written = write_examples(staging)
        for name, source in (photos or {}).items():
            try:
                shutil.copyfile(source, staging / Path(name).name)
            except OSError:
                continue
            written.append(staging / Path(name).name)
        out = []
        for path in written:
            target = folder / path.name
            os.replace(path, target)
            out.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, out


def list_checkpoints(folder: str | Path, extra: Sequence[str | Path] = ()) -> dict[str, Path]:
    """{display name: path} for ``extra`` (first, as given) and every ``*.pt`` in ``folder``.

    Names are file names ("elastic_synth.pt"); a second file of the same name gets " (2)".
    Files that resolve to the same path are listed once.
    """
    found: dict[str, Path] = {}
    resolved = set()
    for p in [*map(Path, extra), *sorted(Path(folder).glob("*.pt"))]:
        key = p.resolve()
        if key in resolved:
            continue
        resolved.add(key)
        name, i = p.name, 2
        while name in found:
            name, i = f"{p.stem} ({i}){p.suffix}", i + 1
        found[name] = p
    return found
