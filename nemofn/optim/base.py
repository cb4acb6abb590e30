"""The functional optimizer interface (Optax-shaped, PyTorch-kernel-backed).

An :class:`Optimizer` is a pair of functions over *lists* of tensors aligned with ``tree.leaves(params)``:

``init(params: list[Tensor]) -> OptState``
    Fresh optimizer state (a plain dict of tensors / lists of tensors; ``torch.save``-able).

``update(params, grads, opt_state, *, lr: float | Tensor) -> OptState``
    One step. For speed it runs PyTorch's foreach/fused kernels, which write ``params`` and the state tensors
    **in place**; the returned state holds the same tensor objects. Callers treat the old ``opt_state`` as consumed.
    ``grads`` are read, never written (clipping, which does write them, is a separate step).

Lists (not trees) keep the hot path free of per-step tree traversal: the train state flattens the parameter tree
once and reuses the list. The learning rate comes from a pure schedule ``step -> lr`` (``nemofn.optim.schedules``).

Learning rate types: every optimizer accepts a Python ``float``; a 0-dim tensor ``lr`` is accepted too, so that a
compiled train step can take the lr as a graph input instead of recompiling for each new float. What a tensor
``lr`` costs differs per optimizer and is stated in each constructor's docstring.

State and resuming: ``opt_state`` is a dict of tensors, lists of tensors (and ``None`` placeholders, which are
filled on the first step exactly as ``torch.optim`` does). ``torch.save(opt_state)`` then ``torch.load`` gives
a state whose continuation is bit-identical to the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

OptState = dict[str, Any]
LearningRate = float | torch.Tensor

__all__ = ["Optimizer", "OptState", "LearningRate", "check_update_args", "check_lr"]


@attrs.frozen
class Optimizer:
    """A named pair of pure-ish functions. ``hparams`` records the constructor arguments (for configs/logging)."""

    name: str
    init: Callable[[list[torch.Tensor]], OptState]
    update: Callable[..., OptState]
    hparams: dict = attrs.field(factory=dict)


def check_update_args(name: str, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      opt_state: OptState, state_key: str | None) -> None:
    """Cheap structural checks run at the top of every ``update`` (no tensor maths, no host sync).

    Raises:
        ValueError: if ``params``/``grads``/``opt_state[state_key]`` have different lengths, with the fix.
    """
    if len(params) != len(grads):
        raise ValueError(f"{name}.update: got {len(params)} params but {len(grads)} grads; pass one gradient per "
                         "parameter, in the same order (leave frozen parameters out of both lists)")
    if state_key is not None:
        if state_key not in opt_state:
            raise ValueError(f"{name}.update: opt_state has no {state_key!r} entry (keys: {sorted(opt_state)}); "
                             f"create it with {name}(...).init(params)")
        state = opt_state[state_key]
        n = state.shape[0] if isinstance(state, torch.Tensor) else len(state)
        if n != len(params):
            raise ValueError(f"{name}.update: opt_state[{state_key!r}] holds {n} entries for {len(params)} params; "
                             "the state was created for a different parameter list")


def check_lr(name: str, lr: LearningRate) -> None:
    """Rejects a tensor ``lr`` with more than one element (a 0-dim or 1-element tensor is fine)."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{name}.update: a tensor lr must have exactly one element, got shape {tuple(lr.shape)}")
