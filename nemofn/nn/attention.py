"""Multi-head self-attention as NeMo's Conformer uses it: absolute (Transformer) and relative-position
(Transformer-XL) variants.

Masks follow NeMo's convention: a boolean ``mask [B, T1, T2]`` is **True where attention is not allowed**.
Masked scores are filled with ``-10000`` (NeMo's ``INF_VAL``, not the dtype minimum) before the softmax, and the
masked probabilities are set to exactly 0 after it, so a query row whose keys are all masked (a padded frame)
attends to nothing and outputs ``linear_out``'s bias.

Parameter keys (NeMo's): ``linear_q``, ``linear_k``, ``linear_v``, ``linear_out`` (each ``weight [D, D]`` and
``bias [D]`` when ``use_bias``); the relative variant adds ``linear_pos.weight [D, D]`` (no bias) and
``pos_bias_u``, ``pos_bias_v [n_head, d_k]`` (zeros at init) when it owns its biases.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from nemofn.core.rng import as_key
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.module import Module, Scope, init_children

__all__ = ["MASK_FILL_VALUE", "MultiHeadAttention", "RelPositionMultiHeadAttention", "rel_shift"]

MASK_FILL_VALUE = -10000.0


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL relative shift, NeMo's pad-and-reshape form.

    Args:
        x: ``[B, H, T1, P]`` scores of each query against the relative positions ``T-1 .. -(T-1)``.

    Returns:
        ``[B, H, T1, P]`` where ``out[..., i, j]`` is ``x[..., i, j + T1 - 1 - i]`` for the first ``T1``
        columns (the score of query ``i`` against key ``j``); the later columns hold leftovers to be cut off.
    """
    b, h, qlen, pos_len = x.shape
    x = F.pad(x, (1, 0))  # [B, H, T1, P+1]
    x = x.view(b, h, -1, qlen)  # [B, H, P+1, T1]
    return x[:, :, 1:].view(b, h, qlen, pos_len)


