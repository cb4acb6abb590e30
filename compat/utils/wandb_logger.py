"""A small Weights & Biases logger for ``compat.Trainer`` (exp_manager's ``create_wandb_logger``).

W&B is an optional extra: ``pip install wandb``. Without it, asking for the logger is an error that says so.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WandbLogger"]


class WandbLogger:
    """``log_metrics`` / ``log_hyperparams`` / ``finalize`` on a ``wandb`` run (rank 0 only: the trainer calls
    loggers there). Arguments are ``wandb.init``'s (``name``, ``project``, ``save_dir`` as ``dir``, ...)."""

    def __init__(self, name: str | None = None, project: str | None = None, save_dir: str | None = None,
                 version: str | None = None, **kwargs: Any) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError("exp_manager.create_wandb_logger=true needs the wandb package: pip install wandb "
                              "(or set create_wandb_logger=false)") from err
        self._wandb = wandb
        self._init = {"name": name, "project": project, "dir": save_dir, "id": version or None, **kwargs}
        self._run: Any = None

    @property
    def run(self) -> Any:
        if self._run is None:
            self._run = self._wandb.init(**{k: v for k, v in self._init.items() if v is not None})
        return self._run

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(dict(metrics), step=step)

    def log_hyperparams(self, params: Any) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def finalize(self, status: str = "success") -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
            self._run = None
