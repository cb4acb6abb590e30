"""Tar mechanics of a ``.nemo``: opening it, checking and extracting its members safely, and packing a folder.

Safety: extraction refuses (with :class:`~compat.errors.UnsafeArchiveError`, never silently) absolute member
names, ``..`` components, links, devices, FIFOs, sparse files and names too long for the file system, and never
writes outside its folder. Sizes are limited (:class:`ExtractionLimits`: 8 GiB per member and 16 GiB in all by
default, ``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES`` or the ``max_member_bytes`` / ``max_total_bytes``
arguments), checked from the tar headers before anything is written and counted again while copying, with
:class:`~compat.errors.ArchiveTooLargeError`. Packing writes exactly NeMo's layout: an uncompressed tar built
with ``arcname="."``, written to a temporary file beside the destination and renamed into place.
"""

from __future__ import annotations

import os
import re
import tarfile
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compat.archive.temp_dirs import owned_temp_name
from compat.artifacts import member_problem, normalize_member
from compat.errors import (
    ArchiveTooLargeError,
    CorruptArchiveError,
    ExtractionError,
    MissingConfigError,
    NemoArchiveError,
    NemoFileNotFoundError,
    UnsafeArchiveError,
)

# What a damaged tar / gzip stream raises while being read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error)

MAX_MEMBER_ENV = "NEMOFN_MAX_MEMBER_BYTES"
MAX_TOTAL_ENV = "NEMOFN_MAX_TOTAL_BYTES"
MAX_MEMBERS_ENV = "NEMOFN_MAX_MEMBERS"
#: Defaults: the largest real NeMo checkpoints are a few GB (weights in one member).
DEFAULT_MAX_MEMBER_BYTES = 8 * 2**30
DEFAULT_MAX_TOTAL_BYTES = 16 * 2**30
#: Entries of any kind (a NeMo ASR checkpoint has a handful; a tar of millions of empty headers is a bomb too).
DEFAULT_MAX_MEMBERS = 100_000

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
          "t": 2**40, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str | int, setting: str) -> int:
    """``"8GiB"``, ``"512M"``, ``"1.5g"`` or ``"4096"`` -> bytes (binary units); ``setting`` names the source."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{setting}={text!r} is not a size; write bytes (4096) or a binary unit (512MiB, 8GiB)")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value < 0:
        raise ValueError(f"{setting}={text!r} is negative; a size limit is a number of bytes >= 0")
    return value


@dataclass(frozen=True)
class ExtractionLimits:
    """How much one extraction may write: per member and in all (bytes), and how many entries the tar may hold.

    Build it with :meth:`resolve`, which takes explicit arguments first, then the environment
    (``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES``, e.g. ``512MiB``), then the defaults (8 GiB / 16 GiB).
    The entry count comes from ``NEMOFN_MAX_MEMBERS`` (default 100,000).
    """

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def resolve(cls, max_member_bytes: int | str | None = None,
                max_total_bytes: int | str | None = None) -> ExtractionLimits:
        def pick(value: int | str | None, env: str, argument: str, default: int) -> int:
            if value is not None:
                return parse_size(value, argument)
            if os.environ.get(env):
                return parse_size(os.environ[env], env)
            return default

        members = os.environ.get(MAX_MEMBERS_ENV, "").strip()
        if members and not (members.isdigit() and int(members) > 0):
            raise ValueError(f"{MAX_MEMBERS_ENV}={members!r} is not a positive whole number of archive entries")
        return cls(pick(max_member_bytes, MAX_MEMBER_ENV, "max_member_bytes", DEFAULT_MAX_MEMBER_BYTES),
                   pick(max_total_bytes, MAX_TOTAL_ENV, "max_total_bytes", DEFAULT_MAX_TOTAL_BYTES),
                   int(members) if members else DEFAULT_MAX_MEMBERS)

    def member_error(self, path: str, member: str, size: int, detail: str) -> ArchiveTooLargeError:
        return ArchiveTooLargeError(path, member, detail, size, self.max_member_bytes,
                                    f"max_member_bytes= or {MAX_MEMBER_ENV}")

    def total_error(self, path: str, member: str, size: int, detail: str) -> ArchiveTooLargeError:
        return ArchiveTooLargeError(path, member, detail, size, self.max_total_bytes,
                                    f"max_total_bytes= or {MAX_TOTAL_ENV}")


def _fs_limit(folder: str, name: str, fallback: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (AttributeError, ValueError, OSError):  # no pathconf (Windows), or the file system does not say
        return fallback


def _name_problem(folder: str, name: str, name_max: int, path_max: int) -> str | None:
    """Why ``name`` cannot be stored under ``folder`` (a part or the whole path too long), else ``None``."""
    for part in name.split("/"):
        size = len(os.fsencode(part))
        if size > name_max:
            return (f"its name part {part[:40]!r}... is {size} bytes long; the file system allows at most "
                    f"{name_max}")
    size = len(os.fsencode(os.path.join(folder, name)))
    if size >= path_max:
        return f"its path in the extraction folder is {size} bytes long; the file system allows at most {path_max - 1}"
    return None


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


def _checked_members(tar: tarfile.TarFile, path: str, folder: str, select: Callable[[str], bool] | None,
                     limits: ExtractionLimits) -> list[tuple[tarfile.TarInfo, str]]:
    """``(member, normalised name)`` for every member; raises :class:`UnsafeArchiveError` on the first bad one.

    Headers are read one by one and sizes checked as they come, so a huge member is refused before the stream
    behind it is read (a gzip bomb is not decompressed to find the next header).
    """
    name_max = _fs_limit(folder, "PC_NAME_MAX", 255)
    path_max = _fs_limit(folder, "PC_PATH_MAX", 4096)
    infos: list[tarfile.TarInfo] = []
    planned = 0
    try:
        for info in tar:
            infos.append(info)
            if len(infos) > limits.max_members:
                raise ArchiveTooLargeError(path, None, "it holds more than", len(infos) - 1, limits.max_members,
                                           MAX_MEMBERS_ENV, unit="entries")
            if info.issparse():  # before its size: a sparse header declares the size once its holes are filled
                raise UnsafeArchiveError(path, info.name, f"it is a sparse file (its holes would be written out as "
                                                          f"{info.size:,} bytes of zeros); NeMo never writes sparse "
                                                          f"members")
            if not info.isfile():
                continue
            if info.size > limits.max_member_bytes:
                raise limits.member_error(path, info.name, info.size, "its tar header declares")
            if select is None or select(normalize_member(info.name)):
                planned += info.size
                if planned > limits.max_total_bytes:
                    raise limits.total_error(path, info.name, planned, "with it, the members to extract declare")
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
            problem = _name_problem(folder, name, name_max, path_max)
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


def _copy_member(tar: tarfile.TarFile, info: tarfile.TarInfo, target: str, path: str, limits: ExtractionLimits,
                 written_before: int) -> int:
    """Copies one member to ``target``, counting the bytes (the limits hold even if a stream outgrew its header).

    A failed copy removes its partial file. Returns the bytes written.
    """
    written, opened = 0, False
    try:
        with tar.extractfile(info) as source, open(target, "wb") as sink:
            opened = True
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > limits.max_member_bytes:
                    raise limits.member_error(path, info.name, written, "it yields at least")
                if written_before + written > limits.max_total_bytes:
                    raise limits.total_error(path, info.name, written_before + written, "the extraction reached")
                if written > info.size:
                    raise CorruptArchiveError(path, f"member {info.name!r} yields more than the {info.size:,} bytes "
                                                    f"its tar header declares")
                sink.write(chunk)
    except BaseException as exc:
        if opened and os.path.lexists(target):
            os.remove(target)
        if isinstance(exc, _READ_ERRORS):
            raise CorruptArchiveError(path, f"member {info.name!r} is cut short or damaged: {exc}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, NemoArchiveError):
            raise ExtractionError(path, info.name, os.path.dirname(target), exc) from exc
        raise
    return written


def _extract(
    path: str, out_folder: str, select: Callable[[str], bool] | None, config_name: str | None,
    limits: ExtractionLimits | None = None,
) -> tuple[list[str], list[str]]:
    """Checks every member, then extracts the selected files. Returns ``(all file members, extracted ones)``."""
    limits = ExtractionLimits.resolve() if limits is None else limits
    try:
        os.makedirs(out_folder, exist_ok=True)
    except OSError as exc:
        raise ExtractionError(path, ".", out_folder, exc) from exc
    folder = os.path.realpath(out_folder)
    with open_tar(path) as tar:
        checked = _checked_members(tar, path, folder, select, limits)
        files = [name for info, name in checked if info.isfile()]
        if config_name is not None and config_name not in files:
            raise MissingConfigError(path, config_name, files)
        extracted, written = [], 0
        for info, name in checked:
            target = os.path.join(folder, name)
            if not info.isdir() and select is not None and not select(name):
                continue
            try:
                os.makedirs(target if info.isdir() else os.path.dirname(target), exist_ok=True)
            except OSError as exc:
                raise ExtractionError(path, info.name, folder, exc) from exc
            if info.isdir():
                continue
            written += _copy_member(tar, info, target, path, limits, written)
            extracted.append(name)
    return files, extracted


def unpack(path: str | os.PathLike, out_folder: str | os.PathLike, *, select: Callable[[str], bool] | None = None,
           max_member_bytes: int | str | None = None, max_total_bytes: int | str | None = None) -> list[str]:
    """Safely extracts a ``.nemo`` into ``out_folder`` (every member is checked before anything is written).

    Args:
        path: the ``.nemo`` (tar or gzip tar).
        out_folder: created if missing; nothing is written outside it.
        select: optional predicate on the normalised member name (``"model_config.yaml"``); others are skipped.
        max_member_bytes / max_total_bytes: size limits (see :class:`ExtractionLimits`; bytes or ``"512MiB"``).

    Returns:
        The extracted member names, without ``./``, in archive order.

    Raises:
        UnsafeArchiveError, ArchiveTooLargeError, CorruptArchiveError, ExtractionError.
    """
    limits = ExtractionLimits.resolve(max_member_bytes, max_total_bytes)
    return _extract(os.fspath(path), os.fspath(out_folder), select, None, limits)[1]


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


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is as durable as it gets there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def pack_folder(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Tars ``folder`` into ``path`` as NeMo does (uncompressed, ``arcname="."``), atomically.

    The tar is written to a temporary file beside ``path`` and renamed over it, so a failure never leaves a
    half-written ``.nemo`` (and an existing file at ``path`` survives intact). Symlinks are stored as files.
    """
    destination = os.path.abspath(os.path.expanduser(os.fspath(path)))
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    # Named for this process: a kill mid-write leaves an orphan the next save beside it removes (temp_dirs).
    temporary = os.path.join(parent, "." + owned_temp_name(f"{os.path.basename(destination)}.{uuid.uuid4().hex[:12]}"))
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            with tarfile.open(fileobj=file, mode="w:", dereference=True) as tar:
                tar.add(os.fspath(folder), arcname=".", filter=_normalise_tarinfo)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, destination)
        _fsync_folder(parent)  # the rename itself survives a power cut
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
