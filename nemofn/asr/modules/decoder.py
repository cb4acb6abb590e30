"""``ConvASRDecoder``: NeMo's CTC head, a 1x1 convolution to ``V + 1`` classes and a log-softmax.

Mirrors ``ConvASRDecoder`` of ``nemo/collections/asr/modules/conv_asr.py``. Params
``decoder_layers.0.weight [V+1, C, 1]`` and ``decoder_layers.0.bias [V+1]``; the CTC blank is the last class.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from nemofn.asr.configs.modules import ConvASRDecoderConfig
from nemofn.core.rng import as_key
from nemofn.core.schema import module_kwargs
from nemofn.nn.conv import Conv1d
from nemofn.nn.module import Module

__all__ = ["ConvASRDecoder"]


def _vocab(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class ConvASRDecoder(Module):
    """CTC decoder head.

    Args:
        feat_in: encoder output channels ``C``.
        num_classes: labels without the blank (``V``); ``<= 0`` takes ``len(vocabulary)``.
        init_mode: NeMo's ``init_weights`` mode for the conv weight (``None``: torch default); the bias keeps
            torch's default init, as in NeMo.
        vocabulary: the labels (optional; its length must equal ``num_classes`` when both are given).
        add_blank: add the blank class (``V + 1`` outputs).
        temperature: divides the logits before the log-softmax (NeMo sets it from the decoding config); change
            it with ``decoder.replace(temperature=t)``.

    After construction ``num_classes`` holds the resolved label count.
    """

    feat_in: int
    num_classes: int
    init_mode: str | None = "xavier_uniform"
    vocabulary: tuple[str, ...] | None = attrs.field(default=None, converter=_vocab)
    add_blank: bool = True
    temperature: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.feat_in is None:
            raise ValueError("ConvASRDecoder.feat_in is null: set it to the encoder's feat_out (NeMo's CTC models "
                             "fill decoder.feat_in from encoder._feat_out)")
        if self.vocabulary is None and self.num_classes < 0:
            raise ValueError("ConvASRDecoder: neither vocabulary nor num_classes is set; give at least one")
        if self.num_classes <= 0:
            object.__setattr__(self, "num_classes", len(self.vocabulary or ()))
        if self.vocabulary is not None and len(self.vocabulary) != self.num_classes:
            raise ValueError(f"ConvASRDecoder: num_classes={self.num_classes} but the vocabulary has "
                             f"{len(self.vocabulary)} entries; they must be equal (or set num_classes: -1)")

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "decoder") -> ConvASRDecoder:
        """Builds from a NeMo ``decoder:`` block (dict, DictConfig or
        :class:`~nemofn.asr.configs.modules.ConvASRDecoderConfig`), checked against that schema (errors name
        ``path``); ``_target_`` is dropped."""
        return cls(**module_kwargs(cfg, ConvASRDecoderConfig, path))

    @property
    def num_classes_with_blank(self) -> int:
        """Output classes: ``num_classes + 1`` with ``add_blank`` (the blank id is ``num_classes``)."""
        return self.num_classes + 1 if self.add_blank else self.num_classes

    @property
    def conv(self) -> Conv1d:
        return Conv1d(self.feat_in, self.num_classes_with_blank, 1, bias=True,
                      init="default" if self.init_mode is None else self.init_mode)

    def init(self, rng):
        p, _ = self.conv.init(as_key(rng).fold_in("decoder_layers").fold_in(0))
        return {"decoder_layers": {"0": p}}, {}

    def apply(self, params, buffers, encoder_output, *, train=False, rng=None):
        """encoder_output: ``[B, C, T]`` -> ``(log_probs [B, T, V+1], buffers)``."""
        layer = params["decoder_layers"]["0"]
        logits = torch.nn.functional.conv1d(encoder_output, layer["weight"], layer.get("bias")).transpose(1, 2)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.nn.functional.log_softmax(logits, dim=-1), buffers
