"""Convolutions: ``Conv1d``, ``Conv2d`` and NeMo's length-aware ``MaskedConv1d``.

Params use torch's names and shapes (``weight [out, in/groups, *kernel]``, ``bias [out]``), so a NeMo
state dict loads key for key. ``init`` selects the weight init: ``"default"`` is torch's ``nn.ConvNd`` default;
the NeMo modes (``xavier_uniform``, ``xavier_normal``, ``kaiming_uniform``, ``kaiming_normal``,
``tds_uniform``, ``tds_normal``) redraw the weight like NeMo's ``init_weights`` and keep torch's default bias.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nemofn.core.rng import as_key
from nemofn.nn.init import check_init_mode, torch_default_weight_and_bias
from nemofn.nn.lengths import all_full_length
from nemofn.nn.module import Module

__all__ = ["Conv1d", "Conv2d", "MaskedConv1d", "conv1d", "get_same_padding", "conv_out_length"]


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv1d`` with faster CPU kernels for the two shapes ASR models are made of (same results to fp32
    rounding):

    * grouped / depthwise convs run as ``conv2d`` with a ``[k, 1]`` kernel on ``[B, C, T, 1]`` in channels-last
      memory (oneDNN's 1-D grouped path is several times slower than its 2-D one on the CPU, and its channels-last
      depthwise kernels about twice as fast again as the channels-first ones); the result is then a
      ``[B, C, T]`` view with time-major strides;
    * ungrouped pointwise convs (``k == 1``, no stride/padding/dilation) run as a matmul.

    Args:
        x: ``[B, C_in, T]`` (or ``[C_in, T]``); weight: ``[C_out, C_in/groups, k]``; bias: ``[C_out]`` or None.
    """
    stride, dilation = _first(stride), _first(dilation)
    pad = padding if isinstance(padding, str) else _first(padding)
    if dilation > 1 and stride == 1 and isinstance(pad, int) and x.ndim == 3:
        return _dilated_conv1d(x, weight, bias, pad, dilation, groups)
    if groups > 1 and x.ndim == 3:
        x = x.unsqueeze(-1).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight.unsqueeze(-1), bias, (stride, 1),
                     pad if isinstance(pad, str) else (pad, 0), (dilation, 1), groups)
        return y.squeeze(-1)
    if groups == 1 and weight.shape[-1] == 1 and stride == 1 and dilation == 1 and pad in (0, "same", "valid"):
        y = torch.matmul(weight.squeeze(-1), x)
        return y if bias is None else y + bias.unsqueeze(-1)
    return F.conv1d(x, weight, bias, stride, pad, dilation, groups)


