"""The Gradio app (app.py) through its HTTP API: detection, sweeps, generated scenes, bad input.

One app is launched per module on 127.0.0.1 (free port) with an untrained elastic checkpoint and
a fixed one next to it; ``gradio_client`` and plain HTTP call it like any user would. The
hostile cases of issue 15 (data: URL bombs, paths naming folders or URLs, planted symlinks,
unbounded result files, leaky error texts) are tests here; the load figures are measured in
tests/test_app_load.py and the pure pieces in tests/test_app_parts.py.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import resource
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.cli import main as cli
from elastic_lab.data.synth import EXAMPLE_SIZE, categories_for, render_scene
from elastic_lab.models.build import ModelOptions, build_model
from elastic_lab.models.elastic_detr import ElasticDETR
from elastic_lab.resize import processed_size

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT = 1_000_000  # bytes: the module's app is built with this max_file_bytes
KEEP = 4  # result folders the module's app keeps
BASE = 256  # base size of the module's elastic model (the shipped models' value)
STRIDE = [32]  # the model's stride, set by the server fixture
# the scale-loss options elastic-lab train records for base size 256 (32 and 96 px at 800)
LOSS_OPTIONS = {"b_s": 32 * BASE / 800, "b_l": 96 * BASE / 800, "k": 6.0, "empty_target": 0.0}
QUOTES_OR_REPRS = re.compile(r"[\"'`]|object at 0x|Traceback")
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas 3 notices


def make_checkpoint(path: Path, mode: str = "elastic", base_size: int = BASE
                    ) -> tuple[Path, ElasticDETR]:
    """An untrained model in the checkpoint format load_model reads (seeded, ~1 s)."""
    torch.manual_seed(0)
    opts = ModelOptions(mode=mode, base_size=base_size)
    categories = categories_for()
    model = build_model(opts, len(categories))
    path = save_checkpoint(path, {"model": model.state_dict(), "model_options": opts.to_dict(),
                                  "categories": categories, "loss_options": LOSS_OPTIONS})
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
    """(client, url, info) of the launched app; info has the checkpoint names and folders.

    A symlink planted in the examples folder before the app starts points at a victim file
    that must survive (the app writes its examples without following links).
    """
    root = tmp_path_factory.mktemp("app")
    for sub in ("gradio", "tmp", "client", "checkpoints", "examples"):
        (root / sub).mkdir()
    victim = root / "victim.txt"
    victim.write_text("not to be overwritten")
    (root / "examples" / "tiny.png").symlink_to(victim)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        from gradio_client import Client

        app = load_app_module()
        elastic, model = make_checkpoint(root / "elastic.pt")
        make_checkpoint(root / "checkpoints" / "fixed.pt", mode="fixed", base_size=128)
        STRIDE[0] = model.stride
        top_k = min(100, ModelOptions().detr.num_queries * len(categories_for()))
        (root / "checkpoints" / "broken.pt").write_text("not a checkpoint")
        demo = app.build_demo(elastic, checkpoint_dir=root / "checkpoints",
                              examples_dir=root / "examples", max_file_bytes=UPLOAD_LIMIT,
                              keep_results=KEEP, busy_after_s=4.0)
        _, url, _ = app.launch_demo(demo, "127.0.0.1", free_port(), prevent_thread_lock=True,
                                    quiet=True)
        client = Client(url, verbose=False, download_files=str(root / "client"))
        info = {"elastic": "elastic.pt", "fixed": "fixed.pt", "broken": "broken.pt",
                "top_k": top_k, "examples": root / "examples", "root": root, "demo": demo,
                "victim": victim, "model": model}
        try:
            yield client, url, info
        finally:
            demo.close()


def detect(client, image: Path, threshold: float = 0.0, checkpoint: str | None = None,
           force_phi: bool = False, phi: float = 1.0, measure_latency: bool = False):
    from gradio_client import handle_file

    kwargs = {} if checkpoint is None else {"checkpoint_name": checkpoint}
    return client.predict(image=handle_file(str(image)), threshold=threshold,
                          force_phi=force_phi, phi=phi, measure_latency=measure_latency,
                          api_name="/detect", **kwargs)


def http_call(url: str, api: str, data: list, timeout: float = 60) -> tuple[int, dict | str]:
    """POST /gradio_api/call/<api> and read its event stream: (status, result data or error).

    Status 200 gives the complete event's data (a list) or the error event's message; other
    statuses give the response's JSON (the request guard's refusal).
    """
    import httpx

    with httpx.Client(timeout=timeout) as http:
        response = http.post(f"{url}gradio_api/call/{api}", json={"data": data})
        if response.status_code != 200:
            return response.status_code, response.json()
        stream = http.get(f"{url}gradio_api/call/{api}/{response.json()['event_id']}").text
    if "event: complete" in stream:
        return 200, json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    error = json.loads(stream.split("event: error\ndata: ", 1)[1].splitlines()[0])
    return 200, error["error"] if isinstance(error, dict) else str(error)


def photo(name: str) -> Path:
    from gradio.media import get_image

    return Path(get_image(name))


def file_data(path: str | None = None, url: str | None = None, name: str | None = None) -> dict:
    return {"path": path, "url": url, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def assert_clean(message: str, root: Path) -> None:
    """An error text for users: no quotes, reprs or tracebacks, no server paths."""
    assert not QUOTES_OR_REPRS.search(message), message
    assert str(root) not in message and "/tmp/" not in message, message


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
    assert result["inference_ms"] > 0
    assert all(s % STRIDE[0] == 0 for s in result["processed_size"])
    drawing = result["drawing"]  # the drawn picture: every tag inside it
    for x1, y1, x2, y2 in drawing["labels"]:
        assert 0 <= x1 < x2 <= drawing["width"] and 0 <= y1 < y2 <= drawing["height"]


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
    _, summary, _, result, _ = detect(client, path)
    assert (result["width"], result["height"]) == (w, h)
    assert result["detections"] and note in "; ".join(result["input_notes"]) and note in summary


# --------------------------------------------------------------------------- hostile requests
def bomb_data_url(side: int = 12000) -> str:
    """A real, valid side x side PNG (one colour: it compresses to a few hundred kB)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, format="PNG", optimize=False, compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_data_url_bomb_is_refused_in_seconds_with_bounded_memory(server):
    _client, url, info = server
    bomb = bomb_data_url()
    assert len(bomb) < UPLOAD_LIMIT  # small on the wire: only its header tells
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB; server runs in-process
    start = time.perf_counter()
    status, answer = http_call(url, "detect", [file_data(url=bomb), 0.3, info["elastic"],
                                               False, 1.0, False])
    seconds = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert status == 200 and "144 megapixels is more than this app accepts" in answer
    assert seconds < 5 and grown_mb < 150, (seconds, grown_mb)  # decoded: 144 MB at least
    assert_clean(answer, info["root"])
    # the same payload through the image input itself (the second line, without the guard)
    image_in = next(b for b in info["demo"].blocks.values() if b.elem_id == "input-image")
    from gradio.components.image import ImageData
    from gradio.exceptions import Error

    with pytest.raises(Error, match="144 megapixels"):
        image_in.preprocess(ImageData(url=bomb))


