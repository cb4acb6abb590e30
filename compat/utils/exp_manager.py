"""``exp_manager(trainer, cfg)``: NeMo's experiment folder, loggers, checkpointing and resume, for ``compat.Trainer``.

The folder is NeMo's: ``<exp_dir>/<name>/<version>/`` (``exp_dir`` defaults to ``./nemo_experiments``, ``name`` to
``default``, ``version`` to the date and time, or ``version_<n>`` without ``use_datetime_version``; with
``resume_if_exists`` there is no version level, so that the next run finds the checkpoints; ``explicit_log_dir``
overrides it all). It holds ``cmd-args.log``, ``git-info.log`` (inside a git work tree), the logs
``nemo_log_globalrank-<g>_localrank-<l>.txt``, ``lightning_logs.txt`` (the trainer's and Fabric's messages) and
``nemo_error_log.txt``, TensorBoard events (``create_tensorboard_logger``), and ``checkpoints/`` with NeMo's
checkpoint names and a ``<name>.nemo`` (:class:`~compat.utils.callbacks.NeMoModelCheckpoint`).

Resume (``resume_if_exists``): the newest ``*-last.ckpt`` in ``checkpoints/`` becomes ``trainer.ckpt_path`` and the
run continues from it exactly (step, optimizer, schedule, RNG and data position). A folder without checkpoints is
an error that names ``resume_ignore_no_checkpoint``, or, with that flag, a fresh start with a warning (NeMo 3.0
crashes there instead). ``resume_from_checkpoint`` names the checkpoint directly. Files of the previous run are
moved into ``run_<k>/`` as NeMo does. A damaged newest checkpoint (torn by a full disk, say) is skipped with a
warning for the newest readable one, and the temporary files of checkpoint writes that a kill interrupted are
removed from ``checkpoints/`` first (:func:`nemofn.train.checkpoint.remove_orphaned_temps`: only those whose
process is gone; the count and size are logged).

The config is validated against :class:`ExpManagerConfig` first: an unknown key or a wrong type names the key and
the closest known one. Features that need packages or services nemofn does not have (MLflow, DLLogger, ClearML,
Neptune, EMA, straggler detection, fault tolerance) raise when switched on; W&B needs ``pip install wandb``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemofn.train.checkpoint import latest_good_checkpoint, remove_orphaned_temps

__all__ = ["exp_manager", "ExpManagerConfig", "CallbackParams", "NotFoundError", "LoggerMisconfigurationError",
           "CheckpointMisconfigurationError", "get_log_dir"]

log = logging.getLogger("compat.exp_manager")

VERSION_ENV = "NEMO_EXPM_VERSION"


class NotFoundError(FileNotFoundError):
    """``resume_if_exists`` found no checkpoint to resume from."""


class LoggerMisconfigurationError(ValueError):
    """The trainer already has a logger while exp_manager is asked to create one."""


class CheckpointMisconfigurationError(ValueError):
    """The trainer already checkpoints while exp_manager is asked to add its checkpoint callback."""


def __getattr__(name: str) -> Any:
    if name in ("ExpManagerConfig", "CallbackParams"):
        from compat.core.config import schemas

        return getattr(schemas, name)
    raise AttributeError(f"module 'compat.utils.exp_manager' has no attribute {name!r}")


_UNSUPPORTED_SWITCHES = {
    "create_mlflow_logger": "MLflow logging", "create_dllogger_logger": "DLLogger logging",
    "create_clearml_logger": "ClearML logging", "create_neptune_logger": "Neptune logging",
    "create_straggler_detection_callback": "straggler detection", "create_fault_tolerance_callback":
    "fault tolerance", "create_ipl_epoch_stopper_callback": "the IPL epoch stopper",
}


def _is_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def get_log_dir(trainer: Any, exp_dir: str | None = None, name: str | None = None, version: str | None = None,
                explicit_log_dir: str | None = None, use_datetime_version: bool = True,
                resume_if_exists: bool = False) -> tuple[Path, str, str, str | None]:
    """``(log_dir, exp_dir, name, version)`` by NeMo's rules (see the module doc)."""
    if explicit_log_dir:
        if exp_dir or name or version:
            log.warning("exp_manager: explicit_log_dir=%s overrides exp_dir, name and version", explicit_log_dir)
        return Path(explicit_log_dir), str(explicit_log_dir), "", ""
    root = Path(exp_dir) if exp_dir else Path.cwd() / "nemo_experiments"
    name = name or "default"
    if not version and not _is_zero(trainer):
        version = os.environ.get(VERSION_ENV) or None  # rank 0 chose it (ddp re-runs the script per rank)
    if version is None:
        if resume_if_exists:
            log.warning("exp_manager: no version folder is created under the log folder because resume_if_exists "
                        "is on")
        elif use_datetime_version:
            version = time.strftime("%Y-%m-%d_%H-%M-%S")
        else:
            taken = [int(p.name.split("_", 1)[1]) for p in (root / name).glob("version_*")
                     if p.name.split("_", 1)[1].isdigit()]
            version = f"version_{max(taken, default=-1) + 1}"
    if _is_zero(trainer):
        if version is not None:
            os.environ[VERSION_ENV] = version  # ranks started later (ddp re-runs the script) use the same folder
        else:
            os.environ.pop(VERSION_ENV, None)
    return root / name / (version or ""), str(root), name, version


