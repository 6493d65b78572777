"""Tutorial notebooks: stored clean, follow the conventions, and run headless in smoke mode.

Every ``notebooks/*.ipynb`` is picked up automatically. Execution uses nbclient with the
"python3" kernel of the interpreter running the tests (the project's .venv under `make test`);
Jupyter's and IPython's config/data/runtime folders point at temporary directories, so nothing
is registered or written outside pytest's tmp_path. Also tests the notebook helpers in
``elastic_lab.notebook_utils``.
"""
import math
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from elastic_lab.distribution_loss import distribution_loss, target_beta
from elastic_lab.notebook_utils import (
    gradient_step_on_g,
    ideal_scale,
    random_object_sides,
    simulate_boundary_learning,
    smoke_mode,
)
from elastic_lab.scale_loss import scale_loss_per_image

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120  # per cell
NOTEBOOK_BUDGET_S = 60  # whole notebook in smoke mode, kernel start included
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture
def jupyter_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary Jupyter/IPython dirs and smoke mode; returns the notebooks' working folder."""
    for var, sub in (("JUPYTER_CONFIG_DIR", "jupyter_config"),
                     ("JUPYTER_DATA_DIR", "jupyter_data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter_runtime"), ("IPYTHONDIR", "ipython")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_notebooks_are_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"02_scale_loss.ipynb", "03_distribution_loss.ipynb"} <= names
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    missing = [n for n in names if n not in readme]
    assert not missing, f"notebooks/README.md does not list {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_tutorial_layout(path: Path):
    """Framing first, one "parameters" cell, smoke-mode aware, a final computed assert."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: start with a framing cell"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: need exactly one cell tagged 'parameters'"
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "smoke_mode()" in sources or "ELASTIC_LAB_SMOKE" in sources, f"{path.name}: smoke mode"
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert " in last.source, f"{path.name}: end with a cell that asserts the key result"


def test_python3_kernel_is_this_interpreter(jupyter_sandbox: Path):
    """The kernel nbclient starts is the interpreter running the tests (the project's venv)."""
    ksm = KernelSpecManager()
    spec = ksm.get_kernel_spec("python3")
    assert Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve()), (
        f"python3 kernelspec at {spec.resource_dir} is not this environment's ({sys.prefix})")
    cmd = KernelManager(kernel_name="python3", kernel_spec_manager=ksm).format_kernel_cmd()
    assert cmd[0] == sys.executable, f"kernel command {cmd[0]} != {sys.executable}"


@pytest.mark.slow  # ~10-20 s per notebook on 2 CPU cores (kernel start and torch import included)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless_in_smoke_mode(path: Path, jupyter_sandbox: Path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=60,
                            resources={"metadata": {"path": str(jupyter_sandbox)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_BUDGET_S, f"{path.name} took {elapsed:.0f} s in smoke mode"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if any(".show()" in c.source for c in nb.cells if c.cell_type == "code"):
        assert any(PLOTLY_MIME in o.get("data", {}) for o in outputs), (
            f"{path.name}: fig.show() produced no plotly output")


# ------------------------------------------------------------------ notebook_utils helpers
def test_smoke_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "1")
    assert smoke_mode()
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "0")
    assert not smoke_mode()
    monkeypatch.delenv("ELASTIC_LAB_SMOKE")
    assert not smoke_mode()


def test_random_object_sides_deterministic_and_in_range():
    a, b = random_object_sides(20, seed=7), random_object_sides(20, seed=7)
    assert len(a) == 20 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    flat = torch.cat(a)
    assert flat.min() >= 8.0 - 1e-4 and flat.max() <= 384.0 + 1e-3
    assert all(1 <= x.numel() <= 8 for x in a)
    assert not all(torch.equal(x, y) for x, y in zip(a, random_object_sides(20, seed=8),
                                                      strict=True))
    with pytest.raises(ValueError, match="min_side"):
        random_object_sides(3, min_side=10, max_side=5)


def test_ideal_scale_is_the_minimiser_of_the_scale_loss():
    sides = random_object_sides(12, seed=1) + [torch.zeros(0)]
    u = ideal_scale(sides, 0.2).requires_grad_(True)
    assert u[-1] == 0.0  # no objects: empty target
    loss, _ = scale_loss_per_image(u, sides, 0.2)
    (grad,) = torch.autograd.grad(loss[:-1].sum(), u)
    torch.testing.assert_close(grad[:-1], torch.zeros(12, dtype=grad.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ema,direction", [((0.9, 0.6, 0.3), 1), ((0.3, 0.6, 0.9), -1)])
def test_one_gradient_step_on_g_moves_gamma_towards_the_harder_bin(ema, direction):
    sides = random_object_sides(128, seed=2)  # small batches give a noisy direction
    new_g, before, after = gradient_step_on_g(sides, 0.0, ema, lr=0.05)
    assert math.copysign(1, new_g) == direction and after < before
    assert before == pytest.approx(float(distribution_loss(sides, torch.tensor(0.0), ema)))


def test_simulation_rows_look_like_metrics_and_gamma_drifts():
    up = simulate_boundary_learning((0.9, 0.6, 0.3), num_steps=60, log_every=10, seed=0)
    down = simulate_boundary_learning((0.3, 0.6, 0.9), num_steps=60, log_every=10, seed=0)
    assert [r["step"] for r in up] == [10, 20, 30, 40, 50, 60]
    keys = {"step", "loss_dist", "loss_scale", "gamma", "boundary_small_px", "bin_loc_loss",
            "target_alpha", "target_beta", "u_beta_alpha", "u_beta_beta", "phi_mean", "simulated"}
    assert keys <= set(up[0])
    target = target_beta([0.9, 0.6, 0.3])
    assert (up[0]["target_alpha"], up[0]["target_beta"]) == pytest.approx(target)
    assert up[-1]["gamma"] > up[0]["gamma"] > 1.0 > down[0]["gamma"] > down[-1]["gamma"]
    assert all(0.5 <= r["phi_min"] <= r["phi_mean"] <= r["phi_max"] <= 1.5 for r in up + down)
    assert up[-1]["boundary_small_px"] == pytest.approx(32.0 * up[-1]["gamma"])
