"""Local attention (``rel_pos_local_attn``): NeMo 3.0 parity from the stored fixture, equality with full attention
when the context covers the input, the positional-row mapping, bounded memory on very long inputs, gradients."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from nemofn.core.tree import flatten, unflatten
from nemofn.nn.attention import RelPositionMultiHeadAttention
from nemofn.nn.local_attention import RelPositionLocalMultiHeadAttention, offset_rows, skew_band
from nemofn.nn.positional import LocalAttRelPositionalEncoding, RelPositionalEncoding

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "data" / "nemo3_local_attn.json"


def _reference_helpers():
    spec = importlib.util.spec_from_file_location("make_local_attn_reference",
                                                  REPO / "scripts" / "dev" / "make_local_attn_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference_helpers()
CASES = json.loads(FIXTURE.read_text())["attention"]


def _module(case) -> RelPositionLocalMultiHeadAttention:
    return RelPositionLocalMultiHeadAttention(
        case["n_head"], case["d_model"], 0.0, att_context_size=case["att_context_size"],
        global_tokens=case["global_tokens"], global_tokens_spacing=case["global_tokens_spacing"],
        global_attn_separate=case["global_attn_separate"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_nemo(case):
    """NeMo's RelPositionMultiHeadAttentionLongformer on the same weights and padded batch, to 1e-5 (every
    frame, padded ones included)."""
    module = _module(case)
    specs = case["params"]
    params = unflatten(REF.draw_tensors(specs, case["seed"]))
    ours, _ = module.init(0)
    assert list(flatten(ours)) == [key for key, *_ in specs]  # NeMo's keys, in NeMo's order
    d, t = case["d_model"], case["T"]
    x = REF.draw_input([2, t, d], case["input_seed"])
    pad_mask = torch.arange(t)[None, :] >= torch.tensor(case["lengths"])[:, None]
    (_, pos_emb), _ = LocalAttRelPositionalEncoding(d, 0.0, att_context_size=case["att_context_size"]).apply({}, {}, x)
    y, _ = module.apply(params, {}, x, x, x, pad_mask, pos_emb)
    expected = REF.decode_array(case["output"])
    assert y.shape == expected.shape
    assert (y - expected).abs().max().item() <= 1e-5


def _full_vs_local(t, lengths, context, *, grad=False):
    torch.manual_seed(0)
    d, h = 16, 4
    full = RelPositionMultiHeadAttention(h, d, 0.0)
    params, _ = full.init(3)
    params = {k: (v + 0.1 * torch.randn_like(v)) if k.startswith("pos_bias") else v for k, v in params.items()}
    local = RelPositionLocalMultiHeadAttention(h, d, 0.0, att_context_size=context)
    x = torch.randn(len(lengths), t, d, requires_grad=grad)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    att_mask = ~(valid[:, None, :] & valid[:, :, None])
    (_, pe_full), _ = RelPositionalEncoding(d, 0.0).apply({}, {}, x)
    (_, pe_local), _ = LocalAttRelPositionalEncoding(d, 0.0, att_context_size=context).apply({}, {}, x)
    y_full, _ = full.apply(params, {}, x, x, x, att_mask, pe_full)
    y_local, _ = local.apply(params, {}, x, x, x, ~valid, pe_local)
    return x, y_full, y_local


@pytest.mark.parametrize("context", [(40, 40), (500, 500)])
def test_context_covering_the_input_equals_full_attention(context):
    _, y_full, y_local = _full_vs_local(37, [37, 21], context)
    torch.testing.assert_close(y_local, y_full, atol=2e-6, rtol=0)


def test_gradients_equal_full_attention_when_the_context_covers_the_input():
    x, y_full, _ = _full_vs_local(29, [29, 18], (30, 30), grad=True)
    (g_full,) = torch.autograd.grad(y_full.square().sum(), x)
    x2, _, y_local = _full_vs_local(29, [29, 18], (30, 30), grad=True)
    (g_local,) = torch.autograd.grad(y_local.square().sum(), x2)
    torch.testing.assert_close(g_local, g_full, atol=1e-5, rtol=1e-5)


def test_offset_rows_follow_nemos_column_layout():
    # equal contexts: offset m gets the row of relative position -m
    assert offset_rows(3, 3, 3, 3).tolist() == [0, 1, 2, 3, 4, 5, 6]
    # left < right (w = 7): offsets -3..-1 sit in columns 4..6, which NeMo leaves without a positional term
    none = 3 + 7 + 1
    assert offset_rows(3, 7, 3, 7).tolist() == [none] * 3 + list(range(3, 11))
    # left > right (w = 7): the right part's rows start at column 2w - right = 12, i.e. offset 5, beyond the
    # context: offsets 0..2 get no positional term
    assert offset_rows(7, 2, 7, 2).tolist() == list(range(7)) + [10] * 3
    # a span narrower than the context (short input) takes the middle of the same mapping
    assert offset_rows(5, 5, 2, 1).tolist() == offset_rows(5, 5, 5, 5)[3:7].tolist()


def test_skew_band_places_each_row_on_its_diagonal():
    band = torch.randn(2, 5, 4)
    dense = skew_band(band, 8)
    for i in range(5):
        for c in range(8):
            expected = band[:, i, c - i] if 0 <= c - i < 4 else torch.zeros(2)
            assert torch.equal(dense[:, i, c], expected)
    with pytest.raises(ValueError, match="width"):
        skew_band(band, 7)


def test_result_does_not_depend_on_the_block_grouping():
    torch.manual_seed(1)
    module = RelPositionLocalMultiHeadAttention(2, 8, 0.0, att_context_size=(5, 3))
    params, _ = module.init(0)
    x = torch.randn(2, 300, 8)
    pad = torch.arange(300)[None, :] >= torch.tensor([300, 211])[:, None]
    (_, pe), _ = LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(5, 3)).apply({}, {}, x)
    y_default, _ = module.apply(params, {}, x, x, x, pad, pe)
    y_small, _ = module.replace(score_budget=1).apply(params, {}, x, x, x, pad, pe)
    torch.testing.assert_close(y_small, y_default, atol=1e-6, rtol=0)


def test_very_long_input_never_builds_a_time_by_time_tensor():
    """200,000 frames: a [T, T] float tensor would take 160 GB (a bool mask 40 GB), more than this machine has;
    the local attention runs in a bounded working set."""
    t = 200_000
    module = RelPositionLocalMultiHeadAttention(2, 8, 0.0, att_context_size=(16, 16))
    params, _ = module.init(0)
    x = torch.randn(1, t, 8)
    (_, pe), _ = LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(16, 16)).apply({}, {}, x)
    with torch.no_grad():
        y, _ = module.apply(params, {}, x, x, x, None, pe)
    assert y.shape == (1, t, 8) and torch.isfinite(y).all()
    # a frame in the middle only sees its window
    mid = t // 2
    x2 = x.clone()
    x2[:, : mid - 16] += 1.0
    x2[:, mid + 17:] -= 1.0
    with torch.no_grad():
        y2, _ = module.apply(params, {}, x2[:, mid - 40: mid + 40], x2[:, mid - 40: mid + 40],
                             x2[:, mid - 40: mid + 40], None, pe)
    torch.testing.assert_close(y2[:, 40], y[:, mid], atol=1e-6, rtol=0)


def test_padded_queries_output_the_bias_and_padded_keys_get_no_weight():
    torch.manual_seed(2)
    module = RelPositionLocalMultiHeadAttention(2, 8, 0.0, att_context_size=(3, 3))
    params, _ = module.init(0)
    x = torch.randn(1, 12, 8)
    pad = torch.arange(12)[None, :] >= 7
    (_, pe), _ = LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(3, 3)).apply({}, {}, x)
    y, _ = module.apply(params, {}, x, x, x, pad, pe)
    torch.testing.assert_close(y[0, 7:], params["linear_out"]["bias"].expand(5, 8))
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 5, 8) * 10
    y2, _ = module.apply(params, {}, x2, x2, x2, pad, pe)
    torch.testing.assert_close(y2[:, :7], y[:, :7], atol=1e-6, rtol=0)


def test_dropout_needs_a_key_while_training_and_not_in_eval():
    module = RelPositionLocalMultiHeadAttention(2, 8, 0.5, att_context_size=(2, 2))
    params, _ = module.init(0)
    x = torch.randn(1, 10, 8)
    (_, pe), _ = LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(2, 2)).apply({}, {}, x)
    a, _ = module.apply(params, {}, x, x, x, None, pe)
    b, _ = module.apply(params, {}, x, x, x, None, pe)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="key"):
        module.apply(params, {}, x, x, x, None, pe, train=True)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="att_context_size"):
        RelPositionLocalMultiHeadAttention(2, 8, att_context_size=(-1, 4))
    with pytest.raises(ValueError, match="att_context_size"):
        RelPositionLocalMultiHeadAttention(2, 8, att_context_size=(0, 0))
    with pytest.raises(NotImplementedError, match="use_pytorch_sdpa"):
        RelPositionLocalMultiHeadAttention(2, 8, 0.0, True, True, att_context_size=(2, 2))
    with pytest.raises(ValueError, match="att_context_size"):
        LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(-1, 2))
    module = RelPositionLocalMultiHeadAttention(2, 8, att_context_size=(2, 2))
    params, _ = module.init(0)
    x = torch.randn(1, 6, 8)
    (_, wrong), _ = LocalAttRelPositionalEncoding(8, 0.0, att_context_size=(3, 3)).apply({}, {}, x)
    with pytest.raises(ValueError, match="5 rows"):
        module.apply(params, {}, x, x, x, None, wrong)


def test_local_encoding_rows_are_the_window_positions():
    x = torch.randn(1, 3, 8)
    (y, pe), _ = LocalAttRelPositionalEncoding(8, 0.0, xscale=2.0, att_context_size=(4, 1)).apply({}, {}, x)
    torch.testing.assert_close(y, 2.0 * x)
    positions = torch.arange(4, -2, -1, dtype=torch.float32)
    angles = positions[:, None] * torch.exp(torch.arange(0, 8, 2) * -(math.log(10000.0) / 8))
    torch.testing.assert_close(pe[0, :, 0::2], torch.sin(angles))
    torch.testing.assert_close(pe[0, :, 1::2], torch.cos(angles))
