"""The app in a real browser: Playwright driving Debian's Chromium (headless).

Upload a picture, press Detect, wait for the drawn boxes, the summary and the plotly sweep
chart; check what a user sees: every tag inside the drawn picture, the picture shown whole, the
summary not covered by anything, the sweep title not clipped on a phone-wide screen, results
cleared when the checkpoint changes, a generated scene with its phi* and recall. Skipped only
when no Chromium is installed (``apt-get install -y chromium``; ``playwright install`` cannot
download browsers here).
"""

from __future__ import annotations

import importlib.util
import json
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
from elastic_lab.viz.draw import DISPLAY_MIN

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LOSS_OPTIONS = {"b_s": 32 * 128 / 800, "b_l": 96 * 128 / 800, "k": 6.0, "empty_target": 0.0}
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(path: Path, mode: str) -> Path:
    torch.manual_seed(0)
    opts, categories = ModelOptions(mode=mode, base_size=128), categories_for()  # fast
    return save_checkpoint(path, {"model": build_model(opts, len(categories)).state_dict(),
                                  "model_options": opts.to_dict(), "categories": categories,
                                  "loss_options": LOSS_OPTIONS})


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """URL of the app on an untrained elastic checkpoint, a fixed one beside it."""
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
        elastic = checkpoint(root / "elastic.pt", "elastic")
        checkpoint(root / "checkpoints" / "fixed.pt", "fixed")
        demo = app.build_demo(elastic, checkpoint_dir=root / "checkpoints",
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


def set_threshold(page, value: float) -> None:
    field = page.locator("#threshold input[type=number]")
    field.fill(f"{value:g}")
    field.press("Enter")


def upload_and_detect(page, image: Path) -> None:
    from playwright.sync_api import expect

    page.locator("#input-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#input-image img")).to_be_visible(timeout=20_000)
    page.locator("#detect-btn").click()
    expect(page.locator("#summary")).to_contain_text("phi =", timeout=60_000)
    expect(page.locator("#sweep-plot .js-plotly-plot .main-svg").first).to_be_visible(
        timeout=60_000)  # the chained /sweep has finished too


def result_json(page) -> dict:
    """The downloadable result file, fetched the way the page's link does."""
    from playwright.sync_api import expect

    link = page.locator("#result-file a").first
    expect(link).to_be_visible(timeout=20_000)
    return json.loads(page.request.get(link.get_attribute("href")).text())


def box(locator) -> dict:
    b = locator.bounding_box()
    assert b is not None, "element not rendered"
    return b


def not_covered(page, selector: str) -> None:
    """Every probe point of the element's box shows the element itself (no toast over it)."""
    b = box(page.locator(selector))
    for fx, fy in ((0.1, 0.2), (0.5, 0.2), (0.9, 0.2), (0.1, 0.8), (0.5, 0.5), (0.9, 0.8)):
        x, y = b["x"] + fx * b["width"], b["y"] + fy * b["height"]
        inside = page.evaluate(
            "([x, y, sel]) => { const e = document.elementFromPoint(x, y);"
            " return !!e && !!e.closest(sel); }", [x, y, selector])
        assert inside, f"something covers {selector} at ({x:.0f}, {y:.0f})"


