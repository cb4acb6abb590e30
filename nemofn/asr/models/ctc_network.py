"""The CTC network: preprocessor -> SpecAugment (training only) -> encoder -> decoder, and its CTC objective.

Params and buffers are trees under ``preprocessor``, ``encoder`` and ``decoder``: flattened, they are exactly the
keys of NeMo's ``EncDecCTCModel`` state dict (SpecAugment has no state, as in NeMo).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from nemofn.asr.ctc import CTC_REDUCTIONS, ctc_loss
from nemofn.asr.modules.registry import build_module
from nemofn.nn.module import Module, Scope, init_children

__all__ = ["CTCNetwork"]


@attrs.frozen
class CTCNetwork(Module):
    """NeMo's ``EncDecCTCModel`` forward as a stateless module.

    Attributes:
        preprocessor: waveform -> features ``[B, F, T]``.
        encoder: features -> ``[B, D, T']`` (``ConvASREncoder`` or ``ConformerEncoder``).
        decoder: ``ConvASRDecoder`` -> log-probs ``[B, T', V+1]`` (blank last).
        spec_augment: optional; applied only while training.
        ctc_reduction: NeMo's ``ctc_reduction`` (default ``mean_batch``).
    """

    preprocessor: Module
    encoder: Module
    decoder: Module
    spec_augment: Module | None = None
    ctc_reduction: str = attrs.field(default="mean_batch")

    @ctc_reduction.validator
    def _check_reduction(self, attribute: Any, value: str) -> None:
        if value not in CTC_REDUCTIONS:
            raise ValueError(f"ctc_reduction={value!r}; expected one of {list(CTC_REDUCTIONS)}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CTCNetwork:
        """Builds from a NeMo model config (the ``model:`` block). ``decoder.feat_in`` may be null (taken from the
        encoder) and ``decoder.num_classes`` may be < 1 (taken from ``decoder.vocabulary``), as NeMo does."""
        for key in ("preprocessor", "encoder", "decoder"):
            if cfg.get(key) is None:
                raise ValueError(f"model config has no `{key}` block; a CTC model needs preprocessor, encoder and "
                                 "decoder")
        preprocessor = build_module(cfg["preprocessor"], where="model.preprocessor")
        encoder = build_module(cfg["encoder"], where="model.encoder")
        dec_cfg = dict(cfg["decoder"])
        if dec_cfg.get("feat_in") is None:
            dec_cfg["feat_in"] = encoder.feat_out
        if dec_cfg.get("num_classes", -1) is None or dec_cfg.get("num_classes", -1) < 1:
            vocab = dec_cfg.get("vocabulary") or []
            if not vocab:
                raise ValueError("model.decoder.num_classes < 1 and model.decoder.vocabulary is empty; set the "
                                 "vocabulary (char labels, or the tokenizer's pieces)")
            dec_cfg["num_classes"] = len(vocab)
        decoder = build_module(dec_cfg, where="model.decoder")
        spec = cfg.get("spec_augment")
        spec_augment = build_module(spec, where="model.spec_augment") if spec else None
        return cls(preprocessor=preprocessor, encoder=encoder, decoder=decoder, spec_augment=spec_augment,
                   ctc_reduction=str(cfg.get("ctc_reduction", "mean_batch")))

    @property
    def blank_id(self) -> int:
        return self.decoder.num_classes_with_blank - 1

    def init(self, rng):
        return init_children(rng, {"preprocessor": self.preprocessor, "encoder": self.encoder,
                                   "decoder": self.decoder})

    def apply(self, params, buffers, signal, signal_len, *, train=False, rng=None):
        """Waveforms -> log-probs.

        Args:
            signal: ``[B, T]`` float waveforms; signal_len: ``[B]`` int64.

        Returns:
            ``((log_probs [B, T', V+1], encoded_len [B]), new_buffers)``.
        """
        s = Scope(params, buffers, train=train, rng=rng)
        features, feat_len = s(self.preprocessor, "preprocessor", signal, signal_len)
        if train and self.spec_augment is not None:
            features = s(self.spec_augment, "spec_augment", features, feat_len)
        encoded, encoded_len = s(self.encoder, "encoder", features, feat_len)
        log_probs = s(self.decoder, "decoder", encoded)
        return (log_probs, encoded_len), s.new_buffers

    def objective(self, params, buffers, batch, *, train=False, rng=None):
        """The training objective (``nemofn.train`` protocol).

        Args:
            batch: ``(signal [B, T], signal_len [B], tokens [B, U], tokens_len [B])``.

        Returns:
            ``(loss, metrics, new_buffers)``; metrics hold detached tensors (no host sync).
        """
        signal, signal_len, tokens, tokens_len = batch
        (log_probs, encoded_len), new_buffers = self.apply(params, buffers, signal, signal_len, train=train, rng=rng)
        loss = ctc_loss(log_probs, tokens, encoded_len, tokens_len, blank=self.blank_id,
                        reduction=self.ctc_reduction, zero_infinity=True)
        return loss, {"loss": loss.detach()}, new_buffers

    def forward_eval(self, params, buffers, signal, signal_len) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference convenience: ``(log_probs [B, T', V+1], encoded_len [B])`` in eval mode."""
        (log_probs, encoded_len), _ = self.apply(params, buffers, signal, signal_len, train=False)
        return log_probs, encoded_len
