"""Tests of the notebook helpers: paths and smoke mode."""
from pathlib import Path

from elastic_lab.notebook_utils import PROJECT_ROOT, project_path, work_dir


def test_project_path_and_work_dir(tmp_path, monkeypatch):
    assert project_path("/abs/x.pt") == Path("/abs/x.pt")
    assert project_path("checkpoints/a.pt") == PROJECT_ROOT / "checkpoints" / "a.pt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "1")
    assert work_dir("nb") == tmp_path / "smoke_work" / "nb" and (tmp_path / "smoke_work/nb").is_dir()
    monkeypatch.setenv("ELASTIC_LAB_SMOKE", "0")
    assert work_dir("nb", root=tmp_path / "runs") == tmp_path / "runs" / "nb"