def _find_resume_checkpoint(ckpt_dir: Path, resume_past_end: bool, ignore_missing: bool) -> Path | None:
    if not ckpt_dir.is_dir() or not any(ckpt_dir.glob("*.ckpt")):
        message = (f"exp_manager: resume_if_exists is true but there is no checkpoint in {ckpt_dir}. Set "
                   "exp_manager.resume_ignore_no_checkpoint=true to start a fresh run in that case, or remove "
                   "resume_if_exists")
        if ignore_missing:
            log.warning("%s: starting a fresh run (resume_ignore_no_checkpoint is on)", message.split(". Set")[0])
            return None
        raise NotFoundError(message)
    ended = sorted(ckpt_dir.glob("*end.ckpt"))
    if ended and not resume_past_end:
        raise ValueError(f"exp_manager: found {ended[0]}, which marks a run that already completed; set "
                         "exp_manager.resume_past_end=true to train on from it")
    last = sorted(ckpt_dir.glob("*last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not last:
        if ignore_missing:
            log.warning("exp_manager: no *last.ckpt in %s: starting a fresh run", ckpt_dir)
            return None
        raise NotFoundError(f"exp_manager: there are checkpoints in {ckpt_dir} but none named *last.ckpt to resume "
                            "from; pass exp_manager.resume_from_checkpoint=<path> or set resume_ignore_no_checkpoint")
    if len(last) > 1:
        # A run killed between writing its new last checkpoint and deleting the previous one leaves two; each is
        # complete (written atomically), and the newer one is the run's latest state.
        log.warning("exp_manager: several *last.ckpt in %s (%s): resuming from the newest, %s", ckpt_dir,
                    [p.name for p in last], last[-1].name)
    if ended:
        return ended[0]
    # A damaged newest checkpoint (truncated by a full disk, say) falls back to the newest readable one, with a warning
    # naming it: the *last.ckpt files newest first, then every other checkpoint newest first.
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p not in last), key=lambda p: p.stat().st_mtime)
    good = latest_good_checkpoint(last[::-1] + others[::-1])
    if good is None:
        raise NotFoundError(f"exp_manager: every checkpoint in {ckpt_dir} is damaged "
                            f"({[p.name for p in last + others]}); remove them to start a fresh run")
    return good


def _move_previous_run(log_dir: Path) -> None:
    """NeMo's housekeeping on resume: files of the earlier run go into ``run_<k>/`` (checkpoints and events stay)."""
    files = [p for p in log_dir.iterdir() if p.is_file() and "tfevents" not in p.name]
    if not files:
        return
    k = 0
    while (log_dir / f"run_{k}").exists():
        k += 1
    (log_dir / f"run_{k}").mkdir()
    for path in files:
        shutil.move(str(path), str(log_dir / f"run_{k}" / path.name))


