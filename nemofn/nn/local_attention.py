"""Local (sliding-window) self-attention with Transformer-XL relative positions, linear in the input length.

This is NeMo's ``RelPositionMultiHeadAttentionLongformer`` (a Conformer with ``self_attention_model:
rel_pos_local_attn``; ``model.change_attention_model("rel_pos_local_attn", [left, right])`` switches a trained
model to it for long audio). Query ``t`` attends to the keys ``t - left .. t + right`` of its own item
(``att_context_size = (left, right)``, frames), with

    ``score(t, t + m) = ((q_t + u) . k_{t+m} + (q_t + v) . p_m) / sqrt(d_k)``

where ``p_m`` is ``linear_pos`` of the sinusoid of the relative position (``LocalAttRelPositionalEncoding``
gives the ``left + right + 1`` rows for positions ``left .. -right``). Padded keys (``pad_mask``) get no weight,
padded queries output ``linear_out``'s bias (as in the full attention).

**NeMo's positional term with unequal contexts.** NeMo lays the scores out over a window of ``2w + 1`` offsets
(``w = max(left, right)``, offset ``m = j - w`` in column ``j``) and adds the positional scores column-wise:
columns ``0 .. left-1`` get rows ``0 .. left-1`` (positions ``left .. 1``), and the last ``right + 1`` columns get
rows ``left .. left+right`` (positions ``0 .. -right``). With ``left == right`` that is exactly offset ``m``'s
row. With ``left != right`` some allowed offsets get no positional term and others get the row of another
offset; this module reproduces that mapping (:func:`offset_rows`) so that a NeMo checkpoint gives NeMo's outputs.

**Global tokens** (NeMo's ``global_tokens``, ``global_tokens_spacing``, ``global_attn_separate``): the frames
``0, s, 2s, ...`` (``global_tokens`` of them, ``s`` the spacing) are keys of every query, in the same softmax as
the local keys, scored ``(q_t / sqrt(d_k)) . k_g`` (no positional term, no ``u``, and keys at padded frames are
not masked, as NeMo's), with the values ``v_g``; and their own outputs are replaced by a full attention of their
queries over all valid keys. ``global_attn_separate`` takes those queries, keys and values from the separate
projections ``global_q``, ``global_k``, ``global_v``. NeMo's ``change_attention_model`` never sets global tokens;
a config that asks for them gets them.

Cost: queries are processed in blocks of ``block`` frames against the ``block + left + right`` keys around them,
a bounded number of blocks at a time (about ``score_budget`` score elements), so time and memory grow linearly
with the length for a fixed context and no ``[T, T]`` tensor is ever made. The result equals NeMo's chunked
computation up to float rounding (masked scores get exactly zero weight in both).

Parameter keys: those of :class:`~nemofn.nn.attention.RelPositionMultiHeadAttention` (``linear_q``, ``linear_k``,
``linear_v``, ``linear_out``, ``linear_pos``, ``pos_bias_u``, ``pos_bias_v``), so a ``rel_pos`` checkpoint
loads key for key; plus ``global_q``, ``global_k``, ``global_v`` with ``global_attn_separate``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from nemofn.nn.attention import MASK_FILL_VALUE, RelPositionMultiHeadAttention
from nemofn.nn.module import Module, Scope

__all__ = ["RelPositionLocalMultiHeadAttention", "offset_rows", "skew_band"]

_MIN_BLOCK = 16
_MAX_BLOCK = 64


def offset_rows(left: int, right: int, span_left: int, span_right: int, device=None) -> torch.Tensor:
    """Which row of the positional encoding NeMo adds to each offset's score.

    Args:
        left, right: the attention context (``att_context_size``).
        span_left, span_right: the offsets wanted, ``-span_left .. span_right`` (at most ``left`` / ``right``).

    Returns:
        ``[span_left + span_right + 1]`` int64: for offset ``m`` the row of ``pos_emb`` (whose row ``c`` encodes
        position ``left - c``) that NeMo adds, or ``left + right + 1`` (one past the last row) where NeMo adds none.
    """
    w = max(left, right)
    col = torch.arange(-span_left, span_right + 1, device=device) + w  # NeMo's window column of each offset
    first_right_col = 2 * w - right
    none = torch.full_like(col, left + right + 1)
    rows = torch.where(col >= first_right_col, left + col - first_right_col, none)
    return torch.where(col < left, col, rows)


def skew_band(band: torch.Tensor, width: int) -> torch.Tensor:
    """Lays a band out on a dense grid: ``out[..., i, i + c] = band[..., i, c]``, zeros elsewhere.

    Args:
        band: ``[..., n, L]`` (row ``i``'s values for columns ``i .. i + L - 1``).
        width: columns of the result, ``n + L - 1``.

    Returns:
        ``[..., n, width]``.
    """
    *lead, n, span = band.shape
    if width != n + span - 1:
        raise ValueError(f"skew_band: width must be n + L - 1 = {n + span - 1}, got {width}")
    x = F.pad(band, (0, width + 1 - span))  # [..., n, width + 1]
    x = x.reshape(*lead, n * (width + 1))[..., : n * width]
    return x.reshape(*lead, n, width)


@attrs.frozen
class RelPositionLocalMultiHeadAttention(RelPositionMultiHeadAttention):
    """NeMo's ``RelPositionMultiHeadAttentionLongformer``; see the module docstring.

    Args (beyond :class:`~nemofn.nn.attention.RelPositionMultiHeadAttention`'s, all keyword-only):
        att_context_size: ``(left, right)`` frames, both ``>= 0``, at least one ``> 0``.
        global_tokens, global_tokens_spacing, global_attn_separate: NeMo's global attention (0 = none).
        score_budget: about how many score elements one step of the blocked computation holds (memory knob;
            the result does not depend on it).

    ``use_pytorch_sdpa`` is not available (NeMo raises too).
    """

    att_context_size: tuple[int, int] = attrs.field(kw_only=True, converter=tuple)
    global_tokens: int = attrs.field(default=0, kw_only=True)
    global_tokens_spacing: int = attrs.field(default=1, kw_only=True)
    global_attn_separate: bool = attrs.field(default=False, kw_only=True)
    score_budget: int = attrs.field(default=1 << 22, kw_only=True, eq=False)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        if len(self.att_context_size) != 2 or min(self.att_context_size) < 0 or max(self.att_context_size) <= 0:
            raise ValueError(f"local attention needs att_context_size [left, right] with both >= 0 and one > 0 "
                             f"(frames after subsampling), got {list(self.att_context_size)}")
        if self.use_pytorch_sdpa:
            raise NotImplementedError("use_pytorch_sdpa is not available for local attention (rel_pos_local_attn);"
                                      " set use_pytorch_sdpa: false")
        if self.global_tokens < 0 or self.global_tokens_spacing < 1:
            raise ValueError(f"global_tokens must be >= 0 and global_tokens_spacing >= 1, got "
                             f"{self.global_tokens} and {self.global_tokens_spacing}")

    def _children(self) -> dict[str, Module]:
        children = super()._children()
        if self.global_attn_separate:
            lin = self._linear
            children.update(global_q=lin, global_k=lin, global_v=lin)
        return children

    def init(self, rng):
        params, buffers = super().init(rng)
        if "pos_bias_u" in params:  # NeMo's state dict lists a module's own params before its children's
            params = {"pos_bias_u": params.pop("pos_bias_u"), "pos_bias_v": params.pop("pos_bias_v"), **params}
        return params, buffers

    # ----- pieces ------------------------------------------------------------------------------------------
    def _offset_projections(self, s: Scope, pos_emb: torch.Tensor, span_left: int, span_right: int):
        """``linear_pos`` of the rows NeMo adds to the offsets ``-span_left .. span_right``:
        ``[Bp, H, span, d_k]`` (zeros where NeMo adds none)."""
        left, right = self.att_context_size
        if pos_emb.shape[1] != left + right + 1:
            raise ValueError(f"local attention with att_context_size {[left, right]} needs pos_emb of "
                             f"{left + right + 1} rows (LocalAttRelPositionalEncoding), got {pos_emb.shape[1]}")
        rows = offset_rows(left, right, span_left, span_right, device=pos_emb.device)
        table = torch.cat([pos_emb, pos_emb.new_zeros(pos_emb.shape[0], 1, pos_emb.shape[2])], dim=1)
        p = s(self._linear_pos, "linear_pos", table[:, rows])
        return p.view(p.shape[0], -1, self.n_head, self.d_k).transpose(1, 2)

    def _global_index(self, t: int, device) -> torch.Tensor | None:
        if self.global_tokens <= 0:
            return None
        end = min(self.global_tokens * self.global_tokens_spacing, t)
        return torch.arange(0, end, self.global_tokens_spacing, device=device)

    def _local(self, s: Scope, q_u, q_v, k, v, p, valid, span_left: int, span_right: int, glob):
        """Blocked band attention: ``[B, H, T, d_k]`` outputs (padded queries not zeroed yet).

        ``glob`` is None or ``(gq [B, H, T, d_k] scaled queries, gk [B, H, G, d_k], gv [B, H, G, d_k])``.
        """
        b, h, t, dk = q_u.shape
        span = span_left + span_right + 1
        block = min(t, max(_MIN_BLOCK, min(_MAX_BLOCK, span)))
        n_blocks = -(-t // block)
        t_pad = n_blocks * block
        width = block + span - 1
        back = t_pad - t + span_right
        k = F.pad(k, (0, 0, span_left, back))
        v = F.pad(v, (0, 0, span_left, back))
        key_ok = F.pad(valid, (span_left, back), value=False)  # [B, span_left + t_pad + span_right]
        q_u = F.pad(q_u, (0, 0, 0, t_pad - t))
        q_v = F.pad(q_v, (0, 0, 0, t_pad - t))
        gq = F.pad(glob[0], (0, 0, 0, t_pad - t)) if glob is not None else None
        cols = torch.arange(width, device=q_u.device)
        offs = cols.unsqueeze(0) - torch.arange(block, device=q_u.device).unsqueeze(1)
        in_band = (offs >= 0) & (offs < span)  # [block, width]: key column c is in query i's window
        p_t = p.unsqueeze(2).transpose(-1, -2)  # [Bp, H, 1, d_k, span]
        scale = math.sqrt(dk)
        out = q_u.new_empty(b, h, t_pad, dk)
        step = max(1, self.score_budget // max(1, b * h * block * (width + (glob[1].shape[2] if glob else 0))))
        for g0 in range(0, n_blocks, step):
            n = min(step, n_blocks - g0)
            qs = slice(g0 * block, (g0 + n) * block)
            ks = slice(g0 * block, (g0 + n) * block + span - 1)
            qu = q_u[:, :, qs].reshape(b, h, n, block, dk)
            qv = q_v[:, :, qs].reshape(b, h, n, block, dk)
            kb = k[:, :, ks].unfold(2, width, block)  # [B, H, n, d_k, width]
            vb = v[:, :, ks].unfold(2, width, block).transpose(-1, -2)  # [B, H, n, width, d_k]
            scores = (torch.matmul(qu, kb) + skew_band(torch.matmul(qv, p_t), width)) / scale
            allowed = in_band & key_ok[:, ks].unfold(1, width, block).unsqueeze(2)  # [B, n, block, width]
            scores = scores.masked_fill(~allowed.unsqueeze(1), MASK_FILL_VALUE)
            if glob is None:
                probs = s(self._dropout, "dropout", torch.softmax(scores, dim=-1))
                o = torch.matmul(probs, vb)
            else:
                _, gk, gv = glob
                g = gk.shape[2]
                g_scores = torch.matmul(gq[:, :, qs].reshape(b, h, n, block, dk), gk.unsqueeze(2).transpose(-1, -2))
                probs = torch.softmax(torch.cat([g_scores, scores], dim=-1), dim=-1)
                probs = s(self._dropout, "dropout", probs)
                o = torch.matmul(probs[..., :g], gv.unsqueeze(2)) + torch.matmul(probs[..., g:], vb)
            out[:, :, qs] = o.reshape(b, h, n * block, dk)
        return out[:, :, :t]

    def _global_to_all(self, s: Scope, gq, gk, gv, valid, idx) -> torch.Tensor:
        """The global frames' own outputs: their (scaled) queries over all valid keys, ``[B, H, G, d_k]``.

        NeMo gathers these queries as ``[G, B, H, d_k]`` and reads that memory as ``[B * H, G, d_k]``: with more
        than one global token the query of one (item, head, token) is paired with the keys of another. Models
        trained that way expect it, so it is reproduced.
        """
        b, h, _, dk = gq.shape
        queries = gq[:, :, idx].permute(2, 0, 1, 3).reshape(b, h, idx.shape[0], dk)
        scores = torch.matmul(queries, gk.transpose(-2, -1))  # [B, H, G, T]
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = s(self._dropout, "dropout", torch.softmax(scores, dim=-1))
        return torch.matmul(probs, gv)

    # ----- forward -----------------------------------------------------------------------------------------
    def apply(self, params, buffers, query, key, value, pad_mask=None, pos_emb=None, *, pos_bias_u=None,
              pos_bias_v=None, train=False, rng=None):
        """Local self-attention.

        Args:
            query, key, value: ``[B, T, D]`` (the same frames: self-attention).
            pad_mask: ``[B, T]`` bool, True on padded frames; or None (all valid).
            pos_emb: ``[1 or B, left + right + 1, D]`` from ``LocalAttRelPositionalEncoding``.
            pos_bias_u, pos_bias_v: ``[H, d_k]``; default: this layer's params.

        Returns:
            ``([B, T, D], buffers)``.
        """
        if pos_emb is None:
            raise ValueError("RelPositionLocalMultiHeadAttention.apply needs pos_emb (LocalAttRelPositionalEncoding)")
        if key.shape[1] != query.shape[1] or value.shape[1] != query.shape[1]:
            raise ValueError(f"local attention is self-attention: query, key and value need the same length, got "
                             f"{query.shape[1]}, {key.shape[1]}, {value.shape[1]}")
        u = params["pos_bias_u"] if pos_bias_u is None else pos_bias_u
        bv = params["pos_bias_v"] if pos_bias_v is None else pos_bias_v
        s = Scope(params, buffers, train=train, rng=rng)
        batch, t, _ = query.shape
        valid = (torch.ones(batch, t, dtype=torch.bool, device=query.device) if pad_mask is None
                 else ~pad_mask.to(torch.bool))
        q, k, v = self._qkv(s, query, key, value)  # [B, H, T, d_k]
        left, right = self.att_context_size
        span_left, span_right = min(left, t - 1), min(right, t - 1)  # farther keys do not exist
        p = self._offset_projections(s, pos_emb, span_left, span_right)

        idx = self._global_index(t, query.device)
        glob = None
        if idx is not None:
            if self.global_attn_separate:
                gq, gk, gv = (self._heads(s, "global_q", query), self._heads(s, "global_k", key),
                              self._heads(s, "global_v", value))
            else:
                gq, gk, gv = q, k, v
            gq = gq / math.sqrt(self.d_k)
            glob = (gq, gk[:, :, idx], v[:, :, idx])  # NeMo weighs the *local* values of the global frames

        out = self._local(s, q + u.unsqueeze(1), q + bv.unsqueeze(1), k, v, p, valid, span_left, span_right, glob)
        out = out.masked_fill(~valid[:, None, :, None], 0.0)
        if idx is not None:
            out[:, :, idx] = self._global_to_all(s, glob[0], gk, gv, valid, idx)
        return self._merge_out(s, out), buffers
