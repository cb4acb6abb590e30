"""Atomic checkpoints of a whole :class:`~nemofn.core.state.TrainState` (with or without Fabric).

A checkpoint file is a dict ``{"train_state": TrainState.state_dict(), "precision": {...}, **extra}``. It is
written to a temporary file beside it first, flushed to disk (``fsync``), renamed over ``<name>`` (``os.replace``,
atomic on POSIX) and the folder's entry is flushed too, so neither a crash nor a power loss mid-write leaves a torn
or missing file. With Fabric, rank 0 writes (the DDP rule: every rank holds the same state) and all ranks wait for
the rename. ``"precision"`` holds Fabric's precision plugin state (the ``16-mixed`` GradScaler's scale and growth
tracker), which an exact resume also needs. The file is the one ``fabric.save`` would write, and ``fabric.load``
reads it; it is not written through ``fabric.save``, whose "atomic" save stages the bytes in a nameless
``$TMPDIR/tmpXXXXXXXX`` file (fsspec's transaction) that a killed process leaves behind with no way to tell whose
it was, and holds the checkpoint in memory twice.

Files in a checkpoint directory are named ``step=00000100.ckpt``; ``last.ckpt`` is a copy of the newest one (its own
file, written the same durable way: a hard link would share every damage with its target).

Temporary files are named for the process that writes them: ``<name>.tmp-<host>-<pid>-<start>`` (``start``: the
process's start time in clock ticks, so a pid reused by a later process, as in a restarted container, does not
pass for the writer). A process killed mid-write leaves its temporary file; :func:`remove_orphaned_temps` removes
those whose writer is gone (never a live process's, nor one of another host, which cannot be checked), logging
their count and size. It runs by itself once per folder and process: on the first :func:`save_checkpoint` into a
folder and in :func:`latest_checkpoint` (the resume lookup); ``compat`` also calls it when an experiment starts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nemofn.core.state import ModelState, TrainState
from nemofn.core.temp_files import owned_temp_name, remove_orphaned_temps, temp_owner_alive

__all__ = ["save_checkpoint", "load_checkpoint", "load_model_state", "checkpoint_name", "latest_checkpoint",
           "checkpoint_problem", "latest_good_checkpoint", "LAST", "owned_temp_name", "temp_owner_alive",
           "remove_orphaned_temps"]

log = logging.getLogger(__name__)

LAST = "last.ckpt"
_STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")


def checkpoint_name(step: int) -> str:
    """``step=00000100.ckpt`` for step 100."""
    return f"step={step:08d}.ckpt"


def _is_zero(fabric: Any) -> bool:
    return fabric is None or fabric.is_global_zero


def _check_strategy(fabric: Any) -> None:
    if fabric is None:
        return
    from lightning_fabric.strategies import Strategy

    strategy = type(fabric.strategy)
    if strategy.save_checkpoint is not Strategy.save_checkpoint:  # FSDP, ModelParallel (FSDP2), DeepSpeed, XLA
        raise NotImplementedError(
            f"checkpointing a TrainState under {strategy.__name__} is not implemented: it saves its own way (e.g. "
            "each rank holds shards of the parameters and optimizer state), and save_checkpoint writes one file "
            "from rank 0 (the DDP layout); use strategy='ddp' to checkpoint, or gather the shards yourself")


def _plain(value: Any) -> Any:
    """What ``fabric.save`` stores for ``value``: its ``state_dict()`` when it has one (a module, an optimizer, a
    TrainState), else the value itself."""
    stateful = callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))
    return value.state_dict() if stateful else value


def save_checkpoint(path: str | Path, state: TrainState, *, fabric: Any = None,
                    extra: dict[str, Any] | None = None, link_last: bool = False) -> Path:
    """Writes ``state`` (and ``extra`` entries) atomically to ``path``; returns ``path``.

    The first write of a process into a folder also removes the temporary files that killed writers left there
    (:func:`remove_orphaned_temps`).

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
    payload = {"train_state": state.state_dict()}
    if fabric is not None:
        payload["precision"] = fabric.strategy.precision.state_dict()
        extra = {key: _plain(value) for key, value in extra.items()}
    payload.update(extra)
    if _is_zero(fabric):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(path.parent)
        _write_durably(path, lambda tmp: torch.save(payload, tmp))
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


def _write_durably(path: Path, write: Callable[[Path], None]) -> None:
    """Durably replaces ``path`` by what ``write(tmp)`` writes to this process's temporary file beside it: write,
    fsync the data, rename, fsync the folder. On an error the temporary file is removed (a kill leaves it, for
    :func:`remove_orphaned_temps`)."""
    tmp = path.with_name(owned_temp_name(path.name))
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _point_last_at(path: Path) -> None:
    """``last.ckpt`` becomes a durable copy of ``path``."""
    _write_durably(path.with_name(LAST), lambda tmp: shutil.copyfile(path, tmp))


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
    ``N`` down (a damaged file, e.g. truncated by a full disk, is skipped with a warning naming it); else ``None``.

    This is the resume lookup, so the first call of a process for a folder also removes the temporary files that
    killed writers left there (:func:`remove_orphaned_temps`)."""
    directory = Path(directory)
    _sweep_once(directory)
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


# -- temporary files owned by their process (rules in nemofn.core.temp_files) -----------------------------

_SWEPT: set[tuple[int, str]] = set()


def _sweep_once(folder: Path) -> None:
    key = (os.getpid(), os.path.abspath(folder))
    if key not in _SWEPT:
        _SWEPT.add(key)
        remove_orphaned_temps(folder)
