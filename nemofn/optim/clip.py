"""Gradient clipping by global norm over a list of gradients (foreach kernels, no host sync).

Numerically the same as ``torch.nn.utils.clip_grad_norm_`` (which NeMo/Lightning use for ``gradient_clip_val``):
``total = ||(||g_1||, ..., ||g_N||)||`` and every gradient is scaled by ``min(max_norm / (total + 1e-6), 1)``.
The scale is always applied (by 1 when no clipping is needed), so there is no data-dependent branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils import get_total_norm

__all__ = ["global_norm", "clip_by_global_norm"]


def global_norm(grads: Sequence[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Norm of all gradients viewed as one vector, as ``clip_grad_norm_`` computes it.

    Args:
        grads: gradient tensors (any shapes, dtypes, devices).
        norm_type: the p of the p-norm; ``float("inf")`` for the max norm.

    Returns:
        0-dim tensor on the first gradient's device (``tensor(0.)`` for an empty list).
    """
    return get_total_norm(list(grads), norm_type, error_if_nonfinite=False, foreach=None)


@torch.no_grad()
def clip_by_global_norm(grads: Sequence[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scales ``grads`` **in place** so that their global norm is at most ``max_norm``.

    Args:
        grads: gradient tensors, modified in place.
        max_norm: the largest allowed global norm.
        norm_type: the p of the p-norm; ``float("inf")`` for the max norm.

    Returns:
        The global norm *before* clipping (0-dim tensor), like ``clip_grad_norm_``.
    """
    grads = list(grads)
    total_norm = global_norm(grads, norm_type)
    if not grads:
        return total_norm
    coef = torch.clamp(float(max_norm) / (total_norm + 1e-6), max=1.0)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, device_grads in by_device.items():
        torch._foreach_mul_(device_grads, coef.to(device))
    return total_norm