@attrs.frozen
class MultiHeadAttention(Module):
    """Scaled dot-product attention with ``n_head`` heads of size ``d_k = n_feat // n_head``.

    ``use_pytorch_sdpa`` computes the same function with ``F.scaled_dot_product_attention`` (equal up to
    rounding); the default path reproduces NeMo's manual computation operation for operation.
    """

    n_head: int
    n_feat: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    use_pytorch_sdpa: bool = False
    # Children, built once here: constructing modules inside `apply` would break torch.compile's graph.
    _linear: Linear = attrs.field(init=False, eq=False, repr=False)
    _linear_pos: Linear = attrs.field(init=False, eq=False, repr=False)
    _dropout: Dropout = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.n_feat % self.n_head:
            raise ValueError(f"n_feat={self.n_feat} must be divisible by n_head={self.n_head}")
        object.__setattr__(self, "_linear", Linear(self.n_feat, self.n_feat, bias=self.use_bias))
        object.__setattr__(self, "_linear_pos", Linear(self.n_feat, self.n_feat, bias=False))
        object.__setattr__(self, "_dropout", Dropout(self.dropout_rate))

    @property
    def d_k(self) -> int:
        return self.n_feat // self.n_head

    def _children(self) -> dict[str, Module]:
        lin = self._linear
        return {"linear_q": lin, "linear_k": lin, "linear_v": lin, "linear_out": lin}

    def init(self, rng):
        return init_children(rng, self._children())

    def _heads(self, s: Scope, name: str, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D] -> [B, H, T, d_k]`` through ``linear_<name>``."""
        y = s(self._linear, name, x)
        return y.view(x.shape[0], -1, self.n_head, self.d_k).transpose(1, 2)

    def _qkv(self, s: Scope, query, key, value):
        return self._heads(s, "linear_q", query), self._heads(s, "linear_k", key), self._heads(s, "linear_v", value)

    def _attend(self, s: Scope, v: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(scores) @ v with NeMo's masking, dropout on the weights, then ``linear_out``.

        v: ``[B, H, T2, d_k]``; scores: ``[B, H, T1, T2]``; mask: ``[B, T1, T2]`` bool or None.
        """
        if mask is not None:
            mask = mask.unsqueeze(1)
            scores = scores.masked_fill(mask, MASK_FILL_VALUE)
            attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        attn = s(self._dropout, "dropout", attn)
        return self._merge_out(s, torch.matmul(attn, v))

    def _merge_out(self, s: Scope, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T1, d_k] -> [B, T1, D]`` through ``linear_out``."""
        b = x.shape[0]
        x = x.transpose(1, 2).reshape(b, -1, self.n_head * self.d_k)
        return s(self._linear, "linear_out", x)

    def _sdpa(self, s: Scope, q, k, v, attn_mask, all_masked_rows) -> torch.Tensor:
        """SDPA with dropout while training; rows whose keys are all masked output 0 (before ``linear_out``)."""
        if s.train and self.dropout_rate > 0:
            as_key(s.rng)  # stochastic: a key is required while training (raises with the fix)
        p = self.dropout_rate if s.train else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        if all_masked_rows is not None:
            out = out.masked_fill(all_masked_rows, 0.0)
        return self._merge_out(s, out)

    def apply(self, params, buffers, query, key, value, mask=None, *, train=False, rng=None):
        """Attention of ``query`` over ``key``/``value``.

        Args:
            query: ``[B, T1, D]``; key, value: ``[B, T2, D]``.
            mask: ``[B, T1, T2]`` bool, True = not allowed; or None.

        Returns:
            ``([B, T1, D], buffers)``.
        """
        s = Scope(params, buffers, train=train, rng=rng)
        q, k, v = self._qkv(s, query, key, value)
        if self.use_pytorch_sdpa:
            allowed = None if mask is None else ~mask.unsqueeze(1)
            dead = None if mask is None else mask.unsqueeze(1).all(dim=-1, keepdim=True)
            return self._sdpa(s, q, k, v, allowed, dead), buffers
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self._attend(s, v, scores, mask), buffers


@attrs.frozen
class RelPositionMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL attention with relative positional encodings (``RelPositionalEncoding``).

    ``scores = ((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(d_k)`` with ``p = linear_pos(pos_emb)``.
    With ``own_pos_bias`` (NeMo's ``untie_biases=True``) ``u``/``v`` are this layer's ``pos_bias_u``/
    ``pos_bias_v`` params; otherwise the caller passes shared ones to ``apply``.
    """

    own_pos_bias: bool = True

    def _children(self) -> dict[str, Module]:
        children = super()._children()
        children["linear_pos"] = self._linear_pos
        return children

    def init(self, rng):
        params, buffers = super().init(rng)
        if self.own_pos_bias:
            params["pos_bias_u"] = torch.zeros(self.n_head, self.d_k)
            params["pos_bias_v"] = torch.zeros(self.n_head, self.d_k)
        return params, buffers

    def apply(self, params, buffers, query, key, value, mask=None, pos_emb=None, *, pos_bias_u=None,
              pos_bias_v=None, train=False, rng=None):
        """Attention with relative positions.

        Args:
            query: ``[B, T, D]``; key, value: ``[B, T, D]``.
            mask: ``[B, T, T]`` bool, True = not allowed; or None.
            pos_emb: ``[1 or B, 2T-1, D]`` from ``RelPositionalEncoding``.
            pos_bias_u, pos_bias_v: ``[H, d_k]`` shared biases; default: this layer's params.

        Returns:
            ``([B, T, D], buffers)``.
        """
        if pos_emb is None:
            raise ValueError("RelPositionMultiHeadAttention.apply needs pos_emb (from RelPositionalEncoding)")
        u = params["pos_bias_u"] if pos_bias_u is None else pos_bias_u
        bv = params["pos_bias_v"] if pos_bias_v is None else pos_bias_v
        s = Scope(params, buffers, train=train, rng=rng)
        q, k, v = self._qkv(s, query, key, value)
        p = s(self._linear_pos, "linear_pos", pos_emb)
        p = p.view(pos_emb.shape[0], -1, self.n_head, self.d_k).transpose(1, 2)  # [Bp, H, P, d_k]
        q_u = q + u.unsqueeze(1)  # [B, H, T, d_k]
        q_v = q + bv.unsqueeze(1)
        matrix_bd = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))[:, :, :, : k.shape[-2]]
        if self.use_pytorch_sdpa:
            bias = matrix_bd * (1.0 / math.sqrt(self.d_k))
            dead = None
            if mask is not None:
                m = mask.unsqueeze(1)
                bias = bias.masked_fill(m, MASK_FILL_VALUE)
                dead = m.all(dim=-1, keepdim=True)
            return self._sdpa(s, q_u, k, v, bias, dead), buffers
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        return self._attend(s, v, scores, mask), buffers
