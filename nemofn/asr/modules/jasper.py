"""Jasper / QuartzNet / Citrinet building blocks: ``JasperBlock`` and ``SqueezeExcite``.

Mirrors ``nemo/collections/asr/parts/submodules/jasper.py`` with NeMo's state-dict layout. A block's state is
``{"mconv": {...}, "res": {...}}`` where ``mconv`` is NeMo's flat ``ModuleList`` of sub-blocks. Each of the first
``repeat - 1`` sub-blocks is ``[conv(s), norm, (GroupShuffle), activation, Dropout]`` and the last one
``[conv(s), norm, (GroupShuffle)]`` plus an optional ``SqueezeExcite``; a separable conv is a depthwise conv
followed by a pointwise one. Parameterless slots leave index gaps, e.g. a separable QuartzNet block with repeat 2
has ``mconv.0`` (depthwise), ``mconv.1`` (pointwise), ``mconv.2`` (BatchNorm), ``mconv.5``, ``mconv.6``,
``mconv.7``. ``res.j`` is residual pane ``j``: ``[MaskedConv1d(k=1), norm]``.

Blocks pass a list of tensors between them (NeMo's dense-residual convention): the main branch reads the last
entry, residual pane ``j`` reads entry ``j``; a dense-residual block appends its output, others return ``[out]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from nemofn.core.rng import as_key
from nemofn.nn.activation import Activation
from nemofn.nn.conv import Conv1d, MaskedConv1d, get_same_padding
from nemofn.nn.dropout import Dropout
from nemofn.nn.init import check_init_mode, torch_default_weight_and_bias
from nemofn.nn.module import EMPTY, Module, Scope
from nemofn.nn.norm import BatchNorm1d, GroupNorm

__all__ = [
    "JasperBlock",
    "SqueezeExcite",
    "GroupShuffle",
    "compute_new_kernel_size",
    "get_asymmetric_padding",
    "NORMALIZATIONS",
    "RESIDUAL_MODES",
]

NORMALIZATIONS = ("batch", "group", "instance", "layer")
RESIDUAL_MODES = ("add", "stride_add", "max")


def compute_new_kernel_size(kernel_size: int, kernel_size_factor: float) -> int:
    """NeMo's kernel scaling: ``max(int(k * factor), 1)``, bumped to the next odd number when even
    (so an even kernel becomes odd even with factor 1)."""
    new = max(int(kernel_size * kernel_size_factor), 1)
    return new + 1 if new % 2 == 0 else new


def get_asymmetric_padding(kernel_size: int, stride: int, dilation: int, future_context: int) -> int | tuple[int, int]:
    """NeMo's ``get_asymtric_padding``: ``(left, right)`` padding that limits a conv to ``future_context`` future
    frames; the symmetric "same" padding (an int) when the kernel is not larger than ``future_context``."""
    if stride > 1 and dilation > 1:
        raise ValueError(f"only stride OR dilation may be greater than 1, got stride={stride}, dilation={dilation}")
    if kernel_size <= future_context:
        return get_same_padding(kernel_size, stride, dilation)
    if dilation > 1:
        return (dilation * kernel_size - 1 - dilation * future_context, dilation * future_context)
    return (kernel_size - 1 - future_context, future_context)


@attrs.frozen
class GroupShuffle(Module):
    """Interleaves channel groups: ``[B, G*Cg, T]`` viewed ``[B, G, Cg, T]``, transposed to ``[B, Cg, G, T]``.
    No state."""

    groups: int
    channels: int

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[B, C, T]`` -> ``[B, C, T]``."""
        per_group = self.channels // self.groups
        time = x.shape[-1]
        y = x.reshape(-1, self.groups, per_group, time).transpose(1, 2).reshape(-1, self.groups * per_group, time)
        return y, buffers


