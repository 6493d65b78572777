"""The app's parts without a server: upload checks, drawing, texts, files, the model service.

(The same behaviours through HTTP are in tests/test_app.py; these pin the rules themselves.)
"""

from __future__ import annotations

import base64
import io
import stat
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.app import guard
from elastic_lab.app.files import ResultStore, list_checkpoints, prepare_examples
from elastic_lab.app.report import caveat_markdown, summary_markdown, sweep_chart
from elastic_lab.app.service import (
    BusyError,
    DetectorService,
    check_phi,
    generate_scene,
    sweep_scales,
)
from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.data import image as image_io
from elastic_lab.data.image import (
    InputImageError,
    check_image_file,
    data_url_bytes,
    open_upload,
    reduce_to_budget,
)
from elastic_lab.data.synth import EXAMPLE_SIZE, categories_for
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.viz.draw import DISPLAY_MIN, draw_detections, place_label
from tests.app_server import exif_rotated_jpeg, png_header_only
from tests.test_model import TINY

CATS = categories_for()


# --------------------------------------------------------------------------- upload checks
def test_open_upload_refuses_a_bomb_from_its_header(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InputImageError, match="far more pixels than this app accepts"):
        open_upload(path)


def test_check_image_file_refuses_folders_and_big_files(tmp_path):
    with pytest.raises(InputImageError, match="not a file"):
        check_image_file(tmp_path, "x.png")
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    with pytest.raises(InputImageError, match="is more than this app accepts"):
        check_image_file(big, max_bytes=100)


def test_data_url_is_refused_by_its_length_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the length check")

    monkeypatch.setattr(image_io.base64, "b64decode", no_decoding)
    with pytest.raises(InputImageError, match="more than this app accepts"):
        data_url_bytes("data:image/png;base64," + "A" * 4000, max_bytes=1000)


