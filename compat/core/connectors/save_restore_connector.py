"""NeMo-shaped ``SaveRestoreConnector``: thin wrappers over :mod:`compat.archive`.

The methods keep NeMo's names and signatures (``nemo/core/connectors/save_restore_connector.py``) so code that
subclasses or calls the connector ports by changing ``nemo.`` to ``compat.`` in its imports.

The connector works with any model object that follows :class:`SavableModel`: ``ModelPT`` satisfies it, and so
does a small test double. Restoring calls ``calling_cls.from_config_dict(conf, trainer=trainer)`` while the
archive is open (so ``register_artifact`` finds its files), then ``instance.load_state_dict(sd, strict=strict)``.

Restoring checks an untrusted archive before it builds anything from it: the extraction limits and member checks of
:func:`compat.archive.open_nemo`, the config's YAML budget and interpolations, then the weights (read through a
memory map: plain dense finite tensors). While the model is built, :func:`planned_state_guard` gives
``ModelPT`` the check of the tensors it is about to allocate against the weights' shapes
(:meth:`compat.archive.NemoArchive.check_planned_state`); config errors are raised naming the archive
(:class:`~compat.errors.ArchiveConfigError`).

Not supported: nested NeMo models (``register_nemo_submodule``) and model-parallel archives; both raise.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf, open_dict

from compat import archive as nemo_archive
from compat.artifacts import (
    ArtifactItem,
    ArtifactPathType,
    ArtifactSpec,
    current_restore_archive,
    normalize_member,
    restoring,
    specs_from_items,
)
from compat.errors import (
    ArchiveConfigError,
    MissingArtifactError,
    MissingTargetError,
    NemoArchiveError,
    NemoFileNotFoundError,
    TargetImportError,
    UnknownTargetError,
)
from nemofn.core.schema import ConfigError

__all__ = ["SaveRestoreConnector", "SavableModel", "planned_state_guard"]

log = logging.getLogger(__name__)

#: While a restore builds its model: the check of the tensors the model is about to allocate (see
#: :func:`planned_state_guard`).
_STATE_GUARD: contextvars.ContextVar[Callable[[Mapping[str, Any]], None] | None] = contextvars.ContextVar(
    "compat_planned_state_guard", default=None)


def planned_state_guard() -> Callable[[Mapping[str, Any]], None] | None:
    """The check a model being restored calls with the tensors it is about to allocate, or ``None``.

    ``guard(planned)`` takes ``{state-dict key: tensor}`` (``meta`` tensors: shapes and dtypes) and raises
    :class:`~compat.errors.WeightShapeError` (or ``WeightDtypeError``, ``WeightKeysError``,
    ``ArchiveTooLargeError``) when they do not fit the archive's weights. ``ModelPT`` calls it before its
    ``init_state``; a model class whose ``load_state_dict`` maps keys its own way should not.
    """
    return _STATE_GUARD.get()


@contextlib.contextmanager
def _guarding(guard: Callable[[Mapping[str, Any]], None] | None) -> Iterator[None]:
    token = _STATE_GUARD.set(guard)
    try:
        yield
    finally:
        _STATE_GUARD.reset(token)


def _naming_archive(exc: Exception, source: str, member: str) -> Exception:
    """``exc`` (same class, same attributes) with its message prefixed by the archive and member it came from."""
    named = type(exc).__new__(type(exc))
    named.__dict__.update(exc.__dict__)
    named.args = (f"{source}: {member}: {exc}",)
    return named


def _restore_options(allow_non_finite: bool | None, max_member_bytes: int | str | None,
                     max_total_bytes: int | str | None) -> dict[str, Any]:
    """The keyword-only restore options that were given (so connectors with NeMo's signature keep working)."""
    options = dict(allow_non_finite=allow_non_finite, max_member_bytes=max_member_bytes,
                   max_total_bytes=max_total_bytes)
    return {key: value for key, value in options.items() if value is not None}


@runtime_checkable
class SavableModel(Protocol):
    """What :meth:`SaveRestoreConnector.save_to` needs from a model.

    Attributes:
        cfg: the model-level config (``target`` and ``_target_`` values are NeMo class paths).
        artifacts: ``{config key: ArtifactItem | ArtifactSpec}``, filled by ``register_artifact``; may be empty.

    Optional: ``restoration_path`` (the ``.nemo`` a ``TAR_PATH`` item without its own ``archive`` comes from) and
    ``has_nemo_submodules()`` (nested models are refused).
    """

    cfg: DictConfig
    artifacts: Mapping[str, ArtifactItem | ArtifactSpec]

    def state_dict(self) -> Mapping[str, Any]: ...


def _is_global_rank_zero() -> bool:
    """Rank 0 of the job: from ``torch.distributed`` when initialised, else from the launcher's variables."""
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _default_map_location() -> Any:
    """NeMo's default: the GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class SaveRestoreConnector:
    """Saves models to, and restores them from, ``.nemo`` archives (NeMo's connector interface)."""

    def __init__(self) -> None:
        self._model_config_yaml = nemo_archive.MODEL_CONFIG_YAML
        self._model_weights_ckpt = nemo_archive.MODEL_WEIGHTS_CKPT
        self._model_extracted_dir: str | None = None
        self._pack_nemo_file = True

    # -- properties (NeMo's) ------------------------------------------------------------------------------------

    @property
    def model_config_yaml(self) -> str:
        """Member name of the model config (``"model_config.yaml"``)."""
        return self._model_config_yaml

    @model_config_yaml.setter
    def model_config_yaml(self, path: str) -> None:
        self._model_config_yaml = path

    @property
    def model_weights_ckpt(self) -> str:
        """Member name of the weights (``"model_weights.ckpt"``)."""
        return self._model_weights_ckpt

    @model_weights_ckpt.setter
    def model_weights_ckpt(self, path: str) -> None:
        self._model_weights_ckpt = path

    @property
    def model_extracted_dir(self) -> str | None:
        """When set to an existing folder, restore reads that unpacked ``.nemo`` instead of ``restore_path``."""
        return self._model_extracted_dir

    @model_extracted_dir.setter
    def model_extracted_dir(self, path: str | None) -> None:
        self._model_extracted_dir = path

    @property
    def pack_nemo_file(self) -> bool:
        """True: ``save_to`` writes a tar. False: it writes the members into ``dirname(save_path)``."""
        return self._pack_nemo_file

    @pack_nemo_file.setter
    def pack_nemo_file(self, save_nemo_file: bool) -> None:
        self._pack_nemo_file = save_nemo_file

    def _names(self) -> dict[str, str]:
        return {"config_name": self.model_config_yaml, "weights_name": self.model_weights_ckpt}

    # -- saving -------------------------------------------------------------------------------------------------

    def save_to(self, model: SavableModel, save_path: str) -> str | None:
        """Writes ``model`` (config, ``state_dict()``, artifacts) to ``save_path``; only rank 0 writes.

        Returns:
            ``save_path`` on rank 0 (a folder's file when ``pack_nemo_file`` is False), ``None`` on other ranks.
        """
        if not _is_global_rank_zero():
            return None
        has_submodules = getattr(model, "has_nemo_submodules", None)
        if callable(has_submodules) and has_submodules():
            raise NotImplementedError(
                "saving nested NeMo models (register_nemo_submodule) is not supported by compat yet; save each "
                "model to its own .nemo"
            )
        items = getattr(model, "artifacts", None) or {}
        specs = specs_from_items(items, getattr(model, "restoration_path", None))
        config, state_dict = model.cfg, model.state_dict()
        if self.pack_nemo_file:
            nemo_archive.save_nemo(save_path, config, state_dict, specs, **self._names())
        else:
            folder = os.path.dirname(os.path.abspath(os.path.expanduser(save_path)))
            nemo_archive.write_nemo_folder(folder, config, state_dict, specs, **self._names())
        return save_path

    # -- restoring ----------------------------------------------------------------------------------------------

    def _source(self, restore_path: str) -> str:
        extracted = self.model_extracted_dir
        if extracted is not None and os.path.isdir(extracted):
            log.info("Restoration will occur within pre-extracted directory: %s", extracted)
            return os.path.abspath(extracted)
        path = os.path.abspath(os.path.expanduser(os.fspath(restore_path)))
        if not os.path.exists(path):
            raise NemoFileNotFoundError(path)
        return path

    def load_config_and_state_dict(
        self,
        calling_cls: Any,
        restore_path: str,
        override_config_path: str | DictConfig | Mapping | None = None,
        map_location: Any = None,
        strict: bool = True,
        return_config: bool = False,
        trainer: Any = None,
        validate_access_integrity: bool = True,
        *,
        allow_non_finite: bool | None = None,
        max_member_bytes: int | str | None = None,
        max_total_bytes: int | str | None = None,
    ) -> DictConfig | tuple[DictConfig, Any, dict[str, Any]]:
        """Reads the config, checks the weights, builds the instance and reads the weights (without loading them).

        The weights are checked (plain dense finite tensors, read through a memory map) before the instance is
        built, and the instance's planned tensors against their shapes while it is built (see
        :func:`planned_state_guard`). ``validate_access_integrity`` is accepted for NeMo compatibility and ignored.
        The keyword-only options are :meth:`restore_from`'s.

        Returns:
            ``(conf, instance, state_dict)``, or only the config when ``return_config`` is True.
        """
        if map_location is None:
            map_location = _default_map_location()
        source = self._source(restore_path)
        limits = dict(max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)
        with nemo_archive.open_nemo(source, only_config=return_config, **limits, **self._names()) as archive:
            conf = archive.load_config(override_config_path)
            if return_config:
                return conf
            OmegaConf.set_struct(conf, True)
            headers = archive.weight_headers(allow_non_finite=allow_non_finite)
            guard = self._state_guard(archive, conf, headers, strict)
            with restoring(archive), _guarding(guard):
                set_state = getattr(calling_cls, "_set_model_restore_state", None)
                if callable(set_state):
                    set_state(is_being_restored=True, folder=archive.folder)
                try:
                    instance = calling_cls.from_config_dict(conf, trainer=trainer)
                except MissingTargetError as exc:
                    raise MissingTargetError(calling_cls.__name__, list(conf.keys()), source) from exc
                except ConfigError as exc:
                    if isinstance(exc, NemoArchiveError):
                        raise
                    raise ArchiveConfigError.wrap(source, archive.config_name, exc) from exc
                except (UnknownTargetError, TargetImportError) as exc:
                    raise _naming_archive(exc, source, archive.config_name) from exc
                except ValueError as exc:  # a module's own check of its config (d_model % n_heads, ...)
                    if isinstance(exc, NemoArchiveError):
                        raise
                    raise _naming_archive(exc, source, archive.config_name) from exc
            if callable(getattr(instance, "to", None)):
                instance = instance.to(map_location)
            state_dict = archive.state_dict(map_location=map_location, allow_non_finite=allow_non_finite)
        return conf, instance, state_dict

    def _state_guard(self, archive: Any, conf: DictConfig, headers: dict[str, Any], strict: bool
                     ) -> Callable[[Mapping[str, Any]], None] | None:
        """The planned-state check for this restore; ``None`` when a subclass edits the weights its own way (its
        ``modify_state_dict`` may change more than key names, so the shapes are then only checked on loading)."""
        if type(self).modify_state_dict is not SaveRestoreConnector.modify_state_dict:
            return None
        renamed = self.modify_state_dict(conf, headers)

        def guard(planned: Mapping[str, Any]) -> None:
            archive.check_planned_state(planned, strict=strict, headers=renamed)

        return guard

    def modify_state_dict(self, conf: DictConfig, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Hook to edit the weights before loading; NeMo's base renames ``model.`` under ``megatron_amp_O2``."""
        if conf.get("megatron_amp_O2", False):
            state_dict = {key.replace("model.", "model.module.", 1): value for key, value in state_dict.items()}
        return state_dict

    def load_instance_with_state_dict(self, instance: Any, state_dict: dict[str, Any], strict: bool) -> None:
        """``instance.load_state_dict(state_dict, strict=strict)``, then clears the "being restored" state."""
        instance.load_state_dict(state_dict, strict=strict)
        set_state = getattr(instance, "_set_model_restore_state", None)
        if callable(set_state):
            set_state(is_being_restored=False)

    def restore_from(
        self,
        calling_cls: Any,
        restore_path: str,
        override_config_path: str | DictConfig | Mapping | None = None,
        map_location: Any = None,
        strict: bool = True,
        return_config: bool = False,
        trainer: Any = None,
        validate_access_integrity: bool = True,
        *,
        allow_non_finite: bool | None = None,
        max_member_bytes: int | str | None = None,
        max_total_bytes: int | str | None = None,
    ) -> Any:
        """Restores a model from a ``.nemo`` (or returns its config when ``return_config`` is True).

        Args:
            calling_cls: the class to build; it needs ``from_config_dict(conf, trainer=None)``.
            restore_path: the ``.nemo`` file (ignored when ``model_extracted_dir`` is an existing folder).
            override_config_path: a YAML path or a config that *replaces* the archive's (outer ``model:`` stripped).
            map_location: device for the instance and weights; default ``cuda`` if available, else ``cpu``.
            strict: passed to ``load_state_dict``.
            trainer: passed to ``from_config_dict``.
            allow_non_finite: load weights holding NaN / Inf (default: refused, unless
                ``NEMOFN_ALLOW_NON_FINITE_WEIGHTS=1``).
            max_member_bytes / max_total_bytes: extraction limits, bytes or ``"512MiB"`` (default
                ``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES``, else 8 GiB / 16 GiB). The total also bounds
                the tensors the config describes beyond those in the weights.
        """
        options = _restore_options(allow_non_finite, max_member_bytes, max_total_bytes)
        loaded = self.load_config_and_state_dict(
            calling_cls,
            restore_path,
            override_config_path,
            map_location,
            strict,
            return_config,
            trainer,
            validate_access_integrity,
            **options,
        )
        if return_config:
            return loaded
        conf, instance, state_dict = loaded
        state_dict = self.modify_state_dict(conf, state_dict)
        self.load_instance_with_state_dict(instance, state_dict, strict)
        log.info("Model %s was successfully restored from %s.", type(instance).__name__, restore_path)
        return instance

    def extract_state_dict_from(self, restore_path: str, save_dir: str, split_by_module: bool = False) -> dict:
        """Writes ``save_dir/model_weights.ckpt`` (or one ``<module>.ckpt`` each); returns the state dict."""
        source = self._source(restore_path)
        return nemo_archive.extract_state_dict(source, save_dir, split_by_module, weights_name=self.model_weights_ckpt)

    # -- artifacts ----------------------------------------------------------------------------------------------

    def register_artifact(self, model: Any, config_path: str, src: str, verify_src_exists: bool = True) -> str | None:
        """Records a file the model needs and returns a local path to it (NeMo's resolution order).

        ``src`` is an existing local path, ``nemo:<member>`` of the archive being restored, or (old archives) a
        path whose basename is a member. ``model.artifacts[config_path]`` gets an :class:`ArtifactItem` and
        ``model.cfg[config_path]`` the returned path. The path of an archive member is valid only while the model
        is being built (the extraction folder is deleted afterwards), as in NeMo.

        Returns:
            ``src`` unchanged when empty, ``None`` when missing and ``verify_src_exists`` is False.
        """
        if src is None or src == "":
            return src
        archive = current_restore_archive()
        if archive is not None:
            located = archive.locate_artifact(src, verify=verify_src_exists)
        elif os.path.exists(os.path.abspath(src)):
            located = (os.path.abspath(src), ArtifactPathType.LOCAL_PATH)
        elif verify_src_exists:
            detail = "it is not an existing local path and no .nemo is being restored"
            raise MissingArtifactError(src, detail, config_path)
        else:
            located = None
        if located is None:
            warnings.warn(f"optional artifact {config_path!r} = {src!r} was not found; it is left unset", stacklevel=2)
            return None
        return_path, path_type = located
        if path_type == ArtifactPathType.LOCAL_PATH:
            item = ArtifactItem(path=return_path, path_type=path_type)
        else:
            member = os.path.relpath(return_path, archive.folder).replace(os.sep, "/")
            item = ArtifactItem(path=f"nemo:{member}", path_type=path_type, archive=archive.source)
        if getattr(model, "artifacts", None) is None:
            model.artifacts = {}
        model.artifacts[config_path] = item
        cfg = getattr(model, "cfg", None)
        if isinstance(cfg, DictConfig):
            with open_dict(cfg):
                OmegaConf.update(cfg, config_path, return_path, force_add=True)
        return return_path

    # -- NeMo's static helpers, for subclasses ------------------------------------------------------------------

    @staticmethod
    def _make_nemo_file_from_folder(filename: str, source_dir: str) -> None:
        nemo_archive.pack_folder(source_dir, filename)

    @staticmethod
    def _unpack_nemo_file(path2file: str, out_folder: str, members: list | None = None) -> str:
        select = None
        if members is not None:
            wanted = {normalize_member(getattr(m, "name", m)) for m in members}
            select = wanted.__contains__
        nemo_archive.unpack(path2file, out_folder, select=select)
        return out_folder

    @staticmethod
    def _save_state_dict_to_disk(state_dict: Mapping[str, Any], filepath: str) -> None:
        import torch

        torch.save(dict(state_dict), filepath)

    @staticmethod
    def _load_state_dict_from_disk(model_weights: str, map_location: Any = None) -> dict[str, Any]:
        return nemo_archive.load_weights_file(model_weights, map_location if map_location is not None else "cpu")
