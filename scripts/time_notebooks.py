"""Wall-clock time of each tutorial notebook at its CPU defaults, into a committed result file.

    python scripts/time_notebooks.py [--only 04 06] [--threads 1] [--note "..."]
        [--out notebooks/timings.json] [--keep-runs] [--cell-timeout 1800]

Each notebook runs top to bottom headless (nbclient, the "python3" kernel of this interpreter),
as a reader's first run would: its folder under ``runs/notebooks/`` is removed first (unless
``--keep-runs``), so nothing cached from an earlier run is reused; data that a notebook shares
with the project (``data/synth``) and the committed benchmark cells are used as they are. A
notebook passes when every cell ran, its final assert included.

Entries are merged into ``--out`` by notebook, so notebooks can be timed one at a time (on a
shared machine, when it is quiet). Each entry records the date, the machine, the torch threads,
the load average before and after, and ``--note`` (say what else ran). The script ends by
printing the table that ``notebooks/README.md`` quotes; tests/test_numbers.py checks the quote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from elastic_lab.runtime import cpu_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(path: Path, cell_timeout: int) -> tuple[float, str | None]:
    """Execute ``path`` in memory (the stored file is not changed); (seconds, error or None)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except (CellExecutionError, CellTimeoutError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        error = lines[-1][:300] if lines else type(exc).__name__
    return time.perf_counter() - start, error


def table(entries: dict) -> str:
    """The Markdown table notebooks/README.md quotes."""
    lines = ["| notebook | minutes | result | date | machine | what else ran |",
             "|---|---|---|---|---|---|"]
    for name, t in sorted(entries.items()):
        lines.append(f"| `{name}` | {t['minutes']:.1f} | {'passed' if t['passed'] else 'FAILED'}"
                     f" | {t['date']} | {t['machine']}, {t['cores']} cores, {t['threads']} "
                     f"thread(s) | {t['note'] or '—'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None,
                   help="notebook name prefixes (e.g. 04 06); default: all")
    p.add_argument("--threads", type=int, default=None,
                   help="torch/OpenMP threads of the kernel (default: torch's own choice)")
    p.add_argument("--note", default="", help="what else the machine was running")
    p.add_argument("--out", type=Path, default=NOTEBOOKS / "timings.json")
    p.add_argument("--keep-runs", action="store_true",
                   help="keep runs/notebooks/<notebook>/ (default: removed, a first run)")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args(argv)

    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.only:
        paths = [q for q in paths if any(q.name.startswith(o) for o in args.only)]
        if not paths:
            p.error(f"--only {' '.join(args.only)}: no notebook matches in {NOTEBOOKS}")
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the kernel inherits it
    os.environ.pop("ELASTIC_LAB_SMOKE", None)  # the CPU defaults, not smoke mode
    entries = json.loads(args.out.read_text()) if args.out.exists() else {}
    for path in paths:
        if not args.keep_runs:
            shutil.rmtree(ROOT / "runs" / "notebooks" / path.stem, ignore_errors=True)
        load_before = os.getloadavg()[0]
        print(f"{path.name}: running ...", flush=True)
        seconds, error = run_notebook(path, args.cell_timeout)
        entries[path.name] = {
            "minutes": round(seconds / 60, 2), "passed": error is None, "error": error,
            "date": datetime.date.today().isoformat(), "machine": cpu_model(),
            "cores": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
            "torch": torch.__version__, "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "note": args.note}
        print(f"{path.name}: {seconds / 60:.1f} min, "
              f"{'passed' if error is None else 'FAILED: ' + error}", flush=True)
        args.out.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")
    print(table(entries))
    return 0 if all(entries[q.name]["passed"] for q in paths) else 1


if __name__ == "__main__":
    raise SystemExit(main())
