"""``ASRModel``: NeMo's base of the speech-recognition models (WER-aware validation bookkeeping).

``ASRModel.restore_from(path)`` (inherited from :class:`~compat.core.classes.ModelPT`) returns the concrete class
the archive's ``target`` names (``EncDecCTCModel``, ``EncDecCTCModelBPE``). Validation outputs carry NeMo's keys
``val_loss``, ``val_wer_num``, ``val_wer_denom``, ``val_wer``; the epoch end averages the loss and computes the
corpus WER from the summed counts, summed over the ranks too under DDP (each rank validates its share), so the
logged ``val_wer`` is the exact corpus WER.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from compat.core.classes.modelpt import ModelPT
from compat.models import encoder_changes
from nemofn.nn.module import Module

__all__ = ["ASRModel"]


def _wer(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``num / denom`` as float32 (NeMo's ``WER.compute``; no host sync, so 0 reference words give nan / inf)."""
    return torch.as_tensor(num, dtype=torch.float32) / torch.as_tensor(denom, dtype=torch.float32)


def _sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


class ASRModel(ModelPT):
    """Base class of the ASR models: the encoder half of NeMo's forward, SpecAugment swapping, and validation
    metrics with NeMo's WER keys."""

    def _encoder_forward(self, input_signal: torch.Tensor | None, input_signal_length: torch.Tensor | None,
                         processed_signal: torch.Tensor | None, processed_signal_length: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessor (unless features are given), SpecAugment (training mode only) and encoder:
        ``(encoded [B, D, T'], encoded_len [B])``."""
        has_signal = input_signal is not None and input_signal_length is not None
        has_processed = processed_signal is not None and processed_signal_length is not None
        if has_signal == has_processed:
            raise ValueError(f"{type(self).__name__}.forward: give input_signal and input_signal_length, or "
                             "processed_signal and processed_signal_length (exactly one pair)")
        if not has_processed:
            processed_signal, processed_signal_length = self.preprocessor(input_signal=input_signal,
                                                                          length=input_signal_length)
        spec = self.spec_augmentation
        if spec is not None and self.training:
            processed_signal = spec(input_spec=processed_signal, length=processed_signal_length)
        return self.encoder(audio_signal=processed_signal, length=processed_signal_length)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "spec_augmentation" and (value is None or isinstance(value, Module)):
            unit = self.fn_model  # NeMo's fine-tuning script swaps SpecAugment this way
            self._replace_functional(attrs.evolve(unit, network=attrs.evolve(unit.network, spec_augment=value)))
            self._bind_state(self.fn_state)
            return
        super().__setattr__(name, value)

    # -- long audio: NeMo's ASRModuleMixin encoder changes (compat/models/encoder_changes.py) ------------------

    def change_attention_model(self, self_attention_model: str | None = None, att_context_size: Any = None,
                               update_config: bool = True) -> None:
        """Switches the encoder's self-attention: ``"rel_pos"``, ``"rel_pos_local_attn"`` (local attention over
        ``att_context_size = [left, right]`` frames, linear in the audio length: for long audio) or ``"abs_pos"``.
        Weights are kept; with ``update_config`` ``cfg.encoder`` gets the new values. Encoders other than
        Conformers: logged, nothing changes. See :mod:`compat.models.encoder_changes`."""
        if self_attention_model is None and att_context_size is None:
            return
        encoder_changes.change_attention_model(self, self_attention_model, att_context_size, update_config)

    def change_subsampling_conv_chunking_factor(self, subsampling_conv_chunking_factor: int,
                                                update_config: bool = True) -> None:
        """How the encoder's conv subsampling chunks long inputs: ``1`` auto, ``-1`` never, a power of 2 always
        (that many time chunks); the outputs do not change. See :mod:`compat.models.encoder_changes`."""
        encoder_changes.change_subsampling_conv_chunking_factor(self, subsampling_conv_chunking_factor,
                                                                update_config)

    def _bind_state(self, state: Any) -> None:
        super()._bind_state(state)
        encoder_changes.install_encoder_face(self)  # model.encoder.change_attention_model(...), as in NeMo

    def _epoch_end_metrics(self, outputs: list[dict], prefix: str) -> dict[str, Any]:
        """Mean ``<prefix>_loss`` (and any other ``<prefix>_*_loss``) over batches; every WER from summed counts
        (``<prefix>_wer`` from ``_wer_num`` / ``_wer_denom``, hybrids' ``<prefix>_wer_ctc`` likewise)."""
        if not outputs:
            return {}
        logs: dict[str, Any] = {}
        for key in outputs[0]:
            if key.startswith(f"{prefix}_") and key.endswith("_loss"):
                logs[key] = torch.stack([torch.as_tensor(o[key], dtype=torch.float32) for o in outputs]).mean()
            if key.startswith(f"{prefix}_wer_num"):
                suffix = key[len(f"{prefix}_wer_num"):]
                first = torch.as_tensor(outputs[0][key])
                num = sum(torch.as_tensor(o[key], device=first.device) for o in outputs)
                denom = sum(torch.as_tensor(o[f"{prefix}_wer_denom{suffix}"], device=first.device) for o in outputs)
                logs[f"{prefix}_wer{suffix}"] = _wer(_sum_over_ranks(num), _sum_over_ranks(denom))
        out: dict[str, Any] = {"log": logs}
        if f"{prefix}_loss" in logs:
            out[f"{prefix}_loss"] = logs[f"{prefix}_loss"]
        return out

    def multi_validation_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        """NeMo's ASR aggregation: mean ``val_loss``; ``val_wer`` = summed errors / summed reference words."""
        return self._epoch_end_metrics(outputs, "val")

    def multi_test_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        return self._epoch_end_metrics(outputs, "test")
