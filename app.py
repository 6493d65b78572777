"""elastic-lab demo: upload a picture (or generate a scene) and see what resolution the network chooses.

    python app.py [--checkpoint PATH] [--host 127.0.0.1] [--port 7860] [--device auto]

The page shows the detections, the scale factor phi the ScalePredictor picked, the resolution
the detector saw next to the base one, the compute (GFLOPs; latency on request, measured in
interleaved pairs) against the same detector at phi = 1, and a sweep of the detector over the
whole phi range. A generated scene comes with its ground truth: the page then also shows the
recall and phi*, the scale the model's own scale loss asks for. API endpoints: ``/detect``,
``/sweep``, ``/scene`` and ``/scene_sweep`` (see ``gradio_client.Client(url).view_api()``).
This file holds the layout; the logic lives in ``elastic_lab/app/`` (service, report, files,
guard) and the image checks in ``elastic_lab/data/image.py``.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import signal
import sys
from pathlib import Path

import gradio as gr
from gradio.media import get_image
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from elastic_lab.app.files import (
    KEEP_RESULTS,
    ResultStore,
    list_checkpoints,
    prepare_examples,
    write_jpeg,
    write_png,
    write_result_json,
)
from elastic_lab.app.guard import RequestGuard, guarded_image_input, user_errors
from elastic_lab.app.report import caveat_markdown, summary_markdown, sweep_chart
from elastic_lab.app.service import (
    BUSY_AFTER_S,
    LATENCY_PAIRS,
    DetectorService,
    Scene,
    check_phi,
    generate_scene,
)
from elastic_lab.checkpoint import CheckpointError
from elastic_lab.data.image import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    PIXEL_BUDGET,
    InputImageError,
    read_header,
)
from elastic_lab.data.synth import REGIMES
from elastic_lab.runtime import resolve_device
from elastic_lab.viz.draw import draw_detections

REPO = Path(__file__).resolve().parent
CHECKPOINT_DIR = REPO / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "elastic_synth.pt"
PHOTOS = ("bus.png", "cheetah.jpg", "lion.jpg", "tower.jpg")  # photos bundled with Gradio
MODEL_CONCURRENCY = 4   # requests prepared at once (decoding, drawing); the model itself is locked
QUEUE_SIZE = 32         # requests waiting beyond this are refused by Gradio ("queue is full")
log = logging.getLogger("elastic_lab.app")

MISSING_CHECKPOINT = """checkpoint not found: {path}
Get the trained checkpoints with `make checkpoints` (writes checkpoints/elastic_synth.pt,
multiscale_synth.pt and fixed_synth.pt), or train your own and point the app at it:
  elastic-lab synth --out data/synth
  elastic-lab train --data data/synth --out runs/elastic --mode elastic
  python app.py --checkpoint runs/elastic/checkpoint.pt"""

EXPLANATION = """
**What is phi?** Before detection every image is resized so that its short side is the *base
size* ({base_size} px for the checkpoint loaded first); the scale factor **phi** then multiplies
that size. phi = 0.5 halves each side (a quarter of the pixels, roughly a quarter of the
compute); phi = 1.5 enlarges each side by half (2.25 times the pixels).

**Who chooses phi?** An *elastic* model carries a small scale predictor that looks at a
thumbnail and picks phi in its range [tau_min, tau_max] for each image. *Fixed* and
*multiscale* models have no predictor: they run at phi = 1 unless you force a value.

**phi\\* on a generated scene.** A generated scene comes with its objects' true boxes, so the
page can compute phi\\*: the scale at which this model's own scale loss is smallest for those
objects (what a perfect predictor would output after training on that loss alone). Comparing
phi with phi\\*, and the recall with the sweep, shows whether the predictor chose well.

**Where do the numbers come from?** GFLOPs are counted with PyTorch's `FlopCounterMode` for the
detector at the exact input size (one multiply-add = 2 FLOPs), plus the predictor for elastic
models; "at phi = 1" is the same detector at the base size. They do not depend on the machine.
Latency (only when you ask for it) is wall-clock time on this machine, measured as
{pairs} interleaved pairs of the chosen phi and phi = 1; the ratio's range shows how noisy it is.
The scale sweep runs the same detector at 9 values of phi across the range.

