"""Atomic checkpoints of a whole :class:`~nemofn.core.state.TrainState` (with or without Fabric).

A checkpoint file is a dict ``{"train_state": TrainState.state_dict(), "precision": {...}, **extra}``. It is
written to ``<name>.tmp`` first and then renamed over ``<name>`` (``os.replace``, atomic on POSIX), so a crash
mid-write leaves the previous checkpoint intact. With Fabric, ``fabric.save`` writes on rank 0 (the DDP rule:
every rank holds the same state) and all ranks wait for the rename. ``"precision"`` holds Fabric's precision
plugin state (the ``16-mixed`` GradScaler's scale and growth tracker), which an exact resume also needs.

Files in a checkpoint directory are named ``step=00000100.ckpt``; ``last.ckpt`` is a hard link (or a copy) to the
newest one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nemofn.core.state import ModelState, TrainState

__all__ = ["save_checkpoint", "load_checkpoint", "load_model_state", "checkpoint_name", "latest_checkpoint",
           "LAST"]

LAST = "last.ckpt"
_STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")


def checkpoint_name(step: int) -> str:
    """``step=00000100.ckpt`` for step 100."""
    return f"step={step:08d}.ckpt"


def _is_zero(fabric: Any) -> bool:
    return fabric is None or fabric.is_global_zero


def _check_strategy(fabric: Any) -> None:
    if fabric is not None and type(fabric.strategy).__name__ in ("FSDPStrategy", "ModelParallelStrategy"):
        raise NotImplementedError(
            f"checkpointing a TrainState under {type(fabric.strategy).__name__} is not implemented: each rank holds "
            "shards of the parameters and optimizer state, and save_checkpoint writes one file from rank 0 (the DDP "
            "layout); use strategy='ddp' to checkpoint, or gather the shards yourself")


def save_checkpoint(path: str | Path, state: TrainState, *, fabric: Any = None,
                    extra: dict[str, Any] | None = None, link_last: bool = False) -> Path:
    """Writes ``state`` (and ``extra`` entries) atomically to ``path``; returns ``path``.

    Args:
        path: the checkpoint file.
        state: a live :class:`TrainState`.
        fabric: a ``lightning_fabric.Fabric`` (then every rank must call this), or ``None``.
        extra: more picklable entries to store (e.g. loop bookkeeping); must not use the key ``train_state``.
        link_last: also point ``last.ckpt`` in the same directory at this file.
    """
    _check_strategy(fabric)
    path = Path(path)
    extra = dict(extra or {})
    if "train_state" in extra or "precision" in extra:
        raise KeyError("extra must not use the reserved keys 'train_state' / 'precision'")
    tmp = path.with_name(path.name + ".tmp")
    if _is_zero(fabric):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fabric is None:
            torch.save({"train_state": state.state_dict(), **extra}, tmp)
        else:
            fabric.save(tmp, {"train_state": state, "precision": fabric.strategy.precision, **extra})
    except BaseException:
        if _is_zero(fabric):
            tmp.unlink(missing_ok=True)
        raise
    if _is_zero(fabric):
        os.replace(tmp, path)
        if link_last:
            _point_last_at(path)
    if fabric is not None:
        fabric.barrier()
    return path


def _point_last_at(path: Path) -> None:
    last = path.with_name(LAST)
    tmp = path.with_name(LAST + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, last)


def load_checkpoint(path: str | Path, state: TrainState, *, fabric: Any = None) -> dict[str, Any]:
    """Restores ``state`` in place from ``path``; returns the checkpoint's other entries (``extra``).

    With Fabric the precision plugin's state (GradScaler) is restored too.

    Raises:
        FileNotFoundError: naming the path.
        ValueError / KeyError: from :meth:`TrainState.load_state_dict` when the checkpoint does not fit the state.
    """
    _check_strategy(fabric)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if fabric is None:
        ckpt = torch.load(path, map_location=state.model.device, weights_only=True)
        state.load_state_dict(ckpt.pop("train_state"))
        return ckpt
    objects: dict[str, Any] = {"train_state": state, "precision": fabric.strategy.precision}
    return fabric.load(path, objects, strict=False)


def load_model_state(path: str | Path, model: ModelState) -> int:
    """Copies only the model part (params and buffers) of the checkpoint at ``path`` into ``model``, e.g. to
    evaluate it; the optimizer state and data position are not needed. Returns the checkpoint's step.

    Raises:
        FileNotFoundError: naming the path.
        KeyError / ValueError: from :meth:`ModelState.load_state_dict` (strict: missing, unexpected or misshapen
            keys are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    train_state = torch.load(path, map_location=model.device, weights_only=True)["train_state"]
    model.load_state_dict({**train_state["params"], **train_state["buffers"]})
    return int(train_state["step"])


def latest_checkpoint(directory: str | Path) -> Path | None:
    """``directory/last.ckpt`` if present, else the ``step=N.ckpt`` with the largest ``N``, else ``None``."""
    directory = Path(directory)
    if (directory / LAST).is_file():
        return directory / LAST
    steps = [(int(m.group(1)), p) for p in directory.glob("step=*.ckpt") if (m := _STEP_FILE.match(p.name))]
    return max(steps)[1] if steps else None
