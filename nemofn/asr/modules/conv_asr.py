"""``ConvASREncoder``: NeMo's Jasper / QuartzNet / Citrinet encoder as a stateless module.

Mirrors ``nemo/collections/asr/modules/conv_asr.py``. The encoder is a chain of
:class:`~nemofn.asr.modules.jasper.JasperBlock` s, one per entry of the ``jasper`` list of the config, with
state under ``encoder.<block>`` (NeMo's ``nn.Sequential``), so inside a model the keys read
``encoder.encoder.0.mconv.0.conv.weight`` like NeMo's.

Example (QuartzNet-style config block, as in NeMo's YAML)::

    enc = ConvASREncoder.from_config({"_target_": "nemo.collections.asr.modules.ConvASREncoder",
                                      "feat_in": 64, "activation": "relu", "conv_mask": True,
                                      "jasper": [{"filters": 128, "repeat": 1, "kernel": [33], "stride": [2],
                                                  "dilation": [1], "dropout": 0.0, "residual": False,
                                                  "separable": True}]})
    params, buffers = enc.init(0)
    (encoded, encoded_len), buffers = enc.apply(params, buffers, features, features_len)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from nemofn.asr.configs.modules import ConvASREncoderConfig, JasperEncoderConfig
from nemofn.asr.modules.jasper import JasperBlock
from nemofn.core.rng import as_key
from nemofn.core.schema import module_kwargs, resolved_plain
from nemofn.nn.module import EMPTY, Module

__all__ = ["JasperBlockConfig", "ConvASREncoder"]


def _to_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@attrs.frozen
class JasperBlockConfig:
    """One entry of the encoder's ``jasper`` list, with NeMo's defaults for the optional keys.

    Required: ``filters, repeat, kernel, stride, dilation, dropout, residual``. ``kernel``, ``stride`` and
    ``dilation`` are 1-element lists in NeMo's configs (an int is accepted too).
    """

    filters: int
    repeat: int
    kernel: tuple = attrs.field(converter=_to_tuple)
    stride: tuple = attrs.field(converter=_to_tuple)
    dilation: tuple = attrs.field(converter=_to_tuple)
    dropout: float
    residual: bool
    groups: int = 1
    separable: bool = False
    heads: int = -1
    residual_mode: str | None = None  # None: the encoder's residual_mode
    residual_dense: bool = False
    se: bool = False
    se_reduction_ratio: int = 8
    se_context_size: int = -1
    se_interpolation_mode: str = "nearest"
    kernel_size_factor: float = 1.0
    stride_last: bool = False
    future_context: int = -1

    @classmethod
    def from_dict(cls, cfg: Any, index: int = 0, *, path: str = "encoder") -> JasperBlockConfig:
        """Builds from a block config (dict or DictConfig) checked against
        :class:`~nemofn.asr.configs.modules.JasperEncoderConfig`; an unknown or missing key raises naming
        ``<path>.jasper[<index>].<key>``."""
        return cls(**module_kwargs(cfg, JasperEncoderConfig, f"{path}.jasper[{index}]"))


def _blocks_converter(value: Sequence[Any]) -> tuple[JasperBlockConfig, ...]:
    if not isinstance(value, (list, tuple)):
        value = resolved_plain(value, "encoder.jasper")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("ConvASREncoder.jasper must be a non-empty list of block configs")
    return tuple(v if isinstance(v, JasperBlockConfig) else JasperBlockConfig.from_dict(v, i)
                 for i, v in enumerate(value))


@attrs.frozen
class ConvASREncoder(Module):
    """Convolutional ASR encoder (NeMo's ``ConvASREncoder``).

    Args:
        jasper: list of block configs (dicts with NeMo's keys, or :class:`JasperBlockConfig`).
        activation: activation name (``relu``, ``hardtanh``, ``selu``, ``swish``/``silu``, ``gelu``, ...).
        feat_in: input features (mel bins); multiplied by ``frame_splicing``.
        normalization_mode: ``batch`` (BatchNorm eps 1e-3), ``group``, ``instance`` or ``layer``.
        residual_mode: default residual mode of the blocks (``add``, ``stride_add``, ``max``).
        norm_groups: groups for ``normalization_mode="group"`` (-1: one per channel).
        conv_mask: masked convolutions (zero the frames beyond the lengths before each conv).
        frame_splicing: feature stacking factor of the preprocessor.
        init_mode: NeMo's ``init_weights`` mode for conv and linear weights (``None``: torch defaults).
        quantize: not supported (NeMo needs NVIDIA's pytorch-quantization for it).

    State: ``encoder.<i>.<block state>``; see :class:`~nemofn.asr.modules.jasper.JasperBlock`.
    """

    jasper: tuple[JasperBlockConfig, ...] = attrs.field(converter=_blocks_converter)
    activation: str
    feat_in: int
    normalization_mode: str = "batch"
    residual_mode: str = "add"
    norm_groups: int = -1
    conv_mask: bool = True
    frame_splicing: int = 1
    init_mode: str | None = "xavier_uniform"
    quantize: bool = False
    blocks: tuple[JasperBlock, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.quantize:
            raise NotImplementedError("ConvASREncoder(quantize=True) is not supported: NeMo implements it with "
                                      "NVIDIA's pytorch-quantization; set quantize: false")
        init_mode = "default" if self.init_mode is None else self.init_mode
        channels = self.feat_in * self.frame_splicing
        dense_panes: list[int] = []
        blocks = []
        for i, cfg in enumerate(self.jasper):
            panes: tuple[int, ...] = ()
            if cfg.residual_dense:
                dense_panes.append(channels)
                panes = tuple(dense_panes)
            try:
                block = JasperBlock(
                    channels, cfg.filters, repeat=cfg.repeat, kernel_size=cfg.kernel,
                    kernel_size_factor=cfg.kernel_size_factor, stride=cfg.stride, dilation=cfg.dilation,
                    dropout=cfg.dropout, activation=self.activation, residual=cfg.residual, groups=cfg.groups,
                    separable=cfg.separable, heads=cfg.heads, normalization=self.normalization_mode,
                    norm_groups=self.norm_groups, residual_mode=cfg.residual_mode or self.residual_mode,
                    residual_panes=panes, conv_mask=self.conv_mask, se=cfg.se,
                    se_reduction_ratio=cfg.se_reduction_ratio, se_context_window=cfg.se_context_size,
                    se_interpolation_mode=cfg.se_interpolation_mode, stride_last=cfg.stride_last,
                    future_context=cfg.future_context, init_mode=init_mode,
                )
            except ValueError as err:
                raise ValueError(f"encoder.jasper[{i}]: {err}") from err
            blocks.append(block)
            channels = cfg.filters
        object.__setattr__(self, "blocks", tuple(blocks))

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "encoder") -> ConvASREncoder:
        """Builds from a NeMo ``encoder:`` block (dict, DictConfig or
        :class:`~nemofn.asr.configs.modules.ConvASREncoderConfig`), checked against that schema, its ``jasper``
        blocks included (errors name ``path``, e.g. ``model.encoder.jasper[3].filters``); ``_target_`` is dropped."""
        kwargs = module_kwargs(cfg, ConvASREncoderConfig, path)
        kwargs["jasper"] = tuple(JasperBlockConfig.from_dict(block, i, path=path)
                                 for i, block in enumerate(kwargs["jasper"]))
        return cls(**kwargs)

    @property
    def feat_out(self) -> int:
        """Channels of the output: the last block's ``filters``."""
        return self.jasper[-1].filters

    @property
    def subsampling_factor(self) -> int:
        """Product of the blocks' strides (NeMo's ``subsampling_factor``; repeats are not counted)."""
        factor = 1
        for cfg in self.jasper:
            factor *= int(cfg.stride[0])
        return factor

    def init(self, rng):
        key = as_key(rng).fold_in("encoder")
        params: dict = {}
        buffers: dict = {}
        for i, block in enumerate(self.blocks):
            p, b = block.init(key.fold_in(i))
            if p:
                params[str(i)] = p
            if b:
                buffers[str(i)] = b
        return ({"encoder": params} if params else {}), ({"encoder": buffers} if buffers else {})

    def apply(self, params, buffers, audio_signal, length, *, train=False, rng=None):
        """audio_signal: ``[B, feat_in, T]``, length: ``[B]`` int
        -> ``((encoded [B, feat_out, T'], encoded_len [B]), new_buffers)``."""
        block_params, block_buffers = params.get("encoder", EMPTY), buffers.get("encoder", EMPTY)
        new_block_buffers = dict(block_buffers)
        xs: list[torch.Tensor] = [audio_signal]
        for i, block in enumerate(self.blocks):
            name = str(i)
            (xs, length), nb = block.apply(block_params.get(name, EMPTY), block_buffers.get(name, EMPTY), xs,
                                           length, train=train, rng=rng)
            if name in block_buffers:
                new_block_buffers[name] = nb
        new_buffers = dict(buffers)
        if block_buffers:
            new_buffers["encoder"] = new_block_buffers
        return (xs[-1], length), new_buffers
