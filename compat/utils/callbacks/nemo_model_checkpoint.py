"""``NeMoModelCheckpoint``: Lightning's ``ModelCheckpoint`` with NeMo's ``.nemo`` additions, for ``compat.Trainer``.

Checkpoints are whole ``nemofn`` training states (model, optimizer, step, RNG, data position: a resumed run is
bitwise exact on CPU fp32), written atomically by ``trainer.save_checkpoint``. The rules are Lightning's and NeMo's:

* after each validation (every ``every_n_epochs`` epochs), or every ``every_n_train_steps`` steps: the top
  ``save_top_k`` checkpoints by ``monitor`` (``mode`` ``min`` / ``max``; ``-1`` keeps all, ``0`` none) and, with
  ``save_last``, ``<filename>-last.ckpt``, replacing the previous one;
* without validation (no validation data, or ``save_on_train_epoch_end``), at the end of each training epoch;
* ``filename`` is a Lightning template, ``{name}--{val_wer:.4f}-{epoch}`` by exp_manager's default, formatted with
  the logged metrics plus ``epoch`` and ``step`` (``{val_wer:.4f}`` becomes ``val_wer=0.1234``; a metric not
  logged yet is 0);
* ``always_save_nemo``: ``<dirpath>/<prefix><postfix>`` (``<name>.nemo``) is written with every checkpoint;
  ``save_nemo_on_train_end``: it is written when training ends, from the best checkpoint's weights with
  ``save_best_model`` (the model then holds them), else from the current ones;
* ``n_resume`` (set by exp_manager's ``resume_if_exists``): the top-k bookkeeping is rebuilt from the checkpoint
  files already in ``dirpath`` (their names carry the monitored value), so a resumed run keeps the same top k.

A monitored metric that is never logged is a warning (once), not an error: the last checkpoint is still written.
Temporary files that saves killed mid-write left in ``dirpath`` are removed when training starts (only those whose
process is gone: see :func:`nemofn.train.checkpoint.remove_orphaned_temps`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from nemofn.train.checkpoint import remove_orphaned_temps

__all__ = ["NeMoModelCheckpoint", "format_checkpoint_name"]

log = logging.getLogger("compat.callbacks")

_GROUP = re.compile(r"(\{.*?)[:}]")


def format_checkpoint_name(template: str, metrics: dict[str, float], auto_insert_metric_name: bool = True) -> str:
    """Lightning's ``ModelCheckpoint.format_checkpoint_name`` rule on ``template`` (no extension).

    ``{val_wer:.4f}`` -> ``val_wer=0.1234`` (with ``auto_insert_metric_name``); a missing metric formats as 0.
    """
    values = dict(metrics)
    for group in _GROUP.findall(template):
        name = group[1:]
        if auto_insert_metric_name:
            template = template.replace(group, name.replace("/", "_") + "={" + name)
        template = template.replace("{" + name, "{" + name.replace("/", "_"))
        values.setdefault(name.replace("/", "_"), 0)
    safe = {k.replace("/", "_"): v for k, v in values.items()}
    return template.format(**safe)


class NeMoModelCheckpoint:
    """See the module doc. Arguments are those of NeMo's ``checkpoint_callback_params`` (``CallbackParams``)."""

    CHECKPOINT_JOIN_CHAR = "-"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 monitor: str | None = "val_loss", mode: str = "min", save_top_k: int = 3,
                 save_last: bool | None = True, save_weights_only: bool = False, every_n_epochs: int | None = 1,
                 every_n_train_steps: int | None = None, save_on_train_epoch_end: bool | None = False,
                 always_save_nemo: bool = False, save_nemo_on_train_end: bool = True, save_best_model: bool = False,
                 postfix: str = ".nemo", prefix: str = "", n_resume: bool = False, verbose: bool = True,
                 auto_insert_metric_name: bool = True, **ignored: Any) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint_callback_params.mode={mode!r}: use 'min' or 'max'")
        if save_top_k < -1:
            raise ValueError(f"checkpoint_callback_params.save_top_k={save_top_k}: use -1 (all), 0 (none) or k >= 1")
        if save_weights_only:
            raise NotImplementedError("save_weights_only checkpoints are not written (a checkpoint is the whole "
                                      "training state); the .nemo holds the weights")
        for key, value in ignored.items():
            if value not in (None, False, -1, 0, ""):
                log.warning("checkpoint_callback_params.%s=%r has no effect in compat", key, value)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = int(save_top_k)
        self.save_last = bool(save_last)
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.always_save_nemo = always_save_nemo
        self.save_nemo_on_train_end = save_nemo_on_train_end
        self.save_best_model = save_best_model
        self.postfix = postfix
        self.prefix = prefix
        self.verbose = verbose
        self.auto_insert_metric_name = auto_insert_metric_name
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._last_saved_step = -1
        self._warned_missing = False
        if save_best_model and not save_nemo_on_train_end:
            log.warning("save_best_model is True and save_nemo_on_train_end is False: set save_nemo_on_train_end to "
                        "True to save the best model as a .nemo")
        if n_resume and self.dirpath is not None and self.save_top_k != -1:
            self._restore_topk_from_files()

    # -- Lightning callback hooks --------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            # Saves killed mid-write left their temporary files (the previous checkpoints are intact); exp_manager
            # removed them already unless this callback was made without it.
            remove_orphaned_temps(self.dirpath)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n and n > 0 and trainer.global_step % n == 0:
            self._save(trainer, pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.save_on_train_epoch_end:
            return
        n = self.every_n_epochs
        if n is not None and n >= 1 and (trainer.current_epoch + 1) % n != 0:
            return
        self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        validating = bool(trainer.val_dataloaders) and trainer.limit_val_batches != 0
        if self.save_on_train_epoch_end or not validating:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.fast_dev_run:
            return
        if self.save_last and self._last_saved_step != trainer.global_step:
            self._save_last(trainer, self._metrics(trainer))
        if self.save_nemo_on_train_end:
            if self.save_best_model and self.best_model_path and os.path.isfile(self.best_model_path):
                from compat.models.modelpt_init import read_checkpoint_state_dict

                pl_module.load_state_dict(read_checkpoint_state_dict(self.best_model_path, pl_module.device))
                log.info("loaded the best checkpoint %s (%s=%s) for the final .nemo", self.best_model_path,
                         self.monitor, self.best_model_score)
            self._save_nemo(trainer, pl_module)

    # -- Lightning's checkpoint-callback state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score,
                "best_model_path": self.best_model_path, "best_k_models": dict(self.best_k_models),
                "last_model_path": self.last_model_path, "dirpath": str(self.dirpath)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_k_models = {k: v for k, v in state.get("best_k_models", {}).items() if os.path.isfile(k)}
        self._refresh_best()
        self.last_model_path = state.get("last_model_path", "")

    # -- saving ----------------------------------------------------------------------------------------------------

    @property
    def _nemo_path(self) -> Path:
        return self.dirpath / f"{self.prefix}{self.postfix}"

    def _metrics(self, trainer: Any) -> dict[str, float]:
        return {**trainer.callback_metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}

    def _template(self) -> str:
        if self.filename is not None:
            return self.filename
        return "{epoch}-{step}" if self.monitor is None else "{epoch}-{step}-{" + self.monitor + ":.4f}"

    def _path(self, metrics: dict[str, float], suffix: str = "") -> Path:
        name = format_checkpoint_name(self._template() + suffix, metrics, self.auto_insert_metric_name)
        return self.dirpath / f"{name}{self.FILE_EXTENSION}"

    def _save(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == self._last_saved_step or trainer.fast_dev_run:
            return
        metrics = self._metrics(trainer)
        if self.monitor is None:
            if self.save_top_k != 0:
                self._write(trainer, self._path(metrics))
                for old in [p for p in self.best_k_models if p != str(self._path(metrics))]:
                    if self.save_top_k == 1:
                        self._remove(trainer, old)
                        self.best_k_models.pop(old)
                self.best_k_models[str(self._path(metrics))] = float(trainer.global_step)
        else:
            self._save_topk(trainer, metrics)
        if self.save_last:
            self._save_last(trainer, metrics)
        self._last_saved_step = trainer.global_step
        if self.always_save_nemo:
            self._save_nemo(trainer, pl_module)

    def _save_topk(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.save_top_k == 0:
            return
        value = metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                self._warned_missing = True
                log.warning("checkpoint monitor %r was not logged (logged: %s): only the last checkpoint is saved",
                            self.monitor, sorted(trainer.callback_metrics))
            return
        value = float(value)
        if math.isnan(value):
            value = math.inf if self.mode == "min" else -math.inf
        if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k and not self._better(value):
            return
        path = self._path(metrics)
        self._write(trainer, path)
        self.best_k_models[str(path)] = value
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            worst = self._ranked()[-1]
            self.best_k_models.pop(worst)
            if worst != str(path):
                self._remove(trainer, worst)
        self._refresh_best()
        if self.verbose and trainer.is_global_zero:
            log.info("epoch %d, step %d: %s=%.6g; checkpoint %s (best %s=%.6g)", trainer.current_epoch,
                     trainer.global_step, self.monitor, value, path.name, self.monitor, self.best_model_score)

    def _save_last(self, trainer: Any, metrics: dict[str, float]) -> None:
        path = self._path(metrics, suffix=self.CHECKPOINT_JOIN_CHAR + "last")
        previous = self.last_model_path
        self._write(trainer, path)
        self.last_model_path = str(path)
        if previous and previous != str(path) and previous not in self.best_k_models:
            self._remove(trainer, previous)
        for stale in self.dirpath.glob("*-last.ckpt"):  # one -last.ckpt at a time, also after a resume
            if trainer.is_global_zero and str(stale) != str(path):
                stale.unlink()

    def _write(self, trainer: Any, path: Path) -> None:
        trainer.save_checkpoint(path)

    def _remove(self, trainer: Any, path: str) -> None:
        if trainer.is_global_zero and os.path.isfile(path) and path != self.last_model_path:
            os.remove(path)

    def _save_nemo(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and callable(getattr(pl_module, "save_to", None)):
            pl_module.save_to(str(self._nemo_path))
            log.info("saved %s", self._nemo_path)

    # -- top-k bookkeeping ------------------------------------------------------------------------------------------

    def _ranked(self) -> list[str]:
        return sorted(self.best_k_models, key=self.best_k_models.get, reverse=self.mode == "max")

    def _better(self, value: float) -> bool:
        worst = self.best_k_models[self._ranked()[-1]]
        return value < worst if self.mode == "min" else value > worst

    def _refresh_best(self) -> None:
        ranked = self._ranked()
        self.best_model_path = ranked[0] if ranked else ""
        self.best_model_score = self.best_k_models[ranked[0]] if ranked else None

    def _restore_topk_from_files(self) -> None:
        """Rebuilds ``best_k_models`` from ``<monitor>=<value>`` in the names of the checkpoints in ``dirpath``."""
        if self.monitor is None or not self.dirpath.is_dir():
            return
        pattern = re.compile(re.escape(self.monitor.replace("/", "_")) + r"=(-?[0-9.]+(?:e-?\d+)?|nan|inf)")
        for path in sorted(self.dirpath.glob(f"*{self.FILE_EXTENSION}")):
            if path.name.endswith(f"-last{self.FILE_EXTENSION}"):
                self.last_model_path = str(path)
                continue
            match = pattern.search(path.stem)
            if match:
                self.best_k_models[str(path)] = float(match.group(1).rstrip("."))
        while self.save_top_k > 0 and len(self.best_k_models) > self.save_top_k:
            worst = self._ranked()[-1]
            self.best_k_models.pop(worst)
            os.remove(worst)
        self._refresh_best()
