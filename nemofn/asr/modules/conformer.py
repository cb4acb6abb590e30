"""Conformer and FastConformer encoder (NeMo's ``ConformerEncoder``) as stateless modules.

:class:`ConformerEncoder` maps features ``[B, feat_in, T]`` to ``[B, d_model, T']``: ``pre_encode`` (conv
subsampling) -> ``pos_enc`` (``x * sqrt(d_model)``, dropout, positional encodings) -> ``layers`` -> ``out_proj``.
Each :class:`ConformerLayer` is ``x + 0.5 * FF1``, ``+ MHSA``, ``+ Conv``, ``+ 0.5 * FF2``, then ``norm_out``.
Frames beyond each item's length are masked: attention never looks at them (nor do they look anywhere) and the
convolution module zeroes them before its depthwise conv.

Keys are NeMo's state-dict keys (``pre_encode.conv.0.weight``, ``layers.0.self_attn.linear_q.weight``,
``layers.0.conv.batch_norm.running_mean``, ...). With ``untie_biases=False`` NeMo shares one ``pos_bias_u`` /
``pos_bias_v`` between the layers, but since the encoder does not register them itself its state dict repeats
them under every ``layers.<i>.self_attn``. Here too: ``init`` puts the *same tensor object* at each of those
keys, and ``apply`` reads layer 0's for every layer (:meth:`ConformerEncoder.tie_shared_params` re-aliases a
loaded tree).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nemofn.asr.configs.modules import ConformerEncoderConfig
from nemofn.asr.modules.subsampling import ConvSubsampling, StackingSubsampling, SubsamplingReductionModule
from nemofn.core.rng import as_key
from nemofn.core.schema import module_kwargs
from nemofn.nn.attention import MultiHeadAttention, RelPositionMultiHeadAttention
from nemofn.nn.conv import Conv1d
from nemofn.nn.dropout import Dropout
from nemofn.nn.lengths import all_full_length
from nemofn.nn.linear import Linear
from nemofn.nn.local_attention import RelPositionLocalMultiHeadAttention
from nemofn.nn.module import Module, Scope, init_children
from nemofn.nn.norm import BatchNorm1d, GroupNorm, LayerNorm
from nemofn.nn.positional import LocalAttRelPositionalEncoding, PositionalEncoding, RelPositionalEncoding

__all__ = ["ConformerFeedForward", "ConformerConvolution", "ConformerLayer", "ConformerEncoder"]


@attrs.frozen
class ConformerFeedForward(Module):
    """``linear2(dropout(swish(linear1(x))))``; ``[B, T, d_model] -> [B, T, d_model]``.
    Params: ``linear1 [d_ff, d_model]``, ``linear2 [d_model, d_ff]`` (with biases when ``use_bias``)."""

    d_model: int
    d_ff: int
    dropout: float = 0.1
    use_bias: bool = True
    _children: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_children", {"linear1": Linear(self.d_model, self.d_ff, self.use_bias),
                                               "dropout": Dropout(self.dropout),
                                               "linear2": Linear(self.d_ff, self.d_model, self.use_bias)})

    def init(self, rng):
        return init_children(rng, self._children)

    def apply(self, params, buffers, x, *, train=False, rng=None):
        s = Scope(params, buffers, train=train, rng=rng)
        c = self._children
        x = F.silu(s(c["linear1"], "linear1", x))
        x = s(c["dropout"], "dropout", x)
        return s(c["linear2"], "linear2", x), buffers


@attrs.frozen
class _ChannelAffine(Module):
    """NeMo's ``FusedBatchNorm1d``: ``x * weight[:, None] + bias[:, None]`` (ones / zeros at init)."""

    num_features: int

    def init(self, rng):
        return {"weight": torch.ones(self.num_features), "bias": torch.zeros(self.num_features)}, {}

    def apply(self, params, buffers, x, *, train=False, rng=None):
        return x * params["weight"].unsqueeze(-1) + params["bias"].unsqueeze(-1), buffers


@attrs.frozen
class _InstanceNorm(Module):
    """``nn.InstanceNorm1d`` with its defaults (no affine, no running statistics, eps 1e-5)."""

    def apply(self, params, buffers, x, *, train=False, rng=None):
        return F.instance_norm(x, eps=1e-5), buffers


