"""Optimization and the step methods of :class:`~compat.core.classes.ModelPT`, over ``nemofn.train``.

``setup_optimization(optim_config=None, optim_kwargs=None) -> (optimizer, schedule)`` reads NeMo's ``optim:`` block
(``name`` / ``_target_``, ``lr``, optimizer keys or ``args``, ``sched``) and builds a functional optimizer and a
``step -> lr`` schedule (``nemofn.optim.build_optimization``). ``max_steps`` follows NeMo's rules:

* with a trainer-like object attached (duck-typed: ``max_steps``, ``max_epochs``, ``accumulate_grad_batches``,
  ``limit_train_batches``, ``num_devices``, ``num_nodes``): ``trainer.max_steps >= 0`` becomes
  ``sched.max_steps``; otherwise ``sched.t_max_epochs`` etc. are recorded and ``max_steps`` is computed from the
  training loader with NeMo's ``compute_max_steps``;
* without a trainer, ``sched.max_steps`` is used as given (NeMo silently drops the schedule here; compat builds it);
* a schedule that needs ``max_steps`` and gets none raises ``ValueError`` saying how to give one.

The model then owns a :class:`~nemofn.core.state.TrainState` (``model.train_state``: its ``ModelState`` is
``model.fn_state``, the same tensors) and a :class:`~nemofn.train.StepConfig` (``model.step_config``).
``training_step(batch)`` is ``train_step(train_state, batch, step_config)``: it runs forward, backward and the
optimizer update, replaces ``model.train_state`` with the returned state, and returns NeMo's
``{"loss", "log": {...}}``. ``validation_step`` / ``test_step`` are ``eval_step`` with the model's evaluation
objective (:meth:`eval_objective_fn`), renamed to NeMo's ``val_*`` / ``test_*`` keys.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["OptimizationMixin"]

log = logging.getLogger("compat.models")


def _trainer_devices(trainer: Any) -> int:
    devices = getattr(trainer, "num_devices", 1) or 1
    nodes = getattr(trainer, "num_nodes", 1) or 1
    return int(devices) * int(nodes)


def _loader_batch_size(loader: Any, ds_cfg: Any) -> int:
    for value in (getattr(loader, "batch_size", None), getattr(getattr(loader, "batch_sampler", None), "batch_size",
                                                                    None)):
        if isinstance(value, int) and value > 0:
            return value
    if ds_cfg is not None and ds_cfg.get("batch_size"):
        return int(ds_cfg.batch_size)
    raise ValueError("cannot tell the training batch size to compute max_steps: the loader has no batch_size and "
                     "train_ds.batch_size is not set")


class OptimizationMixin:
    """``setup_optimization`` and ``configure_optimizers`` of :class:`~compat.core.classes.ModelPT`, over ``nemofn.optim``.

``setup_optimization(optim_config=None, optim_kwargs=None) -> (optimizer, schedule)`` reads NeMo's ``optim:`` block
(``name`` / ``_target_``, ``lr``, optimizer keys or ``args``, ``sched``) and builds a functional optimizer and a
``step -> lr`` schedule (``nemofn.optim.build_optimization``). ``max_steps`` follows NeMo's rules:

* with a trainer attached (``compat.Trainer`` or any object with ``max_steps``, ``max_epochs``,
  ``accumulate_grad_batches``, ``limit_train_batches``, ``num_devices``, ``num_nodes``): ``trainer.max_steps >= 0``
  becomes ``sched.max_steps``; otherwise ``sched.t_max_epochs`` etc. are recorded and ``max_steps`` is computed from
  the training loader with NeMo's ``compute_max_steps``;
* without a trainer, ``sched.max_steps`` is used as given (NeMo silently drops the schedule here; compat builds it);
* a schedule that needs ``max_steps`` and gets none raises ``ValueError`` saying how to give one.

