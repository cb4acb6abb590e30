"""Time subsampling for the Conformer: NeMo's ``ConvSubsampling`` (``striding``, ``dw_striding``),
``StackingSubsampling``, the in-encoder ``SubsamplingReductionModule``, and ``calc_length``.

``ConvSubsampling`` treats the features ``[B, T, F]`` as a one-channel image ``[B, 1, T, F]``, runs stride-2
convs over time and frequency, and projects the flattened ``[C * F']`` of each frame with ``out`` to
``feat_out``. Like NeMo 3.0's ``MaskedConvSequential`` it zeroes the frames beyond each item's length before
every conv and at the end, and tracks the lengths through every strided conv; the lengths are float floor
divisions, ``(len + pad_left + pad_right - 3) // 2 + 1`` per stage, returned as int64.

Keys (NeMo's, index gaps where the ReLUs sit): ``striding`` has ``conv.0, conv.2, ...`` (one 3x3 conv per
stage); ``dw_striding`` has ``conv.0`` (1 -> C, 3x3) then, per later stage, a depthwise 3x3 conv at
``conv.{3i+2}`` and a pointwise 1x1 conv at ``conv.{3i+3}``; both end with ``out.{weight,bias}``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from nemofn.nn.conv import Conv2d
from nemofn.nn.linear import Linear
from nemofn.nn.module import Module, Scope, init_children
from nemofn.nn.norm import LayerNorm

__all__ = ["calc_length", "ConvSubsampling", "StackingSubsampling", "SubsamplingReductionModule"]

_KERNEL = 3
_STRIDE = 2

_NOT_SUPPORTED = {
    "vggnet": "NeMo 3.0's own forward fails for it (its MaskedConvSequential indexes MaxPool2d's int kernel_size), "
              "so there is no reference behaviour to match",
    "striding_conv1d": "NeMo 3.0's own forward fails for it (it calls its MaskedConvSequential without lengths)",
    "dw_striding_conv1d": "NeMo 3.0's own forward fails for it (it calls its MaskedConvSequential without lengths)",
}


def calc_length(lengths: torch.Tensor, all_paddings: int, kernel_size: int, stride: int, ceil_mode: bool,
                repeat_num: int = 1) -> torch.Tensor:
    """NeMo's ``calc_length``: ``repeat_num`` times ``(len + all_paddings - kernel_size) / stride + 1``,
    floored (or ceiled), in float32; returns int32 like NeMo."""
    lengths = lengths.to(torch.float32)
    for _ in range(repeat_num):
        lengths = torch.div(lengths + (all_paddings - kernel_size), stride) + 1.0
        lengths = torch.ceil(lengths) if ceil_mode else torch.floor(lengths)
    return lengths.to(torch.int32)


def _calc_length_int(length: int, all_paddings: int, kernel_size: int, stride: int, repeat_num: int) -> int:
    """``calc_length`` for one Python int (floor mode), used for static sizes."""
    for _ in range(repeat_num):
        length = math.floor((length + all_paddings - kernel_size) / stride + 1.0)
    return length


def _check_chunking_factor(value: int) -> None:
    if value != -1 and value != 1 and value % 2 != 0:
        raise ValueError(f"subsampling_conv_chunking_factor should be -1, 1, or a power of 2, got {value}")
    if value not in (-1, 1):
        raise NotImplementedError(
            f"subsampling_conv_chunking_factor={value}: forced chunking of the subsampling convs is not "
            f"implemented (it only trades memory for speed; the result is the same): use 1 or -1")


@attrs.frozen
class ConvSubsampling(Module):
    """Convolutional subsampling by ``subsampling_factor`` (a power of 2) over time and frequency.

    Args:
        subsampling: ``"striding"`` (Conformer) or ``"dw_striding"`` (FastConformer). ``"vggnet"`` and the
            ``*_conv1d`` variants raise NotImplementedError (NeMo 3.0 itself cannot run them).
        subsampling_factor: total time reduction, ``2 ** stages``.
        feat_in: feature count ``F`` of the input ``[B, T, F]``.
        feat_out: output size (the encoder's ``d_model``).
        conv_channels: channels ``C`` of the convs.
        subsampling_conv_chunking_factor: 1 or -1 (no forced chunking); other values raise.
        is_causal: NeMo's ``causal_downsampling``: pad ``(2, 1)`` on both axes instead of ``(1, 1)``.

    Params: see the module docstring. No buffers.
    """

    subsampling: str
    subsampling_factor: int
    feat_in: int
    feat_out: int
    conv_channels: int
    subsampling_conv_chunking_factor: int = 1
    is_causal: bool = False

    # (name, conv, strided, relu_after) per conv and the output projection; built once here, because
    # constructing modules inside `apply` would break torch.compile's graph.
    _layers: tuple = attrs.field(init=False, eq=False, repr=False)
    _out: Linear = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.subsampling in _NOT_SUPPORTED:
            raise NotImplementedError(f"ConvSubsampling subsampling={self.subsampling!r}: "
                                      f"{_NOT_SUPPORTED[self.subsampling]}; use 'striding' or 'dw_striding'")
        if self.subsampling not in ("striding", "dw_striding"):
            raise ValueError(f"ConvSubsampling: unknown subsampling {self.subsampling!r}; "
                             f"expected 'striding' or 'dw_striding'")
        f = self.subsampling_factor
        if f < 2 or f & (f - 1):
            raise ValueError(f"ConvSubsampling: subsampling_factor must be a power of 2 >= 2, got {f}")
        _check_chunking_factor(self.subsampling_conv_chunking_factor)
        object.__setattr__(self, "_layers", self._build_layers())
        object.__setattr__(self, "_out", Linear(self.conv_channels * self.freq_out, self.feat_out))

    @property
    def num_stages(self) -> int:
        """Number of stride-2 stages, ``log2(subsampling_factor)``."""
        return self.subsampling_factor.bit_length() - 1

    @property
    def padding(self) -> tuple[int, int]:
        """(left, right) padding of each strided conv, on both axes."""
        return (_KERNEL - 1, _STRIDE - 1) if self.is_causal else ((_KERNEL - 1) // 2, (_KERNEL - 1) // 2)

    @property
    def freq_out(self) -> int:
        """Frequency bins ``F'`` after the stages (``out`` takes ``C * F'`` inputs)."""
        return _calc_length_int(self.feat_in, sum(self.padding), _KERNEL, _STRIDE, self.num_stages)

    def _build_layers(self) -> tuple[tuple[str, Conv2d, bool, bool], ...]:
        """``(index, conv, strided, relu_after)`` in order; each ReLU takes the index after its conv."""
        c = self.conv_channels
        pad = 0 if self.is_causal else self.padding[0]
        if self.subsampling == "striding":
            return tuple((str(2 * i), Conv2d(1 if i == 0 else c, c, _KERNEL, stride=_STRIDE, padding=pad), True, True)
                         for i in range(self.num_stages))
        layers = [("0", Conv2d(1, c, _KERNEL, stride=_STRIDE, padding=pad), True, True)]
        for i in range(self.num_stages - 1):
            layers.append((str(3 * i + 2), Conv2d(c, c, _KERNEL, stride=_STRIDE, padding=pad, groups=c), True, False))
            layers.append((str(3 * i + 3), Conv2d(c, c, 1), False, True))
        return tuple(layers)

    def init(self, rng):
        # NeMo registers `out` before `conv`; keep that order in the tree.
        params, _ = init_children(rng, {"out": self._out})
        conv_params, _ = init_children(rng, {name: conv for name, conv, _, _ in self._layers})
        params["conv"] = conv_params
        return params, {}

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64 lengths after subsampling (same arithmetic as ``apply``)."""
        cur = lengths.to(torch.float32)
        for _ in range(self.num_stages):
            cur = torch.div(cur + (sum(self.padding) - _KERNEL), _STRIDE, rounding_mode="floor") + 1
        return cur.to(torch.int64)

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        """Subsamples.

        Args:
            x: ``[B, T, feat_in]`` features (time first).
            lengths: ``[B]`` valid frames.

        Returns:
            ``((y [B, T', feat_out], out_lengths [B] int64), buffers)``.
        """
        conv_params = params["conv"]
        # [B, 1, T, F] in channels-last memory: oneDNN's NHWC kernels run these convs 3-4x faster on the CPU
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        cur = lengths.to(device=x.device, dtype=torch.float32)
        mask = _time_mask(x, cur)
        left, right = self.padding
        for name, conv, strided, relu_after in self._layers:
            x = x * mask
            if self.is_causal and strided:
                x = F.pad(x, (left, right, left, right))
            x, _ = conv.apply(conv_params[name], {}, x)
            if strided:
                cur = torch.div(cur + (left + right - _KERNEL), _STRIDE, rounding_mode="floor") + 1
                mask = _time_mask(x, cur)
            if relu_after:  # relu(x) * mask == relu(x * mask), so NeMo's mask before each ReLU is not needed
                x = F.relu(x)
        x = x * mask
        b, c, t, f = x.shape
        y, _ = self._out.apply(params["out"], {}, x.transpose(1, 2).reshape(b, t, c * f))
        return (y, cur.to(torch.int64)), buffers


