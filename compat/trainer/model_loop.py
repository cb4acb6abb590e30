"""How ``compat.Trainer`` runs a compat model on ``nemofn.train.fit``: the model's hooks as the loop's pieces.

``nemofn.train.fit`` knows objectives, validation functions and loop callbacks; a Lightning-style model has
``training_step``, ``validation_step``, ``on_validation_epoch_end`` and friends. Three adapters connect them:

* :class:`TrainingStepObjective`: the loop's objective calls ``model.training_step(batch, batch_idx)`` and
  returns its loss (the loop does the backward pass, clipping and the update). The model computes with its own
  tensors, which are the very tensors the loop's Fabric module registered, so DDP averages their gradients.
* :func:`run_evaluation`: one pass of ``validation_step`` / ``test_step`` over the loaders in eval mode (batches
  on Fabric's device, under its precision's autocast), then the epoch end; returns what the model logged,
  averaged over ranks. Submodule modes are restored afterwards, as Lightning's evaluation loop does.
* :class:`HookDispatcher`: the loop's callback. It keeps the trainer's counters, calls the model's hooks
  (``on_train_start``, ``on_train_batch_start``, ...), the trainer's Lightning callbacks, and the loggers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from nemofn.core.tree import Tree
from nemofn.train.data import limited_batches
from nemofn.train.logging import to_floats

__all__ = ["TrainingStepObjective", "run_evaluation", "HookDispatcher", "call_callbacks"]


def _as_loss_and_logs(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, dict) and "loss" in out:
        logs = out.get("log") or {}
        return out["loss"], dict(logs)
    raise TypeError(f"training_step must return the loss (a tensor) or a dict with a 'loss' entry, got "
                    f"{type(out).__name__}")


def _scalar_metrics(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                out[key] = value.detach().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class TrainingStepObjective:
    """The loop's objective: ``model.training_step(batch, batch_idx)`` (the ``params`` / ``buffers`` the loop
    passes are the model's own tensors; the model reads them itself, and writes new buffers itself)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.batch_idx = 0

    def __call__(self, params: Tree, buffers: Tree, batch: Any, *, train: bool, rng: Any):
        model = self.model
        model.pop_logged()
        loss, logs = _as_loss_and_logs(model.training_step(batch, self.batch_idx))
        logs.update(model.pop_logged())
        return loss, _scalar_metrics(logs), {}


def _capture_modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def _restore_modes(model: torch.nn.Module, modes: dict[str, bool]) -> None:
    for name, module in model.named_modules():
        if name in modes:
            module.training = modes[name]


def run_evaluation(model: Any, loaders: Sequence[Any], limit: int | float | None, *, stage: str = "validate",
                   fabric: Any = None) -> dict[str, float]:
    """``validation_step`` (or ``test_step``) over every loader in eval mode, then the epoch end.

    Args:
        model: the compat model.
        loaders: the loaders (Fabric-wrapped or plain; plain batches are moved to ``fabric``'s / the model's device).
        limit: ``limit_val_batches`` / ``limit_test_batches`` (an int cap or a float fraction per loader).
        stage: ``"validate"`` or ``"test"``.
        fabric: the launched Fabric (for the device and the mean over ranks), or ``None``.

    Returns:
        What the model logged (``val_loss``, ``val_wer``, ...) as floats, averaged over ranks.
    """
    step = model.validation_step if stage == "validate" else model.test_step
    end = model.on_validation_epoch_end if stage == "validate" else model.on_test_epoch_end
    outputs = model.validation_step_outputs if stage == "validate" else model.test_step_outputs
    outputs.clear()
    several = len(loaders) > 1
    modes = _capture_modes(model)
    model.eval()
    model.pop_logged()
    # Lightning runs validation and test steps under the precision plugin's autocast too (bf16-mixed: the same
    # lower-precision matmuls as the training forward); training steps get it from Fabric's module wrapper.
    autocast = fabric.autocast() if fabric is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            for dl_idx, loader in enumerate(loaders):
                total = limited_batches(len(loader), limit, f"limit_{'val' if stage == 'validate' else 'test'}"
                                                            "_batches")
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= total:
                        break
                    batch = _to_device(batch, model, fabric)
                    if several:
                        step(batch, batch_idx, dl_idx)
                    else:
                        step(batch, batch_idx)
            returned = end() or {}
        logged = {**_scalar_metrics(returned if isinstance(returned, dict) else {}), **_scalar_metrics(
            model.pop_logged())}
    finally:
        _restore_modes(model, modes)
    values = to_floats(logged)
    if fabric is not None and fabric.world_size > 1 and values:
        means = fabric.all_reduce({k: torch.tensor(v, device=fabric.device) for k, v in values.items()},
                                  reduce_op="mean")
        values = to_floats(means)
    return values


