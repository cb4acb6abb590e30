"""Reading a ``.nemo`` (a tar, or the unpacked folder): :func:`open_nemo` and the :class:`NemoArchive` it returns.

Also NeMo's config rules on the way in (``override_config_path``, the Hydra 0.x upgrade) and weight extraction.
Weights are only ever loaded with ``torch.load(weights_only=True)``, and must be plain dense tensors (meta, sparse,
quantised and nested ones are refused). :meth:`NemoArchive.weight_headers` reads their shapes and dtypes through a
memory map, without loading them, so a restore compares them with the model its config describes
(:meth:`NemoArchive.check_planned_state`; both in :mod:`compat.archive.weights`) before allocating anything.
``torch`` is imported on first use, so reading a config does not need it.
"""

from __future__ import annotations

import copy
import os
import shutil
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from compat.archive._common import MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT, _upgrade_hydra0
from compat.archive.tar import ExtractionLimits, _extract, _list_folder, parse_size
from compat.archive.temp_dirs import make_temp_dir
from compat.archive.weights import (
    allow_non_finite as _non_finite_allowed,
    check_finite,
    check_planned_state,
    load_weights,
    weight_headers as _meta_headers,
)
from compat.archive.yaml_budget import check_yaml_budget
from compat.artifacts import (
    ArtifactPathType,
    ArtifactSpec,
    member_from_value,
    member_problem,
    normalize_member,
    specs_from_config,
)
from compat.errors import (
    BadOverrideError,
    ConfigInterpolationError,
    CorruptArchiveError,
    MissingArtifactError,
    MissingConfigError,
    MissingWeightsError,
    NemoFileNotFoundError,
    UnsafeArchiveError,
    YamlBudgetError,
)

if TYPE_CHECKING:
    import torch

CONFIG_BYTES_ENV = "NEMOFN_MAX_CONFIG_BYTES"
#: The largest YAML config read (real NeMo configs are well under 1 MB, vocabularies included); parsing is the
#: costly part, so this is checked before the node budget (:mod:`compat.archive.yaml_budget`).
DEFAULT_MAX_CONFIG_BYTES = 16 * 2**20


