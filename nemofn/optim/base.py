"""The functional optimizer interface (Optax-shaped, PyTorch-kernel-backed).

An :class:`Optimizer` is a pair of functions over *lists* of tensors aligned with ``tree.leaves(params)``:

``init(params: list[Tensor]) -> OptState``
    Fresh optimizer state (a plain dict of tensors / lists of tensors; ``torch.save``-able).

``update(params, grads, opt_state, *, lr: float) -> OptState``
    One step. For speed it runs PyTorch's foreach/fused kernels, which write ``params`` and the state tensors
    **in place**; the returned state holds the same tensor objects. Callers treat the old ``opt_state`` as consumed.

Lists (not trees) keep the hot path free of per-step tree traversal: the train state flattens the parameter tree
once and reuses the list. The learning rate comes from a pure schedule ``step -> lr`` (``nemofn.optim.schedules``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

OptState = dict[str, Any]

__all__ = ["Optimizer", "OptState"]


@attrs.frozen
class Optimizer:
    """A named pair of pure-ish functions. ``hparams`` records the constructor arguments (for configs/logging)."""

    name: str
    init: Callable[[list[torch.Tensor]], OptState]
    update: Callable[..., OptState]
    hparams: dict = attrs.field(factory=dict)
