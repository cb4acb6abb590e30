"""``ASRModel``: NeMo's base of the speech-recognition models (WER-aware validation bookkeeping).

``ASRModel.restore_from(path)`` (inherited from :class:`~compat.core.classes.ModelPT`) returns the concrete class
the archive's ``target`` names (``EncDecCTCModel``, ``EncDecCTCModelBPE``). Validation outputs carry NeMo's keys
``val_loss``, ``val_wer_num``, ``val_wer_denom``, ``val_wer``; the epoch end averages the loss and computes the
corpus WER from the summed counts, summed over the ranks too under DDP (each rank validates its share), so the
logged ``val_wer`` is the exact corpus WER.
"""

from __future__ import annotations

from typing import Any

import torch

from compat.core.classes.modelpt import ModelPT

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
    """Base class of the ASR models: validation metrics with NeMo's WER keys."""

    def _epoch_end_metrics(self, outputs: list[dict], prefix: str) -> dict[str, Any]:
        if not outputs:
            return {}
        loss = torch.stack([torch.as_tensor(o[f"{prefix}_loss"], dtype=torch.float32) for o in outputs]).mean()
        logs: dict[str, Any] = {f"{prefix}_loss": loss}
        if f"{prefix}_wer_num" in outputs[0]:
            device = loss.device
            num = sum(torch.as_tensor(o[f"{prefix}_wer_num"], device=device) for o in outputs)
            denom = sum(torch.as_tensor(o[f"{prefix}_wer_denom"], device=device) for o in outputs)
            logs[f"{prefix}_wer"] = _wer(_sum_over_ranks(num), _sum_over_ranks(denom))
        return {f"{prefix}_loss": loss, "log": logs}

    def multi_validation_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        """NeMo's ASR aggregation: mean ``val_loss``; ``val_wer`` = summed errors / summed reference words."""
        return self._epoch_end_metrics(outputs, "val")

    def multi_test_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        return self._epoch_end_metrics(outputs, "test")
