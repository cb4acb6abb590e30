"""Atomic checkpoints of a whole :class:`~nemofn.core.state.TrainState` (with or without Fabric).

A checkpoint file is a dict ``{"train_state": TrainState.state_dict(), "precision": {...}, **extra}``. It is
written to ``<name>.tmp`` first, flushed to disk (``fsync``), renamed over ``<name>`` (``os.replace``, atomic on POSIX)
and the folder's entry is flushed too, so neither a crash nor a power loss mid-write leaves a torn or missing file. With Fabric, ``fabric.save`` writes on rank 0 (the DDP rule:
every rank holds the same state) and all ranks wait for the rename. ``"precision"`` holds Fabric's precision
plugin state (the ``16-mixed`` GradScaler's scale and growth tracker), which an exact resume also needs.

Files in a checkpoint directory are named ``step=00000100.ckpt``; ``last.ckpt`` is a copy of the newest one (its own
file, written the same durable way: a hard link would share every damage with its target).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from nemofn.core.state import ModelState, TrainState

__all__ = ["save_checkpoint", "load_checkpoint", "load_model_state", "checkpoint_name", "latest_checkpoint",
           "checkpoint_problem", "latest_good_checkpoint", "LAST"]

log = logging.getLogger(__name__)

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
        _commit(tmp, path)
        if link_last:
            _point_last_at(path)
    if fabric is not None:
        fabric.barrier()
    return path


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """Durably replaces ``path`` by the finished ``tmp`` (same folder): fsync the data, rename, fsync the folder."""
    try:
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _point_last_at(path: Path) -> None:
    """``last.ckpt`` becomes a durable copy of ``path``."""
    tmp = path.with_name(LAST + ".tmp")
    tmp.unlink(missing_ok=True)
    shutil.copyfile(path, tmp)
    _commit(tmp, path.with_name(LAST))


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
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} cannot be read: {problem}; resume from an earlier checkpoint")
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
    """The newest readable checkpoint in ``directory``: ``last.ckpt``, else the ``step=N.ckpt`` files from the largest
    ``N`` down (a damaged file, e.g. truncated by a full disk, is skipped with a warning naming it); else ``None``."""
    directory = Path(directory)
    steps = sorted(((int(m.group(1)), p) for p in directory.glob("step=*.ckpt") if (m := _STEP_FILE.match(p.name))),
                   reverse=True)
    candidates = ([directory / LAST] if (directory / LAST).is_file() else []) + [p for _, p in steps]
    return latest_good_checkpoint(candidates)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint file at ``path`` is unreadable (truncated, not a torch zip file, a member failing its CRC),
    or None when it is whole. Reads the file once without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"not a complete checkpoint ({exc})"
    return None if bad is None else f"member {bad!r} is damaged"


def latest_good_checkpoint(candidates: list[Path]) -> Path | None:
    """The first readable file of ``candidates`` (newest first), warning about each damaged one it skips."""
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s cannot be read (%s): trying the one before it", path, problem)
    return None
