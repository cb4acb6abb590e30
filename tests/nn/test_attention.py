"""Attention against a direct, loop-by-definition reference of NeMo's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from nemofn.core.rng import RngKey
from nemofn.core.tree import flatten
from nemofn.nn.attention import MultiHeadAttention, RelPositionMultiHeadAttention, rel_shift
from nemofn.nn.positional import RelPositionalEncoding

B, T, D, H = 3, 7, 16, 4
DK = D // H


def _lin(p, x):
    y = x @ p["weight"].T
    return y + p["bias"] if "bias" in p else y


def _masked_softmax_rows(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed entries of one row; all zeros when none is allowed."""
    if not allowed.any():
        return torch.zeros_like(scores)
    w = torch.zeros_like(scores)
    w[allowed] = torch.softmax(scores[allowed], dim=0)
    return w


def _reference(params, x, mask, score_fn):
    """Loops over batch, head, query: out_i = linear_out(concat_h sum_j w_hij v_hj)."""
    q, k, v = (_lin(params[n], x) for n in ("linear_q", "linear_k", "linear_v"))
    out = torch.zeros(B, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            sl = slice(h * DK, (h + 1) * DK)
            for i in range(T):
                scores = torch.stack([score_fn(b, h, i, j, q[b, i, sl], k[b, j, sl]) for j in range(T)])
                allowed = ~mask[b, i] if mask is not None else torch.ones(T, dtype=torch.bool)
                w = _masked_softmax_rows(scores, allowed)
                out[b, i, sl] = (w[:, None] * v[b, :, sl]).sum(0)
    return _lin(params["linear_out"], out)


def _double(tree):
    return {k: _double(v) if isinstance(v, dict) else v.double() for k, v in tree.items()}


def _padding_mask(lengths):
    valid = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return ~(valid[:, None, :] & valid[:, :, None])


@pytest.fixture
def x():
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_rel_shift_is_the_relative_index_map():
    x = torch.randn(2, 3, T, 2 * T - 1)
    y = rel_shift(x)
    for i in range(T):
        for j in range(T):
            assert torch.equal(y[..., i, j], x[..., i, j + T - 1 - i])


def test_init_keys_shapes_and_zero_pos_biases():
    p, b = RelPositionMultiHeadAttention(H, D, 0.0).init(0)
    shapes = {k: tuple(v.shape) for k, v in flatten(p).items()}
    assert b == {}
    assert shapes == {
        "pos_bias_u": (H, DK), "pos_bias_v": (H, DK),
        **{f"linear_{n}.{w}": (D, D) if w == "weight" else (D,) for n in "qkv" for w in ("weight", "bias")},
        "linear_out.weight": (D, D), "linear_out.bias": (D,), "linear_pos.weight": (D, D),
    }
    assert not p["pos_bias_u"].any() and not p["pos_bias_v"].any()
    shared, _ = RelPositionMultiHeadAttention(H, D, 0.0, own_pos_bias=False).init(0)
    assert "pos_bias_u" not in shared and "pos_bias_v" not in shared
    plain, _ = MultiHeadAttention(H, D, 0.0, use_bias=False).init(0)
    assert sorted(flatten(plain)) == [f"linear_{n}.weight" for n in ("k", "out", "q", "v")]


@pytest.mark.parametrize("lengths", [None, [7, 4, 1]])
def test_absolute_attention_matches_reference(x, lengths):
    mha = MultiHeadAttention(H, D, 0.0)
    p = _double(mha.init(RngKey(3))[0])
    mask = None if lengths is None else _padding_mask(lengths)
    out, _ = mha.apply(p, {}, x, x, x, mask)
    ref = _reference(p, x, mask, lambda b, h, i, j, qi, kj: qi @ kj / math.sqrt(DK))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lengths", [None, [7, 5, 2]])
def test_relative_attention_matches_reference(x, lengths):
    mha = RelPositionMultiHeadAttention(H, D, 0.0)
    p = _double(mha.init(RngKey(4))[0])
    p["pos_bias_u"] = torch.randn(H, DK, dtype=torch.float64)
    p["pos_bias_v"] = torch.randn(H, DK, dtype=torch.float64)
    (_, pos_emb), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x)
    mask = None if lengths is None else _padding_mask(lengths)
    out, _ = mha.apply(p, {}, x, x, x, mask, pos_emb)

    proj = _lin(p["linear_pos"], pos_emb[0])  # row r holds relative position T-1-r

    def score(b, h, i, j, qi, kj):
        sl = slice(h * DK, (h + 1) * DK)
        rel = proj[T - 1 - (i - j), sl]
        return ((qi + p["pos_bias_u"][h]) @ kj + (qi + p["pos_bias_v"][h]) @ rel) / math.sqrt(DK)

    torch.testing.assert_close(out, _reference(p, x, mask, score), rtol=1e-10, atol=1e-10)


def test_fully_masked_query_rows_output_the_out_bias(x):
    mha = MultiHeadAttention(H, D, 0.0)
    p, _ = mha.init(0)
    mask = _padding_mask([7, 3, 3])
    out, _ = mha.apply(p, {}, x.float(), x.float(), x.float(), mask)
    torch.testing.assert_close(out[1, 3:], p["linear_out"]["bias"].expand(4, D))


@pytest.mark.parametrize("cls", [MultiHeadAttention, RelPositionMultiHeadAttention])
def test_sdpa_path_matches_manual_path(cls, x):
    x = x.float()
    manual = cls(H, D, 0.0)
    p, _ = manual.init(5)
    if cls is RelPositionMultiHeadAttention:
        p["pos_bias_u"] = torch.randn(H, DK)
        p["pos_bias_v"] = torch.randn(H, DK)
    (_, pos_emb), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x)
    args = (x, x, x, _padding_mask([7, 5, 2])) + ((pos_emb,) if cls is RelPositionMultiHeadAttention else ())
    expected, _ = manual.apply(p, {}, *args)
    got, _ = manual.replace(use_pytorch_sdpa=True).apply(p, {}, *args)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shared_biases_are_used_when_given(x):
    x = x.float()
    own = RelPositionMultiHeadAttention(H, D, 0.0)
    p, _ = own.init(6)
    p["pos_bias_u"], p["pos_bias_v"] = torch.randn(H, DK), torch.randn(H, DK)
    (_, pos_emb), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x)
    expected, _ = own.apply(p, {}, x, x, x, None, pos_emb)
    shared = RelPositionMultiHeadAttention(H, D, 0.0, own_pos_bias=False)
    rest = {k: v for k, v in p.items() if not k.startswith("pos_bias")}
    got, _ = shared.apply(rest, {}, x, x, x, None, pos_emb, pos_bias_u=p["pos_bias_u"], pos_bias_v=p["pos_bias_v"])
    torch.testing.assert_close(got, expected)


def test_attention_dropout_needs_a_key_and_is_seeded_by_the_global_generator(x):
    x = x.float()
    mha = MultiHeadAttention(H, D, 0.5)
    p, _ = mha.init(0)
    with pytest.raises(ValueError, match="random key"):
        mha.apply(p, {}, x, x, x, None, train=True)
    eval_out, _ = mha.apply(p, {}, x, x, x, None, train=False)
    torch.manual_seed(0)
    a, _ = mha.apply(p, {}, x, x, x, None, train=True, rng=RngKey(0))
    torch.manual_seed(0)
    b, _ = mha.apply(p, {}, x, x, x, None, train=True, rng=RngKey(0))
    assert torch.equal(a, b)
    assert not torch.allclose(a, eval_out)


def test_bad_head_count_raises():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(3, 16, 0.0)
