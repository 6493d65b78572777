"""The Gradio app (app.py) through its HTTP API, plus its pure logic (elastic_lab/app_logic.py).

One app is launched per module on 127.0.0.1 (free port) with an untrained elastic checkpoint and
a fixed one next to it; ``gradio_client`` calls ``/detect`` and ``/sweep`` like any user would.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import math
import socket
import statistics
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.app_logic import (
    MAX_LABELS,
    DetectorService,
    InputImageError,
    draw_detections,
    list_checkpoints,
    open_upload,
    sweep_figure,
    sweep_scales,
)
from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.data.synth import categories_for
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.elastic_detr import ElasticDETR
from elastic_lab.resize import processed_size

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT = "1mb"  # the module's app is launched with this max_file_size
BASE = 256  # base size of the module's elastic model (the shipped models' value)
STRIDE = [32]  # the model's stride, set by the server fixture
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas 3 notices


def make_checkpoint(path: Path, mode: str = "elastic", base_size: int = BASE
                    ) -> tuple[Path, ElasticDETR]:
    """An untrained model in the checkpoint format load_model reads (seeded, ~1 s)."""
    torch.manual_seed(0)
    opts = ModelOptions(mode=mode, base_size=base_size)
    categories = categories_for()
    model = build_model(opts, len(categories))
    path = save_checkpoint(path, {"model": model.state_dict(), "model_options": opts.to_dict(),
                                  "categories": categories})
    return path, model.eval()


def processed(phi: float, width: int = 288, height: int = 224) -> tuple[int, int]:
    """(h, w) the module's elastic model sees for an image of (width, height) at ``phi``."""
    return processed_size(height, width, phi, BASE, None, STRIDE[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app_module():
    """app.py (top level of the repository) as a module."""
    spec = importlib.util.spec_from_file_location("elastic_lab_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(client, url, info) of the launched app; info has the checkpoint names and folders."""
    root = tmp_path_factory.mktemp("app")
    for sub in ("gradio", "tmp", "client", "checkpoints", "examples"):
        (root / sub).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        from gradio_client import Client

        app = load_app_module()
        elastic, model = make_checkpoint(root / "elastic.pt")
        fixed, _ = make_checkpoint(root / "checkpoints" / "fixed.pt", mode="fixed", base_size=128)
        STRIDE[0] = model.stride
        top_k = min(100, ModelOptions().detr.num_queries * len(categories_for()))
        (root / "checkpoints" / "broken.pt").write_text("not a checkpoint")
        demo = app.build_demo(elastic, checkpoint_dir=root / "checkpoints",
                              examples_dir=root / "examples")
        _, url, _ = app.launch_demo(demo, "127.0.0.1", free_port(), max_file_size=UPLOAD_LIMIT,
                                    prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False, download_files=str(root / "client"))
        info = {"elastic": str(elastic), "fixed": str(fixed), "top_k": top_k,
                "broken": str(root / "checkpoints" / "broken.pt"),
                "examples": root / "examples", "root": root}
        try:
            yield client, url, info
        finally:
            demo.close()


def detect(client, image: Path, threshold: float = 0.0, checkpoint: str | None = None,
           force_phi: bool = False, phi: float = 1.0, measure_latency: bool = True):
    from gradio_client import handle_file

    kwargs = {} if checkpoint is None else {"checkpoint_name": checkpoint}
    return client.predict(image_path=handle_file(str(image)), threshold=threshold,
                          force_phi=force_phi, phi=phi, measure_latency=measure_latency,
                          api_name="/detect", **kwargs)


def photo(name: str) -> Path:
    from gradio.media import get_image

    return Path(get_image(name))


# --------------------------------------------------------------------------- /detect
def check_result(result: dict, width: int, height: int) -> None:
    """What every successful /detect result must satisfy."""
    lo, hi = result["tau_range"]
    assert lo - 1e-6 <= result["phi"] <= hi + 1e-6
    assert (result["width"], result["height"]) == (width, height)
    names = {c["name"] for c in categories_for()}
    assert result["detections"], "threshold 0 must keep the top-k detections"
    for d in result["detections"]:
        assert d["label"] in names and 0.0 <= d["score"] <= 1.0
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height  # clipped to the image
    assert result["gflops"] > 0 and result["gflops_phi1"] > 0
    assert result["compute_saved"] == pytest.approx(1 - result["gflops"] / result["gflops_phi1"])
    assert result["latency_ms"] > 0 and result["latency_ms_phi1"] > 0 and result["inference_ms"] > 0
    assert all(s % STRIDE[0] == 0 for s in result["processed_size"])


def test_api_has_exactly_detect_and_sweep(server):
    client, _, _ = server
    assert sorted(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) \
        == ["/detect", "/sweep"]


def test_detect_synthetic_scene(server):
    client, _, info = server
    drawn, summary, result, json_file = detect(client, info["examples"] / "tiny.png")
    check_result(result, 288, 224)
    assert result["phi_source"] == "predicted" and result["gflops_predictor"] > 0
    assert result["image"] == "tiny.png" and result["checkpoint"] == info["elastic"]
    # the processed size is the base size scaled by phi, rounded to the stride
    assert tuple(result["base_size"]) == processed(1.0)
    assert tuple(result["processed_size"]) == processed(result["phi"])
    assert f"phi = {result['phi']:.2f}" in summary and "GFLOPs" in summary
    assert json.loads(Path(json_file).read_text()) == result
    with Image.open(drawn) as im:
        assert im.size == (288, 224)
        original = np.asarray(Image.open(info["examples"] / "tiny.png").convert("RGB"))
        assert (np.asarray(im.convert("RGB")) != original).any(), "no box was drawn"


def test_detect_real_photo(server):
    client, _, _ = server
    _, _, result, _ = detect(client, photo("cheetah.jpg"))
    check_result(result, 502, 343)
    assert result["input_format"] == "JPEG"


def test_forced_phi_is_honoured(server):
    client, _, info = server
    _, summary, result, _ = detect(client, info["examples"] / "large.png", force_phi=True, phi=0.5)
    assert result["phi"] == pytest.approx(0.5) and result["phi_source"] == "forced"
    assert tuple(result["processed_size"]) == processed(0.5)
    assert result["gflops_predictor"] == 0.0 and result["compute_saved"] > 0.5
    assert "forced" in summary


def test_forced_phi_outside_range_is_refused(server):
    from gradio_client.exceptions import AppError

    client, _, info = server
    with pytest.raises(AppError, match="greater than maximum value 1.5"):  # the slider's check
        detect(client, info["examples"] / "large.png", force_phi=True, phi=3.0)
    service = DetectorService({"m": info["elastic"]})  # the service checks again (other ranges)
    with pytest.raises(ValueError, match=r"outside this model's range \[0.5, 1.5\]"):
        service.detect("m", open_upload(info["examples"] / "large.png"), phi=0.25)


def test_other_checkpoints_from_the_dropdown(server):
    from gradio_client.exceptions import AppError

    client, _, info = server
    _, _, result, _ = detect(client, info["examples"] / "mixed.png", checkpoint=info["fixed"])
    assert result["phi"] == 1.0 and result["phi_source"] == "fixed" and result["mode"] == "fixed"
    assert result["compute_saved"] == 0.0 and result["gflops_predictor"] == 0.0
    with pytest.raises(AppError, match="broken.pt.*not"):
        detect(client, info["examples"] / "mixed.png", checkpoint=info["broken"])
    with pytest.raises(AppError):
        detect(client, info["examples"] / "mixed.png", checkpoint="/etc/passwd")
    _, _, result, _ = detect(client, info["examples"] / "mixed.png")  # still up, default model
    assert result["checkpoint"] == info["elastic"]


# --------------------------------------------------------------------------- bad and odd inputs
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                     + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    return path


def scene_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(scene_bytes("PNG"))
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside IDAT: CRC mismatch
    return bytes(data)


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
    assert name in str(excinfo.value) and str(tmp_path) not in str(excinfo.value)
    _, _, result, _ = detect(client, info["examples"] / "tiny.png", measure_latency=False)
    assert result["detections"]


def test_upload_over_the_size_limit_is_refused(server, tmp_path):
    client, _, info = server
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 255, (700, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=0)
    assert path.stat().st_size > 1_000_000
    with pytest.raises(Exception, match="(?i)too large|exceeds|413|maximum"):
        detect(client, path)
    _, _, result, _ = detect(client, info["examples"] / "tiny.png", measure_latency=False)
    assert result["detections"]


def _exif_rotated(p: Path) -> None:
    image = Image.new("RGB", (300, 200), "red")
    image.paste((0, 0, 255), (150, 0, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(p, format="JPEG", exif=exif.tobytes())


def _animated(p: Path) -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "blue")]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100)


ODD_INPUTS = {  # name -> (writer, upright (w, h), note fragment or None)
    "gray.png": (lambda p: Image.new("L", (64, 48), 128).save(p), (64, 48), "grayscale"),
    "rgba.png": (lambda p: Image.new("RGBA", (64, 48), (255, 0, 0, 100)).save(p), (64, 48),
                 "transparency"),
    "deep.png": (lambda p: Image.fromarray(
        (np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(p), (64, 48), "8-bit"),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(p), (64, 48),
                 "CMYK"),
    "rotated.jpg": (_exif_rotated, (200, 300), "EXIF orientation 6"),
    "animated.gif": (_animated, (64, 48), "first frame of 2"),
}


@pytest.mark.parametrize("name", sorted(ODD_INPUTS))
def test_odd_but_valid_images_give_results(server, tmp_path, name):
    client, _, _ = server
    writer, (w, h), note = ODD_INPUTS[name]
    path = tmp_path / name
    writer(path)
    _, summary, result, _ = detect(client, path, measure_latency=False)
    assert (result["width"], result["height"]) == (w, h)
    assert result["detections"] and note in "; ".join(result["input_notes"]) and note in summary


def test_exif_rotation_reaches_the_model_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    _exif_rotated(path)
    upload = open_upload(path)
    assert upload.image.size == (200, 300) and upload.stored_size == (300, 200)
    pixels = np.asarray(upload.image)
    assert pixels[5, 100, 0] > 200 and pixels[-5, 100, 2] > 200  # red on top, blue below


# --------------------------------------------------------------------------- /sweep
def test_sweep_returns_the_chart_and_its_data(server):
    from gradio_client import handle_file

    client, _, info = server
    image = info["examples"] / "mixed.png"
    plot, rows = client.predict(image_path=handle_file(str(image)), threshold=0.0,
                                api_name="/sweep")
    assert rows["phi"] == sweep_scales(0.5, 1.5, 9)
    assert rows["num_detections"] == [info["top_k"]] * 9  # threshold 0 keeps the top-k
    assert all(g1 < g2 for g1, g2 in zip(rows["gflops"], rows["gflops"][1:]))
    _, _, result, _ = detect(client, image, measure_latency=False)
    assert rows["marked_phi"] == pytest.approx(result["phi"]) and rows["phi_source"] == "predicted"
    assert rows["gflops"][4] == pytest.approx(result["gflops_phi1"])  # phi = 1 in the middle
    figure = json.loads(plot["plot"]) if isinstance(plot, dict) else json.loads(plot)
    assert [t["x"] for t in figure["data"]] == [rows["phi"]] * 3
    assert figure["data"][2]["y"] == rows["gflops"]


def test_sweep_marks_a_forced_phi(server):
    from gradio_client import handle_file

    client, _, info = server
    _, rows = client.predict(image_path=handle_file(str(info["examples"] / "tiny.png")),
                             force_phi=True, phi=1.25, api_name="/sweep")
    assert rows["marked_phi"] == 1.25 and rows["phi_source"] == "forced"


# --------------------------------------------------------------------------- overhead
def http_detect(url: str, image: Path, checkpoint: str, threshold: float = 0.0
                ) -> tuple[float, dict]:
    """One /detect call over plain HTTP (upload, call, read the event stream): (seconds, result)."""
    import httpx

    with httpx.Client(timeout=60) as http:
        start = time.perf_counter()
        with open(image, "rb") as f:
            uploaded = http.post(f"{url}gradio_api/upload",
                                 files={"files": (image.name, f, "image/png")}).json()[0]
        payload = {"path": uploaded, "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
        event = http.post(f"{url}gradio_api/call/detect",
                          json={"data": [payload, threshold, checkpoint, False, 1.0, True]}
                          ).json()["event_id"]
        stream = http.get(f"{url}gradio_api/call/detect/{event}").text
        seconds = time.perf_counter() - start
    data = stream.split("event: complete\ndata: ", 1)[1].splitlines()[0]
    return seconds, json.loads(data)[2]


def test_detect_overhead_over_model_inference(server, capsys):
    """/detect should cost little more than the model's own inference (target <= 1.5x).

    Measured on warm calls (latency and FLOP tables filled by the first call). The plain HTTP
    path is what the app costs; gradio_client adds its own polling (50 ms sleeps) on top.
    """
    client, url, info = server
    image = info["examples"] / "tiny.png"
    first = time.perf_counter()
    detect(client, image, threshold=0.3)
    first = time.perf_counter() - first
    http_ratios, client_ratios, inference = [], [], []
    for _ in range(5):
        seconds, result = http_detect(url, image, info["elastic"], threshold=0.3)
        http_ratios.append(seconds * 1e3 / result["inference_ms"])
        inference.append(result["inference_ms"])
        start = time.perf_counter()
        _, _, result, _ = detect(client, image, threshold=0.3)
        client_ratios.append((time.perf_counter() - start) * 1e3 / result["inference_ms"])
    http_ratio, client_ratio = statistics.median(http_ratios), statistics.median(client_ratios)
    with capsys.disabled():
        print(f"\n/detect overhead: inference {statistics.median(inference):.0f} ms; "
              f"HTTP call {http_ratio:.2f}x, gradio_client call {client_ratio:.2f}x "
              f"(first call incl. FLOP counting and latency tables: {first:.2f} s)")
    assert http_ratio < 2.5, "the /detect handler does much more than one inference"


# --------------------------------------------------------------------------- pure logic
def test_sweep_figure_data_and_marker():
    rows = {"phi": sweep_scales(0.5, 1.5, 5), "num_detections": [1, 2, 3, 4, 5],
            "mean_score": [0.1, 0.2, 0.3, 0.4, 0.5], "gflops": [1.0, 2.0, 3.0, 4.0, 5.0],
            "marked_phi": 1.2, "phi_source": "predicted", "threshold": 0.3}
    fig = sweep_figure(rows)
    assert [list(t.x) for t in fig.data] == [[0.5, 0.75, 1.0, 1.25, 1.5]] * 3
    assert [list(t.y) for t in fig.data] == [rows["num_detections"], rows["mean_score"],
                                              rows["gflops"]]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 3 and all(s.x0 == s.x1 == 1.2 for s in lines)
    assert "phi = 1.20 (predicted)" in fig.layout.title.text


def test_sweep_scales_cover_the_range():
    scales = sweep_scales(0.5, 2.0, 9)
    assert len(scales) == 9 and scales[0] == 0.5 and scales[-1] == 2.0
    assert all(math.isclose(b - a, 0.1875) for a, b in itertools.pairwise(scales))


def test_draw_detections_draws_boxes_in_class_colours():
    image = Image.new("RGB", (200, 100), "black")
    cats = categories_for()
    dets = [{"label": cats[i % 6]["name"], "category_id": cats[i % 6]["id"], "score": 0.9 - i / 100,
             "box": [10.0 + i, 40.0, 60.0 + i, 90.0]} for i in range(MAX_LABELS + 5)]
    drawn = np.asarray(draw_detections(image, dets, cats))
    assert drawn.shape == (100, 200, 3)
    assert tuple(drawn[90, 35 + MAX_LABELS + 4]) != (0, 0, 0)  # bottom edge of the last box
    big = draw_detections(Image.new("RGB", (3000, 1500)), dets, cats)
    assert big.size == (1024, 512)  # displayed downscaled


def test_list_checkpoints_puts_the_given_one_first(tmp_path):
    (tmp_path / "b.pt").write_bytes(b"x")
    (tmp_path / "a.pt").write_bytes(b"x")
    found = list_checkpoints(tmp_path, [tmp_path / "b.pt"])
    assert list(found) == [str(tmp_path / "b.pt"), str(tmp_path / "a.pt")]


def test_open_upload_refuses_before_decoding(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InputImageError, match="far more pixels than this app accepts"):
        open_upload(path)


def test_main_without_checkpoint_says_how_to_get_one(tmp_path, capsys):
    app = load_app_module()
    assert app.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "make checkpoints" in err


def test_examples_are_generated_not_committed(server):
    _, _, info = server
    names = sorted(p.name for p in info["examples"].iterdir())
    assert {"tiny.png", "mixed.png", "large.png", "cheetah.jpg"} <= set(names)
    stubs = list(REPO.glob("*.pyi")) + list((REPO / "elastic_lab").glob("*.pyi"))
    assert not stubs, "gradio writes .pyi stubs next to Component subclasses; use none"
