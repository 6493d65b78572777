"""Helpers that make the tutorial notebooks portable: paths and smoke mode.

- :func:`project_path`: a relative path is the project root's, so notebooks find
  ``checkpoints/`` and ``data/`` from ``notebooks/`` or from anywhere else.
- :func:`work_dir`: a notebook's folder for generated data and runs (under ``runs/``, or under
  the working folder in smoke mode).
- :func:`smoke_mode`: ``ELASTIC_LAB_SMOKE=1`` (the tests set it) asks a notebook to shrink its
  work to seconds; the tiny training settings are :func:`elastic_lab.config.smoke_config`.

Runs and data live in :mod:`elastic_lab.experiments`, the analyses in
:mod:`elastic_lab.analysis`, the teaching simulations in :mod:`elastic_lab.simulations`.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_ROOT", "SMOKE_ENV", "project_path", "smoke_mode", "work_dir"]

SMOKE_ENV = "ELASTIC_LAB_SMOKE"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout (editable install)


def smoke_mode() -> bool:
    """True when the environment variable ELASTIC_LAB_SMOKE is "1" (tests: shrink the work)."""
    return os.environ.get(SMOKE_ENV, "0").strip() == "1"


def project_path(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute; otherwise relative to the project root (the folder with
    ``notebooks/`` and ``elastic_lab/``), so notebooks find ``checkpoints/`` and ``data/``
    whatever their working folder. Outside a checkout: relative to the working folder."""
    path = Path(path)
    if path.is_absolute():
        return path
    root = PROJECT_ROOT if (PROJECT_ROOT / "notebooks").is_dir() else Path.cwd()
    return root / path


def work_dir(name: str, root: str | os.PathLike = "runs/notebooks") -> Path:
    """Folder for a notebook's generated data and runs (created).

    Normally ``project_path(root) / name`` (``runs/`` is git-ignored); in smoke mode
    ``./smoke_work/name`` under the working folder, so that tests write only to their own
    temporary folder.
    """
    out = Path.cwd() / "smoke_work" / name if smoke_mode() else project_path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    return out