@attrs.frozen
class ConformerConvolution(Module):
    """Conformer convolution module; ``[B, T, d_model] -> [B, T, d_model]``.

    ``pointwise_conv1`` (d -> 2d, k=1), GLU over channels, zero the padded frames, ``depthwise_conv`` (k,
    groups=d, padded ``conv_context_size = (left, right)``, default symmetric), ``batch_norm`` (per
    ``norm_type``: ``batch_norm``, ``layer_norm``, ``instance_norm``, ``fused_batch_norm``, ``group_norm<N>``),
    swish, ``pointwise_conv2`` (d -> d, k=1).
    """

    d_model: int
    kernel_size: int
    norm_type: str = "batch_norm"
    conv_context_size: tuple[int, int] | None = attrs.field(default=None, converter=lambda v: None if v is None
                                                            else tuple(v))
    use_bias: bool = True
    _children: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if (self.kernel_size - 1) % 2:
            raise ValueError(f"conv_kernel_size must be odd, got {self.kernel_size}")
        left, right = self.padding
        if left + right + 1 != self.kernel_size:
            raise ValueError(f"conv_context_size {self.conv_context_size} must add up to kernel_size - 1 "
                             f"({self.kernel_size - 1})")
        d = self.d_model
        object.__setattr__(self, "_children", {
            "pointwise_conv1": Conv1d(d, 2 * d, 1, bias=self.use_bias),
            "depthwise_conv": Conv1d(d, d, self.kernel_size, padding=left if left == right else 0, groups=d,
                                     bias=self.use_bias),
            "batch_norm": self._norm(),
            "pointwise_conv2": Conv1d(d, d, 1, bias=self.use_bias),
        })

    @property
    def padding(self) -> tuple[int, int]:
        if self.conv_context_size is None:
            return ((self.kernel_size - 1) // 2,) * 2
        return self.conv_context_size

    def _norm(self) -> Module:
        d, t = self.d_model, self.norm_type
        if t == "batch_norm":
            return BatchNorm1d(d)
        if t == "layer_norm":
            return LayerNorm(d)
        if t == "instance_norm":
            return _InstanceNorm()
        if t == "fused_batch_norm":
            return _ChannelAffine(d)
        if t.startswith("group_norm") and t[len("group_norm"):].isdigit():
            return GroupNorm(int(t[len("group_norm"):]), d)
        raise ValueError(f"conv_norm_type={t!r} is not valid; use batch_norm, layer_norm, instance_norm, "
                         f"fused_batch_norm or group_norm<N>")

    def init(self, rng):
        return init_children(rng, self._children)

    def apply(self, params, buffers, x, pad_mask=None, *, train=False, rng=None):
        """x: ``[B, T, d]``; pad_mask: ``[B, T]`` bool, True on padded frames -> ``([B, T, d], buffers)``."""
        s = Scope(params, buffers, train=train, rng=rng)
        c = self._children
        x = s(c["pointwise_conv1"], "pointwise_conv1", x.transpose(1, 2))
        x = F.glu(x, dim=1)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.unsqueeze(1), 0.0)
        left, right = self.padding
        if left != right:
            x = F.pad(x, (left, right))
        x = s(c["depthwise_conv"], "depthwise_conv", x)
        if self.norm_type == "layer_norm":
            x = s(c["batch_norm"], "batch_norm", x.transpose(1, 2)).transpose(1, 2)
        else:
            x = s(c["batch_norm"], "batch_norm", x)
        x = s(c["pointwise_conv2"], "pointwise_conv2", F.silu(x))
        return x.transpose(1, 2), s.new_buffers


