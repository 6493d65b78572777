"""FLOP counter vs analytic formulas (matmul/conv/linear/bmm/sdpa count; elementwise ops do not)."""

import time
import weakref

import pytest
import torch
from torch import nn

from elastic_lab.flops import (
    attention_flops,
    conv2d_flops,
    count_flops,
    count_gflops,
    linear_flops,
    measure_latency_ms,
    mha_flops,
    transformer_decoder_layer_flops,
    transformer_encoder_layer_flops,
)

B, N, M, D, DFF = 2, 10, 15, 32, 64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(fn, outer_no_grad: bool) -> int:
    """Count with the caller inside or outside ``torch.no_grad``."""
    if outer_no_grad:
        with torch.no_grad():
            return count_flops(fn)
    return count_flops(fn)


@pytest.mark.parametrize("outer_no_grad", [False, True])
def test_conv2d_matches_analytic(outer_no_grad):
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=True).eval()
    x = torch.randn(B, 8, 17, 17)
    h_out = w_out = 9  # floor((17 + 2 - 3) / 2) + 1
    assert conv(x).shape[-2:] == (h_out, w_out)
    expected = B * conv2d_flops(8, 16, 3, h_out, w_out, groups=4)
    assert expected == B * 2 * 2 * 9 * 16 * 81
    assert _count(lambda: conv(x), outer_no_grad) == expected


@pytest.mark.parametrize("outer_no_grad", [False, True])
def test_linear_matches_analytic(outer_no_grad):
    lin = nn.Linear(7, 5).eval()
    x = torch.randn(3, 4, 7)
    assert _count(lambda: lin(x), outer_no_grad) == linear_flops(12, 7, 5) == 2 * 12 * 7 * 5


@pytest.mark.parametrize("outer_no_grad", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_matches_analytic(outer_no_grad, need_weights):
    mha = nn.MultiheadAttention(D, 4, batch_first=True).eval()
    q, kv = torch.randn(B, N, D), torch.randn(B, M, D)
    expected = B * mha_flops(N, M, D)
    got = _count(lambda: mha(q, kv, kv, need_weights=need_weights), outer_no_grad)
    assert got == expected


@pytest.mark.parametrize("heads", [1, 8])
def test_attention_flops_independent_of_heads(heads):
    # heads split d_model: QK^T and AV cost n_q * n_k * d MACs each, whatever the head count
    assert attention_flops(N, M, D) == 4 * N * M * D
    mha = nn.MultiheadAttention(D, heads, batch_first=True).eval()
    x = torch.randn(1, N, D)
    assert count_flops(lambda: mha(x, x, x)) == mha_flops(N, N, D)


@pytest.mark.parametrize("outer_no_grad", [False, True])
def test_encoder_layer_matches_analytic(outer_no_grad):
    layer = nn.TransformerEncoderLayer(D, 4, DFF, dropout=0.0, batch_first=True).eval()
    x = torch.randn(B, N, D)
    expected = B * transformer_encoder_layer_flops(N, D, DFF)
    assert expected == B * 2 * (4 * N * D * D + 2 * N * N * D + 2 * N * D * DFF)
    # the fast path (eval + no_grad) would count 0 here; count_flops must see every matmul
    assert _count(lambda: layer(x), outer_no_grad) == expected
    assert not layer.training, "count_flops must not change the module's mode"


@pytest.mark.parametrize("outer_no_grad", [False, True])
def test_decoder_layer_matches_analytic(outer_no_grad):
    layer = nn.TransformerDecoderLayer(D, 4, DFF, dropout=0.0, batch_first=True).eval()
    tgt, memory = torch.randn(B, N, D), torch.randn(B, M, D)
    expected = B * transformer_decoder_layer_flops(N, M, D, DFF)
    assert _count(lambda: layer(tgt, memory), outer_no_grad) == expected


def test_frozen_encoder_is_counted():
    """Frozen parameters trigger the fast path even with grad enabled; it must be disabled."""
    layer = nn.TransformerEncoderLayer(D, 4, DFF, dropout=0.0, batch_first=True).eval()
    layer.requires_grad_(False)
    x = torch.randn(B, N, D)
    before = torch.backends.mha.get_fastpath_enabled()
    assert count_flops(lambda: layer(x)) == B * transformer_encoder_layer_flops(N, D, DFF)
    assert torch.backends.mha.get_fastpath_enabled() == before  # global flag restored


class _LearnedQueries(nn.Module):
    """DETR-like: learned queries expanded over the batch, decoded against a memory."""

    def __init__(self, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, D))
        self.decoder = nn.TransformerDecoderLayer(D, 4, DFF, dropout=0.0, batch_first=True)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.query[None].expand(memory.shape[0], -1, -1), memory)


def test_no_grad_caller_same_as_grad_with_expanded_parameter():
    """``param[None].expand`` under FlopCounterMode + no_grad raised an AssertionError."""
    model = _LearnedQueries(5).eval()
    memory = torch.randn(B, M, D)
    with_grad = count_flops(lambda: model(memory))
    with torch.no_grad():
        without_grad = count_flops(lambda: model(memory))
    assert with_grad == without_grad == B * transformer_decoder_layer_flops(5, M, D, DFF)
    with torch.no_grad():
        count_flops(lambda: model(memory))
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored


def test_outputs_are_freed_and_no_grads_left():
    layer = nn.TransformerEncoderLayer(D, 4, DFF, dropout=0.0, batch_first=True).eval()
    x = torch.randn(B, N, D)
    refs = []

    def fn():
        out = layer(x)
        refs.append(weakref.ref(out))
        return out

    flops = count_flops(fn)
    assert isinstance(flops, int) and flops > 0
    assert refs[0]() is None, "the output (and its autograd graph) must not survive"
    assert all(p.grad is None for p in layer.parameters())


def test_count_gflops():
    layer = nn.TransformerEncoderLayer(D, 4, DFF, dropout=0.0, batch_first=True).eval()
    x = torch.randn(B, N, D)
    gflops = count_gflops(layer, x, src_key_padding_mask=torch.zeros(B, N, dtype=torch.bool))
    assert gflops == pytest.approx(B * transformer_encoder_layer_flops(N, D, DFF) / 1e9, rel=1e-12)


def test_conv2d_flops_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        conv2d_flops(6, 8, 3, 4, 4, groups=4)


def test_measure_latency_ms():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    ms = measure_latency_ms(fn, warmup=2, repeats=3)
    assert len(calls) == 5
    assert 9.0 <= ms < 500.0
    with pytest.raises(ValueError, match="repeats"):
        measure_latency_ms(fn, repeats=0)
