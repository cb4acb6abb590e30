"""``ASRModel``: NeMo's base of the speech-recognition models (WER-aware validation bookkeeping).

``ASRModel.restore_from(path)`` (inherited from :class:`~compat.core.classes.ModelPT`) returns the concrete class
the archive's ``target`` names (``EncDecCTCModel``, ``EncDecCTCModelBPE``). Validation outputs carry NeMo's keys
``val_loss``, ``val_wer_num``, ``val_wer_denom``, ``val_wer``; the epoch end averages the loss and computes the
corpus WER from the summed counts.
"""

from __future__ import annotations

from typing import Any

import torch

from compat.core.classes.modelpt import ModelPT

__all__ = ["ASRModel"]


def _wer(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``num / denom`` as float32 (NeMo's ``WER.compute``; no host sync, so 0 reference words give nan / inf)."""
    return torch.as_tensor(num, dtype=torch.float32) / torch.as_tensor(denom, dtype=torch.float32)


class ASRModel(ModelPT):
    """Base class of the ASR models: validation metrics with NeMo's WER keys."""

    def validation_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``{loss, wer_num, wer_denom}`` from ``eval_step`` -> NeMo's ``val_loss``, ``val_wer_num``,
        ``val_wer_denom``, ``val_wer``."""
        out = {"val_loss": metrics["loss"]}
        if "wer_num" in metrics and "wer_denom" in metrics:
            out["val_wer_num"] = metrics["wer_num"]
            out["val_wer_denom"] = metrics["wer_denom"]
            out["val_wer"] = _wer(metrics["wer_num"], metrics["wer_denom"])
        out.update({f"val_{k}": v for k, v in metrics.items() if k not in ("loss", "wer_num", "wer_denom")})
        return out

    def _epoch_end_metrics(self, outputs: list[dict], prefix: str) -> dict[str, Any]:
        if not outputs:
            return {}
        loss = torch.stack([torch.as_tensor(o[f"{prefix}_loss"], dtype=torch.float32) for o in outputs]).mean()
        logs: dict[str, Any] = {f"{prefix}_loss": loss}
        if f"{prefix}_wer_num" in outputs[0]:
            num = sum(torch.as_tensor(o[f"{prefix}_wer_num"]) for o in outputs)
            denom = sum(torch.as_tensor(o[f"{prefix}_wer_denom"]) for o in outputs)
            logs[f"{prefix}_wer"] = _wer(num, denom)
        return {f"{prefix}_loss": loss, "log": logs}

    def multi_validation_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        """NeMo's ASR aggregation: mean ``val_loss``; ``val_wer`` = summed errors / summed reference words."""
        return self._epoch_end_metrics(outputs, "val")

    def multi_test_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        return self._epoch_end_metrics(outputs, "test")
