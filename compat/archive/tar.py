"""Tar mechanics of a ``.nemo``: opening it, checking and extracting its members safely, and packing a folder.

Safety: extraction refuses (with :class:`~compat.errors.UnsafeArchiveError`, never silently) absolute member
names, ``..`` components, links and devices, and never writes outside its folder. Packing writes exactly NeMo's
layout: an uncompressed tar built with ``arcname="."``, written to a temporary file beside the destination and
renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

from compat.artifacts import member_problem, normalize_member
from compat.errors import CorruptArchiveError, MissingConfigError, NemoFileNotFoundError, UnsafeArchiveError

# What a damaged tar / gzip stream raises while being read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error)


def open_tar(path: str | os.PathLike) -> tarfile.TarFile:
    """Opens a ``.nemo`` for reading: uncompressed tar first (``"r:"``), then gzip tar (``"r:gz"``), as NeMo."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NemoFileNotFoundError(path)
    try:
        return tarfile.open(path, "r:")
    except tarfile.ReadError as plain_error:
        try:
            return tarfile.open(path, "r:gz")
        except (*_READ_ERRORS, OSError) as gzip_error:
            detail = f"as a tar: {plain_error}; as a gzip tar: {gzip_error}"
            raise CorruptArchiveError(path, detail) from gzip_error


def _checked_members(tar: tarfile.TarFile, path: str, folder: str) -> list[tuple[tarfile.TarInfo, str]]:
    """``(member, normalised name)`` for every member; raises :class:`UnsafeArchiveError` on the first bad one."""
    try:
        infos = tar.getmembers()
    except _READ_ERRORS as exc:
        raise CorruptArchiveError(path, f"the tar index is truncated or damaged: {exc}") from exc
    # tarfile stops quietly at a header cut short after the first member; a whole file ends with a zero block.
    try:
        tar.fileobj.seek(tar.offset)
        marker = tar.fileobj.read(tarfile.BLOCKSIZE)
    except (*_READ_ERRORS, OSError) as exc:
        raise CorruptArchiveError(path, f"it is truncated or damaged after {len(infos)} members: {exc}") from exc
    if marker != tarfile.NUL * tarfile.BLOCKSIZE:
        detail = f"it is truncated: the tar ends after {len(infos)} members without its end-of-archive marker"
        raise CorruptArchiveError(path, detail)
    checked, seen = [], set()
    for info in infos:
        name = normalize_member(info.name)
        problem = member_problem(info.name) or member_problem(name)
        if problem is None:
            if info.issym() or info.islnk():
                kind = "symbolic" if info.issym() else "hard"
                problem = f"it is a {kind} link (to {info.linkname!r})"
            elif info.ischr() or info.isblk() or info.isfifo():
                problem = "it is a device or a FIFO"
            elif not (info.isfile() or info.isdir()):
                problem = f"it has the unsupported tar member type {info.type!r}"
            elif info.isfile() and name in seen:
                problem = "it appears twice, so which copy to use is ambiguous"
        if problem is None and name:
            target = os.path.realpath(os.path.join(folder, name))
            if os.path.commonpath([folder, target]) != folder:
                problem = "it resolves outside the extraction folder"
        if problem is not None:
            raise UnsafeArchiveError(path, info.name, problem)
        if info.isfile():
            seen.add(name)
        checked.append((info, name))
    return checked


def _extract(
    path: str, out_folder: str, select: Callable[[str], bool] | None, config_name: str | None
) -> tuple[list[str], list[str]]:
    """Checks every member, then extracts the selected files. Returns ``(all file members, extracted ones)``."""
    os.makedirs(out_folder, exist_ok=True)
    folder = os.path.realpath(out_folder)
    with open_tar(path) as tar:
        checked = _checked_members(tar, path, folder)
        files = [name for info, name in checked if info.isfile()]
        if config_name is not None and config_name not in files:
            raise MissingConfigError(path, config_name, files)
        extracted = []
        for info, name in checked:
            target = os.path.join(folder, name)
            if info.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            if select is not None and not select(name):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with tar.extractfile(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            except _READ_ERRORS as exc:
                raise CorruptArchiveError(path, f"member {info.name!r} is cut short or damaged: {exc}") from exc
            extracted.append(name)
    return files, extracted


def unpack(path: str | os.PathLike, out_folder: str | os.PathLike, *, select: Callable[[str], bool] | None = None):
    """Safely extracts a ``.nemo`` into ``out_folder`` (every member is checked before anything is written).

    Args:
        path: the ``.nemo`` (tar or gzip tar).
        out_folder: created if missing; nothing is written outside it.
        select: optional predicate on the normalised member name (``"model_config.yaml"``); others are skipped.

    Returns:
        The extracted member names, without ``./``, in archive order.
    """
    return _extract(os.fspath(path), os.fspath(out_folder), select, None)[1]


def _list_folder(folder: str) -> list[str]:
    """Relative posix paths of the files under an unpacked ``.nemo`` folder, sorted."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel = os.path.relpath(root, folder)
        for file in sorted(files):
            names.append(file if rel == "." else Path(rel, file).as_posix())
    return names


def _normalise_tarinfo(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No local user names in the archive; plain permissions (``.`` is 0o755 so ``tar -x`` keeps ``cwd`` usable)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def pack_folder(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Tars ``folder`` into ``path`` as NeMo does (uncompressed, ``arcname="."``), atomically.

    The tar is written to a temporary file beside ``path`` and renamed over it, so a failure never leaves a
    half-written ``.nemo`` (and an existing file at ``path`` survives intact). Symlinks are stored as files.
    """
    destination = os.path.abspath(os.path.expanduser(os.fspath(path)))
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{os.path.basename(destination)}.{uuid.uuid4().hex[:12]}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            with tarfile.open(fileobj=file, mode="w:", dereference=True) as tar:
                tar.add(os.fspath(folder), arcname=".", filter=_normalise_tarinfo)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, destination)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
