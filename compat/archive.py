"""Reading and writing `.nemo` archives, the format real NeMo (2.x and 3.0) saves and restores.

A ``.nemo`` is a tar (gzip tar before NeMo 1.7) holding ``model_config.yaml`` (the model-level config),
``model_weights.ckpt`` (``torch.save`` of a flat ``{state-dict key: Tensor}`` dict) and artifacts stored flat as
``<uuid4 hex>_<basename>`` (NEMO_FACTS 1). Reading::

    with open_nemo("model.nemo") as archive:
        cfg = archive.load_config()                      # DictConfig
        state = archive.state_dict()                     # {"encoder.encoder.0.mconv.0.conv.weight": Tensor, ...}
        tok = archive.resolve_artifact(cfg.tokenizer.model_path)   # "nemo:<hex>_tokenizer.model" -> local path

Writing (:func:`save_nemo`) produces exactly NeMo's layout: an uncompressed tar built with ``arcname="."``
(members ``.``, then ``./<hex>_<name>`` artifacts, ``./model_config.yaml``, ``./model_weights.ckpt``, sorted),
written to a temporary file beside the destination and renamed into place.

Safety: extraction refuses (with :class:`~compat.errors.UnsafeArchiveError`, never silently) absolute member
names, ``..`` components, links and devices, and never writes outside its folder. Weights are only ever loaded
with ``torch.load(weights_only=True)``. ``torch`` is imported on first use, so reading a config does not need it.
"""

from __future__ import annotations

import collections
import copy
import os
import shutil
import tarfile
import tempfile
import uuid
import weakref
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from compat.artifacts import (
    ArtifactPathType,
    ArtifactSpec,
    find_nemo_values,
    hashed_member_name,
    member_from_value,
    member_problem,
    normalize_member,
    specs_from_config,
)
from compat.errors import (
    BadOverrideError,
    BadStateDictError,
    CorruptArchiveError,
    DanglingArtifactError,
    MissingArtifactError,
    MissingConfigError,
    MissingWeightsError,
    NemoFileNotFoundError,
    UnsafeArchiveError,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MODEL_CONFIG_YAML",
    "MODEL_WEIGHTS_CKPT",
    "NemoArchive",
    "open_nemo",
    "open_tar",
    "unpack",
    "load_config",
    "load_state_dict",
    "load_weights_file",
    "apply_override",
    "maybe_update_config_version",
    "extract_state_dict",
    "save_nemo",
    "write_nemo_folder",
    "pack_folder",
]

MODEL_CONFIG_YAML = "model_config.yaml"
MODEL_WEIGHTS_CKPT = "model_weights.ckpt"
DEFAULT_NEMO_VERSION = "3.0.0"

# What a damaged tar / gzip stream raises while being read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error)


# ---------------------------------------------------------------------------------------------------------------
# Tar access and safe extraction
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