def test_upload_detect_boxes_inside_and_summary_visible(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, root = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        set_threshold(page, 0.0)  # an untrained model: every kept query is drawn
        upload_and_detect(page, root / "examples" / "tiny.png")
        expect(page.locator("#summary")).to_contain_text("GFLOPs")
        expect(page.locator("#caveat")).to_contain_text("generated shapes only")
        drawn = page.locator("#output-image img")
        expect(drawn).to_be_visible(timeout=20_000)
        natural = page.evaluate("img => [img.naturalWidth, img.naturalHeight]",
                                drawn.element_handle())
        assert natural[0] == DISPLAY_MIN  # a 288 px picture is enlarged for display
        result = result_json(page)
        assert [result["drawing"]["width"], result["drawing"]["height"]] == natural
        assert result["drawing"]["labels"], "no tag was drawn"
        for x1, y1, x2, y2 in result["drawing"]["labels"]:  # every tag inside the picture
            assert 0 <= x1 < x2 <= natural[0] and 0 <= y1 < y2 <= natural[1]
        # ... and the picture is shown whole: its box inside the component, aspect kept
        shown, frame = box(drawn), box(page.locator("#output-image"))
        assert shown["x"] >= frame["x"] - 1 and shown["x"] + shown["width"] <= \
            frame["x"] + frame["width"] + 1
        rendered = page.evaluate(
            "img => { const r = img.getBoundingClientRect(); const s = getComputedStyle(img);"
            " return [r.width, r.height, s.objectFit]; }", drawn.element_handle())
        fit = rendered[2] in ("contain", "scale-down")
        assert fit or abs(rendered[0] / rendered[1] - natural[0] / natural[1]) < 0.02, rendered
        assert page.locator("#sweep-plot .scatterlayer .trace").count() >= 3
        expect(page.locator("#result-file")).to_contain_text("detections_tiny")
        not_covered(page, "#summary")
        # no detection at threshold 1: the summary says so (a toast used to cover it)
        set_threshold(page, 1.0)
        page.locator("#detect-btn").click()
        expect(page.locator("#summary")).to_contain_text("none: lower the threshold",
                                                         timeout=60_000)
        not_covered(page, "#summary")
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        page.close()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] >= 1000 and pixels.std() > 20, "the screenshot looks blank"


def test_switching_checkpoint_clears_the_old_results(app_url, browser):
    from playwright.sync_api import expect

    url, root = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    try:
        page.goto(url)
        upload_and_detect(page, root / "examples" / "large.png")
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="fixed.pt").click()
        expect(page.locator("#summary")).not_to_contain_text("phi =", timeout=20_000)
        expect(page.locator("#output-image img")).to_have_count(0, timeout=20_000)
        page.locator("#detect-btn").click()
        expect(page.locator("#summary")).to_contain_text("this model has no predictor",
                                                         timeout=60_000)
    finally:
        page.close()


def test_generated_scene_shows_phi_star_and_recall(app_url, browser):
    from playwright.sync_api import expect

    url, _ = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    try:
        page.goto(url)
        page.locator("#scene-btn").click()
        summary = page.locator("#summary")
        expect(summary).to_contain_text("phi* =", timeout=60_000)
        expect(summary).to_contain_text(re.compile(r"\d+ of \d+ objects \(recall \d+%"))
        expect(page.locator("#input-image img")).to_be_visible(timeout=20_000)  # the scene
        expect(page.locator("#caveat")).not_to_contain_text("generated shapes only")
        expect(page.locator("#sweep-plot .js-plotly-plot .main-svg").first).to_be_visible(
            timeout=60_000)
        legend = page.locator("#sweep-plot .legend").first
        expect(legend).to_contain_text("phi* =", timeout=20_000)
    finally:
        page.close()


def test_sweep_title_fits_a_phone_screen(app_url, browser):
    url, root = app_url
    page = browser.new_page(viewport={"width": 390, "height": 1400})
    try:
        page.goto(url)
        upload_and_detect(page, root / "examples" / "mixed.png")
        title = box(page.locator("#sweep-plot .gtitle").first)
        svg = box(page.locator("#sweep-plot .main-svg").first)
        assert svg["x"] - 1 <= title["x"] and title["x"] + title["width"] <= \
            svg["x"] + svg["width"] + 1, (title, svg)
        assert svg["x"] + svg["width"] <= 390 + 1, "the chart is wider than the screen"
    finally:
        page.close()


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
        page.locator("#input-image button[aria-label=\"Remove Image\"]").click()
        upload_and_detect(page, root / "examples" / "large.png")
        page.get_by_text("generated scene, regime tiny").click()  # an example fills the input
        expect(page.locator("#summary")).not_to_contain_text("phi =", timeout=20_000)
        expect(page.locator("#input-image img")).to_be_visible(timeout=20_000)
    finally:
        page.close()
