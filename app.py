"""elastic-lab demo: upload a picture and see what resolution the network chooses.

    python app.py [--checkpoint PATH] [--host 127.0.0.1] [--port 7860] [--device auto]

The page shows the detections, the scale factor phi the ScalePredictor picked, the resolution the
detector saw next to the base one, the compute (GFLOPs and measured latency) against the same
detector at phi = 1, and a sweep of the detector over the whole phi range. Two API endpoints:
``/detect`` and ``/sweep`` (see ``gradio_client.Client(url).view_api()``). The logic lives in
``elastic_lab/app_logic.py``; this file holds the layout.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import gradio as gr

from elastic_lab.app_logic import (
    MAX_FILE_SIZE,
    MAX_PIXELS,
    MIN_SIDE,
    DetectorService,
    InputImageError,
    draw_detections,
    list_checkpoints,
    open_upload,
    summary_markdown,
    sweep_figure,
    write_drawn_image,
    write_result_json,
)
from elastic_lab.checkpoint import CheckpointError
from elastic_lab.data.synth import write_examples
from elastic_lab.runtime import resolve_device

REPO = Path(__file__).resolve().parent
CHECKPOINT_DIR = REPO / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "elastic_synth.pt"
log = logging.getLogger("elastic_lab.app")

MISSING_CHECKPOINT = """checkpoint not found: {path}
Get the trained checkpoints with `make checkpoints` (writes checkpoints/elastic_synth.pt,
multiscale_synth.pt and fixed_synth.pt), or train your own and point the app at it:
  elastic-lab synth --out data/synth
  elastic-lab train --data data/synth --out runs/elastic --mode elastic
  python app.py --checkpoint runs/elastic/checkpoint.pt"""

EXAMPLES = [  # (file, one-line caption of what to look for; short: the table truncates)
    ("tiny.png", "Tiny shapes: expect phi > 1 (up-scaling shows details)"),
    ("mixed.png", "Small and large shapes: phi in between; see the sweep"),
    ("large.png", "Large shapes: phi < 1 finds them and saves compute"),
    ("bus.png", "Real photo (61 x 68 px): read phi, not the labels"),
    ("cheetah.jpg", "Real photo, one large animal: does phi go down?"),
    ("lion.jpg", "Real photo, 256 x 256: at phi = 1 it is not resized"),
    ("tower.jpg", "Real photo, tall: compare processed and base sizes"),
]

EXPLANATION = """
**What is phi?** Before detection every image is resized so that its short side is the *base
size* (256 px for the shipped models); the scale factor **phi** then multiplies that size.
phi = 0.5 halves each side (a quarter of the pixels, roughly a quarter of the compute);
phi = 1.5 enlarges each side by half (2.25 times the pixels). Small objects need a large phi to
be seen at all; large objects are found just as well at a small phi, which is cheaper.

**Who chooses phi?** An *elastic* model carries a small scale predictor that looks at a 64-px
thumbnail and picks phi in its range [tau_min, tau_max] for each image. *Fixed* and
*multiscale* models have no predictor: they run at phi = 1 unless you force a value.

**Where do the numbers come from?** GFLOPs are counted with PyTorch's `FlopCounterMode` for the
detector at the exact input size (one multiply-add = 2 FLOPs), plus the predictor for elastic
models; "at phi = 1" is the same detector at the base size. Latency is measured on this
machine: the median of 3 runs per input size, remembered afterwards. The scale sweep runs the
same detector at 9 values of phi across the range and counts the detections above your
threshold; the dashed line marks the phi that was used.

