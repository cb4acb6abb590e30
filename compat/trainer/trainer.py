"""``compat.Trainer``: Lightning's ``Trainer`` face over ``nemofn.train.fit`` (no LightningModule, no Lightning).

NeMo's scripts build ``pl.Trainer(**resolve_trainer_cfg(cfg.trainer))``, hand it to ``exp_manager`` and the model,
then call ``trainer.fit(model)`` and ``trainer.test(model)``. This class accepts every key NeMo's ASR configs put
under ``trainer:`` (the schema is ``compat.core.config.TrainerConfig``): an unknown key is an error naming the
closest known one, and a known key with no effect here is warned about once, by name.

``fit`` runs the model's Lightning hooks on the functional loop (:mod:`compat.trainer.model_loop`):
``configure_optimizers`` gives the functional optimizer and schedule; ``training_step`` the loss, whose backward
pass, clipping (``gradient_clip_val``) and update the loop does; ``validation_step`` / ``on_validation_epoch_end``
the validation metrics, on Lightning's schedule (``val_check_interval``, ``check_val_every_n_epoch``,
``limit_*_batches``, ``num_sanity_val_steps``). Checkpoints are whole ``nemofn`` train states: a resumed run
(``ckpt_path``, or ``exp_manager``'s ``resume_if_exists``) continues bitwise exactly on CPU fp32.

Processes: the trainer builds and launches its ``lightning_fabric.Fabric`` when it is created (with ``strategy:
ddp`` the script is re-run once per extra rank, as Lightning's launcher does), so ``global_rank`` and ``world_size``
are known before the model builds its data loaders. ``sync_batchnorm: true`` all-reduces BatchNorm batch statistics
over the ranks (a no-op on one device).

Seeds: like Lightning, nothing is seeded unless asked. ``compat.lightning.seed_everything(n)`` (or the environment
variable ``PL_GLOBAL_SEED`` it sets, which the trainer applies when it is created, as Lightning's launcher does for
its processes) makes the initial weights, dropout, SpecAugment and dither reproducible; the run's random key is
derived from torch's seed and saved in every checkpoint, so a resumed run continues exactly either way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compat.trainer.fabric_setup import fabric_arguments
from compat.trainer.model_loop import HookDispatcher, TrainingStepObjective, call_callbacks, run_evaluation

__all__ = ["Trainer"]

log = logging.getLogger("compat.trainer")

#: Keys accepted for NeMo / Lightning configs that change nothing here (warned about once when not the default).
_NO_EFFECT = {
    "use_distributed_sampler": "the training data is always split across ranks by nemofn's resumable samplers",
    "plugins": "Lightning plugins do not apply to the functional loop",
    "profiler": "use torch.profiler around trainer.fit",
    "detect_anomaly": "wrap trainer.fit in torch.autograd.detect_anomaly() instead",
    "barebones": "the loop is already minimal",
    "reload_dataloaders_every_n_epochs": "loaders are built once; their samplers reshuffle every epoch",
    "inference_mode": "validation runs under torch.no_grad",
    "gradient_clip_algorithm": "only clipping by norm exists (NeMo's configs use it)",
    "min_epochs": "training stops at max_steps / max_epochs",
    "min_steps": "training stops at max_steps / max_epochs",
    "overfit_batches": "use limit_train_batches with shuffle: false in train_ds",
    "max_time": "training stops at max_steps / max_epochs",
}
_WARNED: set[str] = set()


def _warn_no_effect(key: str, value: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"trainer.{key}={value!r} has no effect in compat.Trainer: {_NO_EFFECT[key]}", stacklevel=3)


def _validated(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The trainer arguments checked against ``TrainerConfig`` (unknown keys and wrong types raise), with
    defaults filled in."""
    from omegaconf import OmegaConf

    from compat.core.config.schemas import TrainerConfig, validate_section

    plain = {k: v for k, v in kwargs.items() if not _is_object(v)}
    cfg = validate_section(plain, TrainerConfig, "trainer")
    out = {**dataclasses.asdict(TrainerConfig()), **OmegaConf.to_container(cfg, resolve=True)}
    for key, value in kwargs.items():
        if _is_object(value):
            out[key] = value  # logger / callback / strategy objects pass through as given
    for key, default in _LIGHTNING_DEFAULTS.items():
        if out.get(key) is None:
            out[key] = default
    return out


