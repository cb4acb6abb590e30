"""Loggers, metric syncing and the progress bar of the training loop.

Metrics stay on the device between logging points (``train_step`` never calls ``.item()``); :func:`to_floats`
is the one place the loop reads them back to the host, every ``log_every_n_steps`` steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["make_loggers", "to_floats", "ProgressBar"]


def make_loggers(loggers: Sequence[Any], root_dir: str | Path, name: str = "nemofn") -> list[Any]:
    """Fabric loggers from names (``"csv"``, ``"tensorboard"``) or ready logger objects.

    Files go to ``root_dir/<name>/version_<n>/`` (``lightning_fabric.loggers`` layout); all named loggers of one
    call share the next free ``n``, so a run's CSV and TensorBoard files sit in one folder.

    Raises:
        ValueError: for an unknown logger name (the known ones are listed).
    """
    from lightning_fabric.loggers import CSVLogger, TensorBoardLogger

    makers = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}
    version = _next_version(Path(root_dir) / name)
    out = []
    for logger in loggers:
        if isinstance(logger, str):
            key = logger.lower()
            if key not in makers:
                raise ValueError(f"unknown logger {logger!r}; use one of {sorted(makers)} or pass a Fabric Logger")
            out.append(makers[key](root_dir=str(root_dir), name=name, version=version))
        else:
            out.append(logger)
    return out


def _next_version(run_dir: Path) -> int:
    versions = [int(p.name.split("_", 1)[1]) for p in run_dir.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(versions, default=-1) + 1


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Reads metric tensors back to the host (one sync per device they are on) as floats; floats pass through."""
    # A DTensor (a grad norm under FSDP2) is materialised with ``full_tensor()``, a collective: every rank must call
    # this at the same points, as the loop does.
    tensors = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
               for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    # One read per device: a step's metrics may mix device tensors with host ones (a model's training_step that
    # logs torch.tensor(...)), and torch.stack refuses tensors of different devices.
    by_device: dict[torch.device, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        by_device.setdefault(v.device, {})[k] = v
    for group in by_device.values():
        stacked = torch.stack([t.detach().float().reshape(()) for t in group.values()]).cpu().tolist()
        out.update(zip(group.keys(), stacked))
    return {k: out[k] for k in metrics if k in out}


class ProgressBar:
    """A tqdm bar over optimizer steps showing loss, lr and throughput (samples/s), on rank 0 only."""

    def __init__(self, total: int | None, initial: int, enabled: bool, samples_per_step: int) -> None:
        self.enabled = enabled
        self.samples_per_step = samples_per_step
        self._t0 = time.perf_counter()
        self._steps = 0
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def step(self) -> None:
        self._steps += 1
        if self._bar is not None:
            self._bar.update(1)

    def elapsed(self) -> float:
        """Seconds since the bar started."""
        return time.perf_counter() - self._t0

    def throughput(self) -> float:
        """Samples per second since the bar started (all ranks together)."""
        elapsed = self.elapsed()
        return self._steps * self.samples_per_step / elapsed if elapsed > 0 else 0.0

    def show(self, values: Mapping[str, float]) -> None:
        if self._bar is not None:
            shown = {k: f"{values[k]:.4g}" for k in ("loss", "lr") if k in values}
            shown["samples/s"] = f"{self.throughput():.1f}"
            self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