@attrs.frozen
class ConformerLayer(Module):
    """One Conformer block; ``[B, T, d_model] -> [B, T, d_model]``.

    ``self_attention_model``: ``rel_pos`` (Transformer-XL attention, needs ``pos_emb``), ``rel_pos_local_attn``
    (the same over an ``att_context_size = (left, right)`` window, linear in ``T``; needs ``pos_emb`` from
    ``LocalAttRelPositionalEncoding``; ``global_tokens*`` as NeMo's) or ``abs_pos``. ``own_pos_bias=False``
    (NeMo's ``untie_biases=False``) leaves ``pos_bias_u/v`` out of ``init`` and takes them as ``apply``
    arguments (``rel_pos`` only: NeMo's local attention always owns them).
    """

    d_model: int
    d_ff: int
    self_attention_model: str = "rel_pos"
    n_heads: int = 4
    conv_kernel_size: int = 31
    conv_norm_type: str = "batch_norm"
    conv_context_size: tuple[int, int] | None = attrs.field(default=None, converter=lambda v: None if v is None
                                                            else tuple(v))
    dropout: float = 0.1
    dropout_att: float = 0.1
    use_bias: bool = True
    use_pytorch_sdpa: bool = False
    own_pos_bias: bool = True
    att_context_size: tuple[int, int] | None = attrs.field(default=None, kw_only=True, converter=lambda v: None
                                                           if v is None else tuple(v))
    global_tokens: int = attrs.field(default=0, kw_only=True)
    global_tokens_spacing: int = attrs.field(default=1, kw_only=True)
    global_attn_separate: bool = attrs.field(default=False, kw_only=True)
    _children: dict = attrs.field(init=False, eq=False, repr=False)
    _dropout: Dropout = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.self_attention_model not in ("rel_pos", "rel_pos_local_attn", "abs_pos"):
            raise ValueError(f"self_attention_model={self.self_attention_model!r} is not valid; use 'rel_pos', "
                             f"'rel_pos_local_attn' or 'abs_pos'")
        ff = ConformerFeedForward(self.d_model, self.d_ff, self.dropout, self.use_bias)
        norm = LayerNorm(self.d_model)
        # NeMo's registration order (it is the state-dict and parameter order).
        object.__setattr__(self, "_children", {
            "norm_feed_forward1": norm, "feed_forward1": ff,
            "norm_conv": norm,
            "conv": ConformerConvolution(self.d_model, self.conv_kernel_size, self.conv_norm_type,
                                         self.conv_context_size, self.use_bias),
            "norm_self_att": norm, "self_attn": self._attention(),
            "norm_feed_forward2": norm, "feed_forward2": ff,
            "norm_out": norm,
        })
        object.__setattr__(self, "_dropout", Dropout(self.dropout))

    def _attention(self) -> MultiHeadAttention:
        if self.self_attention_model == "rel_pos_local_attn":
            if self.att_context_size is None:
                raise ValueError("ConformerLayer: rel_pos_local_attn needs att_context_size (left, right)")
            # NeMo's layer builds its local attention without use_pytorch_sdpa, and with its own pos biases
            return RelPositionLocalMultiHeadAttention(
                self.n_heads, self.d_model, self.dropout_att, self.use_bias, False, own_pos_bias=True,
                att_context_size=self.att_context_size, global_tokens=self.global_tokens,
                global_tokens_spacing=self.global_tokens_spacing, global_attn_separate=self.global_attn_separate)
        if self.self_attention_model == "rel_pos":
            return RelPositionMultiHeadAttention(self.n_heads, self.d_model, self.dropout_att, self.use_bias,
                                                 self.use_pytorch_sdpa, own_pos_bias=self.own_pos_bias)
        return MultiHeadAttention(self.n_heads, self.d_model, self.dropout_att, self.use_bias, self.use_pytorch_sdpa)

    def init(self, rng):
        params, buffers = init_children(rng, self._children)
        attn = params.get("self_attn", {})
        if "pos_bias_u" in attn:  # NeMo's state dict lists a module's own params before its children's
            params["self_attn"] = {"pos_bias_u": attn.pop("pos_bias_u"), "pos_bias_v": attn.pop("pos_bias_v"),
                                   **attn}
        return params, buffers

    def apply(self, params, buffers, x, att_mask=None, pos_emb=None, pad_mask=None, *, pos_bias_u=None,
              pos_bias_v=None, train=False, rng=None):
        """Args:
            x: ``[B, T, d_model]``.
            att_mask: ``[B, T, T]`` bool, True = not allowed (or None); unused by ``rel_pos_local_attn``.
            pos_emb: ``[1, 2T-1, d_model]`` for ``rel_pos``, ``[1, left+right+1, d_model]`` for
                ``rel_pos_local_attn``.
            pad_mask: ``[B, T]`` bool, True on padded frames (or None).
            pos_bias_u, pos_bias_v: shared ``[H, d_k]`` biases when ``own_pos_bias`` is False.

        Returns: ``([B, T, d_model], new_buffers)``.
        """
        s = Scope(params, buffers, train=train, rng=rng)
        c = self._children
        drop = self._dropout
        residual = x
        x = s(c["feed_forward1"], "feed_forward1", s(c["norm_feed_forward1"], "norm_feed_forward1", residual))
        residual = residual + s(drop, "dropout", x) * 0.5

        x = s(c["norm_self_att"], "norm_self_att", residual)
        if self.self_attention_model == "rel_pos":
            x = s(c["self_attn"], "self_attn", x, x, x, att_mask, pos_emb, pos_bias_u=pos_bias_u,
                  pos_bias_v=pos_bias_v)
        elif self.self_attention_model == "rel_pos_local_attn":
            x = s(c["self_attn"], "self_attn", x, x, x, pad_mask, pos_emb)
        else:
            x = s(c["self_attn"], "self_attn", x, x, x, att_mask)
        residual = residual + s(drop, "dropout", x)

        x = s(c["conv"], "conv", s(c["norm_conv"], "norm_conv", residual), pad_mask)
        residual = residual + s(drop, "dropout", x)

        x = s(c["feed_forward2"], "feed_forward2", s(c["norm_feed_forward2"], "norm_feed_forward2", residual))
        residual = residual + s(drop, "dropout", x) * 0.5
        return s(c["norm_out"], "norm_out", residual), s.new_buffers


