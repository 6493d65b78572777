"""The app in a real browser: Playwright driving Debian's Chromium (headless).

Upload a picture, press Detect, wait for the drawn boxes, the summary and the plotly sweep
chart, and keep a screenshot. Skipped only when no Chromium is installed
(``apt-get install -y chromium``; ``playwright install`` cannot download browsers here).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elastic_lab.checkpoint import save_checkpoint
from elastic_lab.data.synth import categories_for
from elastic_lab.models.build import ModelOptions, build_model

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """URL of the app launched on an untrained elastic checkpoint (examples in a tmp folder)."""
    if shutil.which("chromium") is None:
        pytest.skip("no Chromium on the PATH (install it with: apt-get install -y chromium)")
    root = tmp_path_factory.mktemp("browser_app")
    for sub in ("gradio", "tmp", "checkpoints", "examples"):
        (root / sub).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        spec = importlib.util.spec_from_file_location("elastic_lab_app", REPO / "app.py")
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        torch.manual_seed(0)
        opts, categories = ModelOptions(mode="elastic", base_size=128), categories_for()  # fast
        checkpoint = save_checkpoint(root / "elastic.pt", {
            "model": build_model(opts, len(categories)).state_dict(),
            "model_options": opts.to_dict(), "categories": categories})
        demo = app.build_demo(checkpoint, checkpoint_dir=root / "checkpoints",
                              examples_dir=root / "examples")
        _, url, _ = app.launch_demo(demo, "127.0.0.1", free_port(), prevent_thread_lock=True,
                                    quiet=True)
        try:
            yield url, root
        finally:
            demo.close()


@pytest.fixture(scope="module")
def browser(app_url):
    """One headless Chromium for the module (Debian's, through Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_upload_detect_and_see_boxes_and_chart(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, root = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.locator("#input-image input[type=file]").set_input_files(
            str(root / "examples" / "tiny.png"))
        expect(page.locator("#input-image img")).to_be_visible(timeout=20_000)
        page.locator("#detect-btn").click()
        summary = page.locator("#summary")
        expect(summary).to_contain_text("phi =", timeout=60_000)
        expect(summary).to_contain_text("GFLOPs")
        drawn = page.locator("#output-image img")
        expect(drawn).to_be_visible(timeout=20_000)
        assert page.evaluate("img => img.naturalWidth", drawn.element_handle()) == 288
        expect(page.locator("#sweep-plot .js-plotly-plot .main-svg").first).to_be_visible(
            timeout=60_000)
        assert page.locator("#sweep-plot .scatterlayer .trace").count() == 3
        expect(page.locator("#result-file")).to_contain_text("detections_tiny")
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        page.close()
    assert shot.stat().st_size > 50_000
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] >= 1000 and pixels.std() > 20, "the screenshot looks blank"


def test_bad_upload_shows_an_error_and_page_keeps_working(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, root = app_url
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((root / "examples" / "large.png").read_bytes()[:4000])
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(url)
        page.locator("#input-image input[type=file]").set_input_files(str(truncated))
        page.locator("#input-image img").wait_for(state="attached", timeout=20_000)
        page.locator("#detect-btn").click()
        expect(page.get_by_text("corrupt or truncated").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "error.png"))
        page.get_by_role("button", name="Clear").first.click()
        page.locator("#input-image input[type=file]").set_input_files(
            str(root / "examples" / "large.png"))
        expect(page.locator("#input-image img")).to_be_visible(timeout=20_000)
        page.locator("#detect-btn").click()
        expect(page.locator("#summary")).to_contain_text("phi =", timeout=60_000)
        expect(page.locator("#sweep-plot .js-plotly-plot .main-svg").first).to_be_visible(
            timeout=60_000)  # the chained /sweep has finished too
        page.get_by_text("Tiny shapes: expect phi > 1").click()  # an example fills both inputs
        expect(page.locator("#hint textarea, #hint input").first).to_have_value(
            re.compile("Tiny shapes"), timeout=20_000)
    finally:
        page.close()