#: Lightning's defaults for the settings the schema leaves ``None`` ("Lightning decides").
_LIGHTNING_DEFAULTS = {
    "precision": "32-true", "logger": True, "log_every_n_steps": 50, "num_sanity_val_steps": 2,
    "enable_checkpointing": True, "enable_progress_bar": True, "enable_model_summary": True,
    "val_check_interval": 1.0, "limit_train_batches": 1.0, "limit_val_batches": 1.0, "limit_test_batches": 1.0,
    "limit_predict_batches": 1.0, "deterministic": False,
}


def _is_object(value: Any) -> bool:
    """Objects (loggers, callbacks, strategies) are given to the trainer as they are, not validated as config."""
    if isinstance(value, (list, tuple)):
        return any(_is_object(v) for v in value)
    return not isinstance(value, (str, int, float, bool, dict, type(None))) and \
        not type(value).__module__.startswith("omegaconf")


class Trainer:
    """Lightning's ``Trainer`` for compat models (see the module doc). Arguments: Lightning's, as keywords."""

    def __init__(self, **kwargs: Any) -> None:
        if os.environ.get("PL_GLOBAL_SEED"):
            from compat.lightning import seed_everything

            seed_everything(int(os.environ["PL_GLOBAL_SEED"]))
        cfg = _validated(kwargs)
        defaults = _validated({})
        for key in _NO_EFFECT:
            if key in kwargs and cfg[key] != defaults[key]:
                _warn_no_effect(key, cfg[key])
        self._cfg = cfg
        self.max_steps = -1 if cfg["max_steps"] is None else int(cfg["max_steps"])
        self.max_epochs = cfg["max_epochs"]
        if self.max_epochs is None and self.max_steps < 0:
            self.max_epochs = 1000  # Lightning's default when neither is set
        self.accumulate_grad_batches = int(cfg["accumulate_grad_batches"])
        self.gradient_clip_val = float(cfg["gradient_clip_val"]) if cfg["gradient_clip_val"] else None
        self.log_every_n_steps = int(cfg["log_every_n_steps"])
        self.val_check_interval = cfg["val_check_interval"] if cfg["val_check_interval"] is not None else 1.0
        self.check_val_every_n_epoch = cfg["check_val_every_n_epoch"]
        self.limit_train_batches = cfg["limit_train_batches"]
        self.limit_val_batches = cfg["limit_val_batches"]
        self.limit_test_batches = cfg["limit_test_batches"]
        self.limit_predict_batches = cfg["limit_predict_batches"]
        self.num_sanity_val_steps = int(cfg["num_sanity_val_steps"])
        self.enable_progress_bar = bool(cfg["enable_progress_bar"])
        self.enable_model_summary = bool(cfg["enable_model_summary"])
        self.fast_dev_run = cfg["fast_dev_run"]
        self.sync_batchnorm = bool(cfg["sync_batchnorm"])
        self.default_root_dir = str(cfg.get("default_root_dir") or Path.cwd())
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=cfg["deterministic"] == "warn")
        if cfg.get("benchmark") is not None:
            torch.backends.cudnn.benchmark = bool(cfg["benchmark"])
        self.callbacks: list[Any] = [_instantiate(cb) for cb in (cfg.get("callbacks") or [])]
        self.loggers: list[Any] = _make_loggers(cfg["logger"], self.default_root_dir)
        self.enable_checkpointing = bool(cfg["enable_checkpointing"])
        self.ckpt_path: str | None = None
        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.sanity_checking = False
        self.callback_metrics: dict[str, float] = {}
        self.logged_metrics: dict[str, float] = {}
        self.lightning_module: Any = None
        self._fit_context: Any = None
        self._objective: TrainingStepObjective | None = None
        self._checkpointing_added = False
        from lightning_fabric import Fabric

        self._fabric = Fabric(**fabric_arguments(cfg["accelerator"], cfg["devices"], cfg["num_nodes"],
                                                  cfg["strategy"], cfg["precision"]),
                              callbacks=[HookDispatcher(self)])
        self._fabric.launch()
        if self.fast_dev_run:
            self.loggers = []

    # -- Lightning's read-only views -----------------------------------------------------------------------------

    @property
    def fabric(self) -> Any:
        """The launched ``lightning_fabric.Fabric``."""
        return self._fabric

    @property
    def num_devices(self) -> int:
        return int(self._fabric.world_size // max(self.num_nodes, 1))

    @property
    def num_nodes(self) -> int:
        return int(self._cfg["num_nodes"])

    @property
    def world_size(self) -> int:
        return int(self._fabric.world_size)

    @property
    def global_rank(self) -> int:
        return int(self._fabric.global_rank)

    @property
    def local_rank(self) -> int:
        return int(self._fabric.local_rank)

    @property
    def is_global_zero(self) -> bool:
        return bool(self._fabric.is_global_zero)

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, value: Any) -> None:
        self.loggers = [] if value is None or value is False else list(value) if isinstance(value, Sequence) \
            else [value]

    @property
    def log_dir(self) -> str | None:
        logger = self.logger
        return getattr(logger, "log_dir", None) if logger is not None else self.default_root_dir

    @property
    def checkpoint_callback(self) -> Any:
        from compat.utils.callbacks import NeMoModelCheckpoint

        return next((cb for cb in self.callbacks if isinstance(cb, NeMoModelCheckpoint)), None)

    @property
    def train_dataloader(self) -> Any:
        model = self.lightning_module
        return None if model is None else model.train_dataloader()

    @property
    def val_dataloaders(self) -> Any:
        model = self.lightning_module
        return None if model is None else model.val_dataloader()

    @property
    def test_dataloaders(self) -> Any:
        model = self.lightning_module
        return None if model is None else model.test_dataloader()

    # -- fit ---------------------------------------------------------------------------------------------------------

    def fit(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: str | None = None) -> None:
        """Trains ``model`` (Lightning's ``fit``): its data loaders unless given, its ``configure_optimizers``,
        its steps. ``ckpt_path`` (or ``exp_manager``'s resume) continues a run from a checkpoint."""
        from nemofn.train.loop import FitConfig, fit
        from nemofn.train.step_config import StepConfig

        if datamodule is not None:
            raise NotImplementedError("trainer.fit(datamodule=...) is not supported: NeMo models set up their own "
                                      "data from model.train_ds / validation_ds")
        self._attach(model, "fit")
        train = train_dataloaders if train_dataloaders is not None else model.train_dataloader()
        if train is None:
            raise ValueError(f"{type(model).__name__} has no training data: set model.train_ds.manifest_filepath "
                             "(e.g. model.train_ds.manifest_filepath=train.json on the command line)")
        val = val_dataloaders if val_dataloaders is not None else model.val_dataloader()
        val = [] if val is None else list(val) if isinstance(val, (list, tuple)) else [val]
        self._add_default_checkpointing()
        if self.enable_model_summary and self.is_global_zero:
            print(model.summarize())
        optimizer, schedule = model.configure_optimizers()
        self._objective = TrainingStepObjective(model)
        # Like Lightning, no gradient norm is reported without clipping. (The step still computes one, unreported, to
        # leave out steps whose loss or gradient norm is NaN/Inf: StepConfig.skip_nonfinite, nemofn's default.)
        step = StepConfig(self._objective, optimizer, schedule, clip_grad_norm=self.gradient_clip_val,
                          track_grad_norm=self.gradient_clip_val is not None,
                          sync_batchnorm=self.sync_batchnorm and self.world_size > 1)
        fit_cfg = FitConfig(**self._loop_options(), validate=self._validate, resume_from=ckpt_path or self.ckpt_path)
        call_callbacks(self, "setup", "fit")
        try:
            result = fit(model.fn_state, step, train, val, fit_cfg, fabric=self._fabric)
        finally:
            self._fit_context = None
            for logger in self.loggers:
                _finalize(logger)
        self.global_step = result.state.step
        self.current_epoch = result.state.data.epoch
        model.train_state = result.state
        call_callbacks(self, "teardown", "fit")

    def _loop_options(self) -> dict[str, Any]:
        fast = self.fast_dev_run
        n_fast = 0 if not fast else (1 if fast is True else int(fast))
        max_steps = None if self.max_steps < 0 else self.max_steps
        max_epochs = None if self.max_epochs is None or self.max_epochs < 0 else int(self.max_epochs)
        options: dict[str, Any] = dict(
            max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=self.accumulate_grad_batches,
            val_check_interval=self.val_check_interval, check_val_every_n_epoch=self.check_val_every_n_epoch,
            limit_train_batches=self.limit_train_batches, limit_val_batches=self.limit_val_batches,
            num_sanity_val_steps=self.num_sanity_val_steps, log_every_n_steps=self.log_every_n_steps,
            progress_bar=self.enable_progress_bar and self.is_global_zero, loggers=(), seed=_run_seed(),
            max_consecutive_skips=int(self._cfg["max_consecutive_skips"]) or None)
        if n_fast:
            options.update(max_steps=n_fast, max_epochs=1, limit_train_batches=n_fast, limit_val_batches=n_fast,
                           val_check_interval=1.0, check_val_every_n_epoch=1, num_sanity_val_steps=0)
        return options

    def _validate(self, ctx: Any, loaders: list[Any], limit: int | float | None) -> dict[str, float]:
        self.sanity_checking = ctx.sanity_checking
        model = self.lightning_module
        call_callbacks(self, "on_validation_start")
        try:
            values = run_evaluation(model, loaders, limit, stage="validate", fabric=ctx.fabric)
        finally:
            self.sanity_checking = False
        call_callbacks(self, "on_validation_epoch_end")
        return values

    # -- evaluation outside fit --------------------------------------------------------------------------------------

    def validate(self, model: Any = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None) -> list[dict[str, float]]:
        """One validation pass (Lightning's ``validate``); returns ``[metrics]``."""
        return self._evaluate(model, dataloaders, ckpt_path, verbose, "validate")

    def test(self, model: Any = None, dataloaders: Any = None, ckpt_path: str | None = None, verbose: bool = True,
             datamodule: Any = None) -> list[dict[str, float]]:
        """One test pass over ``model``'s test loaders (Lightning's ``test``); returns ``[metrics]``."""
        return self._evaluate(model, dataloaders, ckpt_path, verbose, "test")

    def _evaluate(self, model: Any, dataloaders: Any, ckpt_path: str | None, verbose: bool,
                  stage: str) -> list[dict[str, float]]:
        model = model if model is not None else self.lightning_module
        if model is None:
            raise ValueError(f"trainer.{stage}() needs a model (trainer.{stage}(model))")
        self._attach(model, "validate" if stage == "validate" else "test")
        if ckpt_path is not None:
            self._load_weights(model, ckpt_path)
        loaders = dataloaders if dataloaders is not None else (
            model.val_dataloader() if stage == "validate" else model.test_dataloader())
        loaders = [] if loaders is None else list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        if not loaders:
            raise ValueError(f"trainer.{stage}: {type(model).__name__} has no "
                             f"{'validation' if stage == 'validate' else 'test'} data (set model."
                             f"{'validation_ds' if stage == 'validate' else 'test_ds'}.manifest_filepath)")
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        loaders = [self._fabric.setup_dataloaders(dl, use_distributed_sampler=False) for dl in loaders]
        values = run_evaluation(model, loaders, limit, stage=stage, fabric=self._fabric)
        self._log_metrics(values, self.global_step)
        if verbose and self.is_global_zero:
            width = max((len(k) for k in values), default=0)
            print("\n".join(f"{k.ljust(width)}  {v:.6g}" for k, v in sorted(values.items())))
        return [values]

    def predict(self, model: Any = None, dataloaders: Any = None, ckpt_path: str | None = None,
                return_predictions: bool = True, datamodule: Any = None) -> list[Any]:
        """``model.predict_step`` over ``dataloaders`` in eval mode, without gradients; returns the outputs."""
        model = model if model is not None else self.lightning_module
        if model is None or dataloaders is None:
            raise ValueError("trainer.predict(model, dataloaders) needs both a model and data loaders")
        self._attach(model, "predict")
        if ckpt_path is not None:
            self._load_weights(model, ckpt_path)
        loaders = list(dataloaders) if isinstance(dataloaders, (list, tuple)) else [dataloaders]
        outputs: list[Any] = []
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._fabric.autocast():  # Lightning predicts under the precision's autocast
                for dl_idx, loader in enumerate(loaders):
                    for batch_idx, batch in enumerate(loader):
                        batch = self._fabric.to_device(batch)
                        outputs.append(model.predict_step(batch, batch_idx, dl_idx) if len(loaders) > 1
                                       else model.predict_step(batch, batch_idx))
        finally:
            model.train(training)
        return outputs if return_predictions else []

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def save_checkpoint(self, filepath: str | Path, weights_only: bool = False, extra: dict | None = None) -> None:
        """Writes the running training state (model, optimizer, step, RNG, data position) to ``filepath``
        atomically (Lightning's ``save_checkpoint``; only during ``fit``). Callbacks with ``state_dict()`` are
        saved too, under ``callbacks``."""
        from nemofn.train.checkpoint import save_checkpoint

        ctx = self._fit_context
        if ctx is None:
            raise RuntimeError("trainer.save_checkpoint works during fit (it saves the running training state); "
                               "save a model with model.save_to('model.nemo')")
        if weights_only:
            raise NotImplementedError("weights_only checkpoints are not written; use model.save_to('x.nemo')")
        states = {type(cb).__name__: cb.state_dict() for cb in self.callbacks if callable(getattr(cb, "state_dict",
                                                                                                     None))}
        save_checkpoint(filepath, ctx.state, fabric=self._fabric, extra={"callbacks": states, **(extra or {})})

    def _load_weights(self, model: Any, path: str) -> None:
        from compat.models.modelpt_init import read_checkpoint_state_dict

        model.load_state_dict(read_checkpoint_state_dict(path, map_location=model.device), strict=True)

    # -- internals ---------------------------------------------------------------------------------------------------

    def _attach(self, model: Any, stage: str) -> None:
        self.lightning_module = model
        model.set_trainer(self)
        model.setup(stage)
        model.to(self._fabric.device)

    def _add_default_checkpointing(self) -> None:
        """Lightning's default ``ModelCheckpoint`` when checkpointing is on and no checkpoint callback is set."""
        if not self.enable_checkpointing or self.checkpoint_callback is not None or self.fast_dev_run:
            return
        from compat.utils.callbacks import NeMoModelCheckpoint

        root = Path(self.log_dir or self.default_root_dir)
        self.callbacks.append(NeMoModelCheckpoint(dirpath=str(root / "checkpoints"), filename="{epoch}-{step}",
                                                  monitor=None, save_top_k=1, save_last=False,
                                                  save_nemo_on_train_end=False))

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        self.logged_metrics.update(values)
        if not self.is_global_zero:
            return
        for logger in self.loggers:
            logger.log_metrics(dict(values), step=step)


def _run_seed() -> int:
    """The run's base RNG seed: torch's initial seed, so ``seed_everything`` / ``torch.manual_seed`` set it."""
    return int(torch.initial_seed() % (2**63))


def _instantiate(callback: Any) -> Any:
    if isinstance(callback, dict) or type(callback).__module__.startswith("omegaconf"):
        from hydra.utils import instantiate

        return instantiate(callback)
    return callback


def _make_loggers(logger: Any, root: str) -> list[Any]:
    if logger is None or logger is False:
        return []
    if logger is True:  # Lightning's default: TensorBoard when it is installed, else CSV
        import importlib.util

        from nemofn.train.logging import make_loggers

        kind = "tensorboard" if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") \
            else "csv"
        return make_loggers((kind,), Path(root), "lightning_logs")
    return list(logger) if isinstance(logger, Sequence) else [logger]


def _finalize(logger: Any) -> None:
    finalize = getattr(logger, "finalize", None)
    if callable(finalize):
        finalize("success")