def test_data_url_roundtrip_and_its_pixel_check():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert open_upload(data_url_bytes(url), "pasted").image.size == (40, 30)
    with pytest.raises(InputImageError, match="1200 x 1000 px = 1 megapixels is more"):
        buf = io.BytesIO()
        Image.new("L", (1200, 1000)).save(buf, format="PNG")
        data_url_bytes("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                       max_pixels=500_000)


def test_exif_rotation_reaches_the_model_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif_rotated_jpeg(path)
    upload = open_upload(path)
    assert upload.image.size == (200, 300) and upload.stored_size == (300, 200)
    pixels = np.asarray(upload.image)
    assert pixels[5, 100, 0] > 200 and pixels[-5, 100, 2] > 200  # red on top, blue below


def test_reduce_to_budget_uses_the_smallest_factor_that_fits():
    assert reduce_to_budget(Image.new("RGB", (100, 100)), 10_000).size == (100, 100)
    assert reduce_to_budget(Image.new("RGB", (1000, 800)), 100_000).size == (334, 267)  # f = 3
    assert reduce_to_budget(Image.new("RGB", (1000, 800)), 200_000).size == (500, 400)  # f = 2


# --------------------------------------------------------------------------- the request guard
def test_refuse_bad_paths_marks_urls_folders_and_outside_files(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "a").mkdir(parents=True)
    good = uploads / "a" / "ok.png"
    Image.new("RGB", (20, 20)).save(good)
    request = {"data": [{"path": str(good), "meta": {"_type": "gradio.FileData"}},
                        {"path": "http://example.com/x.png", "orig_name": "x.png"},
                        {"path": str(uploads)}, {"path": str(uploads / "a")},
                        {"path": str(tmp_path / "elsewhere.png")}, 0.3, "elastic.pt"]}
    assert guard.refuse_bad_paths(request, uploads) == 4
    files = request["data"]
    assert files[0]["path"] == str(good)  # untouched
    reasons = [f["meta"][guard.REFUSED] for f in files[1:5]]
    assert "does not fetch images from URLs" in reasons[0]
    assert "not a file uploaded" in reasons[1] and "not a file" in reasons[2]
    assert "not a file uploaded" in reasons[3]
    assert all(f["path"] is None and f["url"] is None for f in files[1:5])


def test_clean_message_removes_paths_reprs_and_quotes():
    text = ("could not read checkpoint /srv/app/checkpoints/elastic.pt: 'bad' "
            "cannot identify image file <_io.BytesIO object at 0x7f00aa> in /tmp/x/y/up.png")
    clean = guard.clean_message(text, {"/srv/app/checkpoints/elastic.pt": "elastic.pt"})
    assert clean == ("could not read checkpoint elastic.pt: bad cannot identify image file "
                     "the data in up.png")


# --------------------------------------------------------------------------- drawing
def _det(box, score=0.9, k=0):
    return {"label": CATS[k]["name"], "category_id": CATS[k]["id"], "score": score, "box": box}


def test_tags_stay_inside_the_picture_and_do_not_overlap():
    image = Image.new("RGB", (288, 224), "black")
    # boxes at the right and top edges and a crowd in one corner (the cut "squa" of issue 15)
    dets = [_det([270.0, 0.0, 288.0, 10.0], 0.9 - i / 100, i % 6) for i in range(8)]
    dets.append(_det([0.0, 200.0, 20.0, 224.0], 0.5))
    drawing = draw_detections(image, dets, CATS)
    w, h = drawing.image.size
    assert (w, h) == (DISPLAY_MIN, round(224 * DISPLAY_MIN / 288))
    assert drawing.labels and len(drawing.labels) + drawing.unlabelled == len(dets)
    for i, (x1, y1, x2, y2) in enumerate(drawing.labels):
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        for a in drawing.labels[i + 1:]:
            assert not (x1 < a[2] and a[0] < x2 and y1 < a[3] and a[1] < y2), "tags overlap"


def test_every_box_is_drawn_and_only_the_best_get_tags():
    image = Image.new("RGB", (1000, 500), "black")
    dets = [_det([10.0 + 30 * i, 200.0, 30.0 + 30 * i, 300.0], 0.9 - i / 100) for i in range(30)]
    drawing = draw_detections(image, dets, CATS, max_labels=5)
    assert drawing.scale == 1.0 and len(drawing.labels) == 5 and drawing.unlabelled == 25
    pixels = np.asarray(drawing.image)
    assert tuple(pixels[300, 30 * 29 + 20]) != (0, 0, 0)  # bottom edge of the last box
    assert draw_detections(Image.new("RGB", (3000, 1500)), dets, CATS).image.size == (1024, 512)


def test_ground_truth_is_outlined_white():
    drawing = draw_detections(Image.new("RGB", (800, 600), (0, 0, 255)), [], CATS,
                              [{"box": [100.0, 100.0, 200.0, 200.0]}])
    pixels = np.asarray(drawing.image)
    assert tuple(pixels[100, 150]) == (255, 255, 255) and tuple(pixels[150, 150]) == (0, 0, 255)


def test_place_label_falls_back_and_gives_up():
    canvas, size = (100, 100), (30, 10)
    assert place_label((10, 50, 40, 80), size, canvas, []) == (10, 40, 40, 50)  # above
    assert place_label((10, 0, 40, 30), size, canvas, []) == (10, 0, 40, 10)  # clamped at top
    assert place_label((90, 50, 99, 80), size, canvas, []) == (70, 40, 100, 50)  # shifted left
    crowded = [(0, 0, 100, 100)]
    assert place_label((10, 50, 40, 80), size, canvas, crowded) is None
    assert place_label((0, 0, 10, 10), (120, 10), canvas, []) is None  # wider than the picture


# --------------------------------------------------------------------------- texts
def _result(phi=0.8, saved=0.3, **extra):
    return {"phi": phi, "phi_source": "predicted", "width": 288, "height": 224,
            "processed_width": 256, "processed_height": 192, "base_width": 320,
            "base_height": 256, "gflops": 3.5, "gflops_predictor": 0.2, "gflops_phi1": 5.0,
            "compute_saved": saved, "detections": [], "threshold": 0.3, **extra}


def test_summary_says_what_this_result_did():
    down = summary_markdown(_result())
    assert "phi = 0.80, down-scaled: 20% shorter sides" in down and "30% less compute" in down
    assert "none: lower the threshold" in down and "256 x 192 px" in down
    up = summary_markdown(_result(phi=1.3, saved=-0.6, processed_width=416,
                                  processed_height=320))
    assert "up-scaled: 30% longer sides" in up and "60% more compute** (up-scaled)" in up
    same = summary_markdown(_result(phi=1.0, saved=-0.04, processed_width=320,
                                    processed_height=256))
    assert "the base resolution" in same and "(the predictor's cost)" in same


def test_summary_compares_phi_with_phi_star_on_a_scene():
    truth = [{"box": [0, 0, 5, 5]}] * 4
    scene = {"scene": {"regime": "tiny", "seed": 1}, "ground_truth": truth,
             "found": [True, False, False, False], "recall": 0.25, "median_side_phi1": 5.0}
    far = summary_markdown(_result(phi=0.9, phi_star=1.28, **scene))
    assert "phi\\* = 1.28" in far and "phi is 0.38 below it" in far
    assert "1 of 4 objects (recall 25%" in far
    near = summary_markdown(_result(phi=1.25, phi_star=1.28, **scene))
    assert "phi is close to it (within 0.05)" in near
    unknown = summary_markdown(_result(**scene))
    assert "does not record its scale-loss options" in unknown


def test_caveat_only_for_uploads_to_a_model_of_generated_shapes():
    assert "generated shapes only" in caveat_markdown({"trained_on_generated_shapes": True})
    assert caveat_markdown({"trained_on_generated_shapes": True, "scene": {}}) == ""
    assert caveat_markdown({"trained_on_generated_shapes": False}) == ""


def test_sweep_chart_marks_forced_phi_and_phi_star():
    rows = {"phi": sweep_scales(0.5, 1.5, 5), "num_detections": [1, 2, 3, 4, 5],
            "mean_score": [0.1, 0.2, 0.3, 0.4, 0.5], "gflops": [1.0, 2.0, 3.0, 4.0, 5.0],
            "recall": [0.0, 0.5, 1.0, 0.5, 0.5], "predicted_phi": 1.1, "used_phi": 0.75,
            "phi_source": "forced", "phi_star": 1.3, "threshold": 0.3}
    fig = sweep_chart(rows)
    kinds = [t.meta["kind"] for t in fig.data]
    assert kinds.count("series") == 4 and kinds.count("predicted") == 4
    assert kinds.count("forced") == 4 and kinds.count("optimum") == 4
    assert {tuple(t.x) for t in fig.data if t.meta["kind"] == "optimum"} == {(1.3, 1.3)}
    assert [t.meta["key"] for t in fig.data if t.meta["kind"] == "series"] == [
        "num_detections", "recall", "mean_score", "gflops"]


# --------------------------------------------------------------------------- files
def test_result_store_keeps_the_newest(tmp_path):
    store = ResultStore(tmp_path, keep=2)
    folders = [store.new_dir() for _ in range(5)]
    for f in folders:
        if f.exists():
            (f / "x.json").write_text("{}")
    assert [f.exists() for f in folders] == [False, False, False, True, True]
    assert len(store.files()) == 2
    store.close()
    assert not store.root.exists()


def test_default_examples_folder_is_private_and_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "elastic-lab-examples").mkdir()  # the old predictable folder, with a trap
    (tmp_path / "elastic-lab-examples" / "tiny.png").symlink_to(victim)
    first, files = prepare_examples()
    second, _ = prepare_examples()
    assert first != second and first.parent == tmp_path
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert sorted(p.name for p in files) == ["large.png", "mixed.png", "tiny.png"]
    assert victim.read_text() == "keep"


