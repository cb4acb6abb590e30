"""Length checks shared by the masked layers."""

from __future__ import annotations

import torch

__all__ = ["all_full_length"]


def all_full_length(lengths: torch.Tensor, t: int) -> bool:
    """True when every length is at least ``t`` (no padded frame, so a length mask would mask nothing) and reading
    that is free: the lengths live on the CPU and nothing is being traced by torch.compile. False otherwise,
    which only means "apply the mask"."""
    return lengths.device.type == "cpu" and not torch.compiler.is_compiling() and bool((lengths >= t).all())
