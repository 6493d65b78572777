"""The README picture (elastic_lab.overview): panels, captions and the CLI that writes the PNG."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.cli import main as cli
from elastic_lab.data.image import image_tensor
from elastic_lab.data.synth import categories_for, write_examples
from elastic_lab.models.build import ModelOptions, build_model, load_model
from elastic_lab.overview import GAP, caption_lines, draw_panel, overview_image
from elastic_lab.resize import processed_size
from tests.test_model import TINY


@pytest.fixture(scope="module")
def elastic(tmp_path_factory):
    """(checkpoint path, model, categories, {name: example image}) of an untrained tiny model."""
    root = tmp_path_factory.mktemp("overview")
    torch.manual_seed(0)
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY)
    categories = categories_for()
    model = build_model(opts, len(categories)).eval()
    path = save_checkpoint(root / "elastic.pt", {"model": model.state_dict(), "model_options":
                                                 opts.to_dict(), "categories": categories})
    images = {p.name: Image.open(p).convert("RGB") for p in write_examples(root / "examples")}
    return path, model, categories, images


def test_overview_joins_one_panel_per_image_with_its_predicted_phi(elastic):
    _, model, categories, images = elastic
    picture, results = overview_image(model, categories, images, threshold=0.0, height=120)
    assert list(results) == list(images)
    for name, r in results.items():
        image = images[name]
        # the phi in the caption is the one the detector ran at: it fixes the processed size
        assert r["phi_source"] == "predicted"
        assert tuple(r["processed_size"]) == processed_size(
            image.height, image.width, r["phi"], model.base_size, model.max_size, model.stride)
        assert r["detections"], name  # threshold 0: every kept query is drawn
        lines = caption_lines(name, r)
        assert f"phi = {r['phi']:.2f}" in lines[0]
        assert f"{r['processed_width']}x{r['processed_height']} px" in lines[1]
    panels = [draw_panel(images[n], results[n], categories, n, 120) for n in images]
    assert picture.size == (sum(p.width for p in panels) + GAP * (len(panels) - 1),
                            max(p.height for p in panels))
    # the first panel's image area shows the drawn boxes: it differs from the plain resized image
    first = images["tiny.png"]
    plain = first.resize((round(first.width * 120 / first.height), 120), Image.Resampling.LANCZOS)
    drawn = picture.crop((0, 0, plain.width, 120))
    assert np.abs(np.asarray(drawn, np.int16) - np.asarray(plain, np.int16)).max() > 100


def test_caption_reports_processed_size_and_compute_change():
    r = {"phi": 1.5, "phi_source": "predicted", "processed_width": 512, "processed_height": 384,
         "base_width": 341, "base_height": 256, "gflops": 12.0, "gflops_phi1": 5.0,
         "detections": [{}] * 3}
    lines = caption_lines("a.png", r)
    assert lines == ["a.png: phi = 1.50 (predicted)", "seen at 512x384 px (phi = 1: 341x256)",
                     "12.00 GFLOPs vs 5.00 (+140.0%), 3 boxes"]


def test_overview_cli_writes_the_png_and_refuses_other_formats(elastic, tmp_path, capsys):
    path, _, _, _ = elastic
    examples = sorted((path.parent / "examples").glob("*.png"))
    out = tmp_path / "docs" / "overview.png"
    assert cli(["overview", "--checkpoint", str(path), *map(str, examples), "--out", str(out),
                "--height", "100", "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > 100
    assert "large.png: phi =" in capsys.readouterr().out
    # the numbers beside the picture are those of the model on these images
    record = json.loads(out.with_suffix(".json").read_text())
    assert list(record["images"]) == [p.name for p in examples]
    model = load_model(path, "cpu")[0]
    for p in examples:
        im = Image.open(p).convert("RGB")
        phi = model.predict_phi([image_tensor(im)]).item()
        assert record["images"][p.name]["phi"] == pytest.approx(phi, abs=1e-5)
    assert cli(["overview", "--checkpoint", str(path), str(examples[0]), "--out",
                str(tmp_path / "x.jpg")]) == 1
    assert "x.jpg" in capsys.readouterr().err
    assert cli(["overview", "--checkpoint", str(path), str(tmp_path / "missing.png"), "--out",
                str(out)]) == 1
    assert "missing.png" in capsys.readouterr().err
