"""``EncDecHybridRNNTCTCModel``: NeMo's hybrid RNNT/TDT + CTC model (char labels), and its BPE sibling.

The transducer model plus an auxiliary CTC head on the encoder (``ctc_decoder``, a ``ConvASRDecoder``), trained on
``(1 - w) * transducer_loss + w * ctc_loss`` with ``w = aux_ctc.ctc_loss_weight``. ``change_decoding_strategy(
decoder_type="ctc")`` makes ``transcribe`` decode the CTC head (``y_sequence`` then holds log-probs, as for CTC
models); ``decoder_type="rnnt"`` (or ``None``) switches back. Logged: ``train_rnnt_loss``, ``train_ctc_loss``,
``training_batch_wer_ctc``, ``val_rnnt_loss``, ``val_ctc_loss``, ``val_wer_ctc``, as NeMo.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis
from compat.models.bpe_tokenizer import BPETokenizerMixin
from compat.models.ctc_decoding import check_decoding_supported, ctc_hypotheses, merge_decoding_config
from compat.models.modelpt_module import SubModuleSpec
from compat.models.timestamps import ctc_timestamp_dicts
from compat.models.rnnt_bpe_models import EncDecRNNTBPEModel
from compat.models.rnnt_models import EncDecRNNTModel
from nemofn.asr.ctc import CTCLoss
from nemofn.asr.metrics import error_counts

__all__ = ["EncDecHybridRNNTCTCModel", "EncDecHybridRNNTCTCBPEModel"]

log = logging.getLogger("compat.models")

_DECODER_TYPES = (None, "rnnt", "ctc")


class EncDecHybridRNNTCTCModel(EncDecRNNTModel,
                               nemo_target="nemo.collections.asr.models.hybrid_rnnt_ctc_models.EncDecHybridRNNTCTCModel",
                               nemo_aliases=("nemo.collections.asr.models.EncDecHybridRNNTCTCModel",)):
    """NeMo's ``EncDecHybridRNNTCTCModel``. See the module doc."""

    def build_functional(self, cfg: DictConfig) -> Any:
        if cfg.get("aux_ctc") is None:
            raise ValueError(f"{type(self).__name__} needs an `aux_ctc` block (ctc_loss_weight, decoder, decoding) "
                             "in its config")
        unit = super().build_functional(cfg)
        check_decoding_supported(cfg.aux_ctc.decoding)
        return unit

    def submodule_specs(self) -> list[SubModuleSpec]:
        """The transducer's submodules plus ``ctc_decoder`` (``encoder_output [B, D, T]`` -> ``[B, T, V+1]``)."""
        specs = super().submodule_specs()
        return specs + [SubModuleSpec("ctc_decoder", self.fn_model.network.ctc_decoder, ("encoder_output",))]

    @property
    def ctc_loss(self) -> CTCLoss:
        """NeMo's ``CTCLoss`` of the CTC head (blank last, ``zero_infinity``, ``aux_ctc.ctc_reduction``)."""
        net = self.fn_model.network
        return CTCLoss(num_classes=net.blank_id, zero_infinity=True, reduction=net.ctc_reduction)

    @property
    def ctc_loss_weight(self) -> float:
        return self.fn_model.network.ctc_loss_weight

    # -- steps ----------------------------------------------------------------------------------------------------

    def _ctc_wer_counts(self, log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor,
                        tokens_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        texts = self.fn_model.ctc_decode(log_probs.detach(), lengths)
        errors, words = error_counts(texts, self._references(tokens, tokens_len),
                                     use_cer=bool(self._cfg.aux_ctc.get("use_cer", False)))
        return torch.tensor(errors, device=log_probs.device), torch.tensor(words, device=log_probs.device)

    def _ctc_part(self, encoded: torch.Tensor, encoded_len: torch.Tensor, tokens: torch.Tensor,
                  tokens_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self.ctc_decoder(encoder_output=encoded)
        loss = self.ctc_loss(log_probs=log_probs, targets=tokens, input_lengths=encoded_len, target_lengths=tokens_len)
        return loss, log_probs

    def _training_values(self, batch: Any, batch_nb: int) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor,
                                                                     torch.Tensor]:
        """NeMo's hybrid step: the transducer loss, the CTC loss of the head, ``(1 - w) * rnnt + w * ctc``."""
        loss, logs, encoded, encoded_len = super()._training_values(batch, batch_nb)
        weight = self.ctc_loss_weight
        if weight > 0:
            transcript, transcript_len = batch[2], batch[3]
            ctc, log_probs = self._ctc_part(encoded, encoded_len, transcript, transcript_len)
            logs["train_rnnt_loss"] = loss
            logs["train_ctc_loss"] = ctc
            loss = (1.0 - weight) * loss + weight * ctc
            logs["train_loss"] = loss
            if self._log_wer_now(batch_nb):
                num, denom = self._ctc_wer_counts(log_probs, encoded_len, transcript, transcript_len)
                logs["training_batch_wer_ctc"] = num.float() / denom.float()
        return loss, logs, encoded, encoded_len

    @torch.no_grad()
    def _validation_values(self, batch: Any) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """The transducer's values, then ``val_ctc_loss``, ``val_rnnt_loss``, the combined ``val_loss`` and the CTC
        head's ``val_wer_num_ctc`` / ``val_wer_denom_ctc`` / ``val_wer_ctc``."""
        out, encoded, encoded_len = super()._validation_values(batch)
        transcript, transcript_len = batch[2], batch[3]
        ctc, log_probs = self._ctc_part(encoded, encoded_len, transcript, transcript_len)
        num, denom = self._ctc_wer_counts(log_probs, encoded_len, transcript, transcript_len)
        if "val_loss" in out:
            weight = self.ctc_loss_weight
            out["val_rnnt_loss"] = out["val_loss"]
            out["val_ctc_loss"] = ctc
            out["val_loss"] = (1.0 - weight) * out["val_loss"] + weight * ctc
        out.update(val_wer_num_ctc=num, val_wer_denom_ctc=denom, val_wer_ctc=num.float() / denom.float())
        return out, encoded, encoded_len

    # -- transcription and decoding -------------------------------------------------------------------------------

    def _transcribe_batch(self, signal: torch.Tensor, signal_len: torch.Tensor, request: Any) -> list[Hypothesis]:
        if self.cur_decoder != "ctc":
            return super()._transcribe_batch(signal, signal_len, request)
        unit = self.fn_model
        encoded, encoded_len = unit.encode(self.fn_state, signal.to(self.device), signal_len.to(self.device))
        log_probs = unit.ctc_log_probs(self.fn_state, encoded)
        hypotheses = ctc_hypotheses(log_probs, encoded_len, blank=unit.blank_id, text_decoder=unit.text_decoder,
                                    return_hypotheses=request.return_hypotheses or request.timestamps)
        if request.timestamps:
            for hyp, stamp in zip(hypotheses, ctc_timestamp_dicts(self, log_probs, encoded_len,
                                                                  self._cfg.aux_ctc.get("decoding"))):
                hyp.timestamp = stamp
        return hypotheses

    def change_decoding_strategy(self, decoding_cfg: Any = None, decoder_type: str | None = None,
                                 verbose: bool = True) -> None:
        """``decoder_type="ctc"``: ``transcribe`` decodes the CTC head with ``decoding_cfg`` (merged onto
        ``aux_ctc.decoding``); ``None`` / ``"rnnt"``: the transducer (NeMo's ``change_decoding_strategy``)."""
        if decoder_type not in _DECODER_TYPES:
            raise ValueError(f"decoder_type must be 'rnnt', 'ctc' or None, got {decoder_type!r}")
        if decoder_type != "ctc":
            super().change_decoding_strategy(decoding_cfg, verbose=verbose)
            self.__dict__["cur_decoder"] = "rnnt"
            return
        cfg = merge_decoding_config(decoding_cfg) if decoding_cfg is not None else \
            merge_decoding_config(self._cfg.aux_ctc.get("decoding"), unknown="warn")
        check_decoding_supported(cfg)
        with open_dict(self._cfg):
            self._cfg.aux_ctc.decoding = cfg
        self.__dict__["cur_decoder"] = "ctc"
        if verbose:
            log.info("changed the decoding strategy to the CTC head:\n%s", OmegaConf.to_yaml(cfg))


class EncDecHybridRNNTCTCBPEModel(BPETokenizerMixin, EncDecHybridRNNTCTCModel,
                                  nemo_target="nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models."
                                              "EncDecHybridRNNTCTCBPEModel",
                                  nemo_aliases=("nemo.collections.asr.models.EncDecHybridRNNTCTCBPEModel",)):
    """NeMo's ``EncDecHybridRNNTCTCBPEModel``: the hybrid with a SentencePiece tokenizer from ``cfg.tokenizer``."""

    _build_tokenizer = EncDecRNNTBPEModel._build_tokenizer
    change_vocabulary = EncDecRNNTBPEModel.change_vocabulary