**Limits.** The shipped models were trained on synthetic shapes only: on real photographs the
boxes mean little, but phi still shows how the predictor reacts to the size of the content.
Uploads: at most {max_pixels} megapixels and {max_file_size}; at least {min_side} px on each
side; grayscale, 16-bit, CMYK, transparent and EXIF-rotated pictures are converted to upright RGB.
"""


def image_file_input(**kwargs) -> gr.Image:
    """``gr.Image(type="filepath")`` that hands the uploaded file's path over unopened.

    gr.Image's own preprocessing opens the file with Pillow and fails with a long technical
    message on a non-image file; with this one the app validates the file itself
    (``open_upload``) and answers in plain words. Base64 ``data:`` payloads are decoded by
    gr.Image as usual. (An instance override rather than a subclass: gradio writes a ``.pyi``
    stub next to the module of every Component subclass.)
    """
    component = gr.Image(type="filepath", **kwargs)
    decode = component.preprocess

    def preprocess(payload):  # gradio's ImageData | None -> str | None
        if payload is None or (payload.url and payload.url.startswith("data:")):
            try:
                return decode(payload)
            except Exception as exc:  # any decoding failure comes from the user's input
                raise gr.Error(f"could not decode the image data: {exc}",
                               print_exception=False) from exc
        return payload.path

    component.preprocess = preprocess
    return component


def prepare_examples(examples_dir: str | Path) -> list[list[str]]:
    """Write the synthetic examples and copy gradio's photos into ``examples_dir`` (once)."""
    examples_dir = Path(examples_dir)
    if not all((examples_dir / f"{r}.png").is_file() for r in ("tiny", "mixed", "large")):
        write_examples(examples_dir)
    rows = []
    for name, caption in EXAMPLES:
        path = examples_dir / name
        if not path.is_file():
            try:
                from gradio.media import get_image

                shutil.copyfile(get_image(name), path)
            except (ImportError, OSError, ValueError) as exc:
                log.warning("example %s skipped: %s", name, exc)
                continue
        rows.append([str(path), caption])
    return rows


