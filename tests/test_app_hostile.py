"""The app under hostile and careless use (issue 15), through a real HTTP server on 127.0.0.1.

A data: URL bomb is refused in seconds with bounded memory, oversized or malformed payloads get
clean refusals, paths naming folders, URLs or files elsewhere never reach Gradio, result files
stay bounded, a planted symlink is not written through, a busy model answers "busy", and no
error text carries quotes, object reprs or server paths.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elastic_lab.data.synth import EXAMPLE_SIZE
from tests.app_server import (
    KEEP,
    UPLOAD_LIMIT,
    assert_clean,
    bomb_data_url,
    detect,
    file_data,
    http_call,
    launch,
)


def rss_growth_mb(fn):
    """(fn(), how far this process's resident memory rose above its level before, in MB).

    Sampled every 5 ms from /proc/self/statm in a thread (the server runs in this process);
    unlike ru_maxrss this does not depend on what earlier tests once allocated.
    """
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, (max(peak[0], rss()) - base) / 1e6


pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(client, url, info) of this module's app (see ``tests.app_server.launch``)."""
    yield from launch(tmp_path_factory)


def test_data_url_bomb_is_refused_in_seconds_with_bounded_memory(server):
    _client, url, info = server
    bomb = bomb_data_url()
    assert len(bomb) < UPLOAD_LIMIT  # small on the wire: only its header tells
    start = time.perf_counter()
    (status, answer), grown_mb = rss_growth_mb(lambda: http_call(
        url, "detect", [file_data(url=bomb), 0.3, info["elastic"], False, 1.0, False]))
    seconds = time.perf_counter() - start
    assert status == 200 and "144 megapixels is more than this app accepts" in answer
    assert seconds < 5 and grown_mb < 150, (seconds, grown_mb)  # decoded: 432 MB
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


def test_checkpoint_names_hide_server_paths(server):
    client, _, _info = server
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/detect"]
    choices = next(p for p in api["parameters"] if p["parameter_name"] == "checkpoint_name")
    assert choices["type"]["enum"] == ["elastic.pt", "broken.pt", "fixed.pt"]

