"""The app launched for tests (app.py on 127.0.0.1, a free port) and the helpers to call it.

``launch`` is the body of each test module's ``server`` fixture (one app per module), built on
an untrained elastic checkpoint (with the scale-loss options a base-256 run records) and a
fixed one next to it, a 1 MB upload limit, 4 kept result folders, and a symlink planted in its
examples folder before the start.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
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


def launch(tmp_path_factory: pytest.TempPathFactory):
    """Yield (client, url, info) of the launched app (the body of a module-scoped fixture);
    info has the checkpoint names and folders.

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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
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


def exif_rotated_jpeg(p: Path) -> None:
    image = Image.new("RGB", (300, 200), "red")
    image.paste((0, 0, 255), (150, 0, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(p, format="JPEG", exif=exif.tobytes())


def animated_gif(p: Path) -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "blue")]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100)


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


def scene_truth(regime: str, seed: int) -> list[list[float]]:
    _, anns = render_scene(np.random.default_rng(seed), regime, EXAMPLE_SIZE)
    return [a["bbox"] for a in anns]


def bomb_data_url(side: int = 12000) -> str:
    """A real, valid side x side RGB PNG (one colour: 0.4 MB; decoded: 3 * side**2 bytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (7, 7, 7)).save(buf, format="PNG", compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()