def build_demo(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu",
               checkpoint_dir: str | Path = CHECKPOINT_DIR,
               examples_dir: str | Path | None = None) -> gr.Blocks:
    """The app's Blocks (not launched). The given checkpoint is loaded now (CheckpointError).

    The dropdown offers ``checkpoint`` and every ``*.pt`` in ``checkpoint_dir`` (loaded on
    first use). Examples are generated into ``examples_dir`` (default: a folder in the system
    temp directory, reused across runs).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(MISSING_CHECKPOINT.format(path=checkpoint))
    service = DetectorService(list_checkpoints(checkpoint_dir, [checkpoint]), device)
    atexit.register(service.close)  # let a running inference finish before the interpreter exits
    first = service.names[0]
    first_model = service.get(first).model  # fail fast on a bad checkpoint
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "elastic-lab-examples")
    results_root = Path(tempfile.mkdtemp(prefix="elastic-lab-results-"))
    atexit.register(shutil.rmtree, results_root, True)

    def read(image_path: str | None, checkpoint_name: str):
        if image_path is None:
            raise gr.Error("Upload an image first (or pick one of the examples).",
                           print_exception=False)
        if checkpoint_name not in service.checkpoints:
            raise gr.Error(f"unknown checkpoint {checkpoint_name!r}", print_exception=False)
        return open_upload(image_path)

    def detect(image_path: str | None, threshold: float, checkpoint_name: str,
               force_phi: bool, phi: float, measure_latency: bool):
        """Detect objects; returns the drawn image, a summary, the result dict and its JSON file."""
        try:
            upload = read(image_path, checkpoint_name)
            result = service.detect(checkpoint_name, upload, float(threshold),
                                    float(phi) if force_phi else None, bool(measure_latency))
            categories = service.get(checkpoint_name).categories
        except (InputImageError, CheckpointError, ValueError, RuntimeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        out_dir = tempfile.mkdtemp(dir=results_root)
        drawn = write_drawn_image(
            draw_detections(upload.image, result["detections"], categories), upload.name, out_dir)
        path = write_result_json(result, out_dir)
        if not result["detections"]:
            gr.Warning(f"No detection with a score of at least {threshold:.2f}: "
                       "lower the threshold to see weaker ones.")
        return str(drawn), summary_markdown(result), result, str(path)

    def sweep(image_path: str | None, threshold: float, checkpoint_name: str,
              force_phi: bool, phi: float):
        """The detector at 9 scales across [tau_min, tau_max]: the chart and its data."""
        try:
            upload = read(image_path, checkpoint_name)
            rows = service.sweep(checkpoint_name, upload, float(threshold),
                                 float(phi) if force_phi else None)
        except (InputImageError, CheckpointError, ValueError, RuntimeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        return sweep_figure(rows), rows

    def choose_checkpoint(checkpoint_name: str):
        try:
            model = service.get(checkpoint_name).model
            info = service.describe(checkpoint_name)
        except (CheckpointError, ValueError) as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        value = min(max(1.0, model.tau_min), model.tau_max)
        return gr.Slider(minimum=model.tau_min, maximum=model.tau_max, value=value), info

    with gr.Blocks(title="elastic-lab: which resolution does the network choose?",
                   delete_cache=(1800, 3600)) as demo:  # uploads are dropped after an hour
        gr.Markdown("# elastic-lab: upload a picture and see what resolution the network "
                    "chooses\nElastic-DETR picks a scale factor **phi** per image before "
                    "detecting; this page shows the choice, its cost and what other choices "
                    "would have found.")
        with gr.Row():
            with gr.Column(scale=1):
                image_in = image_file_input(label="Your picture", height=320,
                                            sources=["upload", "clipboard", "webcam"],
                                            elem_id="input-image")
                hint = gr.Textbox(label="What to look for", interactive=False, max_lines=2,
                                  placeholder="pick an example below to see what to look for",
                                  elem_id="hint")
                threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Score threshold")
                checkpoint_dd = gr.Dropdown(service.names, value=first, label="Checkpoint")
                checkpoint_info = gr.Markdown(service.describe(first))
                with gr.Row():
                    force_phi = gr.Checkbox(False, label="Force phi", scale=1)
                    phi = gr.Slider(first_model.tau_min, first_model.tau_max,
                                    value=min(max(1.0, first_model.tau_min), first_model.tau_max),
                                    step=0.01, label="Forced phi", scale=3)
                measure = gr.Checkbox(True, label="Measure latency (once per input size)")
                button = gr.Button("Detect", variant="primary", elem_id="detect-btn")
            with gr.Column(scale=2):
                image_out = gr.Image(label="Detections", type="filepath", height=440,
                                     interactive=False, elem_id="output-image")
                summary = gr.Markdown(elem_id="summary")
                plot = gr.Plot(label="Scale sweep", elem_id="sweep-plot")
                result_file = gr.File(label="Download the result (JSON)", elem_id="result-file")
                with gr.Accordion("Raw numbers", open=False):
                    result_json = gr.JSON(label="Result")
                    sweep_json = gr.JSON(label="Scale sweep data")
        rows = prepare_examples(examples_dir)
        gr.Examples(rows, inputs=[image_in, hint], label="Examples (click one, then Detect)")
        with gr.Accordion("How to read this page", open=False):
            gr.Markdown(EXPLANATION.format(max_file_size=MAX_FILE_SIZE.upper(),
                                           max_pixels=MAX_PIXELS // 1_000_000, min_side=MIN_SIDE))

        inputs = [image_in, threshold, checkpoint_dd, force_phi, phi]
        button.click(detect, [*inputs, measure], [image_out, summary, result_json, result_file],
                     api_name="detect", concurrency_id="model").success(
            sweep, inputs, [plot, sweep_json], api_name="sweep", concurrency_id="model")
        image_in.upload(lambda: "", None, hint, api_visibility="private", queue=False)
        checkpoint_dd.change(choose_checkpoint, checkpoint_dd, [phi, checkpoint_info],
                             api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    demo.examples_dir = examples_dir  # launch_demo allows serving from there
    return demo


def launch_demo(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860,
                max_file_size: str | int = MAX_FILE_SIZE, **kwargs):
    """``demo.launch`` with the app's settings (upload limit, errors shown, no SSR)."""
    return demo.launch(server_name=host, server_port=port, max_file_size=max_file_size,
                       show_error=True, ssr_mode=False,
                       allowed_paths=[str(getattr(demo, "examples_dir", REPO))], **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT.relative_to(REPO))
                        if Path.cwd() == REPO else str(DEFAULT_CHECKPOINT))
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (0.0.0.0 exposes the app to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--examples-dir", default=None, help="where the example images go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(args.checkpoint, str(resolve_device(args.device)),
                          examples_dir=args.examples_dir)
    except (CheckpointError, RuntimeError) as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # shut down as on Ctrl+C
    launch_demo(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
