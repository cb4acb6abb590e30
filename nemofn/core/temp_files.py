"""Temporary files and folders named for the process that writes them, so a later process can remove the orphans.

A process killed while it writes a checkpoint or stages a ``.nemo`` leaves a full-size temporary behind. Named with
:func:`owned_temp_name` (``<name>.tmp-<host>-<pid>-<start>``, the start time from Linux's ``/proc/<pid>/stat``), a
temporary tells whether its writer still runs: :func:`remove_orphaned_temps` removes only those of this host whose
process is gone (or whose pid now belongs to a later process), never a running process's, another host's or an
untagged file. Standard library only: ``compat.archive`` uses it without importing torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path

__all__ = ["owned_temp_name", "temp_owner_alive", "remove_orphaned_temps"]

log = logging.getLogger(__name__)

_OWNED = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-(?P<start>\d+)$")
_TAGS: dict[int, str] = {}


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", ".", socket.gethostname())[:40] or "localhost"


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux's ``/proc/<pid>/stat``); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        return int(stat.rsplit(b")", 1)[1].split()[19])  # field 22; the command name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def owned_temp_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>-<start>``: a temporary name for ``name`` that says which process writes it.

    Any temporary file or folder named this way (anything ending in the ``.tmp-...`` tag) is removed by
    :func:`remove_orphaned_temps` once its process is gone.
    """
    pid = os.getpid()  # per call: a forked child is another owner
    if pid not in _TAGS:
        _TAGS[pid] = f"{_host()}-{pid}-{_start_ticks(pid) or 0}"
    return f"{name}.tmp-{_TAGS[pid]}"


def temp_owner_alive(name: str) -> bool | None:
    """Whether the process that owns the temporary file or folder ``name`` (see :func:`owned_temp_name`) still runs;
    ``None`` when ``name`` has no owner tag. A process of another host, or on a system where it cannot be checked,
    counts as alive (its files are never touched)."""
    match = _OWNED.search(name)
    if match is None:
        return None
    if match["host"] != _host() or os.name != "posix":  # on Windows, os.kill(pid, 0) would end the process
        return True
    pid, start = int(match["pid"]), int(match["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        pass
    now = _start_ticks(pid)
    return not (start and now is not None and now != start)  # a later process that got the same pid


def _size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(root, name)).st_size for root, _, names in os.walk(path) for name in names)


def remove_orphaned_temps(folder: str | Path, *, prefix: str = "") -> list[tuple[str, int]]:
    """Removes the temporary files and folders in ``folder`` (whose names start with ``prefix``) that were left by
    processes killed while writing them; returns ``[(name, bytes)]`` of those removed, and logs their count and
    size. Temporaries of running processes, of other hosts, and files without an owner tag are left alone."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:  # no such folder (yet), or not readable: nothing to do
        return []
    removed = []
    for name in entries:
        if not name.startswith(prefix) or temp_owner_alive(name) is not False:
            continue
        path = os.path.join(folder, name)
        try:
            size = _size(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:  # another process removed it first
            continue
        except OSError as exc:
            log.warning("could not remove %s, left by an interrupted write: %s", path, exc)
            continue
        removed.append((name, size))
    if removed:
        total = sum(size for _, size in removed)
        log.warning("removed %d temporary file(s) of %s in %s, left by writes that were killed: %s", len(removed),
                    _human(total), folder, ", ".join(name for name, _ in removed))
    return removed


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