def _write_run_files(log_dir: Path, trainer: Any) -> None:
    (log_dir / "cmd-args.log").write_text(" ".join(sys.argv))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            diff = subprocess.run(["git", "diff"], capture_output=True, text=True, timeout=30)
            (log_dir / "git-info.log").write_text(f"commit hash: {commit.stdout.strip()}\n{diff.stdout}")
    except (OSError, subprocess.SubprocessError):
        pass


def _add_file_logs(log_dir: Path, trainer: Any) -> None:
    fmt = logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s")
    rank, local = getattr(trainer, "global_rank", 0), getattr(trainer, "local_rank", 0)
    targets = [(logging.getLogger("compat"), f"nemo_log_globalrank-{rank}_localrank-{local}.txt", logging.INFO),
               (logging.getLogger("compat"), "nemo_error_log.txt", logging.ERROR)]
    if _is_zero(trainer):
        for name in ("compat.trainer", "lightning_fabric", "nemofn"):
            targets.append((logging.getLogger(name), "lightning_logs.txt", logging.INFO))
    for logger, filename, level in targets:
        path = str(log_dir / filename)
        if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers):
            continue
        handler = logging.FileHandler(path)
        handler.setLevel(level)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)


def _loggers(cfg: DictConfig, log_dir: Path, name: str, version: str | None) -> list[Any]:
    out: list[Any] = []
    if cfg.create_tensorboard_logger:
        kwargs = dict(cfg.summary_writer_kwargs or {})
        if "log_dir" in kwargs:
            raise ValueError("exp_manager.summary_writer_kwargs must not set log_dir: exp_manager decides the folder")
        from lightning_fabric.loggers import TensorBoardLogger

        out.append(TensorBoardLogger(root_dir=str(log_dir), name="", version="", **kwargs))
    if cfg.create_wandb_logger:
        from compat.utils.wandb_logger import WandbLogger

        kwargs = dict(cfg.wandb_logger_kwargs or {})
        if not kwargs.get("name") and not kwargs.get("project"):
            raise ValueError("exp_manager.wandb_logger_kwargs needs a name or a project")
        kwargs.setdefault("save_dir", str(log_dir))
        out.append(WandbLogger(version=version, **kwargs))
    return out