def _time_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, 1, T, 1]`` float mask, 1 for frames ``< lengths`` (truncated to int like NeMo)."""
    steps = torch.arange(x.shape[2], device=x.device)
    keep = steps.unsqueeze(0) < lengths.to(torch.int64).unsqueeze(1)
    return keep.to(x.dtype)[:, None, :, None]


@attrs.frozen
class StackingSubsampling(Module):
    """NeMo's ``StackingSubsampling``: right-pads time to a multiple of ``subsampling_factor``, stacks that
    many consecutive frames and projects them with ``proj_out``; ``norm`` adds ``pre_norm`` (LayerNorm over
    ``feat_in``) after the padding (NeMo's ``stacking_norm``).

    Lengths become ``(len + pad) // factor`` where ``pad`` is the padding of the whole batch (NeMo's rule).
    Params: ``proj_out.{weight [feat_out, factor*feat_in], bias}``, ``pre_norm.{weight,bias}`` with ``norm``.
    """

    subsampling_factor: int
    feat_in: int
    feat_out: int
    norm: bool = False
    _children: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_children", {
            "proj_out": Linear(self.subsampling_factor * self.feat_in, self.feat_out),
            "pre_norm": LayerNorm(self.feat_in) if self.norm else None,
        })

    def init(self, rng):
        return init_children(rng, self._children)

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        """x: ``[B, T, feat_in]``, lengths ``[B]`` -> ``((y [B, ceil(T/f), feat_out], lengths [B]), buffers)``."""
        s = Scope(params, buffers, train=train, rng=rng)
        children = self._children
        factor = self.subsampling_factor
        b, t, h = x.shape
        pad = (factor - t % factor) % factor
        x = F.pad(x, (0, 0, 0, pad))
        if self.norm:
            x = s(children["pre_norm"], "pre_norm", x)
        x = x.reshape(b, (t + pad) // factor, h * factor)
        y = s(children["proj_out"], "proj_out", x)
        return (y, torch.div(lengths + pad, factor, rounding_mode="floor")), buffers


@attrs.frozen
class SubsamplingReductionModule(Module):
    """NeMo's in-encoder time reduction (``reduction``/``reduction_factor`` of ``ConformerEncoder``).

    ``"pooling"``: max-pool over time with kernel = stride = ``reduction_factor`` (no params). The lengths
    follow NeMo's formula, which applies ``(len - factor) // factor + 1`` ``log2(factor)`` times (for factors
    above 2 that is not the pooled length; NeMo does it, so it is kept). ``"striding"``: a ``ConvSubsampling``
    (``striding``, ``d_model`` channels) under the key ``reduction_enc``.
    """

    reduction: str
    d_model: int
    reduction_factor: int = 2
    _encoder: ConvSubsampling | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.reduction not in ("pooling", "striding"):
            raise ValueError(f"reduction must be 'pooling' or 'striding', got {self.reduction!r}")
        encoder = None
        if self.reduction == "striding":
            encoder = ConvSubsampling("striding", self.reduction_factor, self.d_model, self.d_model, self.d_model)
        object.__setattr__(self, "_encoder", encoder)

    def init(self, rng):
        if self.reduction == "pooling":
            return {}, {}
        return init_children(rng, {"reduction_enc": self._encoder})

    def apply(self, params, buffers, x, lengths, *, train=False, rng=None):
        """x: ``[B, T, d_model]``, lengths ``[B]`` -> ``((y [B, T', d_model], lengths [B]), buffers)``."""
        if self.reduction == "striding":
            s = Scope(params, buffers, train=train, rng=rng)
            return s(self._encoder, "reduction_enc", x, lengths), buffers
        k = self.reduction_factor
        repeats = k.bit_length() - 1
        lengths = calc_length(lengths, all_paddings=0, kernel_size=k, stride=k, ceil_mode=False, repeat_num=repeats)
        y = F.max_pool1d(x.transpose(1, 2), kernel_size=k).transpose(1, 2)
        return (y, lengths), buffers