@attrs.frozen
class SqueezeExcite(Module):
    """Masked squeeze-and-excitation over time (NeMo's ``SqueezeExcite``), computed in float32.

    The input is zeroed beyond ``lengths``, averaged over the valid frames (``context_window < 0``: all frames;
    a limited window only changes training, where a random window of ``context_window`` frames is averaged, as
    NeMo does; in eval NeMo also averages all valid frames), passed through
    ``Linear(C, C // r) -> activation -> Linear(C // r, C)`` (no biases), and the sigmoid of that gates the
    masked input. ``interpolation_mode`` is accepted and unused, as in NeMo.

    Params: ``fc.0.weight [C // r, C]``, ``fc.2.weight [C, C // r]``.
    """

    channels: int
    reduction_ratio: int
    context_window: int = -1
    interpolation_mode: str = "nearest"
    activation: str = "relu"
    init_mode: str = "xavier_uniform"
    _act: Activation = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_act", Activation(self.activation))
        if self.reduction_ratio < 1 or self.channels // self.reduction_ratio < 1:
            raise ValueError(f"SqueezeExcite: se_reduction_ratio {self.reduction_ratio} must be in "
                             f"[1, channels={self.channels}]")
        check_init_mode(self.init_mode)

    @property
    def hidden(self) -> int:
        return self.channels // self.reduction_ratio

    def init(self, rng):
        key = as_key(rng)
        fc = {}
        for name, shape in (("0", (self.hidden, self.channels)), ("2", (self.channels, self.hidden))):
            fc[name] = torch_default_weight_and_bias(shape, key.fold_in("fc").fold_in(name).generator(), False,
                                                     self.init_mode)
        return {"fc": fc}, {}

    def _pool(self, x: torch.Tensor, mask: torch.Tensor, train: bool) -> torch.Tensor:
        """x: ``[B, C, T]`` (already zero beyond the lengths), mask: ``[B, 1, T]`` bool -> ``[B, C, 1]``."""
        time = x.shape[-1]
        if self.context_window < 0 or not train or time < self.context_window:
            return x.sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).to(x.dtype)
        # NeMo draws the window start from [0, T - window); T == window would make that range empty, so it
        # starts at 0 there.
        high = max(time - self.context_window, 1)
        start = torch.randint(0, high, (1,), device=x.device)
        steps = torch.arange(time, device=x.device)
        window = ((steps >= start) & (steps < start + self.context_window)).view(1, 1, time)
        count = (mask & window).sum(dim=-1, keepdim=True).to(x.dtype)
        return (x * window).sum(dim=-1, keepdim=True) / (count + 1e-8)

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        """x: ``[B, C, T]``, lengths: ``[B]`` -> ``((y [B, C, T], lengths), buffers)``."""
        if train and self.context_window >= 0 and rng is None:
            raise ValueError("SqueezeExcite with a limited context window draws a random window in training: "
                             "pass rng=RngKey(...) to apply (or train=False)")
        dtype = x.dtype
        xf = x.float()
        time = xf.shape[-1]
        mask = (torch.arange(time, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).unsqueeze(1)
        xf = xf.masked_fill(~mask, 0.0)
        y = self._pool(xf, mask, train).transpose(1, -1)  # [B, 1, C]
        fc = params["fc"]
        y = torch.nn.functional.linear(y, fc["0"]["weight"].float())
        y, _ = self._act.apply(EMPTY, EMPTY, y)
        y = torch.nn.functional.linear(y, fc["2"]["weight"].float())
        gate = torch.sigmoid(y.transpose(1, -1))  # [B, C, 1]
        return ((xf * gate).to(dtype), lengths), buffers


def _single(value: Any, name: str) -> int:
    """``5`` or ``[5]`` -> ``5``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"JasperBlock.{name} must be one int or a 1-element list, got {list(value)}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"JasperBlock.{name} must be an int, got {value!r}")
    return value


@attrs.frozen
class JasperBlock(Module):
    """One Jasper/QuartzNet/Citrinet block (NeMo's ``JasperBlock``, "same" padding only).

    Args follow NeMo's names: ``in_channels`` (``inplanes``), ``out_channels`` (``planes``), ``repeat``,
    ``kernel_size`` (int or ``[k]``, scaled by ``kernel_size_factor``), ``stride``, ``dilation``, ``dropout``,
    ``activation`` (a name, see :class:`~nemofn.nn.activation.Activation`), ``residual``, ``groups``,
    ``separable``, ``heads``, ``normalization`` (``batch|group|instance|layer``), ``norm_groups`` (-1 = one group
    per channel), ``residual_mode`` (``add|stride_add|max``), ``residual_panes`` (dense residual input widths),
    ``conv_mask``, ``se``, ``se_reduction_ratio``, ``se_context_window``, ``se_interpolation_mode``,
    ``stride_last`` (only the last sub-block strides; otherwise every sub-block does), ``future_context``
    (>= 0: asymmetric padding that limits look-ahead), ``init_mode``.

    With ``conv_mask=False`` the convs are plain ``Conv1d`` (keys ``mconv.i.weight``) and, as in NeMo, the
    lengths pass through the block unchanged.
    """

    in_channels: int
    out_channels: int
    repeat: int = 3
    kernel_size: Any = 11
    kernel_size_factor: float = 1.0
    stride: Any = 1
    dilation: Any = 1
    dropout: float = 0.2
    activation: str = "hardtanh"
    residual: bool = True
    groups: int = 1
    separable: bool = False
    heads: int = -1
    normalization: str = "batch"
    norm_groups: int = 1
    residual_mode: str = "add"
    residual_panes: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    conv_mask: bool = False
    se: bool = False
    se_reduction_ratio: int = 16
    se_context_window: int = -1
    se_interpolation_mode: str = "nearest"
    stride_last: bool = False
    future_context: int = -1
    init_mode: str = "xavier_uniform"
    mconv: tuple[Module | None, ...] = attrs.field(init=False, eq=False, repr=False)
    res: tuple[tuple[Module, ...], ...] = attrs.field(init=False, eq=False, repr=False)
    mout: tuple[Module, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"JasperBlock.repeat must be >= 1, got {self.repeat}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {self.normalization!r} is not one of {list(NORMALIZATIONS)}")
        if self.residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode {self.residual_mode!r} is not one of {list(RESIDUAL_MODES)}")
        check_init_mode(self.init_mode)
        kernel = compute_new_kernel_size(_single(self.kernel_size, "kernel_size"), float(self.kernel_size_factor))
        stride = _single(self.stride, "stride")
        dilation = _single(self.dilation, "dilation")
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "dilation", dilation)
        if self.future_context < 0:
            padding: int | tuple[int, int] = get_same_padding(kernel, stride, dilation)
        else:
            padding = get_asymmetric_padding(kernel, stride, dilation, self.future_context)
            if not self.conv_mask and isinstance(padding, tuple):
                raise ValueError("future_context >= 0 needs conv_mask=True (asymmetric padding is done by "
                                 "MaskedConv1d, as in NeMo)")

        act = Activation(self.activation)
        mconv: list[Module | None] = []
        channels = self.in_channels
        for _ in range(self.repeat - 1):
            sub_stride = 1 if self.stride_last else stride
            mconv += self._conv_bn(channels, self.out_channels, kernel, sub_stride, dilation, padding)
            mconv += [act, Dropout(self.dropout)]
            channels = self.out_channels
        mconv += self._conv_bn(channels, self.out_channels, kernel, stride, dilation, padding)
        if self.se:
            mconv.append(SqueezeExcite(self.out_channels, self.se_reduction_ratio, self.se_context_window,
                                       self.se_interpolation_mode, self.activation, self.init_mode))
        object.__setattr__(self, "mconv", tuple(mconv))

        res: list[tuple[Module, ...]] = []
        if self.residual:
            res_stride = stride if self.residual_mode == "stride_add" else 1
            for width in self.residual_panes or (self.in_channels,):
                res.append(tuple(self._conv_bn(width, self.out_channels, 1, res_stride, 1, 0, plain=True)))
        object.__setattr__(self, "res", tuple(res))
        object.__setattr__(self, "mout", (act, Dropout(self.dropout)))

    @property
    def dense_residual(self) -> bool:
        """True when the block appends its output to the incoming list (NeMo: residual with dense panes)."""
        return self.residual and len(self.residual_panes) > 0

    def _conv(self, cin: int, cout: int, kernel: int, stride: int, dilation: int, padding, groups: int,
              heads: int) -> Module:
        if self.conv_mask:
            return MaskedConv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                heads=heads, bias=False, use_mask=True, init=self.init_mode)
        if heads != -1:
            raise ValueError("JasperBlock: heads needs conv_mask=True (only MaskedConv1d shares weights by head)")
        return Conv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      bias=False, init=self.init_mode)

    def _conv_bn(self, cin: int, cout: int, kernel: int, stride: int, dilation: int, padding,
                 plain: bool = False) -> list[Module]:
        """NeMo's ``_get_conv_bn_layer``; ``plain`` is the residual variant (groups 1, not separable, no heads)."""
        groups = 1 if plain else self.groups
        heads = -1 if plain else self.heads
        if self.separable and not plain:
            layers = [self._conv(cin, cin, kernel, stride, dilation, padding, cin, heads),
                      self._conv(cin, cout, 1, 1, 1, 0, groups, -1)]
        else:
            layers = [self._conv(cin, cout, kernel, stride, dilation, padding, groups, heads)]
        norm_groups = cout if self.norm_groups == -1 else self.norm_groups
        if self.normalization == "batch":
            layers.append(BatchNorm1d(cout, eps=1e-3, momentum=0.1))
        elif self.normalization == "group":
            layers.append(GroupNorm(norm_groups, cout))
        elif self.normalization == "instance":
            layers.append(GroupNorm(cout, cout))
        else:  # layer
            layers.append(GroupNorm(1, cout))
        if groups > 1:
            layers.append(GroupShuffle(groups, cout))
        return layers

    def init(self, rng):
        key = as_key(rng)
        params: dict = {}
        buffers: dict = {}
        for i, layer in enumerate(self.mconv):
            p, b = layer.init(key.fold_in("mconv").fold_in(i))
            if p:
                params.setdefault("mconv", {})[str(i)] = p
            if b:
                buffers.setdefault("mconv", {})[str(i)] = b
        for j, pane in enumerate(self.res):
            for k, layer in enumerate(pane):
                p, b = layer.init(key.fold_in("res").fold_in(j).fold_in(k))
                if p:
                    params.setdefault("res", {}).setdefault(str(j), {})[str(k)] = p
                if b:
                    buffers.setdefault("res", {}).setdefault(str(j), {})[str(k)] = b
        return params, buffers

    @staticmethod
    def _run(scope: Scope, layer: Module, name: str, x: torch.Tensor, lengths: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(layer, (MaskedConv1d, SqueezeExcite)):
            return scope(layer, name, x, lengths)
        return scope(layer, name, x), lengths

    def apply(self, params, buffers, xs: Sequence[torch.Tensor], lengths, *, train=False, rng=None):
        """xs: list of ``[B, C_j, T]`` (the main branch reads ``xs[-1]``), lengths: ``[B]``
        -> ``((list of outputs, out_lengths [B]), new_buffers)``."""
        new_buffers = dict(buffers)
        mconv = Scope(params.get("mconv", EMPTY), buffers.get("mconv", EMPTY), train=train, rng=rng)
        out, lens = xs[-1], lengths
        for i, layer in enumerate(self.mconv):
            out, lens = self._run(mconv, layer, str(i), out, lens)
        if "mconv" in buffers:
            new_buffers["mconv"] = mconv.new_buffers

        if self.res:
            res_params, res_buffers = params.get("res", EMPTY), buffers.get("res", EMPTY)
            new_res = dict(res_buffers)
            for j, pane in enumerate(self.res):
                scope = Scope(res_params.get(str(j), EMPTY), res_buffers.get(str(j), EMPTY), train=train, rng=rng)
                r = xs[j]
                for k, layer in enumerate(pane):
                    r, _ = self._run(scope, layer, str(k), r, lengths)
                if str(j) in res_buffers:
                    new_res[str(j)] = scope.new_buffers
                out = torch.maximum(out, r) if self.residual_mode == "max" else out + r
            if res_buffers:
                new_buffers["res"] = new_res

        for layer in self.mout:
            out, _ = layer.apply(EMPTY, EMPTY, out, train=train, rng=rng)
        if self.dense_residual:
            return (list(xs) + [out], lens), new_buffers
        return ([out], lens), new_buffers
