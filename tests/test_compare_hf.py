"""The HF DETR built from our options matches our architecture; the speed comparison is sane.

Needs the ``compare`` extra (``make test`` installs it); skipped without transformers.
"""

import pytest
import torch
from torch import nn

from elastic_lab import compare_hf
from elastic_lab.compare_hf import (
    build_hf_detr,
    build_ours,
    count_weights,
    hf_inputs,
    markdown_table,
    speed_comparison,
)
from elastic_lab.models.detr import DetrOptions

pytest.importorskip("transformers")

C = 6


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    options = DetrOptions()
    return options, build_ours(options, C, base_size=64), build_hf_detr(options, C)


def _conv_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Conv2d))


def test_hf_config_has_our_transformer(models):
    options, ours, hf = models
    cfg = hf.config
    assert (cfg.d_model, cfg.encoder_attention_heads, cfg.decoder_attention_heads) == (
        options.d_model, options.nhead, options.nhead)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (
        len(ours.detector.transformer.encoder), len(ours.detector.transformer.decoder))
    assert cfg.encoder_ffn_dim == cfg.decoder_ffn_dim == options.dim_feedforward
    assert cfg.num_queries == ours.detector.transformer.num_queries == 30
    assert len(hf.model.encoder.layers) == 2 and len(hf.model.decoder.layers) == 3
    assert not hf.training and not ours.training


def test_hf_backbone_is_our_resnet18_trunk_up_to_layer3(models):
    _, ours, hf = models
    # same convolutions (kernel, channels) in the trunk, and no unused stage 4 that HF would run
    assert _conv_shapes(hf.model.backbone.model) == _conv_shapes(ours.detector.backbone.body)
    assert hf.model.input_projection.in_channels == ours.detector.backbone.num_channels == 256


@pytest.mark.parametrize("h, w", [(64, 64), (64, 96)])
def test_hf_encoder_sees_stride16_tokens_and_outputs_detr_shapes(models, h, w):
    _, ours, hf = models
    images = [torch.rand(3, h, w), torch.rand(3, h, w)]
    pixel_values, pixel_mask = hf_inputs(images, base_size=min(h, w), stride=ours.stride)
    assert pixel_values.shape == (2, 3, h, w) and pixel_mask.shape == (2, h, w)
    with torch.inference_mode():
        out = hf(pixel_values=pixel_values, pixel_mask=pixel_mask)
        _, ours_out = ours.detect(images, torch.ones(2))
    tokens = (h // 16) * (w // 16)
    assert out.encoder_last_hidden_state.shape == (2, tokens, 128)
    assert ours_out["enc_outputs"]["pred_logits"].shape[:2] == (2, tokens)
    assert out.logits.shape == (2, 30, C + 1)          # softmax incl. "no object"
    assert out.pred_boxes.shape == (2, 30, 4)
    # ours: sigmoid, no background class; two-stage top-k keeps min(30, tokens) queries
    assert ours_out["pred_logits"].shape == (2, min(30, tokens), C)


def test_parameter_counts_close(models):
    _, ours, hf = models
    n_ours, n_hf = count_weights(ours), count_weights(hf)
    # same trunk and transformer; ours adds two-stage and per-layer refinement heads
    assert n_ours > n_hf
    assert abs(n_ours - n_hf) / n_hf < 0.10, (n_ours, n_hf)


def test_speed_comparison_rows_and_table():
    rows = speed_comparison(size=(64, 64), batch_sizes=(1, 2), repeats=1, warmup=0)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["size"] == (64, 64) and r["tokens"] == 16
        assert r["ours_ms"] > 0 and r["ours_forward_ms"] > 0 and r["hf_ms"] > 0
        assert r["ratio"] == pytest.approx(r["hf_ms"] / r["ours_ms"])
        assert r["threads"] == torch.get_num_threads()
        assert r["ours_params"] > 0 and r["hf_params"] > 0
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[2].startswith("| 1 | 64 x 64 |") and lines[3].startswith("| 2 | 64 x 64 |")
    assert "vanilla DETR" in table


def test_threads_are_restored():
    before = torch.get_num_threads()
    rows = speed_comparison(size=[(32, 48)], batch_sizes=(1,), repeats=1, warmup=0, threads=1)
    assert rows[0]["threads"] == 1 and rows[0]["tokens"] == 2 * 3
    assert torch.get_num_threads() == before


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setattr(compare_hf, "transformers", None)  # as when it is not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[compare\]"):
        build_hf_detr(DetrOptions(), C)