def test_oversized_and_malformed_data_urls_get_clean_refusals(server):
    _, url, info = server
    noise = base64.b64encode(np.random.default_rng(1).bytes(UPLOAD_LIMIT + 4096)).decode()
    for payload, status, message in [
        ("data:image/png;base64," + noise, 200, "is more than this app accepts"),
        ("data:image/png;base64," + "A" * (3 * UPLOAD_LIMIT), 413, "request is larger"),
        ("data:image/png;base64,!!not-base64!!", 200, "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"hello").decode(), 200, "not an image"),
        ("data:text/plain,hello", 200, "only base64 data URLs"),
    ]:
        got, answer = http_call(url, "detect", [file_data(url=payload), 0.3, info["elastic"],
                                                False, 1.0, False])
        text = answer if isinstance(answer, str) else answer["error"]
        assert got == status and message in text, (payload[:40], answer)
        assert_clean(text, info["root"])


def test_paths_that_are_folders_urls_or_not_uploaded_are_refused(server):
    _, url, info = server
    demo, gradio_tmp = info["demo"], info["root"] / "gradio"
    for path, message in [(str(gradio_tmp), "not a file"),
                          (str(gradio_tmp) + "/", "not a file"),
                          ("/etc/hostname", "not a file uploaded to this app"),
                          (str(info["examples"] / "large.png"), "not a file uploaded"),
                          ("https://example.com/cat.png", "does not fetch images from URLs")]:
        status, answer = http_call(url, "detect", [file_data(path=path, name="x.png"), 0.3,
                                                   info["elastic"], False, 1.0, False])
        assert status == 200 and message in answer, (path, answer)
        assert_clean(answer, info["root"])
    # nothing that is not a file was registered for Gradio's shutdown cleanup
    registered = [Path(p) for files in demo.temp_file_sets for p in files]
    assert not [p for p in registered if p.is_dir()]


def test_error_texts_over_the_api_are_plain(server):
    from gradio_client.exceptions import AppError

    client, url, info = server
    with pytest.raises(AppError) as excinfo:
        client.predict(image=None, api_name="/detect")
    assert str(excinfo.value).startswith("Upload an image first")
    assert_clean(str(excinfo.value), info["root"])
    status, answer = http_call(url, "detect", [None, 0.3, info["elastic"], False, 1.0, False])
    assert status == 200 and "Upload an image first" in answer
    assert_clean(answer, info["root"])
    status, answer = http_call(url, "scene", ["nebula", 1, 0.3, info["elastic"], False, 1.0,
                                              False])
    assert "unknown regime nebula: choose one of tiny" in answer
    assert_clean(answer, info["root"])


def test_result_files_stay_bounded(server):
    client, _, info = server
    results = info["demo"].results
    for _ in range(KEEP + 3):
        detect(client, info["examples"] / "tiny.png")
    kept = results.files()
    assert 0 < len(kept) <= 2 * KEEP  # one PNG and one JSON per kept request
    # Gradio serves them from where they are (its cache folder): no copies pile up elsewhere
    drawn = [p for p in (info["root"] / "gradio").rglob("detections_*") if p.is_file()]
    assert len(drawn) <= 2 * KEEP, drawn


def test_planted_symlink_is_not_written_through(server):
    _, _, info = server
    assert info["victim"].read_text() == "not to be overwritten"
    tiny = info["examples"] / "tiny.png"
    assert not tiny.is_symlink()
    with Image.open(tiny) as im:
        assert im.size == EXAMPLE_SIZE


def test_busy_model_gives_a_clear_message_not_a_long_wait(server):
    from gradio_client.exceptions import AppError

    client, _, info = server
    lock = info["demo"].service._lock
    assert lock.acquire(timeout=30)
    try:
        start = time.perf_counter()
        with pytest.raises(AppError, match="busy with other requests") as excinfo:
            detect(client, info["examples"] / "tiny.png")
        assert time.perf_counter() - start < 15
        assert_clean(str(excinfo.value), info["root"])
    finally:
        lock.release()
    _, _, _, result, _ = detect(client, info["examples"] / "tiny.png")
    assert result["detections"]


# --------------------------------------------------------------------------- /sweep
def series_traces(figure: dict) -> list[dict]:
    return [t for t in figure["data"] if (t.get("meta") or {}).get("kind") == "series"]


def plot_json(plot) -> dict:
    """The plotly figure a /sweep call returns, with typed arrays ({"dtype", "bdata"}: plotly's
    encoding of numpy arrays, which the page's plotly.js reads) turned into lists."""
    def plain(value):
        if isinstance(value, dict) and set(value) == {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"]).tolist()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value
    return plain(json.loads(plot["plot"] if isinstance(plot, dict) else plot))


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
def scene_truth(regime: str, seed: int) -> list[list[float]]:
    _, anns = render_scene(np.random.default_rng(seed), regime, EXAMPLE_SIZE)
    return [a["bbox"] for a in anns]


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
def http_detect(url: str, image: Path, checkpoint: str, threshold: float = 0.0
                ) -> tuple[float, dict]:
    """One /detect call over plain HTTP (upload, call, read the event stream): (seconds, result)."""
    import httpx

    with httpx.Client(timeout=60) as http:
        start = time.perf_counter()
        with open(image, "rb") as f:
            uploaded = http.post(f"{url}gradio_api/upload",
                                 files={"files": (image.name, f, "image/png")}).json()[0]
        event = http.post(f"{url}gradio_api/call/detect",
                          json={"data": [file_data(uploaded, name=image.name), threshold,
                                         checkpoint, False, 1.0, False]}).json()["event_id"]
        stream = http.get(f"{url}gradio_api/call/detect/{event}").text
        seconds = time.perf_counter() - start
    data = stream.split("event: complete\ndata: ", 1)[1].splitlines()[0]
    return seconds, json.loads(data)[3]


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


def test_checkpoint_names_hide_server_paths(server):
    client, _, _info = server
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/detect"]
    choices = next(p for p in api["parameters"] if p["parameter_name"] == "checkpoint_name")
    assert choices["type"]["enum"] == ["elastic.pt", "broken.pt", "fixed.pt"]
