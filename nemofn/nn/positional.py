"""Sinusoidal positional encodings: absolute (Transformer), relative (Transformer-XL) and relative over a fixed
local window (Longformer-style local attention), as NeMo's.

NeMo keeps the sinusoid table in a non-persistent ``pe`` buffer that grows with the longest input seen. The
values of a row depend only on its position, never on the table size, so here the rows an input needs are
computed inside ``apply``. Nothing is stored: both modules have empty params and buffers, and their
``max_len`` is kept only for config compatibility.
"""

from __future__ import annotations

import math

import attrs
import torch

from nemofn.nn.dropout import Dropout
from nemofn.nn.module import Module, Scope

__all__ = ["sinusoid_table", "PositionalEncoding", "RelPositionalEncoding", "LocalAttRelPositionalEncoding"]

_LOG_TIMESCALE = math.log(10000.0)


def sinusoid_table(positions: torch.Tensor, d_model: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sinusoids of ``positions``.

    Args:
        positions: ``[P]`` float32 positions (may be negative).
        d_model: even embedding size.
        dtype: output dtype (default float32).

    Returns:
        ``[1, P, d_model]``: column ``2i`` is ``sin(pos * w_i)`` and ``2i+1`` is ``cos(pos * w_i)`` with
        ``w_i = exp(-2i * ln(10000) / d_model)``, computed in float32 in the same order as NeMo.
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal positional encoding needs an even d_model, got {d_model}")
    freqs = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device) * -(_LOG_TIMESCALE / d_model)
    )
    angles = positions.to(torch.float32).unsqueeze(1) * freqs  # [P, d/2]
    pe = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).reshape(positions.shape[0], d_model)
    return pe.unsqueeze(0).to(dtype or torch.float32)


@attrs.frozen
class PositionalEncoding(Module):
    """Absolute sinusoidal encoding: ``x * xscale + pe[:T]``, then dropout.

    ``xscale`` is ``sqrt(d_model)`` when the encoder uses ``xscaling``; ``None`` (or 0) means no scaling.
    ``dropout_rate_emb > 0`` adds dropout on the encoding itself. No parameters or buffers.
    """

    d_model: int
    dropout_rate: float
    max_len: int = 5000
    xscale: float | None = None
    dropout_rate_emb: float = 0.0
    # Built once here: constructing modules inside `apply` would break torch.compile's graph.
    _dropout: Dropout = attrs.field(init=False, eq=False, repr=False)
    _dropout_emb: Dropout = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_dropout", Dropout(self.dropout_rate))
        object.__setattr__(self, "_dropout_emb", Dropout(self.dropout_rate_emb))

    def positions(self, length: int, cache_len: int, device: torch.device) -> torch.Tensor:
        """``[length + cache_len]`` float32 positions ``0, 1, ...``."""
        return torch.arange(0, length + cache_len, dtype=torch.float32, device=device)

    def apply(self, params, buffers, x, *, cache_len: int = 0, pe_dtype: torch.dtype | None = None,
              train=False, rng=None):
        """Adds the encoding.

        Args:
            x: ``[B, T, d_model]``.
            cache_len: extra leading positions (streaming caches; 0 offline).
            pe_dtype: dtype of the encoding (NeMo uses the model's parameter dtype); default ``x.dtype``.

        Returns:
            ``((x_out [B, T, d_model], pos_emb [1, P, d_model]), buffers)``.
        """
        s = Scope(params, buffers, train=train, rng=rng)
        pos_emb = sinusoid_table(
            self.positions(x.shape[1], cache_len, x.device), self.d_model, pe_dtype or x.dtype
        )
        if self.dropout_rate_emb > 0:
            pos_emb = s(self._dropout_emb, "dropout_emb", pos_emb)
        if self.xscale:
            x = x * self.xscale
        x = self._combine(x, pos_emb)
        return (s(self._dropout, "dropout", x), pos_emb), buffers

    def _combine(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        return x + pos_emb


@attrs.frozen
class RelPositionalEncoding(PositionalEncoding):
    """Relative encoding for Transformer-XL attention: scales ``x`` and returns the encodings of the relative
    positions ``T-1, T-2, ..., -(T-1)`` (``2T-1`` rows; positive = key to the left of the query).

    ``x`` is not added to the encoding; the attention layer projects ``pos_emb`` with ``linear_pos``.
    """

    def positions(self, length: int, cache_len: int, device: torch.device) -> torch.Tensor:
        """``[2L-1]`` float32 positions ``L-1 .. -(L-1)`` where ``L = length + cache_len``."""
        total = length + cache_len
        return torch.arange(total - 1, -total, -1, dtype=torch.float32, device=device)

    def _combine(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        return x


@attrs.frozen
class LocalAttRelPositionalEncoding(PositionalEncoding):
    """Relative encoding for local (sliding-window) attention, NeMo's ``LocalAttRelPositionalEncoding``: scales
    ``x`` and returns the encodings of the ``left + right + 1`` relative positions ``left, left-1, ..., -right``
    (positive = key to the left of the query), whatever the input length.

    ``att_context_size`` is ``(left, right)`` in frames, both ``>= 0`` (keyword-only). ``cache_len`` has no
    effect: the window does not depend on the input. Like the relative encoding, ``x`` is not added to the
    encoding (:class:`~nemofn.nn.local_attention.RelPositionLocalMultiHeadAttention` projects ``pos_emb``).
    """

    att_context_size: tuple[int, int] = attrs.field(kw_only=True, converter=tuple)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        if len(self.att_context_size) != 2 or min(self.att_context_size) < 0:
            raise ValueError(f"LocalAttRelPositionalEncoding: att_context_size must be [left, right] with both "
                             f">= 0, got {list(self.att_context_size)}")

    def positions(self, length: int, cache_len: int, device: torch.device) -> torch.Tensor:
        """``[left + right + 1]`` float32 positions ``left .. -right`` (independent of the input length)."""
        left, right = self.att_context_size
        return torch.arange(left, -right - 1, -1, dtype=torch.float32, device=device)

    def _combine(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        return x
