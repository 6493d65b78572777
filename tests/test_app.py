"""The Gradio app (app.py) through its HTTP API: detection, bad and odd input, sweeps, scenes.

``gradio_client`` and plain HTTP call the app of ``tests.app_server`` like any user would. The
hostile requests of issue 15 are in tests/test_app_hostile.py, the load figures in
tests/test_app_load.py, the pure pieces in tests/test_app_parts.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elastic_lab.cli import main as cli
from elastic_lab.data.synth import EXAMPLE_SIZE, render_scene
from tests.app_server import (
    REPO,
    UPLOAD_LIMIT,
    animated_gif,
    assert_clean,
    check_result,
    corrupt_png,
    detect,
    exif_rotated_jpeg,
    http_detect,
    launch,
    load_app_module,
    photo,
    plot_json,
    png_header_only,
    processed,
    scene_bytes,
    scene_truth,
    series_traces,
)

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas 3 notices


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(client, url, info) of this module's app (see ``tests.app_server.launch``)."""
    yield from launch(tmp_path_factory)


# --------------------------------------------------------------------------- /detect
def test_api_endpoints_are_named(server):
    client, _, _ = server
    assert sorted(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) \
        == ["/detect", "/scene", "/scene_sweep", "/sweep"]


def test_detect_synthetic_scene(server):
    client, _, info = server
    drawn, summary, caveat, result, json_file = detect(client, info["examples"] / "tiny.png")
    check_result(result, 288, 224)
    assert result["phi_source"] == "predicted" and result["gflops_predictor"] > 0
    assert result["image"] == "tiny.png" and result["checkpoint"] == info["elastic"]
    # the processed size is the base size scaled by phi, rounded to the stride
    assert tuple(result["base_size"]) == processed(1.0)
    assert tuple(result["processed_size"]) == processed(result["phi"])
    # the summary states the numbers of this result, width before height like the JSON names
    assert f"phi = {result['phi']:.2f}" in summary and "GFLOPs" in summary
    assert f"{result['processed_width']} x {result['processed_height']} px" in summary
    assert ("down-scaled" in summary) == (result["phi"] < 0.995)
    assert json.loads(Path(json_file).read_text()) == result
    assert "generated shapes only" in caveat  # an upload: the model's training data is said
    with Image.open(drawn) as im:
        assert im.size == (768, 597)  # small images are enlarged for display
        assert (result["drawing"]["width"], result["drawing"]["height"]) == im.size
        plain = Image.open(info["examples"] / "tiny.png").convert("RGB").resize(im.size)
        diff = np.abs(np.asarray(im.convert("RGB"), np.int16) - np.asarray(plain, np.int16))
        assert diff.max() > 100, "no box was drawn"


def test_detect_real_photo(server):
    client, _, _ = server
    _, _, caveat, result, _ = detect(client, photo("cheetah.jpg"))
    check_result(result, 502, 343)
    assert result["input_format"] == "JPEG" and "trained on generated shapes" in caveat


def test_latency_on_request_is_paired_and_labelled_noisy(server):
    client, _, info = server
    _, summary, _, result, _ = detect(client, info["examples"] / "tiny.png", threshold=0.3,
                                      measure_latency=True)
    lo, hi = result["latency_ratio_range"]
    assert result["latency_pairs"] == 5 and lo <= result["latency_ratio"] <= hi
    assert result["latency_ms"] > 0 and result["latency_ms_phi1"] > 0
    assert "noisy" in summary and f"ratio {result['latency_ratio']:.2f}" in summary
    # GFLOPs lead the summary; without the request no latency is measured or shown
    assert summary.index("GFLOPs") < summary.index("latency")
    _, summary, _, result, _ = detect(client, info["examples"] / "tiny.png")
    assert "latency_ms" not in result and "latency" not in summary


def test_forced_phi_is_honoured(server):
    client, _, info = server
    _, summary, _, result, _ = detect(client, info["examples"] / "large.png", force_phi=True,
                                      phi=0.5)
    assert result["phi"] == pytest.approx(0.5) and result["phi_source"] == "forced"
    assert tuple(result["processed_size"]) == processed(0.5)
    assert result["gflops_predictor"] == 0.0 and result["compute_saved"] > 0.5
    assert "forced by you" in summary and "less compute" in summary