**Limits.** Uploads: at most {max_pixels} megapixels and {max_file_size} MB; at least
{min_side} px on each side; larger pictures than {budget} megapixels are box-filtered below
that before detection; grayscale, 16-bit, CMYK, transparent and EXIF-rotated pictures are
converted to upright RGB. Images are never fetched from URLs.
"""


def example_label(path: Path) -> str:
    """What an example is (kind and size from its header); no claim about what a model does."""
    header = read_header(path, path.name)
    size = f"{header.width} x {header.height} px"
    if path.name in PHOTOS:
        return f"photo: {path.stem} ({size})"
    return f"generated scene, regime {path.stem} ({size})"


def photo_sources() -> dict[str, Path]:
    """Gradio's bundled photos that exist in this installation."""
    out = {}
    for name in PHOTOS:
        try:
            out[name] = Path(get_image(name))
        except (OSError, ValueError) as exc:
            log.warning("example %s skipped: %s", name, exc)
    return out


def build_demo(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu",
               checkpoint_dir: str | Path = CHECKPOINT_DIR,
               examples_dir: str | Path | None = None, max_file_bytes: int = MAX_FILE_BYTES,
               keep_results: int = KEEP_RESULTS, busy_after_s: float = BUSY_AFTER_S
               ) -> gr.Blocks:
    """The app's Blocks (not launched). The given checkpoint is loaded now (CheckpointError).

    The dropdown offers ``checkpoint`` and every ``*.pt`` in ``checkpoint_dir`` by file name
    (loaded on first use). Examples are written into ``examples_dir`` (default: a fresh
    private temp folder); result files go to a ``ResultStore`` in Gradio's cache folder that
    keeps the newest ``keep_results`` requests.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(MISSING_CHECKPOINT.format(path=checkpoint))
    service = DetectorService(list_checkpoints(checkpoint_dir, [checkpoint]), device,
                              busy_after_s)
    atexit.register(service.close)  # let a running inference finish before the interpreter exits
    first = service.names[0]
    first_model = service.get(first).model  # fail fast on a bad checkpoint
    own_examples = examples_dir is None
    examples_dir, example_files = prepare_examples(examples_dir, photo_sources())
    if own_examples:
        atexit.register(shutil.rmtree, examples_dir, True)
    store = ResultStore(get_upload_folder(), keep_results)
    atexit.register(store.close)

    def scene_of(state: dict | None, upload) -> Scene | None:
        """The generated scene behind ``upload`` when it is the picture /scene produced."""
        if state and upload is not None and upload.name == state.get("name"):
            return generate_scene(state["regime"], state["seed"])
        return None

    def phi_of(checkpoint_name: str, force_phi: bool, phi: float) -> float | None:
        if not force_phi:
            return None
        check_phi(service.get(checkpoint_name).model, float(phi))
        return float(phi)

    def run_detect(upload, threshold, checkpoint_name, force_phi, phi, measure, scene):
        result = service.detect(checkpoint_name, upload, float(threshold),
                                phi_of(checkpoint_name, force_phi, phi), bool(measure), scene)
        categories = service.get(checkpoint_name).categories
        drawing = draw_detections(upload.image, result["detections"], categories,
                                  result.get("ground_truth", ()))
        result["drawing"] = {"width": drawing.image.width, "height": drawing.image.height,
                             "scale": drawing.scale, "labels": [list(r) for r in drawing.labels],
                             "unlabelled": drawing.unlabelled}
        out = store.new_dir()
        drawn = write_jpeg(drawing.image, upload.name, out)
        path = write_result_json(result, out)
        return str(drawn), summary_markdown(result), caveat_markdown(result), result, str(path)

    def detect(image, threshold: float, checkpoint_name: str, force_phi: bool, phi: float,
               measure_latency: bool, scene_state: dict | None = None):
        """Detect objects; returns the drawn image, the summary, the caveat, the result dict
        and its JSON file."""
        if image is None:
            raise gr.Error("Upload an image first (or pick an example, or generate a scene).",
                           print_exception=False)
        return run_detect(image, threshold, checkpoint_name, force_phi, phi, measure_latency,
                          scene_of(scene_state, image))

    def sweep(image, threshold: float, checkpoint_name: str, force_phi: bool, phi: float,
              scene_state: dict | None = None):
        """The detector at 9 scales across [tau_min, tau_max]: the chart and its data."""
        if image is None:
            raise gr.Error("Upload an image first (or pick an example, or generate a scene).",
                           print_exception=False)
        rows = service.sweep(checkpoint_name, image, float(threshold),
                             phi_of(checkpoint_name, force_phi, phi), scene_of(scene_state, image))
        return sweep_chart(rows), rows

    def scene(regime: str, seed: float, threshold: float, checkpoint_name: str,
              force_phi: bool, phi: float, measure_latency: bool):
        """Generate the scene (regime, seed) and detect on it against its ground truth; returns
        the scene, the drawn image, the summary, the caveat, the result dict and its JSON."""
        generated = generate_scene(regime, seed)
        picture = write_png(generated.upload.image, generated.upload.name, store.new_dir(), None)
        outputs = run_detect(generated.upload, threshold, checkpoint_name, force_phi, phi,
                             measure_latency, generated)
        state = {"regime": generated.regime, "seed": generated.seed, "name": picture.name}
        return (str(picture), *outputs, state)

    def scene_sweep(regime: str, seed: float, threshold: float, checkpoint_name: str,
                    force_phi: bool, phi: float):
        """The scale sweep of the generated scene (regime, seed), with recall and phi*."""
        generated = generate_scene(regime, seed)
        rows = service.sweep(checkpoint_name, generated.upload, float(threshold),
                             phi_of(checkpoint_name, force_phi, phi), generated)
        return sweep_chart(rows), rows

    def choose_checkpoint(checkpoint_name: str):
        model = service.get(checkpoint_name).model
        value = min(max(1.0, model.tau_min), model.tau_max)
        return (gr.Slider(minimum=model.tau_min, maximum=model.tau_max, value=value),
                service.describe(checkpoint_name), *cleared())

    def cleared():
        return None, "", "", None, None, None, None

    with gr.Blocks(title="elastic-lab: which resolution does the network choose?",
                   delete_cache=(1800, 3600)) as demo:  # uploads are dropped after an hour
        gr.Markdown("# elastic-lab: which resolution does the network choose?\nElastic-DETR "
                    "picks a scale factor **phi** per image before detecting; this page shows "
                    "the choice, its cost and what other choices would have found.")
        scene_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image_in = guarded_image_input(max_file_bytes, MAX_PIXELS, label="Your picture",
                                               height=300, elem_id="input-image",
                                               sources=["upload", "clipboard", "webcam"])
                with gr.Group():
                    with gr.Row():
                        regime = gr.Dropdown(list(REGIMES), value="tiny", label="Scene regime",
                                             allow_custom_value=True,
                                             elem_id="regime")
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed",
                                         elem_id="seed")
                    scene_btn = gr.Button("Generate a scene (known answer)", elem_id="scene-btn")
                threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Score threshold",
                                      elem_id="threshold")
                checkpoint_dd = gr.Dropdown(service.names, value=first, label="Checkpoint",
                                            allow_custom_value=True, elem_id="checkpoint")
                checkpoint_info = gr.Markdown(service.describe(first))
                with gr.Row():
                    force_phi = gr.Checkbox(False, label="Force phi", scale=1)
                    phi = gr.Slider(first_model.tau_min, first_model.tau_max,
                                    value=min(max(1.0, first_model.tau_min), first_model.tau_max),
                                    step=0.01, label="Forced phi", scale=3)
                measure = gr.Checkbox(False, label=f"Measure latency ({LATENCY_PAIRS} paired runs; "
                                      "slower)")
                button = gr.Button("Detect", variant="primary", elem_id="detect-btn")
            with gr.Column(scale=2, min_width=300):
                caveat = gr.Markdown(elem_id="caveat")
                image_out = gr.Image(label="Detections", type="filepath", height=480,
                                     interactive=False, elem_id="output-image")
                summary = gr.Markdown(elem_id="summary")
                plot = gr.Plot(label="Scale sweep", elem_id="sweep-plot")
                result_file = gr.File(label="Download the result (JSON)", elem_id="result-file")
                with gr.Accordion("Raw numbers", open=False):
                    result_json = gr.JSON(label="Result")
                    sweep_json = gr.JSON(label="Scale sweep data")
        examples = gr.Examples([[str(p)] for p in example_files], inputs=[image_in],
                               example_labels=[example_label(p) for p in example_files],
                               label="Examples (click one, then Detect)", api_name="load_example")
        with gr.Accordion("How to read this page", open=False):
            gr.Markdown(EXPLANATION.format(
                base_size=first_model.base_size, pairs=LATENCY_PAIRS, max_pixels=MAX_PIXELS // 1_000_000,
                max_file_size=max_file_bytes // (1024 * 1024), min_side=MIN_SIDE,
                budget=PIXEL_BUDGET // 1_000_000))

        paths = service.server_paths
        outputs = [image_out, summary, caveat, plot, result_json, result_file, sweep_json]
        detected = [image_out, summary, caveat, result_json, result_file]
        model_inputs = [threshold, checkpoint_dd, force_phi, phi]
        common = {"concurrency_id": "model", "concurrency_limit": MODEL_CONCURRENCY}
        button.click(user_errors(detect, paths), [image_in, *model_inputs, measure, scene_state],
                     detected, api_name="detect", **common).success(
            user_errors(sweep, paths), [image_in, *model_inputs, scene_state], [plot, sweep_json],
            api_name="sweep", **common)
        scene_btn.click(user_errors(scene, paths), [regime, seed, *model_inputs, measure],
                        [image_in, *detected, scene_state], api_name="scene", **common).success(
            user_errors(scene_sweep, paths), [regime, seed, *model_inputs], [plot, sweep_json],
            api_name="scene_sweep", **common)
        for event, name in ((image_in.upload, "clear_on_upload"), (image_in.clear, "clear_on_clear"),
                            (examples.load_input_event.then, "clear_on_example")):
            event(lambda: (*cleared(), None), None, [*outputs, scene_state], api_name=name,
                  api_visibility="private", queue=False)
        checkpoint_dd.change(user_errors(choose_checkpoint, paths), checkpoint_dd,
                             [phi, checkpoint_info, *outputs], api_name="choose_checkpoint",
                             api_visibility="private")
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=QUEUE_SIZE)
    demo.examples_dir = examples_dir
    demo.max_file_bytes = max_file_bytes
    demo.service, demo.results = service, store  # for tests and monitoring
    return demo


def launch_demo(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    """``demo.launch`` with the app's settings: the request guard in front of Gradio (sizes
    and pixel counts checked before anything is decoded), the upload limit, errors shown, no
    SSR."""
    limit = getattr(demo, "max_file_bytes", MAX_FILE_BYTES)
    guard = Middleware(RequestGuard, upload_dir=get_upload_folder(), max_bytes=limit)
    return demo.launch(server_name=host, server_port=port, max_file_size=limit,
                       show_error=True, ssr_mode=False, app_kwargs={"middleware": [guard]},
                       **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT.relative_to(REPO))
                        if Path.cwd() == REPO else str(DEFAULT_CHECKPOINT))
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (0.0.0.0 exposes the app to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--examples-dir", default=None,
                        help="where the example images go (default: a fresh private temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(args.checkpoint, str(resolve_device(args.device)),
                          examples_dir=args.examples_dir)
    except (CheckpointError, InputImageError, RuntimeError) as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # shut down as on Ctrl+C
    launch_demo(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
