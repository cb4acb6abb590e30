"""Writing a ``.nemo``: :func:`write_nemo_folder` (the unpacked form) and :func:`save_nemo` (packed into a tar).

The result has exactly NeMo's layout: members ``.``, then ``./<hex>_<name>`` artifacts, ``./model_config.yaml``,
``./model_weights.ckpt``, sorted. Everything is validated before the first file is written.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from compat.archive._common import DEFAULT_NEMO_VERSION, MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT, _upgrade_hydra0
from compat.archive.tar import _READ_ERRORS, open_tar, pack_folder
from compat.archive.temp_dirs import staging_dir, sweep_orphans_once
from compat.artifacts import (
    ArtifactSpec,
    find_nemo_values,
    hashed_member_name,
    member_from_value,
    member_problem,
    normalize_member,
)
from compat.errors import (
    BadStateDictError,
    CorruptArchiveError,
    DanglingArtifactError,
    MissingArtifactError,
    UnsafeArchiveError,
)

if TYPE_CHECKING:
    import torch


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

    The members are staged in ``$TMPDIR/nemo_save_<random>.tmp-<owner>/`` (removed afterwards). A process killed
    mid-save leaves that folder, which the first save of a later process removes; that process's first save to
    ``path`` also removes the owner-tagged temporary tars (``.<name>[.<anything>].tmp-<owner>``) left beside
    ``path`` by killed writers (see :mod:`compat.archive.temp_dirs`).

    Raises:
        BadStateDictError, UnsafeTargetError, MissingArtifactError, DanglingArtifactError: nothing is written.
    """
    destination = os.path.abspath(os.path.expanduser(os.fspath(path)))
    sweep_orphans_once(f".{os.path.basename(destination)}.", os.path.dirname(destination))
    with staging_dir("nemo_save_") as staging:
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