def exp_manager(trainer: Any, cfg: DictConfig | dict | None = None) -> Path | None:
    """Sets up the experiment folder, loggers, checkpointing and resume on ``trainer``; returns the log folder.

    Returns ``None`` (and does nothing) without a config or with ``trainer.fast_dev_run``, as NeMo (the config is
    still checked first).

    Raises:
        compat.core.schema.ConfigError-like ``ValueError``: an unknown key or a wrong type (named).
        LoggerMisconfigurationError / CheckpointMisconfigurationError: the trainer already logs / checkpoints.
        NotFoundError: ``resume_if_exists`` without a checkpoint (and without ``resume_ignore_no_checkpoint``).
    """
    if cfg is None:
        log.info("exp_manager did not receive a cfg argument: it is disabled")
        return None
    import dataclasses

    from compat.core.config.schemas import ExpManagerConfig, validate_section

    if isinstance(cfg, DictConfig):  # resolve ${...} against the whole experiment config (``name: ${name}``)
        cfg = OmegaConf.to_container(cfg, resolve=True)
    checked = validate_section(cfg, ExpManagerConfig, "exp_manager")  # a typo fails under fast_dev_run too
    if getattr(trainer, "fast_dev_run", False):
        log.info("trainer.fast_dev_run is on: exp_manager creates no folder, logger or checkpoint")
        return None
    cfg = OmegaConf.merge(OmegaConf.create(dataclasses.asdict(ExpManagerConfig())), checked)
    for key, what in _UNSUPPORTED_SWITCHES.items():
        if cfg.get(key):
            raise NotImplementedError(f"exp_manager.{key}=true: {what} is not available in compat; turn it off")
    if cfg.get("ema") is not None and cfg.ema.get("enable"):
        raise NotImplementedError("exp_manager.ema.enable=true: EMA weights are not implemented in compat")
    if cfg.get("max_time_per_run"):
        log.warning("exp_manager.max_time_per_run has no effect in compat (training stops at max_steps/max_epochs)")
    if (cfg.create_tensorboard_logger or cfg.create_wandb_logger) and trainer.loggers:
        raise LoggerMisconfigurationError(
            "the trainer already has a logger and exp_manager was asked to create one: set trainer.logger=false "
            "(NeMo's configs do), or exp_manager.create_tensorboard_logger=false / create_wandb_logger=false")
    if cfg.create_checkpoint_callback and (trainer.checkpoint_callback is not None):
        raise CheckpointMisconfigurationError(
            "the trainer already has a checkpoint callback and exp_manager.create_checkpoint_callback is true: "
            "remove the trainer's, or set exp_manager.create_checkpoint_callback=false")
    if cfg.create_checkpoint_callback and trainer.enable_checkpointing:
        log.info("exp_manager: trainer.enable_checkpointing is on; exp_manager's checkpoint callback replaces "
                 "Lightning's default (NeMo's configs set trainer.enable_checkpointing=false)")

    log_dir, exp_dir, name, version = get_log_dir(
        trainer, exp_dir=cfg.exp_dir, name=cfg.name, version=cfg.version, explicit_log_dir=cfg.explicit_log_dir,
        use_datetime_version=cfg.use_datetime_version, resume_if_exists=cfg.resume_if_exists)
    params = cfg.checkpoint_callback_params
    ckpt_dir = Path(params.dirpath) if params.get("dirpath") else log_dir / "checkpoints"
    if _is_zero(trainer):
        remove_orphaned_temps(ckpt_dir)  # what writes killed mid-way left (only files whose process is gone)
    if cfg.resume_from_checkpoint:
        path = Path(cfg.resume_from_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"exp_manager.resume_from_checkpoint={path} does not exist")
        trainer.ckpt_path = str(path)
    elif cfg.resume_if_exists:
        found = _find_resume_checkpoint(ckpt_dir, bool(cfg.resume_past_end), bool(cfg.resume_ignore_no_checkpoint))
        if found is not None:
            trainer.ckpt_path = str(found)
            log.info("exp_manager: resuming from %s", found)
            if _is_zero(trainer) and log_dir.is_dir():
                _move_previous_run(log_dir)
    if _is_zero(trainer):
        log_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(log_dir, trainer)
        for source in cfg.files_to_copy or []:
            shutil.copy(source, log_dir)
    _add_file_logs(log_dir, trainer) if log_dir.is_dir() else None
    log.info("experiments are logged to %s", log_dir)

    trainer.loggers = list(trainer.loggers) + _loggers(cfg, log_dir, name, version)
    trainer.default_root_dir = str(log_dir)
    trainer.exp_log_dir = str(log_dir)
    if cfg.create_checkpoint_callback:
        from compat.utils.callbacks import NeMoModelCheckpoint

        kwargs = OmegaConf.to_container(params, resolve=True)
        kwargs.pop("filepath", None)
        monitor = kwargs.get("monitor") or "val_loss"
        if kwargs.get("filename") is None:
            kwargs["filename"] = f"{name or 'model'}--{{{monitor}:.4f}}-{{epoch}}"
        if kwargs.get("prefix") is None:
            kwargs["prefix"] = name or "model"
        kwargs["dirpath"] = str(ckpt_dir)
        trainer.callbacks.append(NeMoModelCheckpoint(n_resume=bool(cfg.resume_if_exists), **kwargs))
    if cfg.create_early_stopping_callback:
        from compat.utils.callbacks import EarlyStopping

        trainer.callbacks.append(EarlyStopping(**OmegaConf.to_container(cfg.early_stopping_callback_params,
                                                                          resolve=True)))
    return log_dir
