"""The shipped checkpoints' numbers, read from their committed evaluation files.

``make checkpoints`` (scripts/make_checkpoints.sh) evaluates each shipped model on the val split
and writes ``checkpoints/evals/<mode>_val.json`` (multi-scale also at φ = 0.75 and 1.25:
``multiscale_val_phi<F>.json``). The README and ``checkpoints/README.md`` quote their tables
from these files; ``python -m elastic_lab.model_cards`` prints the tables as they must appear,
and ``tests/test_numbers.py`` checks that the documents hold them. Latency is left out: one
machine's timing under an unknown load; the benchmark's paired latency cell measures it.
"""

from __future__ import annotations

import os

from .bench_cells import read_cells

EVALS = "checkpoints/evals"
# (row label, evaluation file stem), in the order of the tables
ROWS = (
    ("fixed (φ = 1)", "fixed_val"),
    ("multi-scale, tested at φ = 0.75", "multiscale_val_phi0.75"),
    ("multi-scale, tested at φ = 1", "multiscale_val"),
    ("multi-scale, tested at φ = 1.25", "multiscale_val_phi1.25"),
    ("elastic (predicted φ)", "elastic_val"),
)
COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def read_evals(evals_dir: str | os.PathLike = EVALS) -> dict[str, dict]:
    """Every evaluation file of ``evals_dir`` by stem."""
    return read_cells(evals_dir)


def _row(label: str, m: dict) -> str:
    gflops = f"{m['gflops_per_image']:.2f}"
    if m.get("predictor_gflops"):
        gflops += f" ({m['predictor_gflops']:.2f} predictor)"
    phi = f"{m['mean_scale']:.2f}"
    if m.get("mode") == "elastic":
        phi += f" ± {m['scale_std']:.2f}"
    return "| " + " | ".join([label, *(f"{m[k]:.3f}" for k in COLUMNS), gflops, phi]) + " |"


def shipped_table(evals: dict[str, dict]) -> str:
    """The markdown table of the shipped models on the val split (rows whose file is missing
    are left out)."""
    head = ["| model | " + " | ".join(COLUMNS) + " | GFLOPs/image | mean φ |",
            "|---" * (len(COLUMNS) + 3) + "|"]
    return "\n".join(head + [_row(label, evals[stem]) for label, stem in ROWS if stem in evals])


def elastic_lines(evals: dict[str, dict]) -> list[str]:
    """Sentences about the elastic model's choice of φ, each with its numbers from
    ``elastic_val.json`` (empty without it)."""
    m = evals.get("elastic_val")
    if m is None:
        return []
    out = []
    f = m.get("predictor_fidelity") or {}
    if f:
        out.append(f"predicted u against the scale loss's optimum u* (its target): Pearson "
                   f"{f['pearson_u']:.2f}, mean |u − u*| {f['mae_u']:.3f}, sd(u) {f['sd_u']:.2f} "
                   f"where sd(u*) is {f['sd_u_star']:.2f}")
        regimes = f.get("by_regime") or {}
        if regimes:
            out.append("mean φ predicted / asked for (φ*) per scene regime: " + ", ".join(
                f"{k} {v['phi']:.2f} / {v['phi_star']:.2f}" for k, v in regimes.items()))
    if m.get("spearman_phi_vs_median_side") is not None:
        out.append(f"Spearman ρ(φ, median object side) = "
                   f"{m['spearman_phi_vs_median_side']:+.2f} over the "
                   f"{m['num_images_with_objects']} val images with objects")
    return out


def main() -> int:
    evals = read_evals()
    print(shipped_table(evals))
    for line in elastic_lines(evals):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
