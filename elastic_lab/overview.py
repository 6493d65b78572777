"""The README picture: one model on a few images, side by side, each with its predicted scale.

``elastic-lab overview --checkpoint CKPT IMAGE... --out docs/overview.png`` runs
``predict_image`` on every image (no timing: the picture must not depend on the machine's
load), draws the detections above a caption with the scale factor phi, the size the detector
saw and the GFLOPs against phi = 1, and joins the panels into one PNG. ``make readme-figure``
rebuilds ``docs/overview.png`` from the shipped elastic checkpoint and ``examples/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from .data.coco import load_image
from .flops import FlopTable
from .models.build import load_model
from .models.elastic_detr import ElasticDETR
from .predict import predict_image
from .runtime import add_device_arguments, autocast_context, resolve_device
from .viz.draw import draw_detections, label_font

PANEL_HEIGHT = 300  # px of each drawn image in the joined picture
GAP = 8  # white px between panels
CAPTION_LINES = 3


def caption_lines(name: str, result: dict) -> list[str]:
    """The caption of one panel, from ``predict_image``'s result dict."""
    pw, ph = result["processed_width"], result["processed_height"]
    bw, bh = result["base_width"], result["base_height"]
    change = 100 * (result["gflops"] / result["gflops_phi1"] - 1)
    return [
        f"{name}: phi = {result['phi']:.2f} ({result['phi_source']})",
        f"seen at {pw}x{ph} px (phi = 1: {bw}x{bh})",
        (f"{result['gflops']:.2f} GFLOPs vs {result['gflops_phi1']:.2f} ({change:+.1f}%), "
         f"{len(result['detections'])} boxes"),
    ]


def draw_panel(image: Image.Image, result: dict, categories: list[dict], name: str,
               height: int = PANEL_HEIGHT) -> Image.Image:
    """``image`` resized to ``height`` px with its detections, over a white caption strip."""
    drawn = draw_detections(image, result["detections"], categories,
                            scale=height / image.height).image
    width = drawn.width
    font = label_font(13)
    lines = caption_lines(name, result)
    line_h = 18
    text_w = max(ImageDraw.Draw(drawn).textlength(t, font=font) for t in lines)
    panel = Image.new("RGB", (max(width, int(text_w) + 8), height + line_h * CAPTION_LINES + 8),
                      "white")
    panel.paste(drawn, (0, 0))
    draw = ImageDraw.Draw(panel)
    for i, text in enumerate(lines):
        draw.text((4, height + 4 + i * line_h), text, fill=(20, 20, 20), font=font)
    return panel


def join_panels(panels: list[Image.Image], gap: int = GAP) -> Image.Image:
    """Panels left to right on a white background, top-aligned."""
    if not panels:
        raise ValueError("overview: no images")
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


def overview_image(model: ElasticDETR, categories: list[dict], images: dict[str, Image.Image],
                   threshold: float = 0.3, height: int = PANEL_HEIGHT
                   ) -> tuple[Image.Image, dict[str, dict]]:
    """(joined picture, {name: predict_image result}) for ``images`` ({name: PIL image})."""
    flops = FlopTable(model)
    results = {name: predict_image(model, categories, im, threshold, timing=False, flops=flops)
               for name, im in images.items()}
    panels = [draw_panel(images[n], results[n], categories, n, height) for n in images]
    return join_panels(panels), results


def overview_record(checkpoint: str | Path, results: dict[str, dict], threshold: float) -> dict:
    """What the picture shows, per image: φ, the processed and φ = 1 sizes, GFLOPs and the
    number of boxes drawn (the README's caption quotes these; tests check them against the
    shipped checkpoint)."""
    keys = ("phi", "phi_source", "processed_width", "processed_height", "base_width",
            "base_height", "gflops", "gflops_phi1")
    return {"checkpoint": Path(checkpoint).as_posix(), "threshold": threshold,
            "images": {name: {**{k: r[k] for k in keys}, "detections": len(r["detections"])}
                       for name, r in results.items()}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files, shown left to right")
    p.add_argument("--out", required=True,
                   help="PNG file to write (its numbers go to the same name with .json)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score drawn")
    p.add_argument("--height", type=int, default=PANEL_HEIGHT, help="panel height (px)")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: expected a .png file")
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    images = {Path(p).name: load_image(p) for p in args.images}
    with autocast_context(device, args.amp):
        picture, results = overview_image(model, ckpt["categories"], images, args.threshold,
                                          args.height)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, optimize=True)
    out.with_suffix(".json").write_text(json.dumps(
        overview_record(args.checkpoint, results, args.threshold), indent=1) + "\n")
    for name, r in results.items():
        print(" | ".join(caption_lines(name, r)))
    print(f"wrote {out} ({picture.width}x{picture.height}) and {out.with_suffix('.json')}")
    return 0
