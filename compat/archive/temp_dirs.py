"""Temporary folders and files of ``.nemo`` saves and restores, named for the process that owns them.

A process killed while it saves or restores a ``.nemo`` leaves its staging folder in ``$TMPDIR`` (the whole model,
unpacked) and, beside the destination, a half-written tar. Temporaries named with their owner's tag (host, pid and
start time; see :mod:`nemofn.core.temp_files`)::

    $TMPDIR/nemo_save_k3j9x2ab.tmp-<host>-<pid>-<start>/      # staging_dir("nemo_save_")
    <dir>/.model.nemo.tmp-<host>-<pid>-<start>                # "." + owned_temp_name("model.nemo")

let the next process tell an orphan (its owner is gone) from a live process's work, and remove only the orphans:
:func:`sweep_orphans` does, and the first :func:`staging_dir` / :func:`make_temp_dir` of a process with a given
prefix sweeps ``$TMPDIR`` for that prefix by itself. What was removed is logged (count and bytes).

The ownership rule lives in :mod:`nemofn.core.temp_files` (one rule for every temporary file the project writes;
standard library only, so ``import compat.archive`` stays free of torch).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from nemofn.core.temp_files import owned_temp_name as _owned_temp_name
from nemofn.core.temp_files import remove_orphaned_temps

__all__ = ["staging_dir", "make_temp_dir", "owned_temp_name", "sweep_orphans", "sweep_orphans_once"]

_SWEPT: set[tuple[int, str, str]] = set()


def owned_temp_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>-<start>``: a temporary name for ``name`` tagged with this process (see the module
    doc); e.g. ``"." + owned_temp_name("model.nemo")`` for a tar written beside ``model.nemo``."""
    return _owned_temp_name(name)


def sweep_orphans(prefix: str, folder: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Removes the temporaries in ``folder`` (default ``$TMPDIR``) whose names start with ``prefix`` and whose owning
    process is gone; returns ``[(name, bytes)]`` of those removed. A live process's temporaries, another host's and
    untagged files are never touched."""
    return remove_orphaned_temps(tempfile.gettempdir() if folder is None else folder, prefix=prefix)


def sweep_orphans_once(prefix: str, folder: str | os.PathLike | None = None) -> None:
    """:func:`sweep_orphans`, the first time this process asks for this prefix and folder."""
    where = os.path.abspath(tempfile.gettempdir() if folder is None else os.fspath(folder))
    key = (os.getpid(), where, prefix)
    if key not in _SWEPT:
        _SWEPT.add(key)
        sweep_orphans(prefix, where)


def make_temp_dir(prefix: str, folder: str | os.PathLike | None = None) -> str:
    """A new empty folder ``<folder>/<prefix><random>.tmp-<owner>`` (``folder`` defaults to ``$TMPDIR``) that this
    process owns; the caller removes it. The first call of a process for ``prefix`` sweeps the orphans of killed
    processes first."""
    sweep_orphans_once(prefix, folder)
    return tempfile.mkdtemp(prefix=prefix, suffix=owned_temp_name(""), dir=folder)


@contextlib.contextmanager
def staging_dir(prefix: str, folder: str | os.PathLike | None = None) -> Iterator[str]:
    """:func:`make_temp_dir` as a context manager: the folder is removed when the block ends (a kill leaves it for
    the next process to sweep)."""
    path = make_temp_dir(prefix, folder)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
