"""The objective protocol of ``train_step`` / ``eval_step``, and a ready objective for ``(inputs, targets)`` data.

Models provide the training objective as a function::

    objective(params, buffers, batch, *, train: bool, rng: RngKey | None)
        -> (loss: Tensor [], metrics: dict[str, Tensor], new_buffers: tree)

``loss`` is the scalar to minimise, ``metrics`` are extra scalars to log (detached or not; the step detaches them),
``new_buffers`` is the model's ``apply`` output buffers (same structure as ``buffers``; ``{}`` when nothing changes
or when the objective already wrote them). It must be pure like ``apply``: no host syncs, no mutation. ``rng`` is
the run's *base* key, the same object every step (so ``torch.compile`` does not recompile); the step seeds torch's
global generator from ``key.fold_in(step).fold_in(rank)`` before calling it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import torch

from nemofn.core.rng import RngKey
from nemofn.core.tree import Tree

__all__ = ["Objective", "SupervisedObjective"]


class Objective(Protocol):
    """``objective(params, buffers, batch, *, train, rng) -> (loss, metrics, new_buffers)``; see the module doc."""

    def __call__(self, params: Tree, buffers: Tree, batch: Any, *, train: bool,
                 rng: RngKey | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], Tree]: ...


@attrs.frozen
class SupervisedObjective:
    """An :class:`Objective` for ``(inputs, targets)`` batches: ``loss_fn(model.apply(..., inputs), targets)``.

    Picklable (for ``ddp_spawn``) when ``loss_fn`` is a module-level function such as ``F.mse_loss``.

    Args:
        model: a nemofn ``Module`` whose ``apply(params, buffers, inputs, train=, rng=)`` returns
            ``(outputs, new_buffers)``.
        loss_fn: ``loss_fn(outputs, targets) -> Tensor []`` (mean reduction).
    """

    model: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, params: Tree, buffers: Tree, batch: Any, *, train: bool,
                 rng: RngKey | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], Tree]:
        inputs, targets = batch
        outputs, new_buffers = self.model.apply(params, buffers, inputs, train=train, rng=rng)
        return self.loss_fn(outputs, targets), {}, new_buffers