def _dilated_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int, dilation: int,
                    groups: int) -> torch.Tensor:
    """A stride-1 dilated conv as an undilated one over ``dilation`` interleaved phases.

    Viewing the padded input ``[B, C, L]`` as ``[B, C, L/d, d]``, an undilated ``[k, 1]`` conv2d over the first
    axis computes ``y[t] = sum_j w[j] x[t + j*d]`` for every ``t = h*d + phase``: exactly the dilated conv. The
    oneDNN backward of dilated convs is very slow on the CPU (~15x here); this form is not.
    """
    batch, channels, time = x.shape
    k = weight.shape[-1]
    length = time + 2 * pad
    extra = (-length) % dilation
    xp = F.pad(x, (pad, pad + extra)).reshape(batch, channels, (length + extra) // dilation, dilation)
    y = F.conv2d(xp, weight.unsqueeze(-1), bias, 1, 0, 1, groups)
    return y.reshape(batch, y.shape[1], -1)[:, :, : length - dilation * (k - 1)]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _ints(value: Any, n: int, name: str) -> tuple[int, ...]:
    """``3 -> (3,)*n``; a length-``n`` sequence of ints -> tuple. Anything else raises naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")


def _padding(value: Any, n: int) -> tuple[int, ...] | str:
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise ValueError(f"padding must be an int, {n} ints, 'same' or 'valid', got {value!r}")
        return value
    return _ints(value, n, "padding")


def get_same_padding(kernel_size: int, stride: int, dilation: int) -> int:
    """NeMo's "same" padding for Jasper-style convs: ``dilation * (kernel_size - 1) // 2``.

    Raises:
        ValueError: when both ``stride`` and ``dilation`` are above 1 (NeMo forbids it).
    """
    if stride > 1 and dilation > 1:
        raise ValueError(f"only stride OR dilation may be greater than 1, got stride={stride}, dilation={dilation}")
    return (dilation * (kernel_size - 1)) // 2


def conv_out_length(lengths: torch.Tensor, kernel_size: int, stride: int = 1, padding_total: int = 0,
                    dilation: int = 1) -> torch.Tensor:
    """Output lengths of a 1-D conv, ``(len + padding_total - dilation*(k-1) - 1) // stride + 1`` with
    truncating division (as NeMo computes them). ``padding_total`` is left + right padding."""
    return torch.div(lengths + padding_total - dilation * (kernel_size - 1) - 1, stride, rounding_mode="trunc") + 1


def _check_groups(name: str, in_channels: int, out_channels: int, groups: int) -> None:
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                         f"divisible by groups ({groups})")


class _ConvNd(Module):
    """Shared init and validation of :class:`Conv1d` / :class:`Conv2d` (``_NDIM`` spatial dims)."""

    _NDIM = 0

    def _normalise(self) -> None:
        n = self._NDIM
        name = type(self).__name__
        object.__setattr__(self, "kernel_size", _ints(self.kernel_size, n, f"{name}.kernel_size"))
        object.__setattr__(self, "stride", _ints(self.stride, n, f"{name}.stride"))
        object.__setattr__(self, "dilation", _ints(self.dilation, n, f"{name}.dilation"))
        object.__setattr__(self, "padding", _padding(self.padding, n))
        _check_groups(name, self.in_channels, self.out_channels, self.groups)
        if self.padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError(f"{name}: padding='same' needs stride 1, got stride={self.stride}; "
                             f"give an explicit padding instead")
        check_init_mode(self.init_mode)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``(out, in / groups, *kernel)``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def init(self, rng):
        g = as_key(rng).generator()
        return torch_default_weight_and_bias(self.weight_shape, g, self.bias, self.init_mode), {}


@attrs.frozen
class Conv1d(_ConvNd):
    """1-D convolution over ``[B, C_in, T]`` (``torch.nn.Conv1d`` semantics, zero padding).

    Args:
        padding: int, ``(p,)``, ``"same"`` (stride 1 only; torch puts the odd extra pad on the right) or
            ``"valid"``.
        init: weight init mode (constructor name ``init``, stored as ``init_mode``); see the module docstring.

    Params: ``weight [C_out, C_in/groups, k]``, ``bias [C_out]`` (when ``bias``).
    """

    _NDIM = 1

    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    init_mode: str = attrs.field(default="default", alias="init")

    def __attrs_post_init__(self) -> None:
        self._normalise()

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[B, C_in, T]`` (or ``[C_in, T]``) -> ``[B, C_out, T']``."""
        y = conv1d(x, params["weight"], params.get("bias"), self.stride, self.padding, self.dilation, self.groups)
        return y, buffers


@attrs.frozen
class Conv2d(_ConvNd):
    """2-D convolution over ``[B, C_in, H, W]`` (``torch.nn.Conv2d`` semantics, zero padding).

    ``kernel_size``, ``stride``, ``padding``, ``dilation`` take an int or a pair; ``padding`` also ``"same"``
    (stride 1) or ``"valid"``. Params: ``weight [C_out, C_in/groups, kh, kw]``, ``bias [C_out]``.
    """

    _NDIM = 2

    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    init_mode: str = attrs.field(default="default", alias="init")

    def __attrs_post_init__(self) -> None:
        self._normalise()

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[B, C_in, H, W]`` -> ``[B, C_out, H', W']``."""
        y = F.conv2d(x, params["weight"], params.get("bias"), self.stride, self.padding, self.dilation, self.groups)
        return y, buffers


@attrs.frozen
class MaskedConv1d(Module):
    """NeMo's ``MaskedConv1d``: a ``Conv1d`` that zeroes time steps ``>= lengths`` first and returns new lengths.

    Args:
        padding: int (symmetric, done by the conv) or ``(left, right)`` (asymmetric, padded before the conv).
        heads: ``-1``, or a head count for a depthwise conv whose weight is shared across channel groups: the
            conv is built with ``heads`` in/out channels and ``groups=heads`` and runs on the input viewed as
            ``[B * C / heads, heads, T]`` (NeMo's semantics; needs ``groups == in_channels``).
        bias: False by default, as NeMo's Jasper blocks build it.
        use_mask: zero the input beyond ``lengths`` before the conv.
        init: weight init mode (stored as ``init_mode``), see the module docstring.

    Params: ``{"conv": {"weight" [C_out, C_in/groups, k], ("bias")}}`` (NeMo's ``conv.weight``).

    Output lengths: unchanged when the conv is length-preserving (stride 1 and total padding
    ``dilation*(k-1)``), else ``(len + pad_total - dilation*(k-1) - 1) // stride + 1`` (truncating division).
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: Any = 0
    dilation: int = 1
    groups: int = 1
    heads: int = -1
    bias: bool = False
    use_mask: bool = True
    init_mode: str = attrs.field(default="default", alias="init")
    _conv: Conv1d = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        for field in ("kernel_size", "stride", "dilation"):
            value = getattr(self, field)
            if isinstance(value, (tuple, list)) and len(value) == 1:
                object.__setattr__(self, field, int(value[0]))
            elif not isinstance(value, int):
                raise ValueError(f"MaskedConv1d.{field} must be an int, got {value!r}")
        pad = self.padding
        if isinstance(pad, (tuple, list)):
            if len(pad) != 2 or not all(isinstance(p, int) for p in pad):
                raise ValueError(f"MaskedConv1d.padding must be an int or (left, right) ints, got {pad!r}")
            object.__setattr__(self, "padding", tuple(pad))
        elif not isinstance(pad, int):
            raise ValueError(f"MaskedConv1d.padding must be an int or (left, right) ints, got {pad!r}")
        if self.heads != -1 and self.groups != self.in_channels:
            raise ValueError(f"MaskedConv1d: heads={self.heads} is only for depthwise convs "
                             f"(groups == in_channels), got groups={self.groups}, in_channels={self.in_channels}")
        if self.heads != -1 and (self.heads < 1 or self.in_channels % self.heads
                                 or self.out_channels != self.in_channels):
            raise ValueError(f"MaskedConv1d: heads={self.heads} needs out_channels == in_channels "
                             f"({self.out_channels} vs {self.in_channels}) divisible by heads")
        if self.heads != -1:
            cin, cout, groups = self.heads, self.heads, self.heads
        else:
            cin, cout, groups = self.in_channels, self.out_channels, self.groups
        conv_pad = 0 if isinstance(self.padding, tuple) else self.padding
        object.__setattr__(self, "_conv", Conv1d(cin, cout, self.kernel_size, stride=self.stride, padding=conv_pad,
                                                 dilation=self.dilation, groups=groups, bias=self.bias,
                                                 init=self.init_mode))

    @property
    def conv(self) -> Conv1d:
        """The inner conv (with NeMo's channel/group substitution when ``heads != -1``)."""
        return self._conv

    @property
    def padding_total(self) -> int:
        """Left + right padding."""
        return sum(self.padding) if isinstance(self.padding, tuple) else 2 * self.padding

    @property
    def preserves_length(self) -> bool:
        """NeMo's "same padding" test: stride 1 and total padding ``dilation * (k - 1)``."""
        return self.stride == 1 and self.padding_total == self.dilation * (self.kernel_size - 1)

    def init(self, rng):
        params, _ = self.conv.init(as_key(rng).fold_in("conv"))
        return {"conv": params}, {}

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``[B]`` lengths after this conv (the input tensor itself when the conv preserves length)."""
        if self.preserves_length:
            return lengths
        return conv_out_length(lengths, self.kernel_size, self.stride, self.padding_total, self.dilation)

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        """x: ``[B, C_in, T]``, lengths: ``[B]`` int -> ``((y [B, C_out, T'], out_lengths [B]), buffers)``."""
        if self.use_mask and not all_full_length(lengths, x.shape[-1]):
            steps = torch.arange(x.shape[-1], device=x.device)
            mask = steps.unsqueeze(0) < lengths.to(x.device).unsqueeze(1)  # [B, T]
            x = x * mask.unsqueeze(1)
        out_lengths = self.out_lengths(lengths)
        if isinstance(self.padding, tuple):
            x = F.pad(x, self.padding)
        batch, time = x.shape[0], x.shape[-1]
        if self.heads != -1:
            x = x.reshape(-1, self.heads, time)
        conv = self._conv
        y = conv1d(x, params["conv"]["weight"], params["conv"].get("bias"), conv.stride, conv.padding,
                   conv.dilation, conv.groups)
        if self.heads != -1:
            y = y.reshape(batch, self.out_channels, -1)
        return (y, out_lengths), buffers
