"""``EarlyStopping``: Lightning's callback, for ``compat.Trainer`` (exp_manager's ``create_early_stopping_callback``).

After each validation it compares the monitored metric with the best so far; after ``patience`` validations
without an improvement of more than ``min_delta`` it asks the trainer to stop (``trainer.should_stop``), and
training ends after the current step. A non-finite value stops at once when ``check_finite``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

__all__ = ["EarlyStopping"]

log = logging.getLogger("compat.callbacks")


class EarlyStopping:
    """Stops training when ``monitor`` stops improving (Lightning's arguments and semantics)."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 **ignored: Any) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode={mode!r}: use 'min' or 'max'")
        self.monitor, self.mode, self.patience = monitor, mode, int(patience)
        self.min_delta = abs(float(min_delta)) * (-1 if mode == "min" else 1)
        self.strict, self.check_finite, self.verbose = strict, check_finite, verbose
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.wait_count = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopped_epoch = 0

    def _improved(self, value: float) -> bool:
        target = self.best_score + self.min_delta
        return value < target if self.mode == "min" else value > target

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if self.strict:
                raise RuntimeError(f"EarlyStopping could not find the monitored metric {self.monitor!r} among the "
                                   f"logged ones {sorted(trainer.callback_metrics)}; log it, or set strict=False")
            return
        value = float(value)
        reason = None
        if self.check_finite and not math.isfinite(value):
            reason = f"{self.monitor}={value} is not finite"
        elif self.stopping_threshold is not None and not self._improved_over(value, self.stopping_threshold):
            reason = f"{self.monitor}={value:.6g} reached the stopping threshold {self.stopping_threshold}"
        elif self.divergence_threshold is not None and self._improved_over(value, self.divergence_threshold):
            reason = f"{self.monitor}={value:.6g} diverged past {self.divergence_threshold}"
        elif self._improved(value):
            self.best_score, self.wait_count = value, 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                reason = (f"{self.monitor} did not improve in the last {self.wait_count} validations; best "
                          f"{self.best_score:.6g}")
        if reason is not None:
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True
            log.info("early stopping: %s", reason)

    def _improved_over(self, value: float, threshold: float) -> bool:
        """Whether ``value`` is still on the far side of ``threshold`` (above it for ``min``)."""
        return value > threshold if self.mode == "min" else value < threshold

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "best_score": self.best_score, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state["wait_count"])
        self.best_score = float(state["best_score"])
        self.stopped_epoch = int(state["stopped_epoch"])