def _frozen(value: Any) -> Any:
    """Lists (and OmegaConf ListConfigs) -> nested tuples, so the config stays hashable."""
    if isinstance(value, (str, bytes)) or value is None:
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return tuple(_frozen(v) for v in value)
    return value


def _opt_tuple(**kw: Any) -> Any:
    return attrs.field(converter=_frozen, **kw)


@attrs.frozen
class ConformerEncoder(Module):
    """NeMo's ``ConformerEncoder`` (Conformer, and FastConformer with ``subsampling="dw_striding"``).

    Takes NeMo's constructor arguments with NeMo's defaults (``from_config`` takes the config's ``encoder:``
    block). Implemented: ``striding`` / ``dw_striding`` / ``stacking`` / ``stacking_norm`` subsampling (and
    none; ``subsampling_conv_chunking_factor`` bounds the conv subsampling's memory on long inputs, see
    :class:`~nemofn.asr.modules.subsampling.ConvSubsampling`), ``causal_downsampling``, ``rel_pos``, ``abs_pos``
    and ``rel_pos_local_attn`` attention, ``untie_biases``, ``xscaling``, a single ``att_context_size`` with
    ``regular`` or ``chunked_limited`` style, ``conv_context_size``, all ``conv_norm_type`` values,
    ``reduction``, ``feat_out``, stochastic depth, ``use_pytorch_sdpa``.

    ``rel_pos_local_attn`` (NeMo's Longformer-style local attention, for long audio): each frame attends to
    ``att_context_size = [left, right]`` frames around it (both ``>= 0``, one ``> 0``); time and memory are
    linear in ``T`` and no ``[T, T]`` mask is built. As in NeMo, every layer then owns its ``pos_bias_u/v`` (also
    with ``untie_biases=False``), the positional encoding's dropout is ``dropout`` (not ``dropout_pre_encoder``),
    ``att_context_style`` does not change the masks, ``use_pytorch_sdpa`` is not used by the attention, and
    ``global_tokens`` / ``global_tokens_spacing`` / ``global_attn_separate`` add NeMo's global tokens. See
    :mod:`nemofn.nn.local_attention` for NeMo's positional term when ``left != right``.

    Several ``att_context_size`` choices, ``chunked_limited_with_rc`` / ``att_chunk_context_size`` and
    ``conv_context_style="dcc"`` raise NotImplementedError. ``pos_emb_max_len``, ``sync_max_audio_length`` and
    ``use_pytorch_sdpa_backends`` are accepted and have no effect (the encodings are computed per input; the SDPA
    backend choice does not change the result); ``global_*`` only apply to ``rel_pos_local_attn``.

    ``feat_out`` (property) is the output size; the constructor argument ``feat_out`` is stored as
    ``requested_feat_out``.
    """

    feat_in: int
    n_layers: int
    d_model: int
    requested_feat_out: int = attrs.field(default=-1, alias="feat_out")
    causal_downsampling: bool = False
    subsampling: str | None = "striding"
    subsampling_factor: int = 4
    subsampling_conv_chunking_factor: int = 1
    subsampling_conv_channels: int = -1
    reduction: str | None = None
    reduction_position: int | None = None
    reduction_factor: int = 1
    ff_expansion_factor: int = 4
    self_attention_model: str = "rel_pos"
    n_heads: int = 4
    att_context_size: Any = _opt_tuple(default=None)
    att_context_probs: Any = _opt_tuple(default=None)
    att_context_style: str = "regular"
    att_chunk_context_size: Any = _opt_tuple(default=None)
    xscaling: bool = True
    untie_biases: bool = True
    pos_emb_max_len: int = 5000
    conv_kernel_size: int = 31
    conv_norm_type: str = "batch_norm"
    conv_context_size: Any = _opt_tuple(default=None)
    conv_context_style: str = "regular"
    use_bias: bool = True
    dropout: float = 0.1
    dropout_pre_encoder: float = 0.1
    dropout_emb: float = 0.1
    dropout_att: float = 0.0
    stochastic_depth_drop_prob: float = 0.0
    stochastic_depth_mode: str = "linear"
    stochastic_depth_start_layer: int = 1
    global_tokens: int = 0
    global_tokens_spacing: int = 1
    global_attn_separate: bool = False
    use_pytorch_sdpa: bool = False
    use_pytorch_sdpa_backends: Any = _opt_tuple(default=None)
    sync_max_audio_length: bool = True
    # Derived settings and children, built once here (constructing modules inside `apply` breaks
    # torch.compile's graph): att_context, conv_context, layer_drop_probs, pre_encode, pos_enc, layer,
    # reduction, out_proj.
    _derived: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.self_attention_model not in ("rel_pos", "rel_pos_local_attn", "abs_pos"):
            raise ValueError(f"Not valid self_attention_model: {self.self_attention_model!r}; use 'rel_pos', "
                             f"'rel_pos_local_attn' or 'abs_pos'")
        if self.conv_context_style != "regular":
            raise NotImplementedError(f"conv_context_style={self.conv_context_style!r} is not implemented; "
                                      f"use 'regular'")
        if self.att_chunk_context_size is not None:
            raise NotImplementedError("att_chunk_context_size (unified offline/streaming training) is not implemented")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self._reduces and not (isinstance(self.reduction_position, int)
                                  and -1 <= self.reduction_position < self.n_layers):
            raise ValueError(f"reduction_position={self.reduction_position} must be in [-1, {self.n_layers})")
        derived = {"att_context": self._calc_att_context(), "conv_context": self._calc_conv_context(),
                   "layer_drop_probs": self._calc_layer_drop_probs()}
        if self.is_local_attention:
            left, right = derived["att_context"]
            if max(left, right) <= 0 or min(left, right) < 0:
                raise ValueError(f"When using local attention, context size must be set > 0: "
                                 f"self_attention_model='rel_pos_local_attn' needs att_context_size [left, right] "
                                 f"with both >= 0 and one > 0 (frames after subsampling, e.g. [128, 128]), got "
                                 f"{[left, right]}")
        object.__setattr__(self, "_derived", derived)
        derived.update(pre_encode=self._build_pre_encode(), pos_enc=self._build_pos_enc(), layer=self._build_layer(),
                       reduction=SubsamplingReductionModule(self.reduction, self.d_model, self.reduction_factor)
                       if self._reduces else None,
                       out_proj=Linear(self.d_model, self.requested_feat_out) if self._has_out_proj else None)

    # ----- derived hyperparameters -------------------------------------------------------------------------
    @property
    def feat_out(self) -> int:
        """Size of the encoded features (``d_model`` unless ``feat_out`` asked for an ``out_proj``)."""
        return self.requested_feat_out if self._has_out_proj else self.d_model

    @property
    def is_local_attention(self) -> bool:
        """True for ``rel_pos_local_attn`` (no ``[T, T]`` attention mask; linear in ``T``)."""
        return self.self_attention_model == "rel_pos_local_attn"

    @property
    def _has_out_proj(self) -> bool:
        return self.requested_feat_out > 0 and self.requested_feat_out != self.d_model

    @property
    def _reduces(self) -> bool:
        return bool(self.reduction) and self.reduction_factor > 1

    @property
    def att_context(self) -> tuple[int, int]:
        """The (left, right) attention context in frames; -1 = unlimited."""
        return self._derived["att_context"]

    @property
    def conv_context(self) -> tuple[int, int]:
        """(left, right) frames seen by the depthwise conv."""
        return self._derived["conv_context"]

    @property
    def layer_drop_probs(self) -> tuple[float, ...]:
        """Stochastic-depth drop probability of each layer (NeMo's ``compute_stochastic_depth_drop_probs``)."""
        return self._derived["layer_drop_probs"]

    def _calc_att_context(self) -> tuple[int, int]:
        sizes = self.att_context_size or ((-1, -1),)
        if isinstance(sizes[0], int):
            sizes = (sizes,)
        if len(sizes) > 1:
            raise NotImplementedError(f"att_context_size={sizes}: several context sizes (multi-lookahead "
                                      f"training) are not implemented; give a single [left, right]")
        if self.att_context_probs and len(self.att_context_probs) != len(sizes):
            raise ValueError("The size of the att_context_probs should be the same as att_context_size.")
        left, right = sizes[0]
        if self.att_context_style == "chunked_limited":
            if left > 0 and left % (right + 1) > 0:
                raise ValueError("att_context_size[0][0] % (att_context_size[0][1] + 1) should be zero!")
            if right < 0:
                raise ValueError("Right context (att_context_size[0][1]) can not be unlimited for chunked_limited "
                                 "style!")
        elif self.att_context_style != "regular":
            raise NotImplementedError(f"att_context_style={self.att_context_style!r} is not implemented; use "
                                      f"'regular' or 'chunked_limited'")
        return int(left), int(right)

    def _calc_conv_context(self) -> tuple[int, int]:
        k, c = self.conv_kernel_size, self.conv_context_size
        if c is None:
            return ((k - 1) // 2, (k - 1) // 2)
        if c == "causal":
            return (k - 1, 0)
        if isinstance(c, str) or len(c) != 2 or c[0] + c[1] + 1 != k:
            raise ValueError(f"Invalid conv_context_size: {c!r}; use 'causal' or [left, right] with "
                             f"left + right + 1 == conv_kernel_size ({k})")
        return (int(c[0]), int(c[1]))

    def _calc_layer_drop_probs(self) -> tuple[float, ...]:
        p, mode, start, n = (self.stochastic_depth_drop_prob, self.stochastic_depth_mode,
                             self.stochastic_depth_start_layer, self.n_layers)
        if not 0 <= p < 1.0:
            raise ValueError("stochastic_depth_drop_prob has to be in [0, 1).")
        if not 1 <= start <= n:
            raise ValueError("stochastic_depth_start_layer has to be in [1, num layers].")
        probs = [0.0] * start
        if (rest := n - start) > 0:
            if mode == "linear":
                probs += [i / rest * p for i in range(1, rest + 1)]
            elif mode == "uniform":
                probs += [p] * rest
            else:
                raise ValueError(f'stochastic_depth_mode has to be one of ["linear", "uniform"], got {mode!r}')
        return tuple(probs)

    # ----- children ----------------------------------------------------------------------------------------
    def _build_pre_encode(self) -> Module:
        channels = self.d_model if self.subsampling_conv_channels == -1 else self.subsampling_conv_channels
        if not self.subsampling or self.subsampling_factor <= 1:
            return Linear(self.feat_in, self.d_model)
        if self.subsampling in ("stacking", "stacking_norm"):
            return StackingSubsampling(self.subsampling_factor, self.feat_in, self.d_model,
                                       norm=self.subsampling == "stacking_norm")
        return ConvSubsampling(self.subsampling, self.subsampling_factor, self.feat_in, self.d_model, channels,
                               self.subsampling_conv_chunking_factor, is_causal=self.causal_downsampling)

    def _build_pos_enc(self) -> PositionalEncoding:
        xscale = math.sqrt(self.d_model) if self.xscaling else None
        if self.is_local_attention:  # NeMo gives this encoding `dropout`, not `dropout_pre_encoder`
            return LocalAttRelPositionalEncoding(self.d_model, self.dropout, self.pos_emb_max_len, xscale,
                                                 self.dropout_emb, att_context_size=self.att_context)
        if self.self_attention_model == "rel_pos":
            return RelPositionalEncoding(self.d_model, self.dropout_pre_encoder, self.pos_emb_max_len, xscale,
                                         self.dropout_emb)
        return PositionalEncoding(self.d_model, self.dropout_pre_encoder, self.pos_emb_max_len, xscale)

    def _build_layer(self) -> ConformerLayer:
        return ConformerLayer(
            self.d_model, self.d_model * self.ff_expansion_factor, self.self_attention_model, self.n_heads,
            self.conv_kernel_size, self.conv_norm_type, self.conv_context, self.dropout, self.dropout_att,
            self.use_bias, self.use_pytorch_sdpa, own_pos_bias=self.untie_biases or self.is_local_attention,
            att_context_size=self.att_context if self.is_local_attention else None,
            global_tokens=self.global_tokens, global_tokens_spacing=self.global_tokens_spacing,
            global_attn_separate=self.global_attn_separate,
        )

    @property
    def _shared_pos_bias(self) -> bool:
        return self.self_attention_model == "rel_pos" and not self.untie_biases

    def init(self, rng):
        d = self._derived
        key = as_key(rng)
        params, buffers = init_children(key, {"pre_encode": d["pre_encode"], "reduction_subsampling": d["reduction"]})
        layer = d["layer"]
        lp, lb = init_children(key.fold_in("layers"), {str(i): layer for i in range(self.n_layers)})
        if self._shared_pos_bias:
            d_k = self.d_model // self.n_heads
            u, v = torch.zeros(self.n_heads, d_k), torch.zeros(self.n_heads, d_k)
            for p in lp.values():
                p["self_attn"] = {"pos_bias_u": u, "pos_bias_v": v, **p["self_attn"]}
        params["layers"] = lp
        if lb:
            buffers["layers"] = lb
        if self._has_out_proj:
            params["out_proj"], _ = d["out_proj"].init(key.fold_in("out_proj"))
        return params, buffers

    def tie_shared_params(self, params: Mapping) -> dict:
        """With ``untie_biases=False``: a copy of ``params`` whose ``layers.<i>.self_attn.pos_bias_u/v`` are
        all layer 0's tensors (re-aliases a tree loaded from a state dict). Otherwise ``params`` as a dict."""
        params = dict(params)
        if not self._shared_pos_bias:
            return params
        first = params["layers"]["0"]["self_attn"]
        layers = {}
        for name, lp in params["layers"].items():
            attn = dict(lp["self_attn"], pos_bias_u=first["pos_bias_u"], pos_bias_v=first["pos_bias_v"])
            layers[name] = dict(lp, self_attn=attn)
        params["layers"] = layers
        return params

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "encoder") -> ConformerEncoder:
        """Builds from a NeMo ``encoder:`` block (dict, DictConfig or
        :class:`~nemofn.asr.configs.modules.ConformerEncoderConfig`), checked against that schema (errors name
        ``path``, e.g. ``model.encoder.d_modle``); ``_target_`` is dropped."""
        return cls(**module_kwargs(cfg, ConformerEncoderConfig, path))

    # ----- forward -----------------------------------------------------------------------------------------
    def _context_mask(self, t: int, device: torch.device) -> torch.Tensor | None:
        """``[T, T]`` bool, True where query i may see key j by the attention context (None = everywhere)."""
        left, right = self.att_context
        if self.att_context_style == "chunked_limited" and right >= 0:
            chunk = right + 1
            left_chunks = left // chunk if left >= 0 else 10000
            idx = torch.div(torch.arange(t, device=device), chunk, rounding_mode="trunc")
            diff = idx.unsqueeze(1) - idx.unsqueeze(0)
            return (diff <= left_chunks) & (diff >= 0)
        if left < 0 and right < 0:
            return None
        ones = torch.ones(t, t, dtype=torch.bool, device=device)
        mask = ones.triu(diagonal=-left) if left >= 0 else ones
        return mask.tril(diagonal=right) if right >= 0 else mask

    def masks(self, lengths: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(pad_mask [B, T], att_mask [B, T, T])``, both True where masked (NeMo's convention).

        With ``rel_pos_local_attn`` ``att_mask`` is None (the local attention only needs ``pad_mask``). Without any
        padding (every length is ``T``: a single utterance, or equal lengths; checked where the lengths live on the
        CPU, where reading them is free) ``pad_mask`` is None and ``att_mask`` only holds the attention context
        (``[1, T, T]``, or None when unlimited): masking nothing gives the same result, minus the mask work."""
        if not self.is_local_attention and all_full_length(lengths, t):
            context = self._context_mask(t, lengths.device)
            return None, None if context is None else ~context.unsqueeze(0)
        valid = torch.arange(t, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        if self.is_local_attention:
            return ~valid, None
        allowed = valid.unsqueeze(1) & valid.unsqueeze(2)
        context = self._context_mask(t, lengths.device)
        if context is not None:
            allowed = allowed & context
        return ~valid, ~allowed

    def apply(self, params, buffers, audio_signal, length=None, *, train=False, rng=None):
        """Encodes.

        Args:
            audio_signal: ``[B, feat_in, T]`` features.
            length: ``[B]`` valid frames (None = all ``T``).

        Returns:
            ``((encoded [B, feat_out, T'], encoded_len [B] int64), new_buffers)``.
        """
        if audio_signal.shape[-2] != self.feat_in:
            raise ValueError(f"ConformerEncoder: audio_signal should be [B, {self.feat_in}, T], got "
                             f"{tuple(audio_signal.shape)}")
        if length is None:
            length = torch.full(audio_signal.shape[:1], audio_signal.shape[-1], dtype=torch.int64,
                                device=audio_signal.device)
        d = self._derived
        s = Scope(params, buffers, train=train, rng=rng)
        x = audio_signal.transpose(1, 2)
        pre = d["pre_encode"]
        if isinstance(pre, Linear):
            x = s(pre, "pre_encode", x)
        else:
            x, length = s(pre, "pre_encode", x, length)
        length = length.to(device=x.device, dtype=torch.int64)
        pos_enc = d["pos_enc"]
        pe_dtype = _first_leaf(params["pre_encode"]).dtype  # NeMo builds `pe` in the parameters' dtype
        x, pos_emb = s(pos_enc, "pos_enc", x, pe_dtype=pe_dtype)
        pad_mask, att_mask = self.masks(length, x.shape[1])

        shared = {}
        if self._shared_pos_bias:
            first = params["layers"]["0"]["self_attn"]
            shared = {"pos_bias_u": first["pos_bias_u"], "pos_bias_v": first["pos_bias_v"]}
        layers = Scope(params["layers"], buffers.get("layers", {}), train=train, rng=rng)
        layer = d["layer"]
        for i, drop_prob in enumerate(self.layer_drop_probs):
            before = x
            x = layers(layer, str(i), x, att_mask, pos_emb, pad_mask, **shared)
            if train and drop_prob > 0.0:
                x = _stochastic_depth(x, before, drop_prob, rng)
            if self._reduces and self.reduction_position == i:
                x, length = s(d["reduction"], "reduction_subsampling", x, length)
                (_, pos_emb) = s(pos_enc, "pos_enc", x, pe_dtype=pe_dtype)
                pad_mask, att_mask = self.masks(length.to(torch.int64), x.shape[1])
        if "layers" in buffers:
            s.new_buffers["layers"] = layers.new_buffers
        if self._has_out_proj:
            x = s(d["out_proj"], "out_proj", x)
        if self._reduces and self.reduction_position == -1:
            x, length = s(d["reduction"], "reduction_subsampling", x, length)
        return (x.transpose(1, 2), length.to(torch.int64)), s.new_buffers


def _first_leaf(tree: Mapping) -> torch.Tensor:
    for value in tree.values():
        return _first_leaf(value) if isinstance(value, Mapping) else value
    raise ValueError("empty parameter tree")


def _stochastic_depth(x: torch.Tensor, before: torch.Tensor, drop_prob: float, rng) -> torch.Tensor:
    """Drops the layer (keeps ``before``) with probability ``drop_prob``, else rescales its residual update
    by ``1 / (1 - drop_prob)``; the draw comes from the global generator, without a host sync."""
    if rng is None:
        raise ValueError("stochastic depth in training needs a random key: pass rng=RngKey(...) to apply")
    keep = torch.rand((), device=x.device) >= drop_prob
    return torch.where(keep, (x - before) / (1.0 - drop_prob) + before, before)
