"""The LightningModule half of :class:`~compat.core.classes.ModelPT`: the hooks ``compat.Trainer`` calls.

As in Lightning, the model computes and the trainer trains:

* ``training_step(batch, batch_idx) -> {"loss": Tensor, "log": {...}}`` (or a bare loss) runs the forward pass and
  the loss with the model's own tensors; ``compat.Trainer`` (over ``nemofn.train.fit``) does the backward pass,
  clipping and the optimizer update. A subclass that overrides it changes training, as in NeMo.
* ``validation_step`` / ``test_step`` return NeMo's ``val_*`` / ``test_*`` metrics of a batch and append them to
  ``validation_step_outputs`` / ``test_step_outputs``; ``on_validation_epoch_end`` / ``on_test_epoch_end`` aggregate
  them (``multi_validation_epoch_end``; several loaders get NeMo's name prefixes) and ``log_dict`` the result.
* ``log`` / ``log_dict`` record values the trainer hands to its loggers (and to checkpointing, for monitored keys).
* ``on_train_start`` / ``on_train_batch_start``: NeMo's ``freeze_updates``. With ``model.freeze_updates:
  {enabled: true, modules: {encoder: -1}}`` a module is frozen for every step (``-1``), for the first ``N`` updates
  (``N``), or for updates ``[start, end]`` (``end`` ``-1``: to the end). A frozen module stays in training mode, so
  its BatchNorm statistics still update, as in NeMo.

The defaults here work for any functional unit with an ``objective`` (or ``network.objective``); the ASR models
override the steps with NeMo's own (``compat.models.ctc_models``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import OmegaConf

from nemofn.core.rng import RngKey
from nemofn.core.tree import tree_copy_

__all__ = ["LightningSteps", "unit_objective"]

log = logging.getLogger("compat.models")


def unit_objective(unit: Any, owner: str) -> Any:
    """The functional unit's objective: ``unit.objective``, else ``unit.network.objective``."""
    fn = getattr(unit, "objective", None)
    if fn is None:
        fn = getattr(getattr(unit, "network", None), "objective", None)
    if fn is None:
        raise NotImplementedError(
            f"{type(unit).__name__} has no objective (nor network.objective): give the functional model an "
            f"objective(params, buffers, batch, *, train, rng) method, or override {owner}.training_step / "
            "validation_step")
    return fn


