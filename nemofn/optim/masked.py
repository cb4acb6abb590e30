"""Updating only some parameters: frozen parameters get no gradient and are left out of the step.

A functional optimizer updates every tensor of the lists it is given, and its state holds one entry per parameter
(lists of tensors, or tensors whose leading dimension is the parameter count, e.g. Novograd's per-layer second
moments). :func:`masked_update` runs the optimizer on the trainable subset only and writes the subset's state back
into the full state, so:

* a frozen parameter is not touched at all (no weight decay, no momentum), as in ``torch.optim``, which skips
  parameters whose ``.grad`` is ``None``;
* its state entries keep their values (Adam's step counter does not advance), so a module that is unfrozen later
  (NeMo's ``freeze_updates`` ranges) starts from the state it had, exactly as ``torch.optim`` would;
* the full state keeps its layout, so checkpoints do not depend on what was frozen when they were written.

:func:`init_masked` creates the state of the trainable parameters only: list entries of frozen parameters are
``None`` placeholders (no memory for the moments of a frozen encoder), filled by ``optimizer.init`` the first time
the parameter is updated, which is what ``torch.optim`` does lazily. Entries that are one stacked tensor for all
parameters (Novograd's per-layer second moments) are created for all of them (one number per parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nemofn.optim.base import LearningRate, Optimizer, OptState

__all__ = ["init_masked", "masked_update", "subset_state", "merge_subset_state"]


def _per_param(value: Any, n: int) -> bool:
    if isinstance(value, list):
        return len(value) == n
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def subset_state(opt_state: OptState, active: Sequence[int], n: int) -> OptState:
    """The state restricted to the parameters ``active`` (indices into the ``n`` parameters).

    List entries share their tensors with ``opt_state``; stacked tensor entries are gathered into new tensors (write
    them back with :func:`merge_subset_state`).
    """
    out: OptState = {}
    index = None
    for key, value in opt_state.items():
        if not _per_param(value, n):
            out[key] = value
        elif isinstance(value, list):
            out[key] = [value[i] for i in active]
        else:
            if index is None:
                index = torch.as_tensor(list(active), dtype=torch.long, device=value.device)
            out[key] = value.index_select(0, index.to(value.device))
    return out


@torch.no_grad()
def merge_subset_state(opt_state: OptState, sub: OptState, active: Sequence[int], n: int) -> OptState:
    """Writes a subset state (from :func:`subset_state`, after an update) back into ``opt_state``, in place."""
    for key, value in opt_state.items():
        if not _per_param(value, n):
            opt_state[key] = sub[key]
        elif isinstance(value, list):
            for j, i in enumerate(active):
                value[i] = sub[key][j]
        else:
            value.index_copy_(0, torch.as_tensor(list(active), dtype=torch.long, device=value.device), sub[key])
    return opt_state


def init_masked(optimizer: Optimizer, params: Sequence[torch.Tensor], active: Sequence[int] | None) -> OptState:
    """``optimizer.init(params)``, with ``None`` placeholders in the list entries of the parameters not in
    ``active`` (``None``: all are active, the plain init)."""
    full = optimizer.init(list(params))
    if active is None:
        return full
    n, keep = len(params), set(active)
    for key, value in full.items():
        if isinstance(value, list) and len(value) == n:
            full[key] = [v if i in keep else None for i, v in enumerate(value)]
    return full


def _fill_placeholders(optimizer: Optimizer, params: Sequence[torch.Tensor], sub: OptState) -> None:
    """Creates, with ``optimizer.init``, the list entries still ``None`` for the parameters in ``params``."""
    missing = sorted({j for value in sub.values() if isinstance(value, list) and len(value) == len(params)
                      for j, v in enumerate(value) if v is None})
    if not missing:
        return
    fresh = optimizer.init([params[j] for j in missing])
    for key, value in sub.items():
        if isinstance(value, list) and len(value) == len(params) and isinstance(fresh.get(key), list):
            for k, j in enumerate(missing):
                if value[j] is None:
                    value[j] = fresh[key][k]


def masked_update(optimizer: Optimizer, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                  opt_state: OptState, active: Sequence[int] | None, *, lr: LearningRate) -> OptState:
    """``optimizer.update`` on the parameters ``active`` only (``None``: all of them, the fast path).

    Args:
        optimizer: a functional optimizer.
        params: all parameters (the state's order).
        grads: the gradients of the ``active`` parameters, in that order (all gradients when ``active`` is None).
        opt_state: the optimizer state of all parameters (updated in place and returned).
        active: indices of the parameters to update.
        lr: the learning rate.
    """
    if active is None:
        _fill_placeholders(optimizer, list(params), opt_state)
        return optimizer.update(list(params), list(grads), opt_state, lr=lr)
    if not active:
        return opt_state
    n = len(params)
    chosen = [params[i] for i in active]
    sub = subset_state(opt_state, active, n)
    _fill_placeholders(optimizer, chosen, sub)
    sub = optimizer.update(chosen, list(grads), sub, lr=lr)
    return merge_subset_state(opt_state, sub, active, n)
