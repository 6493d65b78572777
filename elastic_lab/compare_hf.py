"""Side-by-side inference speed: our compact detector vs Hugging Face ``DetrForObjectDetection``.

Both models are built from the same ``DetrOptions`` with random weights (no checkpoint, no
download) and timed on the same batch of images at the same padded size, in eval mode under
``torch.inference_mode()``, with the same number of CPU threads (median of ``repeats`` calls after
``warmup`` calls, ``elastic_lab.flops.measure_latency_ms``).

What is compared (same trunk, same width, same depth, same token count):

- ours: ``ElasticDETR`` in ``fixed`` mode (no scale predictor), timed through its inference entry
  point ``model.detect(images, phi=ones)``: resize (a no-op at phi = 1 when the short side is the
  base size), padding, ImageNet normalisation, the detector and top-k post-processing. The
  detector uses **two-stage queries** with iterative box refinement (see models/transformer.py).
  It decodes min(num_queries, tokens) queries (e.g. 16 at 64 x 64, i.e. 4 x 4 tokens).
  ``ours_forward_ms`` times the detector alone on the padded batch.
- HF: **vanilla DETR** (learned object queries, no two-stage, no refinement); its ResNet is cut
  after the same stage as ours (HF's ResNet backbone runs every stage it has and only then picks
  ``out_features``, so the unused stages are left out of the config rather than discarded at run
  time). It is timed on ``pixel_values`` (already normalised, as HF's image processor would
  deliver them) and ``pixel_mask``; its frozen batch norm and attention kernel are HF's defaults.

``ratio = hf_ms / ours_ms``: above 1 means ours is faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .flops import measure_latency_ms
from .models.backbone import normalize
from .models.build import ModelOptions, build_model
from .models.detr import DetrOptions
from .models.elastic_detr import ElasticDETR
from .resize import pad_batch, resize_image

try:  # the optional [compare] extra
    import transformers
except ImportError:
    transformers = None

__all__ = ["build_hf_detr", "build_ours", "count_weights", "hf_inputs", "markdown_table",
           "speed_comparison"]

# torchvision ResNet name -> (HF layer_type, depths, hidden sizes); stem width is 64 for all
_HF_RESNET = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
}
_NUM_STAGES = {"layer2": 2, "layer3": 3, "layer4": 4}  # torchvision layerN == HF stageN


def _require_transformers():
    """transformers, or an ImportError that says how to install it."""
    if transformers is None:
        raise ImportError(
            "elastic_lab.compare_hf needs Hugging Face transformers: "
            "pip install -e .[compare]  (or: pip install 'transformers>=4.40')")
    return transformers


def build_hf_detr(options: DetrOptions, num_classes: int) -> nn.Module:
    """HF ``DetrForObjectDetection`` with our architecture, random init, eval mode, offline.

    ResNet trunk up to ``options.return_layer`` (stride 16 for layer3), ``d_model``, heads, encoder
    and decoder layers, FFN width and number of queries from ``options``; ``num_classes`` labels
    (+1 "no object" logit). Dropout 0 (ours has none) and no auxiliary heads.
    forward(pixel_values [B, 3, H, W] normalised, pixel_mask [B, H, W] 1=valid)
        -> .logits [B, Q, C+1], .pred_boxes [B, Q, 4], .encoder_last_hidden_state [B, N, d]
    """
    hf = _require_transformers()
    DetrConfig, DetrForObjectDetection, ResNetConfig = (
        hf.DetrConfig, hf.DetrForObjectDetection, hf.ResNetConfig)

    if options.backbone not in _HF_RESNET:
        raise ValueError(f"no HF ResNet config for {options.backbone!r}; "
                         f"choose one of {sorted(_HF_RESNET)}")
    layer_type, depths, hidden = _HF_RESNET[options.backbone]
    n = _NUM_STAGES[options.return_layer]
    backbone = ResNetConfig(layer_type=layer_type, embedding_size=64, depths=list(depths[:n]),
                            hidden_sizes=list(hidden[:n]), out_features=[f"stage{n}"])
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=backbone, num_queries=options.num_queries, d_model=options.d_model,
        encoder_layers=options.num_encoder_layers, decoder_layers=options.num_decoder_layers,
        encoder_attention_heads=options.nhead, decoder_attention_heads=options.nhead,
        encoder_ffn_dim=options.dim_feedforward, decoder_ffn_dim=options.dim_feedforward,
        dropout=0.0, num_labels=num_classes, auxiliary_loss=False)
    return DetrForObjectDetection(config).eval()


def build_ours(options: DetrOptions, num_classes: int, base_size: int = 256) -> ElasticDETR:
    """Our detector in ``fixed`` mode (no scale predictor), random init, eval mode."""
    return build_model(ModelOptions(mode="fixed", base_size=base_size, detr=options),
                       num_classes).eval()


def count_weights(model: nn.Module) -> int:
    """Number of learned weights: the state dict without batch-norm running statistics.

    HF keeps its backbone's (frozen) batch-norm weight and bias as buffers, ours as parameters;
    counting the state dict treats both alike.
    """
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for k, t in model.state_dict().items() if not k.endswith(skip))


def hf_inputs(images: list[Tensor], base_size: int, stride: int = 16) -> tuple[Tensor, Tensor]:
    """The batch our detector sees at phi = 1, in HF's input convention.

    images: list of [3, Hi, Wi] in [0, 1] -> pixel_values [B, 3, H, W] (ImageNet-normalised,
    padding 0), pixel_mask [B, H, W] long (1 = valid pixel, 0 = padding).
    """
    batch, mask = _padded(images, base_size, stride)
    return normalize(batch, mask), (~mask).long()


def _padded(images: list[Tensor], base_size: int, stride: int) -> tuple[Tensor, Tensor]:
    """What ``ElasticDETR`` feeds its detector at phi = 1: [B, 3, H, W] in [0, 1], mask [B, H, W]."""
    return pad_batch([resize_image(im, 1.0, base_size, None, stride) for im in images], stride)


def _sizes(size) -> list[tuple[int, int]]:
    """(h, w) or a sequence of (h, w) -> list of (h, w)."""
    return [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size]


@torch.inference_mode()
def _time_pair(ours: ElasticDETR, hf: nn.Module, images: list[Tensor], base_size: int,
               warmup: int, repeats: int) -> dict:
    """Time ours (detect and detector forward) and HF on the same images [3, h, w] at phi = 1."""
    phi = torch.ones(len(images))
    padded, mask = _padded(images, base_size, ours.stride)
    pixel_values, pixel_mask = normalize(padded, mask), (~mask).long()
    _, out = ours.detect(images, phi)
    tokens = out["enc_outputs"]["pred_logits"].shape[1]                  # h/16 * w/16
    memory = hf(pixel_values=pixel_values, pixel_mask=pixel_mask).encoder_last_hidden_state
    if memory.shape[1] != tokens:                                       # [B, N, d]
        raise RuntimeError(f"token counts differ: ours {tokens}, HF {memory.shape[1]} "
                           f"at {tuple(padded.shape[-2:])}")
    ours_ms = measure_latency_ms(lambda: ours.detect(images, phi), warmup, repeats)
    forward_ms = measure_latency_ms(lambda: ours.detector(padded, mask), warmup, repeats)
    hf_ms = measure_latency_ms(lambda: hf(pixel_values=pixel_values, pixel_mask=pixel_mask),
                               warmup, repeats)
    return {"tokens": tokens, "ours_ms": ours_ms, "ours_forward_ms": forward_ms, "hf_ms": hf_ms,
            "ratio": hf_ms / ours_ms}


def speed_comparison(options: DetrOptions | None = None, num_classes: int = 6,
                     size: tuple[int, int] | Sequence[tuple[int, int]] = (256, 256),
                     batch_sizes: Sequence[int] = (1, 8), repeats: int = 5, warmup: int = 1,
                     threads: int | None = None, seed: int = 0) -> list[dict]:
    """Time ours and HF DETR on identical random batches; one row per (size, batch size).

    size: (h, w) of every image (or a list of such sizes); the short side is used as base size,
    so at phi = 1 both models see exactly (h, w) rounded to the stride, i.e. h/16 * w/16 tokens.
    threads: CPU threads for both models (default: the current ``torch.get_num_threads()``).
    Returns rows {"batch", "size" (h, w), "tokens", "ours_ms", "ours_forward_ms", "hf_ms",
    "ratio" (= hf_ms / ours_ms, > 1: ours faster), "ours_params", "hf_params", "threads",
    "hf_attention"}. Raises RuntimeError if the two encoders do not see the same token count.
    """
    options = options or DetrOptions()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        hf = build_hf_detr(options, num_classes)
        hf_params = count_weights(hf)
        attention = getattr(hf.config, "_attn_implementation", None) or "eager"
        rows = []
        for h, w in _sizes(size):
            ours = build_ours(options, num_classes, base_size=min(h, w))
            generator = torch.Generator().manual_seed(seed)
            for b in batch_sizes:
                images = [torch.rand(3, h, w, generator=generator) for _ in range(b)]
                row = _time_pair(ours, hf, images, min(h, w), warmup, repeats)
                rows.append({"batch": b, "size": (h, w), **row, "ours_params": count_weights(ours),
                             "hf_params": hf_params, "threads": torch.get_num_threads(),
                             "hf_attention": attention})
        return rows
    finally:
        torch.set_num_threads(previous)


def markdown_table(rows: list[dict]) -> str:
    """Rows of ``speed_comparison`` as a Markdown table (times in ms, params in millions)."""
    header = ("| batch | size (h x w) | tokens | ours detect ms | ours forward ms | HF DETR ms "
              "| HF / ours | ours params (M) | HF params (M) | threads |")
    lines = [header,
             "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        h, w = r["size"]
        lines.append(
            f"| {r['batch']} | {h} x {w} | {r['tokens']} | {r['ours_ms']:.1f} | "
            f"{r['ours_forward_ms']:.1f} | {r['hf_ms']:.1f} | {r['ratio']:.2f} | "
            f"{r['ours_params'] / 1e6:.2f} | {r['hf_params'] / 1e6:.2f} | {r['threads']} |")
    if rows:
        lines.append(f"\nOurs: two-stage queries; HF: vanilla DETR (transformers "
                     f"DetrForObjectDetection, attention {rows[0]['hf_attention']!r}). "
                     "HF / ours > 1: ours is faster.")
    return "\n".join(lines)