class LightningSteps:
    """Steps, logging, epoch ends and ``freeze_updates`` (see the module doc)."""

    _trainer: Any

    # -- logging ----------------------------------------------------------------------------------------------------

    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool = True, on_step: bool | None = None,
            on_epoch: bool | None = None, sync_dist: bool = False, batch_size: int | None = None,
            **kwargs: Any) -> None:
        """Records ``value`` under ``name`` for the trainer's loggers (Lightning's ``self.log``).

        Values logged in ``training_step`` go out with that step's metrics; in validation, with the epoch's.
        Ranks are averaged by the trainer (``sync_dist`` is always on).
        """
        self.__dict__.setdefault("_logged", {})[name] = value

    def log_dict(self, dictionary: dict[str, Any], **kwargs: Any) -> None:
        """:meth:`log` for every item."""
        for name, value in dictionary.items():
            self.log(name, value, **kwargs)

    def pop_logged(self) -> dict[str, Any]:
        """The values logged since the last call (the trainer calls it)."""
        return self.__dict__.pop("_logged", {})

    # -- trainer views ----------------------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (the trainer's; 0 without one)."""
        return int(getattr(self._trainer, "global_step", 0) or 0)

    @property
    def current_epoch(self) -> int:
        return int(getattr(self._trainer, "current_epoch", 0) or 0)

    def optimizers(self) -> Any:
        """The optimizer (during ``fit``: a ``torch.optim.Optimizer`` face of the functional one)."""
        return getattr(self, "_optimizer", None)

    def lr_schedulers(self) -> Any:
        """The ``step -> lr`` schedule."""
        return getattr(self, "_scheduler", None)

    # -- steps ------------------------------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int = 0) -> dict[str, Any]:
        """The unit's objective on ``batch`` with the model's tensors: ``{"loss", "log": {train_loss, ...}}``.

        New buffers (BatchNorm statistics) are written into the model's state when it is in training mode.
        """
        state = self.fn_state
        objective = unit_objective(self.fn_model, type(self).__name__)
        loss, metrics, new_buffers = objective(state.params, state.buffers, batch, train=self.training,
                                               rng=RngKey(0) if self.training else None)
        if self.training and new_buffers:
            with torch.no_grad():
                tree_copy_(state.buffers, new_buffers)
        logs = {"train_loss": loss, **{k: v for k, v in metrics.items() if k != "loss"}}
        return {"loss": loss, "log": logs}

    def validation_pass(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """NeMo's shared body of validation and test: ``{"val_loss", ...}`` for one batch (no gradients)."""
        state = self.fn_state
        objective = unit_objective(self.fn_model, type(self).__name__)
        with torch.no_grad():
            loss, metrics, _ = objective(state.params, state.buffers, batch, train=False, rng=None)
        return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items() if k != "loss"}}

    def _append_output(self, outputs: list, loaders: Any, dataloader_idx: int, value: dict) -> None:
        if isinstance(loaders, (list, tuple)) and len(loaders) > 1:
            while len(outputs) < len(loaders):
                outputs.append([])
            outputs[dataloader_idx].append(value)
        else:
            outputs.append(value)

    def validation_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """:meth:`validation_pass`, recorded in :attr:`validation_step_outputs`."""
        metrics = self.validation_pass(batch, batch_idx, dataloader_idx)
        self._append_output(self.validation_step_outputs, self._validation_dl, dataloader_idx, metrics)
        return metrics

    def test_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """:meth:`validation_pass` with NeMo's ``test_*`` names, recorded in :attr:`test_step_outputs`."""
        metrics = self.validation_pass(batch, batch_idx, dataloader_idx)
        out = {k.replace("val_", "test_", 1): v for k, v in metrics.items()}
        self._append_output(self.test_step_outputs, self._test_dl, dataloader_idx, out)
        return out

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> Any:
        """Lightning's ``predict_step``: the model's forward on the batch's signal (``batch[0], batch[1]``)."""
        return self(batch[0], batch[1])

    # -- epoch ends -------------------------------------------------------------------------------------------------

    def multi_validation_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        """Aggregates one loader's validation outputs (default: the mean of every key, under ``log``)."""
        if not outputs:
            return {}
        return {"log": {k: torch.stack([torch.as_tensor(o[k], dtype=torch.float32) for o in outputs]).mean()
                        for k in outputs[0]}}

    def multi_test_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        return self.multi_validation_epoch_end(outputs, dataloader_idx)

    def _epoch_end(self, outputs: list, names: list[str] | None, primary: int, fn: Any, kind: str) -> dict[str, Any]:
        if not outputs:
            return {}
        if not isinstance(outputs[0], list):
            logs = dict(fn(outputs, 0).get("log", {}))
        else:
            logs = {}
            for idx, chunk in enumerate(outputs):
                part = fn(chunk, idx).get("log", {})
                prefix = names[idx] if names else f"{kind}_{idx}_"
                logs.update({f"{prefix}{k}": v for k, v in part.items()})
                if idx == primary:
                    logs.update(part)
        self.log_dict(logs, on_epoch=True, sync_dist=True)
        return logs

    def on_validation_epoch_end(self) -> dict[str, Any]:
        """Aggregates and clears :attr:`validation_step_outputs`, logs and returns the values (NeMo's prefixes)."""
        logs = self._epoch_end(self.validation_step_outputs, getattr(self, "_validation_names", None),
                               getattr(self, "_val_dl_idx", 0), self.multi_validation_epoch_end, "val")
        self.validation_step_outputs.clear()
        return logs

    def on_test_epoch_end(self) -> dict[str, Any]:
        """Aggregates and clears :attr:`test_step_outputs`, logs and returns the values."""
        logs = self._epoch_end(self.test_step_outputs, getattr(self, "_test_names", None),
                               getattr(self, "_test_dl_idx", 0), self.multi_test_epoch_end, "test")
        self.test_step_outputs.clear()
        return logs

    # -- NeMo's dynamic freezing ------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        """Reads ``cfg.freeze_updates`` once per ``fit`` (NeMo's ``on_train_start``)."""
        freeze = self._cfg.get("freeze_updates")
        if freeze is None or not freeze.get("enabled", False):
            self.__dict__["_freeze_cfg"] = None
            return
        modules = OmegaConf.to_container(freeze.get("modules") or {}, resolve=True)
        for name, steps in modules.items():
            if not isinstance(getattr(self, name, None), torch.nn.Module):
                known = sorted(n for n, _ in self.named_children())
                raise ValueError(f"model.freeze_updates.modules.{name}: the model has no submodule {name!r}; its "
                                 f"submodules are {known}")
            if isinstance(steps, list) and len(steps) != 2:
                raise ValueError(f"model.freeze_updates.modules.{name}={steps}: give -1 (always), N (the first N "
                                 "updates) or [start, end] (end -1: to the end)")
        self.__dict__["_freeze_cfg"] = {"modules": modules, "is_frozen": {name: False for name in modules}}

    def on_train_batch_start(self, batch: Any, batch_idx: int, unused: int = 0) -> None:
        """Freezes / unfreezes the ``freeze_updates`` modules for the coming update (NeMo's rule)."""
        freeze = self.__dict__.get("_freeze_cfg")
        if not freeze or not self.training:
            return
        update = self.global_step + 1
        for name, steps in freeze["modules"].items():
            if isinstance(steps, list):
                frozen = update >= steps[0] and (update <= steps[1] or steps[1] == -1)
            else:
                frozen = update <= steps or steps == -1
            module = getattr(self, name)
            if frozen and not freeze["is_frozen"][name]:
                module.freeze()
                module.train()
                freeze["is_frozen"][name] = True
            elif not frozen and freeze["is_frozen"][name]:
                module.unfreeze()
                freeze["is_frozen"][name] = False

    def on_train_end(self) -> None:
        """Forgets the ``freeze_updates`` bookkeeping (NeMo's cleanup)."""
        self.__dict__.pop("_freeze_cfg", None)

    # -- test preparation -------------------------------------------------------------------------------------------

    def prepare_test(self, trainer: Any) -> bool:
        """NeMo's check before ``trainer.test``: a ``test_ds`` exists and the trainer runs on one device."""
        if self._cfg.get("test_ds") is None:
            log.warning("no test_ds in the model config: there is nothing to test")
            return False
        devices = int(getattr(trainer, "num_devices", 1) or 1) * int(getattr(trainer, "num_nodes", 1) or 1)
        if devices > 1:
            log.warning("trainer.test runs on 1 device for an exact result; use Trainer(devices=1) (the test set is "
                        "not split across %d devices)", devices)
            return False
        self.set_trainer(trainer)
        return True
