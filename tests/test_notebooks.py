"""Tutorial notebooks: stored clean, follow the conventions, and run headless in smoke mode.

Every ``notebooks/*.ipynb`` is picked up automatically. Execution uses nbclient with the
"python3" kernel of the interpreter running the tests (the project's .venv under `make test`);
Jupyter's and IPython's config/data/runtime folders point at temporary directories, so nothing
is registered or written outside pytest's tmp_path.
"""
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

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