def test_list_checkpoints_names_files_and_puts_the_given_one_first(tmp_path):
    (tmp_path / "b.pt").write_bytes(b"x")
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.pt").write_bytes(b"x")
    found = list_checkpoints(tmp_path, [tmp_path / "other" / "a.pt", tmp_path / "b.pt"])
    assert list(found) == ["a.pt", "b.pt", "a (2).pt"]
    assert found["a (2).pt"] == tmp_path / "a.pt"


# --------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    torch.manual_seed(0)
    opts = ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY)
    model = build_model(opts, len(CATS))
    path = save_checkpoint(root / "tiny.pt", {"model": model.state_dict(),
                                              "model_options": opts.to_dict(),
                                              "categories": CATS})  # no loss options recorded
    return DetectorService({"tiny.pt": path}, busy_after_s=0.2)


def test_busy_service_refuses_instead_of_waiting(service):
    scene = generate_scene("tiny", 0)
    holder = threading.Event()
    release = threading.Event()

    def hold():
        with service._model_lock():
            holder.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    holder.wait(10)
    try:
        with pytest.raises(BusyError, match="busy with other requests"):
            service.detect("tiny.pt", scene.upload)
    finally:
        release.set()
        thread.join()
    assert service.detect("tiny.pt", scene.upload)["image"] == "scene_tiny_0.png"


def test_scene_without_loss_options_has_recall_but_no_phi_star(service):
    scene = generate_scene("large", 4)
    result = service.detect("tiny.pt", scene.upload, threshold=0.0, scene=scene)
    assert len(result["found"]) == len(scene.ground_truth) and "phi_star" not in result
    assert result["scene"] == {"regime": "large", "seed": 4}


def test_generate_scene_is_deterministic_and_checks_its_inputs():
    a, b = generate_scene("mixed", 11), generate_scene("mixed", 11)
    assert np.array_equal(np.asarray(a.upload.image), np.asarray(b.upload.image))
    assert a.ground_truth == b.ground_truth and a.upload.image.size == EXAMPLE_SIZE
    assert generate_scene("empty", 3).ground_truth == []
    with pytest.raises(ValueError, match="unknown regime"):
        generate_scene("nebula", 1)
    for seed in (-1, 1.5, float("nan"), 2**40):
        with pytest.raises(ValueError, match="whole number"):
            generate_scene("tiny", seed)


def test_check_phi_refuses_outside_the_range_and_nan(service):
    model = service.get("tiny.pt").model
    check_phi(model, 0.5)
    for phi in (0.25, 1.6, float("nan")):
        with pytest.raises(ValueError, match=r"outside this model's range \[0.5, 1.5\]"):
            check_phi(model, phi)


def test_unknown_checkpoint_and_bad_file_name_no_server_path(tmp_path):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    service = DetectorService({"bad.pt": tmp_path / "bad.pt"})
    with pytest.raises(ValueError, match="unknown checkpoint: choose one of bad.pt"):
        service.get("/etc/passwd")
    with pytest.raises(Exception, match="bad.pt") as excinfo:
        service.get("bad.pt")
    assert str(tmp_path) not in str(excinfo.value)
