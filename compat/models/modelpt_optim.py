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
    """``setup_optimization`` and the ``training_step`` / ``validation_step`` / ``test_step`` wrappers."""

    _optimizer: Any
    _scheduler: Any
    _train_state: Any
    _step_config: Any

    # -- hooks --------------------------------------------------------------------------------------------------

    def objective_fn(self) -> Any:
        """The training objective ``(params, buffers, batch, *, train, rng) -> (loss, metrics, new_buffers)``.

        Default: the functional model's ``objective``, else its ``network.objective``.
        """
        unit = self.fn_model
        fn = getattr(unit, "objective", None)
        if fn is None:
            fn = getattr(getattr(unit, "network", None), "objective", None)
        if fn is None:
            raise NotImplementedError(
                f"{type(unit).__name__} has no objective (nor network.objective); give the functional model an "
                f"objective(params, buffers, batch, *, train, rng) method or override {type(self).__name__}."
                "objective_fn()"
            )
        return fn

    def eval_objective_fn(self) -> Any:
        """The objective ``validation_step`` evaluates (default: :meth:`objective_fn`)."""
        return self.objective_fn()

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
        """Builds the functional optimizer and lr schedule, and the model's :class:`TrainState`.

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
        self._install_optimizer(optimizer, schedule)
        return self._optimizer, self._scheduler

    def _install_optimizer(self, optimizer: Any, schedule: Any) -> None:
        from nemofn.core.state import TrainState
        from nemofn.train.step import StepConfig

        clip = getattr(self._trainer, "gradient_clip_val", None) if self._trainer is not None else None
        self._optimizer, self._scheduler = optimizer, schedule
        self._step_config = StepConfig(self.objective_fn(), optimizer, schedule, clip_grad_norm=clip or None)
        old = self._train_state
        if old is not None and not old.consumed:
            old.consume("setup_optimization")
        self._train_state = TrainState.create(self.fn_state, optimizer, rng=self._draw_seed())

    # -- the steps ----------------------------------------------------------------------------------------------

    @property
    def train_state(self) -> Any:
        """The :class:`~nemofn.core.state.TrainState` set up by :meth:`setup_optimization` (``None`` before)."""
        return self._train_state

    @train_state.setter
    def train_state(self, state: Any) -> None:
        if state is not None and state.model is not self.fn_state:
            raise ValueError("this TrainState holds another ModelState; a model's TrainState must wrap model.fn_state "
                             "(build it with TrainState.create(model.fn_state, optimizer, rng=...))")
        self._train_state = state

    @property
    def step_config(self) -> Any:
        """The :class:`~nemofn.train.StepConfig` (objective, optimizer, schedule) of :meth:`setup_optimization`."""
        return self._step_config

    @property
    def global_step(self) -> int:
        """Optimizer steps taken through :meth:`training_step` (0 before optimization is set up)."""
        return 0 if self._train_state is None else int(self._train_state.step)

    def training_step(self, batch: Any, batch_nb: int = 0) -> dict[str, Any]:
        """One optimizer step on ``batch`` (``nemofn.train.train_step``): forward, backward and update.

        Unlike Lightning's, this method updates the weights itself. Returns ``{"loss": Tensor, "log": {train_loss,
        learning_rate, global_step, ...}}`` (NeMo's keys; tensors are not synced to the host).
        """
        from nemofn.train.step import train_step

        if self._train_state is None:
            raise RuntimeError(f"{type(self).__name__}.training_step needs an optimizer: call "
                               "model.setup_optimization() first (it builds model.train_state)")
        self._train_state, metrics = train_step(self._train_state, batch, self._step_config)
        logs = {"train_loss": metrics["loss"], "learning_rate": metrics["lr"],
                "global_step": torch.tensor(float(self._train_state.step))}
        logs.update({k: v for k, v in metrics.items() if k not in ("loss", "lr")})
        return {"loss": metrics["loss"], "log": logs}

    def _eval_context(self) -> tuple[Any, Any]:
        """``(TrainState, StepConfig)`` for ``eval_step``; works before ``setup_optimization`` too."""
        from nemofn.core.state import TrainState
        from nemofn.optim.sgd import sgd
        from nemofn.train.step import StepConfig

        state = self._train_state
        if state is None:
            state = TrainState(self.fn_state, {}, rng=0)  # eval_step reads only the model state
        optimizer = self._optimizer if self._optimizer is not None else sgd()
        return state, StepConfig(self.eval_objective_fn(), optimizer, 0.0)

    def _evaluate_batch(self, batch: Any) -> dict[str, Any]:
        from nemofn.train.step import eval_step

        state, cfg = self._eval_context()
        return eval_step(state, batch, cfg)

    def validation_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Renames ``eval_step`` metrics to NeMo's validation keys (default: ``loss`` -> ``val_loss``)."""
        return {("val_loss" if k == "loss" else f"val_{k}"): v for k, v in metrics.items()}

    def _append_output(self, outputs_attr: str, loaders: Any, dataloader_idx: int, value: dict) -> None:
        outputs = getattr(self, outputs_attr)
        if isinstance(loaders, (list, tuple)) and len(loaders) > 1:
            while len(outputs) < len(loaders):
                outputs.append([])
            outputs[dataloader_idx].append(value)
        else:
            outputs.append(value)

    def validation_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """Evaluates ``batch`` (``nemofn.train.eval_step``, no gradients); returns and records NeMo's ``val_*``."""
        out = self.validation_metrics(self._evaluate_batch(batch))
        self._append_output("validation_step_outputs", self._validation_dl, dataloader_idx, out)
        return out

    def test_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """As :meth:`validation_step`, with NeMo's ``test_*`` keys."""
        metrics = self.validation_metrics(self._evaluate_batch(batch))
        out = {k.replace("val_", "test_", 1): v for k, v in metrics.items()}
        self._append_output("test_step_outputs", self._test_dl, dataloader_idx, out)
        return out

    def multi_validation_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        """Aggregates one loader's validation outputs (default: the mean of every key)."""
        if not outputs:
            return {}
        return {"log": {k: torch.stack([torch.as_tensor(o[k], dtype=torch.float32) for o in outputs]).mean()
                        for k in outputs[0]}}

    def multi_test_epoch_end(self, outputs: list[dict], dataloader_idx: int = 0) -> dict[str, Any]:
        return self.multi_validation_epoch_end(outputs, dataloader_idx)

    def _epoch_end(self, outputs: list, names: list[str] | None, primary: int, fn: Any,
                   kind: str = "val") -> dict[str, Any]:
        if not outputs:
            return {}
        if not isinstance(outputs[0], list):
            return dict(fn(outputs, 0).get("log", {}))
        logs: dict[str, Any] = {}
        for idx, chunk in enumerate(outputs):
            part = fn(chunk, idx).get("log", {})
            prefix = names[idx] if names else f"{kind}_{idx}_"
            logs.update({f"{prefix}{k}": v for k, v in part.items()})
            if idx == primary:
                logs.update(part)
        return logs

    def on_validation_epoch_end(self) -> dict[str, Any]:
        """Aggregates and clears :attr:`validation_step_outputs`; returns the logged values (NeMo's prefixes)."""
        logs = self._epoch_end(self.validation_step_outputs, getattr(self, "_validation_names", None),
                               getattr(self, "_val_dl_idx", 0), self.multi_validation_epoch_end)
        self.validation_step_outputs.clear()
        return logs

    def on_test_epoch_end(self) -> dict[str, Any]:
        """Aggregates and clears :attr:`test_step_outputs`."""
        logs = self._epoch_end(self.test_step_outputs, getattr(self, "_test_names", None),
                               getattr(self, "_test_dl_idx", 0), self.multi_test_epoch_end, "test")
        self.test_step_outputs.clear()
        return logs

    def _draw_seed(self) -> int:
        """A seed from torch's global generator, so ``torch.manual_seed`` / ``seed_everything`` govern it."""
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
