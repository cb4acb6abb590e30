"""Artifact bookkeeping for `.nemo` archives: ``nemo:`` config values, hashed member names, restore context.

An *artifact* is a file a model needs besides its weights (a tokenizer model, a vocabulary). NeMo stores each one
flat at the archive root as ``<uuid4 hex>_<basename>`` and writes ``nemo:<uuid4 hex>_<basename>`` into the config
key that names it (NEMO_FACTS 1.3). This module holds the small, torch-free pieces:

* :class:`ArtifactPathType` / :class:`ArtifactItem`: NeMo's record of a registered artifact (``model.artifacts``),
  with one addition, ``archive``: the ``.nemo`` file or folder a ``TAR_PATH`` item is read back from on re-save.
* :class:`ArtifactSpec`: what :func:`compat.archive.save_nemo` takes per config key.
* Member-name rules (:func:`normalize_member`, :func:`member_problem`), hashed names (:func:`hashed_member_name`).
* :func:`restoring` / :func:`current_restore_archive`: the archive being restored, seen by ``register_artifact``
  while a model is built (NeMo keeps this in ``AppState().nemo_file_folder``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "NEMO_PREFIX",
    "HASHED_NAME_RE",
    "ArtifactPathType",
    "ArtifactItem",
    "ArtifactSpec",
    "normalize_member",
    "member_problem",
    "is_nemo_value",
    "member_from_value",
    "hashed_member_name",
    "strip_hash_prefix",
    "find_nemo_values",
    "specs_from_config",
    "specs_from_items",
    "restoring",
    "current_restore_archive",
]

NEMO_PREFIX = "nemo:"
HASHED_NAME_RE = re.compile(r"^[0-9a-f]{32}_(?P<basename>.+)$")


class ArtifactPathType(enum.Enum):
    """Where an artifact lives (NeMo's values): a user file, or a member of a ``.nemo``."""

    LOCAL_PATH = 0
    TAR_PATH = 1


@dataclasses.dataclass
class ArtifactItem:
    """NeMo's ``model_utils.ArtifactItem`` plus the archive a ``TAR_PATH`` item comes from.

    Attributes:
        path: absolute local path (``LOCAL_PATH``) or ``"nemo:<member>"`` (``TAR_PATH``). NeMo stores
            ``abspath("nemo:...")`` here; only the part after ``nemo:`` matters, which is what we keep.
        path_type: :class:`ArtifactPathType`.
        hashed_path: ``"nemo:<member>"`` once a save has copied a local file into an archive, else ``None``.
        archive: the ``.nemo`` file or unpacked folder a ``TAR_PATH`` member is read from (``None`` for local).
    """

    path: str = ""
    path_type: ArtifactPathType = ArtifactPathType.LOCAL_PATH
    hashed_path: str | None = None
    archive: str | None = None


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """One artifact to write into a ``.nemo``.

    Attributes:
        source: a local file path when ``from_archive`` is ``None`` (it gets a fresh ``<uuid4 hex>_`` member name);
            else the member name inside ``from_archive`` (``"nemo:"`` and ``"./"`` prefixes allowed), which is kept
            as is on re-save.
        from_archive: the ``.nemo`` file or unpacked folder holding ``source``, or ``None`` for a local file.
    """

    source: str
    from_archive: str | os.PathLike | None = None

    @property
    def is_local(self) -> bool:
        """True for a user file (copied under a new hashed name), False for an archive member (name kept)."""
        return self.from_archive is None

    @property
    def member(self) -> str:
        """The archive member name of a ``from_archive`` spec (prefixes stripped)."""
        if self.is_local:
            raise ValueError(f"ArtifactSpec({self.source!r}) is a local file; it has no member name until saved")
        return normalize_member(member_from_value(self.source) or self.source)


def normalize_member(name: str) -> str:
    """Archive member name without leading ``./`` (``"./a_b.txt"`` -> ``"a_b.txt"``; ``"."`` -> ``""``)."""
    name = name.replace("\\", "/") if os.sep == "\\" else name
    while name.startswith("./"):
        name = name[2:]
    return "" if name in (".", "") else name.rstrip("/")


def member_problem(name: str) -> str | None:
    """Why ``name`` cannot be written inside an extraction folder, or ``None`` when it is a safe relative path."""
    if "\x00" in name:
        return "the name contains a NUL byte"
    if name.startswith("/") or posixpath.isabs(name) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        return "it is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "it contains a '..' component (path traversal)"
    return None


def is_nemo_value(value: Any) -> bool:
    """True for a config value of the form ``"nemo:<member>"``."""
    return isinstance(value, str) and value.startswith(NEMO_PREFIX)


def member_from_value(value: str) -> str | None:
    """``"nemo:<member>"`` -> ``"<member>"`` (normalised); ``None`` for any other value."""
    return normalize_member(value[len(NEMO_PREFIX) :]) if is_nemo_value(value) else None


def hashed_member_name(path: str | os.PathLike) -> str:
    """A fresh member name for a local file: ``<uuid4().hex>_<basename>`` (random, as NeMo; not a content hash)."""
    return f"{uuid.uuid4().hex}_{os.path.basename(os.fspath(path))}"


def strip_hash_prefix(name: str) -> str:
    """``"<32 hex>_tokenizer.model"`` -> ``"tokenizer.model"``; other names are returned unchanged."""
    base = posixpath.basename(normalize_member(name))
    match = HASHED_NAME_RE.match(base)
    return match.group("basename") if match else base


def find_nemo_values(cfg: Any) -> dict[str, str]:
    """Every ``nemo:`` string in a config, as ``{dotted key: value}`` (list items use their index as a key part).

    Args:
        cfg: a ``DictConfig`` / ``ListConfig`` / plain ``dict`` / ``list``; interpolations are left unresolved.
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    found: dict[str, str] = {}
    _collect_nemo_values(cfg, "", found)
    return found


def _collect_nemo_values(node: Any, prefix: str, found: dict[str, str]) -> None:
    if isinstance(node, Mapping):
        pairs = node.items()
    elif isinstance(node, (list, tuple)):
        pairs = enumerate(node)
    else:
        return
    for key, value in pairs:
        if is_nemo_value(value):
            found[f"{prefix}{key}"] = value
        else:
            _collect_nemo_values(value, f"{prefix}{key}.", found)


def specs_from_config(cfg: Any, archive: str | os.PathLike) -> dict[str, ArtifactSpec]:
    """``{key: ArtifactSpec(member, from_archive=archive)}`` for every ``nemo:`` value of a restored config.

    This is what re-saving an archive needs to carry its artifacts over under their existing member names.
    """
    source = os.fspath(archive)
    return {key: ArtifactSpec(member_from_value(value), source) for key, value in find_nemo_values(cfg).items()}


def specs_from_items(
    items: Mapping[str, ArtifactItem | ArtifactSpec], default_archive: str | os.PathLike | None = None
) -> dict[str, ArtifactSpec]:
    """NeMo-style ``model.artifacts`` (``ArtifactItem`` values, or ready ``ArtifactSpec``) -> save specs.

    Args:
        items: ``{config key: item}``.
        default_archive: the model's restoration path, used for ``TAR_PATH`` items that do not record their own.

    Raises:
        ValueError: a ``TAR_PATH`` item whose source archive is unknown.
    """
    specs: dict[str, ArtifactSpec] = {}
    for key, item in items.items():
        if isinstance(item, ArtifactSpec):
            specs[key] = item
        elif item.path_type == ArtifactPathType.LOCAL_PATH:
            specs[key] = ArtifactSpec(item.path)
        else:
            archive = item.archive if item.archive is not None else default_archive
            if archive is None:
                raise ValueError(
                    f"artifact {key!r} ({item.path!r}) is a member of a .nemo, but the archive it came from is not "
                    f"recorded; set ArtifactItem.archive to the .nemo path (or register the file from a local path)"
                )
            member = member_from_value(item.path) or os.path.basename(item.path)
            specs[key] = ArtifactSpec(member, os.fspath(archive))
    return specs


_RESTORING: contextvars.ContextVar[Any] = contextvars.ContextVar("compat_restoring_archive", default=None)


@contextlib.contextmanager
def restoring(archive: Any) -> Iterator[Any]:
    """Marks ``archive`` (a :class:`compat.archive.NemoArchive`) as the one being restored, for the block."""
    token = _RESTORING.set(archive)
    try:
        yield archive
    finally:
        _RESTORING.reset(token)


def current_restore_archive() -> Any:
    """The :class:`compat.archive.NemoArchive` being restored right now, or ``None`` outside a restore."""
    return _RESTORING.get()
