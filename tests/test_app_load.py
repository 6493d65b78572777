"""The app under load: 4 concurrent clients x 10 /detect calls, one heavy request among them.

The heavy request is the largest picture the app accepts (about 40 megapixels, a JPEG of a
few MB): decoding it is the expensive part, and it happens outside the model lock, so the light
calls (a 288 x 224 scene) keep going. Printed: the light calls' median and 90th percentile
alone (one client), under 4 light clients, and under 4 clients with the heavy one; the heavy
call's own time. Asserted, with medians and a margin so that a busy machine does not make it
flaky: under load with the heavy request, light calls take at most 2x what they take under the
same load without it (being stuck behind the heavy one would cost its whole duration), and no
light call waits for the heavy one to finish.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_server import file_data, free_port, load_app_module, make_checkpoint

CLIENTS, CALLS = 4, 10
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


@pytest.fixture(scope="module")
def loaded_app(tmp_path_factory: pytest.TempPathFactory):
    """(url, light image, heavy image) of an app with the default upload limits."""
    root = tmp_path_factory.mktemp("load")
    for sub in ("gradio", "tmp", "checkpoints", "examples"):
        (root / sub).mkdir()
    heavy = root / "heavy.jpg"
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (540, 730, 3), dtype=np.uint8)
    Image.fromarray(np.tile(tile, (10, 10, 1))).save(heavy, quality=60)  # 7300 x 5400 px
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        app = load_app_module()
        elastic, _ = make_checkpoint(root / "elastic.pt")
        demo = app.build_demo(elastic, checkpoint_dir=root / "checkpoints",
                              examples_dir=root / "examples")
        _, url, _ = app.launch_demo(demo, "127.0.0.1", free_port(), prevent_thread_lock=True,
                                    quiet=True)
        try:
            yield url, root / "examples" / "tiny.png", heavy
        finally:
            demo.close()


def call(http, url: str, image: Path) -> tuple[float, dict]:
    """One /detect over plain HTTP (upload, call, event stream): (seconds, result)."""
    start = time.perf_counter()
    with open(image, "rb") as f:
        uploaded = http.post(f"{url}gradio_api/upload",
                             files={"files": (image.name, f, "image/png")}).json()[0]
    event = http.post(f"{url}gradio_api/call/detect",
                      json={"data": [file_data(uploaded, name=image.name), 0.3, "elastic.pt",
                                     False, 1.0, False]}).json()["event_id"]
    stream = http.get(f"{url}gradio_api/call/detect/{event}").text
    seconds = time.perf_counter() - start
    assert "event: complete" in stream, stream[-300:]
    return seconds, json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])[3]


def run_clients(url: str, light: Path, heavy: Path | None) -> tuple[list[float], list[tuple]]:
    """CLIENTS threads x CALLS calls; client 0's 3rd call is ``heavy`` when given.

    Returns the light calls' seconds and (start, end) of every light call and of the heavy one
    (the heavy one last).
    """
    import httpx

    light_s: list[float] = []
    spans: list[tuple] = []
    heavy_span: list[tuple] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            for i in range(CALLS):
                is_heavy = heavy is not None and k == 0 and i == 2
                t0 = time.perf_counter()
                seconds, result = call(http, url, heavy if is_heavy else light)
                with lock:
                    if is_heavy:
                        heavy_span.append((t0, t0 + seconds, result["width"]))
                    else:
                        light_s.append(seconds)
                        spans.append((t0, t0 + seconds))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return light_s, spans + heavy_span


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def test_light_calls_are_not_held_up_by_a_heavy_one(loaded_app, capsys):
    import httpx

    url, light, heavy = loaded_app
    with httpx.Client(timeout=120) as http:
        call(http, url, light)  # warm: FLOP table filled
        solo = [call(http, url, light)[0] for _ in range(CALLS)]
        heavy_solo, result = call(http, url, heavy)
    assert (result["width"], result["height"]) == (7300, 5400) and "reduced_to" in result
    loaded, _ = run_clients(url, light, None)
    mixed, spans = run_clients(url, light, heavy)
    heavy_start, heavy_end, width = spans[-1]
    assert width == 7300
    ms = 1e3
    figures = {
        "solo (1 client)": solo, f"{CLIENTS} light clients": loaded,
        f"{CLIENTS} clients, one heavy call": mixed,
    }
    with capsys.disabled():
        print(f"\napp load, /detect over HTTP, {CLIENTS} clients x {CALLS} calls; heavy call: "
              f"7300 x 5400 JPEG, {heavy.stat().st_size / 1e6:.1f} MB, "
              f"{heavy_solo * ms:.0f} ms alone, {(heavy_end - heavy_start) * ms:.0f} ms under load")
        for name, values in figures.items():
            print(f"  light calls, {name}: median {statistics.median(values) * ms:.0f} ms, "
                  f"p90 {p90(values) * ms:.0f} ms (n = {len(values)})")
        print(f"  ratio median mixed / solo {statistics.median(mixed) / statistics.median(solo):.2f}"
              f", mixed / light-only {statistics.median(mixed) / statistics.median(loaded):.2f}")
    assert len(mixed) == CLIENTS * CALLS - 1 and len(loaded) == CLIENTS * CALLS
    assert statistics.median(mixed) <= 2.0 * statistics.median(loaded)
    # light calls that started while the heavy one ran did not wait for its end
    during = [end for start, end in spans[:-1] if heavy_start < start < heavy_end]
    assert not during or min(during) < heavy_end
