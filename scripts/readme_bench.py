"""Rewrite the README's benchmark summary and cell count from ``benchmarks/results.json``.

    python scripts/readme_bench.py        # after `elastic-lab bench` (or --report-only)

The README states the benchmark's answer in the sentences of elastic_lab/bench_text.py
(``readme_summary``) and the cells trained so far (``status_line``); this script replaces
the two lines that hold them, so the README follows the committed cells with one command.
tests/test_numbers.py checks both against results.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from elastic_lab.bench_text import readme_summary, status_line

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_LEAD = "`benchmarks/results.md`): "  # the summary follows this, to the end of its line
STATUS = re.compile(r"^\*\*Status: \d+ of \d+ cells trained\*\* \([^)]*\)", re.MULTILINE)


def main() -> int:
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    start = readme.index(SUMMARY_LEAD) + len(SUMMARY_LEAD)
    end = readme.index("\n", start)
    readme = readme[:start] + readme_summary(results) + readme[end:]
    line = status_line(list(results["cells"]), results["missing"])
    readme, n = STATUS.subn(line, readme)
    if n != 1:
        raise SystemExit(f"{readme_path}: expected one '**Status: N of M cells trained** (...)' "
                         f"line, found {n}")
    readme_path.write_text(readme)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
