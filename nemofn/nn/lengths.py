"""Length checks shared by the masked layers."""

from __future__ import annotations

import torch

__all__ = ["all_full_length"]


def all_full_length(lengths: torch.Tensor, t: int) -> bool:
    """True when every length is at least ``t`` (no padded frame, so a length mask would mask nothing), checked only
    where that is free and worth it: inference (``torch.inference_mode``, as transcribe runs) on lengths that live on
    the CPU, outside torch.compile. False otherwise, which only means "apply the mask" (training and evaluation
    steps never read lengths back to the host)."""
    return (not torch.compiler.is_compiling() and torch.is_inference_mode_enabled() and lengths.device.type == "cpu"
            and bool((lengths >= t).all()))
