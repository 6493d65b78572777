"""Every document the project cites exists in the repository, nothing cites files outside it,
and the commands the README gives do what it says."""

import argparse
import re
import shlex
from dataclasses import asdict
from pathlib import Path

from elastic_lab import recipes, train

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("*.py"), *ROOT.glob("*/README.md"),
           *(ROOT / "elastic_lab").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
           *(ROOT / "scripts").glob("*"), *(ROOT / "notebooks").glob("*.ipynb"),
           *(ROOT / "docs").glob("*.md")]
CITED = re.compile(r"docs/[A-Za-z0-9_.\-/]*[A-Za-z0-9_]")


def test_every_cited_doc_exists():
    cited = {(m.group(0), src.relative_to(ROOT).as_posix())
             for src in SOURCES if src.is_file()
             for m in CITED.finditer(src.read_text(errors="replace"))}
    assert any(path == "docs/method.md" for path, _ in cited)  # the scan sees citations
    missing = sorted((path, where) for path, where in cited if not (ROOT / path).exists())
    assert not missing, f"cited but not in the repository: {missing}"


def test_no_citation_of_files_outside_the_repository():
    outside = [src.relative_to(ROOT).as_posix() for src in SOURCES if src.is_file()
               and src.name != "test_docs.py" and "/work/shared" in src.read_text(errors="replace")]
    assert not outside


def test_method_doc_has_the_sections_the_code_cites():
    text = (ROOT / "docs" / "method.md").read_text()
    for n in range(1, 8):
        assert f"## §{n} " in text, f"docs/method.md lacks §{n}"
    for mark in ("**[paper]**", "**[DyRA]**", "**[ours]**"):
        assert mark in text


def test_the_readme_command_for_the_tested_design_trains_the_recipes_elastic_model():
    """The README's `elastic-lab train` line for other data gives the recipe's elastic design
    (the documentation is what is under test here, so it is parsed as a user would type it)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("elastic-lab train --data DATA --mode elastic")
    command = text[start:text.index("\n", text.index("--hflip", start))].replace("\\\n", " ")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    got = train.config_from_args(parser.parse_args(shlex.split(command)[2:]))
    want = recipes.recipe_config("elastic")
    g, w = asdict(got.model), asdict(want.model)
    for opts in (g, w):  # the detector's capacity is the user's choice for their data
        opts["detr"].pop("num_queries")
    assert g == w
    assert asdict(got.loss) == asdict(want.loss)
    for key in ("pretrain_steps", "batching", "hflip"):
        assert getattr(got.train, key) == getattr(want.train, key), key
