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

**Long inputs.** The convs' activations are ``[B, C, T/2, F/2]`` floats: about 7 GB for one 60-minute file with
``C = 256``. ``ConvSubsampling`` can therefore run in *time chunks*: each chunk of output frames is computed from
the input frames it depends on (its receptive field, with the conv padding rows and the length masks of the
whole input at their global positions), so the result is the unchunked one (equal to float rounding) while only
one chunk's activations exist at a time. ``subsampling_conv_chunking_factor`` chooses, with NeMo's values:

* ``1`` (default, NeMo's "auto"): outside training, chunk when the largest conv activation of the batch would
  exceed ``auto_chunk_bytes`` (128 MiB), into chunks below it. (NeMo's auto mode splits by batch, or for one
  long file by channel, only past the 2**31-element indexing limit of CUDA convs; here the aim is bounded memory
  on the CPU.) While training the activations are kept for the backward pass anyway, so no chunking.
* ``-1`` (NeMo's "disabled"): never chunk.
* a power of 2 ``cf > 1`` (NeMo: always split into ``cf`` parts by batch, else by channel): always split the
  time axis into ``cf`` chunks, in training too.
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

__all__ = ["calc_length", "check_chunking_factor", "ConvSubsampling", "StackingSubsampling", "SubsamplingReductionModule"]

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


def check_chunking_factor(value: int) -> None:
    """``subsampling_conv_chunking_factor`` must be -1, 1 or a power of 2 (NeMo's check lets any even number
    through; a positive one works here too, as that many chunks)."""
    valid = isinstance(value, int) and not isinstance(value, bool) and (value in (-1, 1) or
                                                                        (value > 1 and value % 2 == 0))
    if not valid:
        raise ValueError(f"subsampling_conv_chunking_factor should be -1, 1, or a power of 2, got {value!r}")


def _chunk_bounds(total: int, pieces: int) -> list[tuple[int, int]]:
    """``pieces`` (at most ``total``) contiguous, near-equal ``[start, end)`` ranges covering ``range(total)``."""
    pieces = max(1, min(pieces, total))
    edges = [total * i // pieces for i in range(pieces + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


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
        subsampling_conv_chunking_factor: 1 (auto), -1 (never) or a power of 2 (always, that many time chunks);
            see the module docstring. The result does not depend on it.
        is_causal: NeMo's ``causal_downsampling``: pad ``(2, 1)`` on both axes instead of ``(1, 1)``.
        auto_chunk_bytes: keyword-only; the activation size above which the auto mode chunks (and the most a
            chunk's largest activation takes).

    Params: see the module docstring. No buffers.
    """

    subsampling: str
    subsampling_factor: int
    feat_in: int
    feat_out: int
    conv_channels: int
    subsampling_conv_chunking_factor: int = 1
    is_causal: bool = False
    auto_chunk_bytes: int = attrs.field(default=128 * 2**20, kw_only=True)

    # (name, conv, strided, relu_after) per conv (and the same convs without time padding, for time chunks) and
    # the output projection; built once here, because constructing modules inside `apply` would break
    # torch.compile's graph.
    _layers: tuple = attrs.field(init=False, eq=False, repr=False)
    _chunk_layers: tuple = attrs.field(init=False, eq=False, repr=False)
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
        check_chunking_factor(self.subsampling_conv_chunking_factor)
        object.__setattr__(self, "_layers", self._build_layers())
        object.__setattr__(self, "_chunk_layers", tuple(
            (name, conv.replace(padding=(0, conv.padding[1])) if strided else conv, strided, relu)
            for name, conv, strided, relu in self._layers))
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

    def time_sizes(self, t: int) -> list[int]:
        """Frames at the input and after each stride-2 stage, for an input of ``t`` frames."""
        sizes = [t]
        for _ in range(self.num_stages):
            sizes.append((sizes[-1] + sum(self.padding) - _KERNEL) // _STRIDE + 1)
        return sizes

    def num_time_chunks(self, x_shape: tuple[int, ...], *, train: bool = False, itemsize: int = 4) -> int:
        """How many time chunks ``apply`` uses for an input of shape ``[B, T, feat_in]`` (1 = unchunked)."""
        factor = self.subsampling_conv_chunking_factor
        b, t = x_shape[0], x_shape[1]
        t_out = self.time_sizes(t)[-1]
        if factor == -1 or t_out < 2 or (factor == 1 and train):
            return 1
        if factor > 1:
            return min(factor, t_out)
        # the largest activation is the first stage's output [B, C, T1, F1]
        t1 = self.time_sizes(t)[1]
        f1 = _calc_length_int(self.feat_in, sum(self.padding), _KERNEL, _STRIDE, 1)
        total = b * self.conv_channels * t1 * f1 * itemsize
        if total <= self.auto_chunk_bytes:
            return 1
        return min(t_out, -(-total // self.auto_chunk_bytes))

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
        cur = lengths.to(device=x.device, dtype=torch.float32)
        chunks = self.num_time_chunks(tuple(x.shape), train=train, itemsize=x.element_size())
        if chunks > 1:
            return self._apply_chunked(params, x, cur, chunks), buffers
        # [B, 1, T, F] in channels-last memory: oneDNN's NHWC kernels run these convs 3-4x faster on the CPU
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        x = x * _time_mask(x, cur)
        left, right = self.padding
        for name, conv, strided, relu_after in self._layers:
            if self.is_causal and strided:
                x = F.pad(x, (left, right, left, right))
            x, _ = conv.apply(conv_params[name], {}, x)
            # a one-channel input gives an NCHW output; the next conv runs about 2x faster on channels-last input
            x = x.contiguous(memory_format=torch.channels_last)
            if strided:
                cur = torch.div(cur + (left + right - _KERNEL), _STRIDE, rounding_mode="floor") + 1
            # NeMo masks before every conv and at the end; masking each conv's output is the same, and
            # relu(x) * mask == relu(x * mask)
            x = _zero_past_lengths_(x, cur)
            if relu_after:
                x = x.relu_()
        b, c, t, f = x.shape
        y, _ = self._out.apply(params["out"], {}, x.transpose(1, 2).reshape(b, t, c * f))
        return (y, cur.to(torch.int64)), buffers

    def _stage_lengths(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Valid frames (float, as ``apply`` tracks them) at the input and after each stage."""
        left, right = self.padding
        out = [lengths]
        for _ in range(self.num_stages):
            out.append(torch.div(out[-1] + (left + right - _KERNEL), _STRIDE, rounding_mode="floor") + 1)
        return out

    def _apply_chunked(self, params, x: torch.Tensor, lengths: torch.Tensor, chunks: int):
        """``apply`` over ``chunks`` time chunks of the output; same result as the unchunked computation.

        For output frames ``[j0, j1)`` the stage-``s`` input rows ``[2a - left, 2(b-1) - left + 3)`` of each stage's
        output rows ``[a, b)`` are computed, back to the input features; rows outside ``[0, length)`` of their stage
        are zeroed by the length masks at their global positions, which is what the conv padding and NeMo's masks
        give the unchunked computation.
        """
        conv_params = params["conv"]
        b, t, _ = x.shape
        left, right = self.padding
        stage_lengths = [n.to(torch.int64) for n in self._stage_lengths(lengths)]
        t_out = self.time_sizes(t)[-1]
        y = x.new_empty(b, t_out, self.feat_out)
        for j0, j1 in _chunk_bounds(t_out, chunks):
            starts = [j0]
            end = j1
            for _ in range(self.num_stages):  # rows each stage's input needs, back to the features
                starts.append(_STRIDE * starts[-1] - left)
                end = _STRIDE * (end - 1) - left + _KERNEL
            starts.reverse()
            a0 = starts[0]
            xi = x[:, max(a0, 0): min(end, t)]
            xi = F.pad(xi, (0, 0, max(0, -a0), max(0, end - t)))
            xi = xi.unsqueeze(1).contiguous(memory_format=torch.channels_last)
            stage = 0
            mask = _time_mask(xi, stage_lengths[0], start=a0)
            for name, conv, strided, relu_after in self._chunk_layers:
                xi = xi * mask
                if strided and self.is_causal:
                    xi = F.pad(xi, (left, right))  # frequency only: the time rows are already in place
                xi, _ = conv.apply(conv_params[name], {}, xi)
                if strided:
                    stage += 1
                    mask = _time_mask(xi, stage_lengths[stage], start=starts[stage])
                if relu_after:
                    xi = F.relu(xi)
            xi = xi * mask
            _, c, n, f = xi.shape
            y[:, j0:j1], _ = self._out.apply(params["out"], {}, xi.transpose(1, 2).reshape(b, n, c * f))
        return y, stage_lengths[-1]


def _zero_past_lengths_(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zeroes, in place, the frames of ``x [B, C, T, F]`` (a conv's fresh output: autograd does not need it) at
    or past each item's length (truncated to int). In inference on the CPU only the padded rows are written
    (lengths are read on the host, which costs nothing there); otherwise one mask multiply does it (no host read in a
    training or evaluation step; in-place writes into slices would make autograd copy the whole gradient once per
    slice)."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or not torch.is_inference_mode_enabled():
        return x.mul_(_time_mask(x, lengths))
    t = x.shape[2]
    for i, n in enumerate(lengths.to(torch.int64).tolist()):
        if n < t:
            x[i, :, max(n, 0):].zero_()
    return x


def _time_mask(x: torch.Tensor, lengths: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``[B, 1, T, 1]`` float mask, 1 for frames whose global index ``start + i`` is in ``[0, lengths)``
    (lengths truncated to int like NeMo)."""
    steps = torch.arange(start, start + x.shape[2], device=x.device)
    keep = (steps.unsqueeze(0) < lengths.to(torch.int64).unsqueeze(1)) & (steps >= 0).unsqueeze(0)
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