def test_forced_phi_outside_range_is_refused(server):
    from gradio_client.exceptions import AppError

    client, _, info = server
    for phi, message in ((3.0, "greater than maximum value 1.5"),  # the slider's own check
                         (0.25, "less than minimum value 0.5")):
        with pytest.raises(AppError, match=message) as excinfo:
            detect(client, info["examples"] / "large.png", force_phi=True, phi=phi)
        assert_clean(str(excinfo.value), info["root"])


def test_other_checkpoints_by_name_and_clean_errors(server):
    from gradio_client.exceptions import AppError

    client, _, info = server
    _, _, _, result, _ = detect(client, info["examples"] / "mixed.png", checkpoint=info["fixed"])
    assert result["phi"] == 1.0 and result["phi_source"] == "fixed" and result["mode"] == "fixed"
    assert result["compute_saved"] == 0.0 and result["gflops_predictor"] == 0.0
    with pytest.raises(AppError, match="broken.pt.*not") as broken:
        detect(client, info["examples"] / "mixed.png", checkpoint=info["broken"])
    with pytest.raises(AppError, match="unknown checkpoint: choose one of elastic.pt") as unknown:
        detect(client, info["examples"] / "mixed.png", checkpoint="/etc/passwd")
    for exc in (broken, unknown):
        assert_clean(str(exc.value), info["root"])
    _, _, _, result, _ = detect(client, info["examples"] / "mixed.png")  # still up, default model
    assert result["checkpoint"] == info["elastic"]