class NemoArchive:
    """An opened ``.nemo``: its members on disk (a temporary extraction, or the unpacked folder itself).

    Use it as a context manager (or call :meth:`close`): a temporary extraction folder is deleted on close (and
    when the object is garbage-collected). Paths returned by :meth:`resolve_artifact` are valid until then.

    Attributes:
        source: absolute path of the ``.nemo`` file or unpacked folder that was opened.
        folder: the folder the members are in.
        members: file member names (no ``./``), archive order for a tar, sorted for a folder.
    """

    def __init__(
        self,
        source: str,
        folder: str,
        members: list[str],
        extracted: list[str],
        *,
        owns_folder: bool,
        map_location: Any = None,
        only_config: bool = False,
        config_name: str = MODEL_CONFIG_YAML,
        weights_name: str = MODEL_WEIGHTS_CKPT,
    ) -> None:
        self.source = source
        self.folder = folder
        self.members = tuple(members)
        self.only_config = only_config
        self.map_location = map_location
        self.config_name = config_name
        self.weights_name = weights_name
        self._extracted = frozenset(extracted)
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True) if owns_folder else None
        self._closed = False

    @property
    def is_packed(self) -> bool:
        """True when :attr:`source` is a tar file, False for an unpacked folder (NeMo's ``model_extracted_dir``)."""
        return self.source != self.folder

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Deletes the temporary extraction folder (an unpacked source folder or ``extract_to`` is kept)."""
        self._closed = True
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> NemoArchive:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"folder={self.folder!r}"
        return f"NemoArchive({self.source!r}, {state}, members={list(self.members)!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"NemoArchive({self.source!r}) is closed; open it again with compat.archive.open_nemo")

    def member_path(self, name: str) -> str:
        """Local path of an extracted member (``"./x"`` and ``"x"`` both accepted)."""
        self._check_open()
        member = normalize_member(name)
        problem = member_problem(member)
        if problem is not None:
            raise UnsafeArchiveError(self.source, name, problem)
        return os.path.join(self.folder, member)

    def config(self) -> DictConfig:
        """The archive's own ``model_config.yaml``, freshly loaded (a new ``DictConfig`` on every call)."""
        file = self.member_path(self.config_name)
        try:
            conf = OmegaConf.load(file)
        except OSError as exc:
            raise CorruptArchiveError(self.source, f"{self.config_name} could not be read: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and OmegaConf errors share no base class
            raise CorruptArchiveError(self.source, f"{self.config_name} is not valid YAML: {exc}") from exc
        if not isinstance(conf, DictConfig):
            raise CorruptArchiveError(self.source, f"{self.config_name} holds a {type(conf).__name__}, not a mapping")
        return conf

    def load_config(self, override_config_path: Any = None) -> DictConfig:
        """The model config as ``restore_from`` sees it: the override if given (see :func:`apply_override`)."""
        return apply_override(self.config() if override_config_path is None else None, override_config_path)

    def state_dict(self, map_location: Any = None) -> dict[str, torch.Tensor]:
        """``model_weights.ckpt`` as a flat ``{NeMo state-dict key: Tensor}`` dict, loaded with ``weights_only=True``.

        Args:
            map_location: as ``torch.load``; defaults to the one given to :func:`open_nemo`, else ``"cpu"``.
        """
        self._check_open()
        if self.only_config:
            detail = "the archive was opened with only_config=True; open it again without only_config to read weights"
            raise MissingWeightsError(self.source, self.weights_name, detail)
        if self.weights_name not in self.members:
            detail = (
                f"no such member (members: {list(self.members)}). Model-parallel archives (mp_rank_XX/, "
                f"tp_rank_XX_pp_rank_XXX/, model_weights/) are not supported; export a single-rank .nemo with NeMo"
            )
            raise MissingWeightsError(self.source, self.weights_name, detail)
        location = map_location if map_location is not None else self.map_location
        return _load_weights(self.member_path(self.weights_name), self.source, self.weights_name, location or "cpu")

    def locate_artifact(self, value: str, *, verify: bool = True) -> tuple[str, ArtifactPathType] | None:
        """Where an artifact config value points, in NeMo's ``register_artifact`` order (NEMO_FACTS 1.3).

        1. an existing local path -> ``(abspath, LOCAL_PATH)``;
        2. ``"nemo:<member>"`` -> ``(<folder>/<member>, TAR_PATH)``;
        3. a path whose basename is a member -> ``(<folder>/<basename>, TAR_PATH)`` (old archives);
        4. otherwise :class:`MissingArtifactError`, or ``None`` when ``verify`` is False.
        """
        self._check_open()
        if os.path.exists(os.path.abspath(value)):
            return os.path.abspath(value), ArtifactPathType.LOCAL_PATH
        member = member_from_value(value)
        if member is not None:
            problem = member_problem(member)
            if problem is not None:
                raise UnsafeArchiveError(self.source, member, f"the artifact value {value!r} is unsafe: {problem}")
        else:
            member = os.path.basename(value)
        if member in self._extracted:
            return os.path.join(self.folder, member), ArtifactPathType.TAR_PATH
        if member in self.members:
            detail = f"{self.source} was opened with only_config=True, so its artifacts were not extracted"
            raise MissingArtifactError(value, detail)
        if verify:
            raise MissingArtifactError(value, f"{self.source} has no member {member!r} (members: {list(self.members)})")
        return None

    def resolve_artifact(self, value: str | None, *, verify: bool = True) -> str | None:
        """Local path of the file an artifact config value names (see :meth:`locate_artifact`).

        ``None`` and ``""`` are returned unchanged, as NeMo's ``register_artifact`` does.
        """
        if value is None or value == "":
            return value
        located = self.locate_artifact(value, verify=verify)
        return None if located is None else located[0]

    def artifact_specs(self) -> dict[str, ArtifactSpec]:
        """``{config key: ArtifactSpec(member, from_archive=source)}`` for every ``nemo:`` value of the config."""
        return specs_from_config(self.config(), self.source)


def _load_weights(file: str, source: str, name: str, map_location: Any) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        loaded = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = f"{name} holds objects other than tensors, which torch.load(weights_only=True) refuses: {first_line}"
        raise CorruptArchiveError(source, detail) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CorruptArchiveError(source, f"{name} could not be read: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise MissingWeightsError(source, name, f"it holds a {type(loaded).__name__}, not a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            hint = " (it looks like a Lightning checkpoint, not .nemo weights)" if key == "state_dict" else ""
            detail = f"entry {key!r} is a {type(value).__name__}, not a tensor{hint}"
            raise MissingWeightsError(source, name, detail)
        state[key] = value
    return state


def load_weights_file(file: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """A ``model_weights.ckpt`` on disk as a flat ``{key: Tensor}`` dict (``torch.load(weights_only=True)``)."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise MissingWeightsError(file, os.path.basename(file), "no such file")
    return _load_weights(file, file, os.path.basename(file), map_location)


def open_nemo(
    path: str | os.PathLike,
    *,
    extract_to: str | os.PathLike | None = None,
    map_location: Any = None,
    only_config: bool = False,
    config_name: str = MODEL_CONFIG_YAML,
    weights_name: str = MODEL_WEIGHTS_CKPT,
) -> NemoArchive:
    """Opens a ``.nemo`` file (tar or gzip tar, members with or without ``./``) or an unpacked ``.nemo`` folder.

    Args:
        path: the ``.nemo`` file, or a folder holding its members (NeMo's ``model_extracted_dir``).
        extract_to: extract here instead of into a temporary folder (which is then not deleted on close).
        map_location: default ``map_location`` of :meth:`NemoArchive.state_dict` (``"cpu"`` when ``None``).
        only_config: extract only the ``*.yaml`` members (for ``return_config``); weights and artifacts are
            then unavailable.
        config_name / weights_name: member names (``SaveRestoreConnector.model_config_yaml`` / ``model_weights_ckpt``).

    A folder is read in place: ``extract_to`` and ``only_config`` do not apply to it, and closing keeps it.

    Raises:
        NemoFileNotFoundError, CorruptArchiveError, MissingConfigError, UnsafeArchiveError.
    """
    source = os.path.abspath(os.path.expanduser(os.fspath(path)))
    options = dict(map_location=map_location, config_name=config_name, weights_name=weights_name)
    if os.path.isdir(source):
        members = _list_folder(source)
        if config_name not in members:
            raise MissingConfigError(source, config_name, members)
        return NemoArchive(source, source, members, members, owns_folder=False, **options)
    if not os.path.isfile(source):
        raise NemoFileNotFoundError(source)
    owns_folder = extract_to is None
    folder = tempfile.mkdtemp(prefix="nemo_") if owns_folder else os.path.abspath(os.fspath(extract_to))
    select = (lambda name: name.endswith(".yaml")) if only_config else None
    try:
        members, extracted = _extract(source, folder, select, config_name)
    except BaseException:
        if owns_folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    folder = os.path.realpath(folder)
    return NemoArchive(
        source, folder, members, extracted, owns_folder=owns_folder, only_config=only_config, **options
    )


def apply_override(config: DictConfig | None, override: Any = None) -> DictConfig:
    """NeMo's ``override_config_path`` rule: the override *replaces* the archive's config (it is not merged).

    Args:
        config: the archive's config (used when ``override`` is ``None``).
        override: ``None``, a YAML path, a ``DictConfig`` (resolved first) or a dict.

    Returns:
        The model-level config: an outer ``model:`` key is stripped, as NeMo does.
    """
    if override is None:
        conf = config
    elif isinstance(override, (str, os.PathLike)):
        file = os.fspath(override)
        if not os.path.isfile(file):
            raise BadOverrideError(file, "no such file")
        try:
            conf = OmegaConf.load(file)
        except Exception as exc:  # noqa: BLE001 - yaml and OmegaConf raise unrelated types
            raise BadOverrideError(file, f"it is not valid YAML: {exc}") from exc
    elif isinstance(override, DictConfig):
        try:
            conf = OmegaConf.create(OmegaConf.to_container(override, resolve=True))
        except Exception as exc:  # noqa: BLE001 - omegaconf interpolation errors
            raise BadOverrideError(override, f"its interpolations do not resolve: {exc}") from exc
    elif isinstance(override, Mapping):
        conf = OmegaConf.create(dict(override))
    else:
        raise BadOverrideError(override, f"a {type(override).__name__} is neither a path nor a config")
    if not isinstance(conf, DictConfig):
        raise BadOverrideError(override, f"it holds a {type(conf).__name__}, not a mapping")
    if "model" in conf:
        conf = conf.model
        if not isinstance(conf, DictConfig):
            raise BadOverrideError(override, "its top-level 'model' key is not a mapping")
    return conf


def load_config(path: str | os.PathLike, override_config_path: Any = None, **open_kwargs: Any) -> DictConfig:
    """The model config of a ``.nemo`` (only ``*.yaml`` members are extracted), with NeMo's override rule."""
    with open_nemo(path, only_config=True, **open_kwargs) as archive:
        return archive.load_config(override_config_path)


def load_state_dict(path: str | os.PathLike, map_location: Any = None) -> dict[str, torch.Tensor]:
    """The weights of a ``.nemo`` (``weights_only=True``) as a flat ``{key: Tensor}`` dict."""
    with open_nemo(path, map_location=map_location) as archive:
        return archive.state_dict()


def extract_state_dict(
    restore_path: str | os.PathLike,
    save_dir: str | os.PathLike,
    split_by_module: bool = False,
    *,
    weights_name: str = MODEL_WEIGHTS_CKPT,
) -> dict[str, torch.Tensor]:
    """NeMo's ``extract_state_dict_from``: writes the weights of a ``.nemo`` as plain torch checkpoints.

    Args:
        restore_path: the ``.nemo`` file or unpacked folder.
        save_dir: created if missing. Receives ``model_weights.ckpt``, or with ``split_by_module`` one
            ``<first key part>.ckpt`` per top-level module (``encoder.ckpt``, ...) with that prefix stripped.

    Returns:
        The full state dict that was read.
    """
    import torch

    save_dir = os.path.abspath(os.fspath(save_dir))
    os.makedirs(save_dir, exist_ok=True)
    state = load_state_dict(restore_path, map_location="cpu")
    if not split_by_module:
        torch.save(state, os.path.join(save_dir, weights_name))
        return state
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        groups.setdefault(head, {})[rest] = value
    for head, group in groups.items():
        torch.save(group, os.path.join(save_dir, f"{head}.ckpt"))
    return state


def maybe_update_config_version(cfg: Any) -> Any:
    """NeMo's Hydra 0.x -> 1.x config upgrade: ``cls`` becomes ``_target_`` and ``params`` is merged into its parent.

    Applied recursively through nested mappings (not lists), on a copy; ``target`` is left alone. Values that are
    not mappings are returned unchanged. The result is a struct-mode ``DictConfig``, as NeMo's.
    """
    if OmegaConf.is_config(cfg):
        if not isinstance(cfg, DictConfig):
            return cfg
        container = OmegaConf.to_container(cfg, resolve=False)
    elif isinstance(cfg, Mapping):
        container = copy.deepcopy(dict(cfg))
    else:
        return cfg
    _upgrade_hydra0(container)
    upgraded = OmegaConf.create(container)
    OmegaConf.set_struct(upgraded, True)
    return upgraded


def _upgrade_hydra0(node: dict) -> None:
    if "cls" in node and "_target_" not in node:
        node["_target_"] = node.pop("cls")
    if isinstance(node.get("params"), Mapping):
        node.update(node.pop("params"))
    for value in node.values():
        if isinstance(value, dict):
            _upgrade_hydra0(value)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _prepare_config(config: Any, extra_target_prefixes: tuple[str, ...]) -> DictConfig:
    """A resolved, Hydra-1.x, non-struct copy of ``config`` with ``nemo_version``; targets checked."""
    from compat.registry import check_config_targets

    if isinstance(config, DictConfig):
        container = OmegaConf.to_container(config, resolve=True)
    elif isinstance(config, Mapping):
        container = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
    else:
        raise TypeError(f"config must be a DictConfig or a dict, got {type(config).__name__}")
    if "model" in container:
        raise ValueError(
            "the config has a top-level 'model' key; a .nemo holds the model-level config: pass cfg.model instead"
        )
    _upgrade_hydra0(container)
    if container.get("nemo_version") is None:
        container["nemo_version"] = DEFAULT_NEMO_VERSION
    check_config_targets(container, extra_target_prefixes)
    return OmegaConf.create(container)


def _prepare_state_dict(state_dict: Any) -> collections.OrderedDict[str, torch.Tensor]:
    """Checks every entry is ``str -> dense Tensor`` and returns detached, CPU, compact copies, in order."""
    import torch

    if not isinstance(state_dict, Mapping):
        raise BadStateDictError("<root>", f"expected a dict of tensors, got a {type(state_dict).__name__}")
    prepared: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key:
            raise BadStateDictError(key, "keys must be non-empty strings (NeMo's dotted state-dict names)")
        if not isinstance(value, torch.Tensor):
            raise BadStateDictError(key, f"the value is a {type(value).__name__}, not a torch.Tensor")
        tensor = value.detach()
        if type(tensor) is not torch.Tensor:
            raise BadStateDictError(key, f"tensor subclass {type(tensor).__name__} cannot be saved as plain weights")
        if tensor.is_meta or tensor.layout != torch.strided:
            raise BadStateDictError(key, "only dense tensors with data can be saved (got a meta or sparse tensor)")
        tensor = tensor.to("cpu").contiguous()
        # A view of a larger storage would save the whole storage: keep only this tensor's bytes.
        if tensor.storage_offset() != 0 or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        prepared[key] = tensor
    return prepared


def _plan_artifacts(
    artifacts: Mapping[str, ArtifactSpec | str | os.PathLike], reserved: tuple[str, ...]
) -> list[tuple[str, str, ArtifactSpec]]:
    """``[(config key, member name, spec)]``; local files get a fresh ``<uuid4 hex>_<basename>`` name."""
    plan, sources = [], {}
    for key, spec in artifacts.items():
        if not isinstance(spec, ArtifactSpec):
            spec = ArtifactSpec(os.fspath(spec))
        if spec.is_local:
            source = os.path.abspath(os.path.expanduser(os.fspath(spec.source)))
            if not os.path.isfile(source):
                raise MissingArtifactError(spec.source, "no such local file", key)
            spec = ArtifactSpec(source)
            member = hashed_member_name(source)
        else:
            member = spec.member
            problem = member_problem(member)
            if problem is not None or member in reserved or not member:
                reason = problem or "it is empty or clashes with the config / weights member"
                raise UnsafeArchiveError(os.fspath(spec.from_archive), spec.source, f"artifact {key!r}: {reason}")
            origin = os.path.abspath(os.fspath(spec.from_archive))
            if sources.setdefault(member, origin) != origin:
                raise ValueError(
                    f"artifact {key!r}: member {member!r} is taken from both {sources[member]} and {origin}; "
                    f"an archive can hold only one file of that name"
                )
        plan.append((key, member, spec))
    return plan


def _copy_archive_members(folder: str, archive: str, wanted: dict[str, str]) -> None:
    """Copies ``{member: config key}`` out of a ``.nemo`` file or unpacked folder into ``folder``."""
    if os.path.isdir(archive):
        for member, key in wanted.items():
            source = os.path.join(archive, member)
            if not os.path.isfile(source):
                raise MissingArtifactError(f"nemo:{member}", f"the folder {archive} has no such file", key)
            shutil.copyfile(source, os.path.join(folder, member))
        return
    found = set()
    with open_tar(archive) as tar:
        try:
            for info in tar:
                name = normalize_member(info.name)
                if name in wanted and name not in found and info.isfile():
                    with tar.extractfile(info) as source, open(os.path.join(folder, name), "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                    found.add(name)
        except _READ_ERRORS as exc:
            raise CorruptArchiveError(archive, f"reading artifacts failed: {exc}") from exc
    for member, key in wanted.items():
        if member not in found:
            raise MissingArtifactError(f"nemo:{member}", f"{archive} has no such regular-file member", key)


def write_nemo_folder(
    folder: str | os.PathLike,
    config: DictConfig | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    artifacts: Mapping[str, ArtifactSpec | str | os.PathLike] | None = None,
    *,
    config_name: str = MODEL_CONFIG_YAML,
    weights_name: str = MODEL_WEIGHTS_CKPT,
    extra_target_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Writes the members of a ``.nemo`` flat into ``folder`` (the unpacked form; :func:`save_nemo` tars it).

    Everything is validated before the first file is written. See :func:`save_nemo` for the arguments.

    Returns:
        The member names written, sorted (the order ``tar.add(folder, arcname=".")`` stores them in).
    """
    folder = os.fspath(folder)
    cfg = _prepare_config(config, tuple(extra_target_prefixes))
    tensors = _prepare_state_dict(state_dict)
    plan = _plan_artifacts(artifacts or {}, (config_name, weights_name))
    for key, member, _ in plan:
        OmegaConf.update(cfg, key, f"nemo:{member}", merge=False, force_add=True)
    provided = {member for _, member, _ in plan}
    for key, value in find_nemo_values(cfg).items():
        if member_from_value(value) not in provided:
            raise DanglingArtifactError(key, value)

    import torch

    os.makedirs(folder, exist_ok=True)
    by_archive: dict[str, dict[str, str]] = {}
    for key, member, spec in plan:
        if spec.is_local:
            shutil.copyfile(spec.source, os.path.join(folder, member))
        else:
            by_archive.setdefault(os.path.abspath(os.fspath(spec.from_archive)), {})[member] = key
    for archive, wanted in by_archive.items():
        _copy_archive_members(folder, archive, wanted)
    with open(os.path.join(folder, config_name), "w", encoding="utf-8") as file:
        OmegaConf.save(config=cfg, f=file, resolve=True)
    torch.save(tensors, os.path.join(folder, weights_name))
    return sorted({*provided, config_name, weights_name})


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


def save_nemo(
    path: str | os.PathLike,
    config: DictConfig | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    artifacts: Mapping[str, ArtifactSpec | str | os.PathLike] | None = None,
    *,
    config_name: str = MODEL_CONFIG_YAML,
    weights_name: str = MODEL_WEIGHTS_CKPT,
    extra_target_prefixes: tuple[str, ...] = (),
) -> None:
    """Writes a ``.nemo`` that real NeMo 3.0 restores.

    Args:
        path: the ``.nemo`` to write (parent folders are created; an existing file is replaced atomically).
        config: the model-level config. It is saved resolved (``OmegaConf.save(resolve=True)``), upgraded from
            Hydra 0.x keys, with ``nemo_version`` added when missing. Its root ``target`` and every ``_target_``
            must be NeMo class paths (see :func:`compat.registry.check_config_targets`).
        state_dict: flat ``{NeMo state-dict key: Tensor}`` (BatchNorm ``num_batches_tracked`` and the preprocessor's
            ``featurizer.window`` / ``featurizer.fb`` included). Saved detached, on the CPU, compact.
        artifacts: ``{config key: ArtifactSpec}``. A local file is stored as ``<uuid4 hex>_<basename>``; a member
            of another archive keeps its name. The config key is set to ``nemo:<member>``. Every other ``nemo:``
            value in the config must be covered, else :class:`~compat.errors.DanglingArtifactError`.
        config_name / weights_name: member names (NeMo's defaults).
        extra_target_prefixes: accept more class-path prefixes (for archives only nemofn will read).

    Raises:
        BadStateDictError, UnsafeTargetError, MissingArtifactError, DanglingArtifactError: nothing is written.
    """
    with tempfile.TemporaryDirectory(prefix="nemo_save_") as staging:
        write_nemo_folder(
            staging,
            config,
            state_dict,
            artifacts,
            config_name=config_name,
            weights_name=weights_name,
            extra_target_prefixes=extra_target_prefixes,
        )
        pack_folder(staging, path)