``configure_optimizers()`` (what ``compat.Trainer.fit`` calls, as Lightning does) returns
``setup_optimization()``'s pair; override it to train with another optimizer. The optimizer state itself belongs
to the training loop's :class:`~nemofn.core.state.TrainState`: frozen parameters get none until they are trained.
During ``fit`` ``model._optimizer`` is a ``torch.optim.Optimizer`` face of the functional optimizer (its
``param_groups[0]["lr"]`` is the current learning rate, as NeMo's ``training_step`` reads it).
"""

    _optimizer: Any
    _scheduler: Any

    # -- setup_optimization -------------------------------------------------------------------------------------

    def _optim_config_copy(self, optim_config: Any) -> DictConfig | None:
        if optim_config is None:
            optim_config = self._cfg.get("optim")
            if optim_config is None:
                return None
        if isinstance(optim_config, DictConfig):
            return OmegaConf.create(OmegaConf.to_container(optim_config, resolve=True))
        if isinstance(optim_config, Mapping):
            return OmegaConf.create(copy.deepcopy(dict(optim_config)))
        raise TypeError(f"optim_config must be a DictConfig or a dict, got {type(optim_config).__name__}")

    def _apply_trainer_rules(self, optim: dict) -> None:
        """NeMo's step 2: write the trainer's ``max_steps`` or its epoch settings into ``optim['sched']``."""
        trainer = self._trainer
        if "sched" not in optim or trainer is None:
            return
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        if not isinstance(accumulate, int) or isinstance(accumulate, bool):
            raise ValueError(f"trainer.accumulate_grad_batches={accumulate!r}: only an int is supported")
        max_steps = getattr(trainer, "max_steps", -1)
        sched = optim["sched"]
        if max_steps is None or max_steps < 0:
            sched["t_max_epochs"] = getattr(trainer, "max_epochs", None)
            sched["t_accumulate_grad_batches"] = accumulate
            sched["t_limit_train_batches"] = getattr(trainer, "limit_train_batches", 1.0)
            sched["t_num_workers"] = _trainer_devices(trainer)
        else:
            sched["max_steps"] = int(max_steps)

    def _max_steps_from_epochs(self, sched: dict) -> int | None:
        """NeMo's ``compute_max_steps`` from the ``t_*`` keys and the training loader (``None`` if impossible)."""
        from nemofn.optim.config import compute_max_steps

        epochs = sched.get("t_max_epochs")
        loader = self._train_dl
        if epochs is None or epochs < 0 or loader is None:
            return None
        ds_cfg = self._cfg.get("train_ds")
        drop_last = bool(getattr(loader, "drop_last", False) or (ds_cfg is not None and ds_cfg.get("drop_last")))
        return compute_max_steps(
            max_epochs=int(epochs),
            accumulate_grad_batches=int(sched.get("t_accumulate_grad_batches", 1) or 1),
            limit_train_batches=sched.get("t_limit_train_batches", 1.0),
            num_workers=sched.get("t_num_workers", 1) or 1,
            num_samples=len(loader.dataset),
            batch_size=_loader_batch_size(loader, ds_cfg),
            drop_last=drop_last,
        )

    def _no_max_steps_error(self, sched: dict) -> ValueError:
        name = sched.get("name") or sched.get("_target_")
        if self._trainer is None:
            how = ("no trainer is attached. Set optim.sched.max_steps (e.g. model.setup_optimization with "
                   "sched.max_steps=10000), or attach a trainer-like object with max_steps (model.set_trainer(t))")
        elif self._train_dl is None:
            how = ("the trainer has max_steps < 0 and there is no training loader to count steps per epoch. Set "
                   "trainer.max_steps, or call setup_training_data(...) before setup_optimization()")
        else:
            how = ("the trainer has neither max_steps >= 0 nor max_epochs >= 0. Set one of them, or set "
                   "optim.sched.max_steps")
        return ValueError(f"the lr schedule {name!r} needs max_steps, but {how}. (NeMo would silently train without "
                          f"a schedule here.) Use `max_steps: -1` in optim.sched for a constant lr.")

    def setup_optimization(self, optim_config: DictConfig | dict | None = None,
                           optim_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any] | None:
        """Builds the functional optimizer and lr schedule (kept as ``model._optimizer`` / ``model._scheduler``).

        Args:
            optim_config: NeMo's ``optim`` block; default ``cfg.optim`` (the config used is written back there).
            optim_kwargs: extra optimizer arguments (merged into ``args`` if the config uses ``args``).

        Returns:
            ``(optimizer, schedule)`` (a ``nemofn.optim.Optimizer`` and a ``step -> lr`` callable), or ``None``
            (with a log line) when there is no optimizer config at all, as NeMo.
        """
        from nemofn.optim.config import build_optimization
        from nemofn.optim.registry import schedule_needs_max_steps

        config = self._optim_config_copy(optim_config)
        if config is None:
            log.info("no optimizer config was given and cfg has no `optim`: no optimizer was created")
            return None
        if "optim" in self._cfg:
            with open_dict(self._cfg):
                self._cfg.optim = copy.deepcopy(config)
        optim = OmegaConf.to_container(config, resolve=True)
        self._apply_trainer_rules(optim)
        sched = optim.get("sched")
        max_steps = None
        if isinstance(sched, dict) and sched.get("max_steps") is None:
            max_steps = self._max_steps_from_epochs(sched)
            name = sched.get("name")
            if max_steps is None and isinstance(name, str) and schedule_needs_max_steps(name):
                raise self._no_max_steps_error(sched)
        if optim_kwargs:
            target = optim["args"] if isinstance(optim.get("args"), dict) else optim
            target.update(optim_kwargs)
        optimizer, schedule, _ = build_optimization(optim, max_steps=max_steps)
        self._optimizer, self._scheduler = optimizer, schedule
        return optimizer, schedule

    def configure_optimizers(self) -> tuple[Any, Any]:
        """Lightning's hook: ``(optimizer, schedule)`` for the training loop (default: :meth:`setup_optimization`).

        Raises:
            ValueError: when there is no ``optim`` config (nothing to train with).
        """
        result = self.setup_optimization()
        if result is None:
            raise ValueError(f"{type(self).__name__} has no optimizer: the model config has no `optim` block. Add "
                             "one (e.g. model.optim={name: adamw, lr: 0.001}) or override configure_optimizers()")
        return result
