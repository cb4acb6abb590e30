"""Sinusoidal positional encodings: values, NeMo's table slicing, scaling, dropout, no state."""

from __future__ import annotations

import math

import pytest
import torch

from nemofn.core.rng import RngKey
from nemofn.nn.positional import PositionalEncoding, RelPositionalEncoding, sinusoid_table

D = 16


def _nemo_style_table(positions: torch.Tensor, d: int) -> torch.Tensor:
    """The table as NeMo fills its buffer: zeros, then sin into even and cos into odd columns."""
    pe = torch.zeros(positions.shape[0], d)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(positions.unsqueeze(1) * div)
    pe[:, 1::2] = torch.cos(positions.unsqueeze(1) * div)
    return pe.unsqueeze(0)


def test_table_values_follow_the_formula():
    pos = torch.arange(-20, 21, dtype=torch.float32)
    table = sinusoid_table(pos, D)[0].double()
    i = torch.arange(D // 2, dtype=torch.float64)
    angle = pos.double()[:, None] / 10000.0 ** (2 * i / D)
    torch.testing.assert_close(table[:, 0::2], torch.sin(angle), atol=1e-5, rtol=0)
    torch.testing.assert_close(table[:, 1::2], torch.cos(angle), atol=1e-5, rtol=0)


def test_relative_encoding_equals_a_slice_of_nemos_big_table():
    """NeMo builds rows for positions L-1 .. -(L-1) with L = max_len and slices around the centre; computing
    only the needed rows gives bit-identical values."""
    max_len, t = 300, 37
    big = _nemo_style_table(torch.arange(max_len - 1, -max_len, -1, dtype=torch.float32), D)
    center = big.shape[1] // 2 + 1
    expected = big[:, center - t: center + t - 1]
    x = torch.randn(2, t, D)
    (_, pos_emb), _ = RelPositionalEncoding(D, 0.0, max_len=max_len).apply({}, {}, x)
    assert pos_emb.shape == (1, 2 * t - 1, D)
    assert torch.equal(pos_emb, expected)


def test_absolute_encoding_adds_scaled_input_and_table():
    t = 11
    x = torch.randn(2, t, D)
    (y, pos_emb), _ = PositionalEncoding(D, 0.0, xscale=math.sqrt(D)).apply({}, {}, x)
    expected_pe = _nemo_style_table(torch.arange(t, dtype=torch.float32), D)
    assert torch.equal(pos_emb, expected_pe)
    torch.testing.assert_close(y, x * math.sqrt(D) + expected_pe)
    (unscaled, _), _ = PositionalEncoding(D, 0.0).apply({}, {}, x)
    torch.testing.assert_close(unscaled, x + expected_pe)


def test_relative_encoding_only_scales_the_input():
    x = torch.randn(2, 5, D)
    (y, _), _ = RelPositionalEncoding(D, 0.0, xscale=4.0).apply({}, {}, x)
    torch.testing.assert_close(y, 4.0 * x)
    (same, _), _ = RelPositionalEncoding(D, 0.0, xscale=None).apply({}, {}, x)
    assert same is x


def test_no_params_or_buffers_and_pe_dtype():
    for cls in (PositionalEncoding, RelPositionalEncoding):
        assert cls(D, 0.1).init(0) == ({}, {})
    x = torch.randn(1, 4, D)
    (_, pe), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x, pe_dtype=torch.float64)
    assert pe.dtype == torch.float64
    (_, pe), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x.to(torch.bfloat16))
    assert pe.dtype == torch.bfloat16


def test_cache_len_extends_the_positions():
    x = torch.randn(1, 4, D)
    (_, pe), _ = RelPositionalEncoding(D, 0.0).apply({}, {}, x, cache_len=3)
    assert pe.shape[1] == 2 * 7 - 1


def test_dropouts_need_a_key_in_training():
    x = torch.randn(2, 6, D)
    enc = RelPositionalEncoding(D, 0.5, dropout_rate_emb=0.5)
    with pytest.raises(ValueError, match="random key"):
        enc.apply({}, {}, x, train=True)
    torch.manual_seed(0)
    (y, pe), _ = enc.apply({}, {}, x, train=True, rng=RngKey(0))
    assert (y == 0).any() and (pe == 0).sum() > (sinusoid_table(torch.arange(5, -6, -1.0), D) == 0).sum()
    (y_eval, _), _ = enc.apply({}, {}, x, train=False)
    assert torch.equal(y_eval, x)


def test_odd_d_model_raises():
    with pytest.raises(ValueError, match="even d_model"):
        sinusoid_table(torch.arange(3.0), 7)