def test_cli_predict_and_the_app_report_the_same_boxes(server, capsys):
    client, _, info = server
    image = info["examples"] / "mixed.png"
    _, _, _, result, json_file = detect(client, image, threshold=0.0)
    ckpt = info["root"] / "elastic.pt"
    assert cli(["predict", "--checkpoint", str(ckpt), str(image), "--json", "--no-timing",
                "--threshold", "0.0", "--device", "cpu"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    assert printed["detections"] == result["detections"]
    for key in ("phi", "processed_size", "base_size", "gflops", "width", "height"):
        assert printed[key] == pytest.approx(result[key]), key
    assert not re.search(r"-0\.0\b(?!\d)", Path(json_file).read_text())  # no negative zero


# --------------------------------------------------------------------------- bad and odd inputs
BAD_INPUTS = {  # name -> (writer(path), expected message fragment)
    "notes.txt": (lambda p: p.write_text("hello, not an image"), "not an image file"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty"),
    "truncated.png": (lambda p: p.write_bytes(scene_bytes("PNG")[:3000]), "corrupt or truncated"),
    "truncated.jpg": (lambda p: p.write_bytes(scene_bytes("JPEG")[:2000]), "corrupt or truncated"),
    "corrupt.png": (lambda p: p.write_bytes(corrupt_png()), "corrupt or truncated"),
    "bomb.png": (lambda p: png_header_only(p, 30000, 30000), "far more pixels than this app"),
    "big.png": (lambda p: png_header_only(p, 8000, 6000), "48 megapixels"),
    "dot.png": (lambda p: Image.new("RGB", (1, 1), "red").save(p), "1 x 1 px is too small"),
    "strip.png": (lambda p: Image.new("RGB", (4000, 16), "red").save(p), "aspect ratio 1:250"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_clear_error_and_app_stays_up(server, tmp_path, name):
    from gradio_client.exceptions import AppError

    client, _, info = server
    writer, message = BAD_INPUTS[name]
    path = tmp_path / name
    writer(path)
    with pytest.raises(AppError, match=message) as excinfo:
        detect(client, path)
    assert name in str(excinfo.value)
    assert_clean(str(excinfo.value), tmp_path)
    _, _, _, result, _ = detect(client, info["examples"] / "tiny.png")
    assert result["detections"]


def test_upload_over_the_size_limit_is_refused(server, tmp_path):
    client, _, info = server
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 255, (700, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=0)
    assert path.stat().st_size > UPLOAD_LIMIT
    with pytest.raises(Exception, match="(?i)too large|exceeds|413|maximum"):
        detect(client, path)
    _, _, _, result, _ = detect(client, info["examples"] / "tiny.png")
    assert result["detections"]


ODD_INPUTS = {  # name -> (writer, upright (w, h), note fragment or None)
    "gray.png": (lambda p: Image.new("L", (64, 48), 128).save(p), (64, 48), "grayscale"),
    "rgba.png": (lambda p: Image.new("RGBA", (64, 48), (255, 0, 0, 100)).save(p), (64, 48),
                 "transparency"),
    "deep.png": (lambda p: Image.fromarray(
        (np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(p), (64, 48), "8-bit"),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(p), (64, 48),
                 "CMYK"),
    "rotated.jpg": (exif_rotated_jpeg, (200, 300), "EXIF orientation 6"),
    "animated.gif": (animated_gif, (64, 48), "first frame of 2"),
}


@pytest.mark.parametrize("name", sorted(ODD_INPUTS))
def test_odd_but_valid_images_give_results(server, tmp_path, name):
    client, _, _ = server
    writer, (w, h), note = ODD_INPUTS[name]
    path = tmp_path / name
    writer(path)
    _, summary, _, result, _ = detect(client, path)
    assert (result["width"], result["height"]) == (w, h)
    assert result["detections"] and note in "; ".join(result["input_notes"]) and note in summary


# --------------------------------------------------------------------------- /sweep
def test_sweep_returns_the_chart_and_its_data(server):
    from gradio_client import handle_file

    client, _, info = server
    image = info["examples"] / "mixed.png"
    plot, rows = client.predict(image=handle_file(str(image)), threshold=0.0, api_name="/sweep")
    assert rows["phi"] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5]
    assert rows["num_detections"] == [info["top_k"]] * 9  # threshold 0 keeps the top-k
    assert all(g1 < g2 for g1, g2 in zip(rows["gflops"], rows["gflops"][1:]))
    _, _, _, result, _ = detect(client, image)
    assert rows["predicted_phi"] == pytest.approx(result["phi"])
    assert rows["used_phi"] == rows["predicted_phi"] and rows["phi_source"] == "predicted"
    assert rows["gflops"][4] == pytest.approx(result["gflops_phi1"])  # phi = 1 in the middle
    figure = plot_json(plot)
    traces = series_traces(figure)
    assert [t["x"] for t in traces] == [rows["phi"]] * 3
    assert [t["meta"]["key"] for t in traces] == ["num_detections", "mean_score", "gflops"]
    assert traces[2]["y"] == rows["gflops"]
    marked = [t for t in figure["data"] if (t.get("meta") or {}).get("kind") == "predicted"]
    assert marked and all(t["x"] == [rows["predicted_phi"]] * 2 for t in marked)


def test_sweep_marks_a_forced_phi(server):
    from gradio_client import handle_file

    client, _, info = server
    plot, rows = client.predict(image=handle_file(str(info["examples"] / "tiny.png")),
                                force_phi=True, phi=1.25, api_name="/sweep")
    assert rows["used_phi"] == 1.25 and rows["phi_source"] == "forced"
    forced = [t for t in plot_json(plot)["data"] if (t.get("meta") or {}).get("kind") == "forced"]
    assert len(forced) == 3 and all(t["x"] == [1.25, 1.25] for t in forced)


# --------------------------------------------------------------------------- generated scenes
def test_scene_shows_phi_star_and_recall_against_its_ground_truth(server):
    client, _, _info = server
    answers = {}
    for regime in ("tiny", "large"):
        scene_file, _drawn, summary, caveat, result, _ = client.predict(
            regime=regime, seed=5, threshold=0.3, api_name="/scene")
        answers[regime] = result
        truth = scene_truth(regime, 5)
        assert result["scene"] == {"regime": regime, "seed": 5}
        assert len(result["ground_truth"]) == len(result["found"]) == len(truth) > 0
        assert result["recall"] == pytest.approx(sum(result["found"]) / len(truth))
        assert f"{sum(result['found'])} of {len(truth)} objects" in summary
        assert f"phi\\* = {result['phi_star']:.2f}" in summary
        assert caveat == ""  # a generated scene is what the model was trained on
        with Image.open(scene_file) as im:  # the scene itself, as generated
            expected, _ = render_scene(np.random.default_rng(5), regime, EXAMPLE_SIZE)
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))
        for d in result["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= EXAMPLE_SIZE[0] and 0 <= y1 <= y2 <= EXAMPLE_SIZE[1]
    # the scale loss asks for up-scaling tiny objects and down-scaling large ones
    assert answers["tiny"]["phi_star"] > 1.0 > answers["large"]["phi_star"]
    assert answers["tiny"]["median_side_phi1"] < answers["large"]["median_side_phi1"]


def test_scene_sweep_has_recall_and_marks_phi_star(server):
    client, _, _info = server
    plot, rows = client.predict(regime="mixed", seed=2, threshold=0.0, api_name="/scene_sweep")
    _, _, _, _, result, _ = client.predict(regime="mixed", seed=2, threshold=0.0,
                                           api_name="/scene")
    assert len(rows["recall"]) == 9 and all(0.0 <= r <= 1.0 for r in rows["recall"])
    assert rows["phi_star"] == pytest.approx(result["phi_star"])
    figure = plot_json(plot)
    assert [t["meta"]["key"] for t in series_traces(figure)] == [
        "num_detections", "recall", "mean_score", "gflops"]
    optimum = [t for t in figure["data"] if (t.get("meta") or {}).get("kind") == "optimum"]
    assert len(optimum) == 4 and all(t["x"] == [rows["phi_star"]] * 2 for t in optimum)
    assert figure["layout"]["title"]["text"] == "The same image at every phi"


def test_detect_on_the_generated_scene_keeps_its_ground_truth(server):
    """After /scene, /detect on the returned picture (same session) still knows the answer."""
    from gradio_client import Client, handle_file

    _, url, info = server
    client = Client(url, verbose=False, download_files=str(info["root"] / "client"))
    scene_file, *_ = client.predict(regime="tiny", seed=9, threshold=0.3, api_name="/scene")
    _, summary, _, result, _ = client.predict(image=handle_file(scene_file), threshold=0.5,
                                              api_name="/detect")
    assert result["scene"] == {"regime": "tiny", "seed": 9} and "phi_star" in result
    assert result["threshold"] == 0.5 and "objects (recall" in summary


# --------------------------------------------------------------------------- overhead
def test_detect_overhead_over_model_inference(server, capsys):
    """/detect should cost at most 2x the model's own inference (upload, checks, drawing,
    files, HTTP); measured as the median of 5 warm calls over plain HTTP."""
    _, url, info = server
    image = info["examples"] / "tiny.png"
    http_detect(url, image, info["elastic"], threshold=0.3)  # FLOP table filled
    ratios, inference = [], []
    for _ in range(5):
        seconds, result = http_detect(url, image, info["elastic"], threshold=0.3)
        ratios.append(seconds * 1e3 / result["inference_ms"])
        inference.append(result["inference_ms"])
    ratio = float(np.median(ratios))
    with capsys.disabled():
        print(f"\n/detect overhead: inference {np.median(inference):.0f} ms; "
              f"HTTP call {ratio:.2f}x")
    assert ratio < 2.0, "the /detect handler does much more than one inference"


# --------------------------------------------------------------------------- the app module
def test_main_without_checkpoint_says_how_to_get_one(tmp_path, capsys):
    app = load_app_module()
    assert app.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "make checkpoints" in err


def test_examples_are_generated_not_committed(server):
    _, _, info = server
    names = sorted(p.name for p in info["examples"].iterdir())
    assert {"tiny.png", "mixed.png", "large.png", "cheetah.jpg"} <= set(names)
    assert not [n for n in names if n.startswith(".staging")]
    stubs = list(REPO.glob("*.pyi")) + list((REPO / "elastic_lab").rglob("*.pyi"))
    assert not stubs, "gradio writes .pyi stubs next to Component subclasses; use none"