class NemoArchive:
    """An opened ``.nemo``: its members on disk (a temporary extraction, or the unpacked folder itself).

    Use it as a context manager (or call :meth:`close`): a temporary extraction folder is deleted on close (and
    when the object is garbage-collected). Paths returned by :meth:`resolve_artifact` are valid until then.

    Attributes:
        source: absolute path of the ``.nemo`` file or unpacked folder that was opened.
        folder: the folder the members are in.
        members: file member names (no ``./``), archive order for a tar, sorted for a folder.
        limits: the :class:`~compat.archive.tar.ExtractionLimits` it was opened with (its total also bounds the
            tensors a restore may allocate beyond those in the weights, see :meth:`check_planned_state`).
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
        limits: ExtractionLimits | None = None,
    ) -> None:
        self.source = source
        self.folder = folder
        self.members = tuple(members)
        self.only_config = only_config
        self.map_location = map_location
        self.config_name = config_name
        self.weights_name = weights_name
        self.limits = limits if limits is not None else ExtractionLimits.resolve()
        self._extracted = frozenset(extracted)
        self._headers: dict[str, torch.Tensor] | None = None
        self._finite_checked = False
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
            _check_config_size(file, self.source, self.config_name)
            check_yaml_budget(file, source=self.source, member=self.config_name)
            conf = OmegaConf.load(file)
        except YamlBudgetError:
            raise
        except OSError as exc:
            raise CorruptArchiveError(self.source, f"{self.config_name} could not be read: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and OmegaConf errors share no base class
            raise CorruptArchiveError(self.source, f"{self.config_name} is not valid YAML: {exc}") from exc
        if not isinstance(conf, DictConfig):
            raise CorruptArchiveError(self.source, f"{self.config_name} holds a {type(conf).__name__}, not a mapping")
        _check_interpolations(conf, self.source, self.config_name)
        return conf

    def load_config(self, override_config_path: Any = None) -> DictConfig:
        """The model config as ``restore_from`` sees it: the override if given (see :func:`apply_override`)."""
        return apply_override(self.config() if override_config_path is None else None, override_config_path)

    def _weights_file(self) -> str:
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
        return self.member_path(self.weights_name)

    def state_dict(self, map_location: Any = None, *, allow_non_finite: bool | None = None
                   ) -> dict[str, torch.Tensor]:
        """``model_weights.ckpt`` as a flat ``{NeMo state-dict key: Tensor}`` dict, loaded with ``weights_only=True``.

        Args:
            map_location: as ``torch.load``; defaults to the one given to :func:`open_nemo`, else ``"cpu"``.
            allow_non_finite: load weights holding NaN / Inf (for forensics); default: refused with
                :class:`NonFiniteWeightsError`, unless the environment sets ``NEMOFN_ALLOW_NON_FINITE_WEIGHTS=1``.

        Raises:
            MissingWeightsError, CorruptArchiveError (a pickle that is not plain tensors), UnsupportedTensorError
            (meta, sparse, quantised or nested tensors), NonFiniteWeightsError.
        """
        file = self._weights_file()
        location = map_location if map_location is not None else self.map_location
        state = load_weights(file, self.source, self.weights_name, location or "cpu")
        if not _non_finite_allowed(allow_non_finite) and not self._finite_checked:
            check_finite(state, self.source, self.weights_name)
            self._finite_checked = True
        return state

    def weight_headers(self, *, allow_non_finite: bool | None = None) -> dict[str, torch.Tensor]:
        """The weights' keys, shapes and dtypes, as ``meta`` tensors, read without loading the weights into memory.

        The file is memory-mapped (``torch.load(mmap=True, weights_only=True)``; a legacy non-zip file is loaded
        instead), its entries are checked as :meth:`state_dict` checks them, and its values are checked to be finite
        (unless allowed, as in :meth:`state_dict`), so a restore refuses bad weights before it builds anything.
        The headers are cached (and so is a passed finiteness check).
        """
        check = not _non_finite_allowed(allow_non_finite) and not self._finite_checked
        if self._headers is None or check:
            state = load_weights(self._weights_file(), self.source, self.weights_name, "cpu", mmap=True)
            if check:
                check_finite(state, self.source, self.weights_name)
                self._finite_checked = True
            self._headers = _meta_headers(state)
        return dict(self._headers)

    def check_planned_state(self, planned: Mapping[str, torch.Tensor], *, strict: bool,
                            headers: Mapping[str, torch.Tensor] | None = None) -> None:
        """Checks the tensors a model *would* allocate (``meta`` tensors: shapes, dtypes) against the weights.

        Called while restoring, after the config is read and before the model's tensors exist, so a config that
        does not belong to its weights (an edited ``filters: 20000000``) fails here instead of allocating. See
        :func:`compat.archive.weights.check_planned_state` (``headers`` default: :meth:`weight_headers`).
        """
        headers = self.weight_headers() if headers is None else headers
        check_planned_state(planned, headers, strict=strict, source=self.source, member=self.weights_name,
                            max_total_bytes=self.limits.max_total_bytes)

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


def _check_config_size(file: str, source: str, member: str) -> None:
    """Refuses a YAML file past ``NEMOFN_MAX_CONFIG_BYTES`` (default 16 MiB) before it is parsed."""
    limit = parse_size(os.environ[CONFIG_BYTES_ENV], CONFIG_BYTES_ENV) if os.environ.get(CONFIG_BYTES_ENV) \
        else DEFAULT_MAX_CONFIG_BYTES
    size = os.path.getsize(file)
    if size > limit:
        raise YamlBudgetError(source, member, f"it is {size:,} bytes, more than the {limit:,} a config may take "
                                              f"(raise {CONFIG_BYTES_ENV} only for a file you trust)")


def _check_interpolations(conf: DictConfig, source: str, member: str) -> None:
    """Resolves every ``${...}`` once (as building the model would), so a cycle or a missing key is named here."""
    from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError, InterpolationValidationError

    try:
        OmegaConf.to_container(conf, resolve=True, throw_on_missing=False)
    except (InterpolationKeyError, InterpolationResolutionError, InterpolationValidationError) as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ConfigInterpolationError(source, member, str(getattr(exc, "full_key", "") or "?"), detail) from None


def open_nemo(
    path: str | os.PathLike,
    *,
    extract_to: str | os.PathLike | None = None,
    map_location: Any = None,
    only_config: bool = False,
    config_name: str = MODEL_CONFIG_YAML,
    weights_name: str = MODEL_WEIGHTS_CKPT,
    max_member_bytes: int | str | None = None,
    max_total_bytes: int | str | None = None,
) -> NemoArchive:
    """Opens a ``.nemo`` file (tar or gzip tar, members with or without ``./``) or an unpacked ``.nemo`` folder.

    Args:
        path: the ``.nemo`` file, or a folder holding its members (NeMo's ``model_extracted_dir``).
        extract_to: extract here instead of into a temporary folder (which is then not deleted on close).
        map_location: default ``map_location`` of :meth:`NemoArchive.state_dict` (``"cpu"`` when ``None``).
        only_config: extract only the ``*.yaml`` members (for ``return_config``); weights and artifacts are
            then unavailable.
        config_name / weights_name: member names (``SaveRestoreConnector.model_config_yaml`` / ``model_weights_ckpt``).
        max_member_bytes / max_total_bytes: extraction limits, bytes or ``"512MiB"``; default
            ``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES``, else 8 GiB / 16 GiB (see
            :class:`~compat.archive.tar.ExtractionLimits`).

    A folder is read in place: ``extract_to`` and ``only_config`` do not apply to it, and closing keeps it.

    Raises:
        NemoFileNotFoundError, CorruptArchiveError, MissingConfigError, UnsafeArchiveError, ArchiveTooLargeError,
        ExtractionError (the file system refused a member: no space, ...).
    """
    source = os.path.abspath(os.path.expanduser(os.fspath(path)))
    limits = ExtractionLimits.resolve(max_member_bytes, max_total_bytes)
    options = dict(map_location=map_location, config_name=config_name, weights_name=weights_name, limits=limits)
    if os.path.isdir(source):
        members = _list_folder(source)
        if config_name not in members:
            raise MissingConfigError(source, config_name, members)
        return NemoArchive(source, source, members, members, owns_folder=False, **options)
    if not os.path.isfile(source):
        raise NemoFileNotFoundError(source)
    owns_folder = extract_to is None
    # An owner-tagged folder: one left by a killed restore is removed by the next process (compat.archive.temp_dirs).
    folder = make_temp_dir("nemo_restore_") if owns_folder else os.path.abspath(os.fspath(extract_to))
    select = (lambda name: name.endswith(".yaml")) if only_config else None
    try:
        members, extracted = _extract(source, folder, select, config_name, limits)
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
            check_yaml_budget(file, source=file, member="the override config")
            conf = OmegaConf.load(file)
        except YamlBudgetError:
            raise
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


def load_state_dict(path: str | os.PathLike, map_location: Any = None, **open_kwargs: Any
                    ) -> dict[str, torch.Tensor]:
    """The weights of a ``.nemo`` (``weights_only=True``) as a flat ``{key: Tensor}`` dict.

    ``open_kwargs`` go to :func:`open_nemo` (e.g. ``max_total_bytes``)."""
    with open_nemo(path, map_location=map_location, **open_kwargs) as archive:
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