def _to_device(batch: Any, model: Any, fabric: Any) -> Any:
    if fabric is not None:
        return fabric.to_device(batch)
    device = model.device

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return move(batch)


def call_callbacks(trainer: Any, hook: str, *args: Any) -> None:
    """Calls ``callback.<hook>(trainer, model, *args)`` on every Lightning-style callback that has the hook."""
    for callback in trainer.callbacks:
        fn = getattr(callback, hook, None)
        if callable(fn):
            fn(trainer, trainer.lightning_module, *args)


class HookDispatcher:
    """The loop callback that drives the model's and the trainer's Lightning hooks (see the module doc)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def _model(self) -> Any:
        return self.trainer.lightning_module

    def _sync(self, ctx: Any) -> None:
        trainer = self.trainer
        trainer._fit_context = ctx
        trainer.global_step = ctx.global_step
        trainer.current_epoch = ctx.epoch
        if trainer.should_stop:
            ctx.should_stop = True

    def on_fit_start(self, ctx: Any) -> None:
        self._sync(ctx)
        self._model._optimizer = ctx.runtime.shim  # a torch.optim face: param_groups[0]["lr"] is the live lr
        call_callbacks(self.trainer, "on_fit_start")
        self._model.on_train_start()
        call_callbacks(self.trainer, "on_train_start")

    def on_train_epoch_start(self, ctx: Any) -> None:
        self._sync(ctx)
        call_callbacks(self.trainer, "on_train_epoch_start")

    def on_train_batch_start(self, ctx: Any, batch: Any, batch_idx: int) -> None:
        self._sync(ctx)
        self.trainer._objective.batch_idx = batch_idx
        self._model.on_train_batch_start(batch, batch_idx)
        call_callbacks(self.trainer, "on_train_batch_start", batch, batch_idx)

    def on_train_batch_end(self, ctx: Any, metrics: dict[str, Any], batch_idx: int) -> None:
        self._sync(ctx)
        call_callbacks(self.trainer, "on_train_batch_end", metrics, None, batch_idx)
        if self.trainer.should_stop:
            ctx.should_stop = True

    def on_log(self, ctx: Any, values: dict[str, float]) -> None:
        self.trainer._log_metrics(values, ctx.global_step)

    def on_validation_end(self, ctx: Any, values: dict[str, float]) -> None:
        self._sync(ctx)
        self.trainer.callback_metrics.update(values)
        self.trainer._log_metrics(values, ctx.global_step)
        call_callbacks(self.trainer, "on_validation_end")
        if self.trainer.should_stop:
            ctx.should_stop = True

    def on_train_epoch_end(self, ctx: Any) -> None:
        self._sync(ctx)
        call_callbacks(self.trainer, "on_train_epoch_end")
        if self.trainer.should_stop:
            ctx.should_stop = True

    def on_fit_end(self, ctx: Any) -> None:
        self._sync(ctx)
        self._model.on_train_end()
        call_callbacks(self.trainer, "on_train_end")
        call_callbacks(self.trainer, "on_fit_end")
