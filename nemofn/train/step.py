"""``train_step`` and ``eval_step``: plain functions over a :class:`~nemofn.core.state.TrainState`.

``train_step(state, batch, cfg, runtime=None)`` runs forward and backward on each micro-batch (gradients land in
the parameters' ``.grad``: ``loss.backward()``, or ``fabric.backward`` with a runtime, so DDP averages them), copies
the new buffers into the state's buffers, clips by global norm, and updates the parameters and optimizer state in
place with the lr ``cfg.schedule(state.step)``. It returns a new state and consumes the old one. Metrics are tensors
(no ``.item()``): the caller syncs only when it logs.

Frozen parameters (``requires_grad=False``, e.g. after ``model.encoder.freeze()`` in compat) get no gradient, are
left out of clipping and of the optimizer update (:func:`nemofn.optim.masked.masked_update`), and stay unchanged.

Non-finite steps (``StepConfig.skip_nonfinite``, on by default): when the loss or the gradient norm (before clipping;
computed for the check even when it is not reported) is NaN or Inf, the step is left out exactly: parameters,
buffers (BatchNorm running statistics and ``num_batches_tracked``) and every optimizer-state tensor (moments, step
counts) stay bitwise as they were, and ``metrics["skipped"]`` is 1. ``state.step`` still advances, and with it the
lr schedule, the step's RNG key and (in the loop) the data position: the same choice as Lightning, whose
``global_step`` advances over a step NeMo's ``skip_nan_grad`` zeroes. How (:mod:`nemofn.optim.guard`): on the CPU
the flag is read (free: nothing runs asynchronously) and the update is not run; on a GPU it is not read (no host
sync): the update runs as usual, then each tensor keeps either its new value or a copy taken before. Buffers are
copied before the forward (an objective may write them in place, as compat models do). Under DDP the flag is
all-reduced (MIN) so that every rank skips together. With ``16-mixed`` GradScaler already skips the optimizer on
overflow; the guard agrees (the unscaled norm is Inf) and the step counts as skipped. Counting skips and stopping
after too many in a row is the loop's job (:mod:`nemofn.train.skips`).

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
from nemofn.optim.base import Optimizer
from nemofn.optim.clip import clip_by_global_norm, global_norm
from nemofn.optim.guard import Snapshot, UpdateGuard, all_finite
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
        clipping, over the trainable parameters; unless ``track_grad_norm`` is off and there is no clipping),
        ``skipped`` (int64 0/1: the update was left out, with ``skip_nonfinite``), all 0-dim tensors on the
        device, and ``lr`` (float).
    """
    state.check_live()
    micro = batch.batches if isinstance(batch, MicroBatches) else (batch,)
    n = len(micro)
    model = state.model
    lr = float(cfg.schedule(state.step))
    if runtime is not None:
        runtime.shim.param_groups[0]["lr"] = lr  # readable during the forward, as torch.optim's lr is
    state.step_key(0 if runtime is None else runtime.rank).seed_global()
    # Buffers may be written during the forward (compat models do), so they are copied before it.
    buffers = Snapshot(model.buffer_list) if cfg.skip_nonfinite else None

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
    active = trainable_indices(params)
    grad_norm = None
    finite = None
    if runtime is None:
        grads = collect_grads(params, model.param_names, active)
        if cfg.clip_grad_norm is not None:
            grad_norm = clip_by_global_norm(grads, cfg.clip_grad_norm)
        elif cfg.track_grad_norm:
            grad_norm = global_norm(grads)
        if cfg.skip_nonfinite:
            finite = all_finite(loss_sum, grad_norm if grad_norm is not None else global_norm(grads))
        guard = UpdateGuard(finite, params, state.opt_state, active)
        opt_state = state.opt_state
        if guard.run_update:  # false only when a CPU step is known to be non-finite: nothing to undo then
            opt_state = masked_update(cfg.optimizer, params, grads, opt_state, active, lr=lr)
        opt_state = guard.settle(opt_state)
    else:
        if cfg.clip_grad_norm is not None or cfg.track_grad_norm:
            max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
            grad_norm = runtime.fabric.clip_gradients(runtime.module, runtime.optimizer, max_norm=max_norm,
                                                      error_if_nonfinite=False)
        if cfg.skip_nonfinite:
            # Without clipping the gradients may still be scaled (16-mixed): finite iff their unscaled values are.
            norm = grad_norm if grad_norm is not None else global_norm([p.grad for p in params if p.grad is not None])
            finite = _agree_over_ranks(all_finite(loss_sum, norm), runtime)
        shim = runtime.shim
        shim.opt_state = state.opt_state
        guard = UpdateGuard(finite, params, shim.opt_state, active)
        # Through the precision plugin even when skipping: GradScaler (16-mixed) keeps its bookkeeping, and skips
        # the update itself on overflow (the guard then agrees: the unscaled norm is Inf).
        with contextlib.nullcontext() if guard.run_update else _no_update(shim):
            runtime.optimizer.step()
        opt_state, shim.opt_state = guard.settle(shim.opt_state), None
    if buffers is not None:
        buffers.restore_unless(finite)
    for p in params:
        p.grad = None

    out: dict[str, Any] = {"loss": loss_sum / n if n > 1 else loss_sum, "lr": lr}
    for k, v in metric_sums.items():
        out[k] = v / n if n > 1 else v
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    if finite is not None:
        out["skipped"] = torch.logical_not(finite).long()
    state.consume("train_step")
    return attrs.evolve(state, opt_state=opt_state, step=state.step + 1), out


_NO_UPDATE = Optimizer("no_update", init=lambda params: {}, update=lambda params, grads, opt_state, *, lr: opt_state)


@contextlib.contextmanager
def _no_update(shim: Any) -> Any:
    """The optimizer shim steps nothing while inside (a skipped step on the CPU, known on the host)."""
    functional, shim.functional = shim.functional, _NO_UPDATE
    try:
        yield
    finally:
        shim.functional = functional


def _agree_over_ranks(finite: torch.Tensor, runtime: Any) -> torch.Tensor:
    """``finite`` on every rank (a MIN all-reduce, no host sync): gradients are already averaged, but a loss is
    per rank, and all ranks must skip together or their parameters would drift apart."""
    if runtime.fabric.world_size <= 1 or not torch.distributed.is_initialized():
        return finite
    flag = finite.to(torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return flag.bool()


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
