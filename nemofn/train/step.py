"""``train_step`` and ``eval_step``: plain functions over a :class:`~nemofn.core.state.TrainState`.

``train_step(state, batch, cfg, runtime=None)`` runs forward and backward on each micro-batch (gradients land in
the parameters' ``.grad``: ``loss.backward()``, or ``fabric.backward`` with a runtime, so DDP averages them), copies
the new buffers into the state's buffers, clips by global norm, and updates the parameters and optimizer state in
place with the lr ``cfg.schedule(state.step)``. It returns a new state and consumes the old one. Metrics are tensors
(no ``.item()``): the caller syncs only when it logs.

Frozen parameters (``requires_grad=False``, e.g. after ``model.encoder.freeze()`` in compat) get no gradient, are
left out of clipping and of the optimizer update (:func:`nemofn.optim.masked.masked_update`), and stay unchanged.

Batches are moved to the state's device first (tensors inside tuples, lists and dicts; a no-op for batches a Fabric
loader already moved), so a state on ``cuda`` takes host batches as they come from a ``DataLoader``.

Without Fabric (``runtime=None``) the objective is called directly on the state's trees. With a
:class:`~nemofn.train.adapter.FabricRuntime` it goes through the Fabric-wrapped :class:`TreeModule` (DDP hooks,
autocast), ``fabric.backward`` (GradScaler for ``16-mixed``), ``fabric.no_backward_sync`` on all micro-batches
but the last, ``fabric.clip_gradients`` (unscales first) and the optimizer shim (GradScaler's skip on overflow).
The objective protocol is in :mod:`nemofn.train.objective`, the step options in :mod:`nemofn.train.step_config`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import attrs
import torch

from nemofn.core.state import TrainState
from nemofn.core.tree import tree_copy_
from nemofn.optim.clip import clip_by_global_norm, global_norm
from nemofn.optim.masked import masked_update
from nemofn.train.adapter import collect_grads, trainable_indices
from nemofn.train.data import to_device
from nemofn.train.objective import Objective, SupervisedObjective
from nemofn.train.step_config import MicroBatches, StepConfig

__all__ = ["Objective", "StepConfig", "MicroBatches", "SupervisedObjective", "train_step", "eval_step"]


def _batchnorm_sync(cfg: StepConfig) -> contextlib.AbstractContextManager:
    if not cfg.sync_batchnorm:
        return contextlib.nullcontext()
    from nemofn.nn.sync_batchnorm import sync_batchnorm

    return sync_batchnorm()


def _forward(state: TrainState, cfg: StepConfig, runtime: Any, batch: Any, *, train: bool) -> tuple:
    rng = state.rng if train else None
    batch = to_device(batch, state.model.device)  # a no-op for batches a Fabric loader already moved
    with _batchnorm_sync(cfg) if train else contextlib.nullcontext():
        if runtime is None:
            out = cfg.objective_fn(state.model.params, state.model.buffers, batch, train=train, rng=rng)
        else:
            out = runtime.module(cfg.objective_fn, batch, train=train, rng=rng)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError(f"the objective must return (loss, metrics, new_buffers), got {type(out).__name__}"
                        f"{f' of length {len(out)}' if isinstance(out, tuple) else ''}")
    return out


def train_step(state: TrainState, batch: Any, cfg: StepConfig, *,
               runtime: Any = None) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer step. Consumes ``state``; returns ``(new_state, metrics)``.

    Args:
        state: the live :class:`TrainState` (its tensors are updated in place).
        batch: one batch, or :class:`MicroBatches` for gradient accumulation.
        cfg: the :class:`StepConfig`.
        runtime: a :class:`~nemofn.train.adapter.FabricRuntime` from ``setup_fabric``, or ``None``.

    Returns:
        ``metrics``: ``loss`` (mean over micro-batches), the objective's metrics (means), ``grad_norm`` (before
        clipping, over the trainable parameters; unless ``track_grad_norm`` is off and there is no clipping), all
        0-dim tensors on the device, and ``lr`` (float).
    """
    state.check_live()
    micro = batch.batches if isinstance(batch, MicroBatches) else (batch,)
    n = len(micro)
    model = state.model
    lr = float(cfg.schedule(state.step))
    if runtime is not None:
        runtime.shim.param_groups[0]["lr"] = lr  # readable during the forward, as torch.optim's lr is
    state.step_key(0 if runtime is None else runtime.rank).seed_global()

    loss_sum: torch.Tensor | None = None
    metric_sums: dict[str, torch.Tensor] = {}
    for i, mb in enumerate(micro):
        accumulating = i < n - 1
        sync_ctx = (runtime.fabric.no_backward_sync(runtime.module, enabled=accumulating)
                    if runtime is not None and n > 1 else contextlib.nullcontext())
        with sync_ctx:
            loss, metrics, new_buffers = _forward(state, cfg, runtime, mb, train=True)
            scaled = loss / n if n > 1 else loss
            if runtime is None:
                scaled.backward()
            else:
                runtime.fabric.backward(scaled)
        if new_buffers:
            tree_copy_(model.buffers, new_buffers)
        loss = loss.detach()
        loss_sum = loss if loss_sum is None else loss_sum + loss
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            metric_sums[k] = v if k not in metric_sums else metric_sums[k] + v

    params = model.param_list
    grad_norm = None
    if runtime is None:
        active = trainable_indices(params)
        grads = collect_grads(params, model.param_names, active)
        if cfg.clip_grad_norm is not None:
            grad_norm = clip_by_global_norm(grads, cfg.clip_grad_norm)
        elif cfg.track_grad_norm:
            grad_norm = global_norm(grads)
        opt_state = masked_update(cfg.optimizer, params, grads, state.opt_state, active, lr=lr)
    else:
        if cfg.clip_grad_norm is not None or cfg.track_grad_norm:
            max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
            grad_norm = runtime.fabric.clip_gradients(runtime.module, runtime.optimizer, max_norm=max_norm,
                                                      error_if_nonfinite=False)
        shim = runtime.shim
        shim.opt_state = state.opt_state
        runtime.optimizer.step()
        opt_state, shim.opt_state = shim.opt_state, None
    for p in params:
        p.grad = None

    out: dict[str, Any] = {"loss": loss_sum / n if n > 1 else loss_sum, "lr": lr}
    for k, v in metric_sums.items():
        out[k] = v / n if n > 1 else v
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    state.consume("train_step")
    return attrs.evolve(state, opt_state=opt_state, step=state.step + 1), out


@torch.no_grad()
def eval_step(state: TrainState, batch: Any, cfg: StepConfig, *, runtime: Any = None) -> dict[str, torch.Tensor]:
    """Evaluates the objective with ``train=False`` and no gradients; the state is not consumed or changed.

    Returns:
        ``{"loss": Tensor [], **metrics}`` (detached tensors on the device; nothing is synced to the host).
    """
    state.check_live()
    loss, metrics, _ = _forward(state, cfg, runtime, batch, train=False)
    out = {"loss": loss.detach()}
    out.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()})
    return out
