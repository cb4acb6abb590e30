"""Named errors of the compat layer: `.nemo` archives, artifacts, class-path targets and config overrides.

Every error derives from :class:`NemoArchiveError` (except the registry's :class:`UnknownTargetError` and
:class:`TargetImportError`, re-exported from :mod:`nemofn.core.registry`), and also from the builtin exception a NeMo user would catch
for the same failure (``FileNotFoundError``, ``ValueError``, ``LookupError``, ``TypeError``, ``ImportError``), so
``except FileNotFoundError`` keeps working on code ported from NeMo. Messages name the file, member or config key
and say how to fix the problem.
"""

from __future__ import annotations

from collections.abc import Iterable

from nemofn.core.registry import TargetImportError, UnknownTargetError  # the registry's own errors
from nemofn.core.schema import ConfigError

__all__ = [
    "NemoArchiveError",
    "NemoFileNotFoundError",
    "CorruptArchiveError",
    "MissingConfigError",
    "MissingWeightsError",
    "MissingArtifactError",
    "DanglingArtifactError",
    "UnsafeArchiveError",
    "UnsafeTargetError",
    "UnknownTargetError",
    "TargetImportError",
    "BadOverrideError",
    "BadStateDictError",
    "YamlBudgetError",
    "NonFiniteWeightsError",
    "MissingTargetError",
    "ConfigInterpolationError",
    "ArchiveTooLargeError",
    "ExtractionError",
    "UnsupportedTensorError",
    "WeightShapeError",
    "WeightKeysError",
    "WeightDtypeError",
    "ArchiveConfigError",
]


def _listing(names: Iterable[str], limit: int = 20) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``... (+N more)``); ``<none>`` when empty."""
    names = list(names)
    if not names:
        return "<none>"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... (+{len(names) - limit} more)"


class NemoArchiveError(Exception):
    """Base class of every named error raised by ``compat`` archive, artifact and registry code."""


class NemoFileNotFoundError(NemoArchiveError, FileNotFoundError):
    """The ``.nemo`` file (or unpacked folder) to restore does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path}: no such .nemo file or unpacked .nemo folder. Check the path (it is resolved against the "
            f"current directory, with '~' expanded)."
        )
        self.path = path


class CorruptArchiveError(NemoArchiveError, ValueError):
    """The file is not a tar / gzip tar, or it is truncated or damaged."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"{path}: not a readable .nemo archive ({detail}). A .nemo file is a tar (or, before NeMo 1.7, a gzip "
            f"tar); this one is truncated, damaged, or not a .nemo at all. Download or copy it again and compare "
            f"its size or checksum with the source."
        )
        self.path = path
        self.detail = detail


class MissingConfigError(NemoArchiveError, FileNotFoundError):
    """The archive has no ``model_config.yaml`` member."""

    def __init__(self, path: str, config_name: str, members: Iterable[str]) -> None:
        super().__init__(
            f"{path}: no {config_name!r} in this archive; members found: {_listing(members)}. A .nemo must hold "
            f"the model config at its root; if the config has another name, set "
            f"SaveRestoreConnector.model_config_yaml (or pass config_name=) to that name."
        )
        self.path = path
        self.members = list(members)


class MissingWeightsError(NemoArchiveError, FileNotFoundError):
    """The archive has no ``model_weights.ckpt`` member, or the member is not a flat ``{str: Tensor}`` dict."""

    def __init__(self, path: str, weights_name: str, detail: str) -> None:
        super().__init__(f"{path}: cannot load the weights {weights_name!r}: {detail}")
        self.path = path


class MissingArtifactError(NemoArchiveError, FileNotFoundError):
    """An artifact is neither an existing local file nor a member of the archive it should come from."""

    def __init__(self, value: str, detail: str, key: str | None = None) -> None:
        where = f" (config key {key!r})" if key else ""
        super().__init__(
            f"artifact {value!r}{where} was not found: {detail}. Use an existing local file path, or "
            f"'nemo:<member>' naming a file inside the .nemo being restored."
        )
        self.value = value
        self.key = key


class DanglingArtifactError(NemoArchiveError, ValueError):
    """A config to be written has a ``nemo:`` value that no artifact passed to the writer provides."""

    def __init__(self, key: str, value: str) -> None:
        super().__init__(
            f"config key {key!r} = {value!r} refers to a .nemo member, but no artifact for {key!r} was given, so "
            f"the written archive would not restore. Pass artifacts={{{key!r}: ArtifactSpec(<member>, "
            f"from_archive=<source .nemo>)}} (compat.artifacts.specs_from_config(cfg, source) builds them all), or "
            f"set the key to a local file path and pass ArtifactSpec(<path>)."
        )
        self.key = key
        self.value = value


class UnsafeArchiveError(NemoArchiveError, ValueError):
    """A tar member (or an artifact value) would be written or read outside the extraction folder."""

    def __init__(self, path: str, member: str, reason: str) -> None:
        super().__init__(
            f"{path}: refusing to extract member {member!r}: {reason}. A .nemo written by NeMo holds only plain "
            f"files at its root; this archive was made by something else or was tampered with. Nothing was "
            f"extracted; do not use this file unless you trust and inspect its source (tar -tvf)."
        )
        self.path = path
        self.member = member


class UnsafeTargetError(NemoArchiveError, ValueError):
    """A ``target`` / ``_target_`` config value is outside the class-path prefixes NeMo 3.0 will instantiate."""

    def __init__(self, key: str, value: object, allowed: Iterable[str]) -> None:
        super().__init__(
            f"config key {key!r} = {value!r} is not a class path NeMo 3.0 will instantiate (allowed prefixes: "
            f"{_listing(allowed, limit=40)}); real NeMo would refuse to restore this .nemo. Write the NeMo class "
            f"path (e.g. compat.registry.nemo_target_for(YourClass)), not a nemofn/compat path."
        )
        self.key = key
        self.value = value


class BadOverrideError(NemoArchiveError, ValueError):
    """``override_config_path`` is neither a readable YAML mapping nor a DictConfig / dict."""

    def __init__(self, override: object, detail: str) -> None:
        shown = override if isinstance(override, str) else type(override).__name__
        super().__init__(
            f"bad override_config_path {shown!r}: {detail}. Pass a path to a YAML file holding the model config "
            f"(optionally under a top-level 'model:' key), or a DictConfig / dict of it."
        )
        self.override = override


class BadStateDictError(NemoArchiveError, TypeError):
    """A state dict to be written holds something other than ``str -> Tensor`` entries."""

    def __init__(self, key: object, detail: str) -> None:
        super().__init__(
            f"state dict entry {key!r}: {detail}. A .nemo's model_weights.ckpt must be a flat dict of tensors "
            f"(loadable with torch.load(weights_only=True)); flatten nested trees with nemofn.core.tree.flatten "
            f"and drop non-tensor entries."
        )
        self.key = key


class YamlBudgetError(NemoArchiveError, ValueError):
    """A YAML config whose aliases expand to too many nodes (a "billion laughs" file), or refer to themselves."""

    def __init__(self, path: str, member: str, detail: str) -> None:
        super().__init__(f"{path}: refusing to load {member}: {detail}. Nothing was built from it.")
        self.path = path
        self.member = member


class NonFiniteWeightsError(NemoArchiveError, ValueError):
    """Weights holding NaN or Inf: a model that would only ever output NaN (refused by default)."""

    def __init__(self, path: str, member: str, key: str, bad: int, total: int) -> None:
        super().__init__(f"{path}: {member} holds non-finite weights: {key!r} has {bad} NaN/Inf values of {total}. "
                         f"The model would output NaN; re-export it from a good checkpoint. To load it anyway (for "
                         f"inspection), set NEMOFN_ALLOW_NON_FINITE_WEIGHTS=1 or pass allow_non_finite=True to "
                         f"restore_from or NemoArchive.state_dict")
        self.path = path
        self.member = member
        self.key = key


class MissingTargetError(NemoArchiveError, ValueError):
    """A model config without ``target`` given to a class that cannot build a model itself (``ASRModel``, ...)."""

    def __init__(self, cls_name: str, keys: Iterable[str], source: str | None = None) -> None:
        keys = list(keys)
        where = f"{source}: model_config.yaml" if source else "the model config"
        content = "is empty" if not keys else f"has no `target` (its keys: {_listing(keys, 8)})"
        super().__init__(
            f"{where} {content}, so {cls_name} cannot tell which model to build. Restore with the concrete class "
            f"(e.g. EncDecCTCModelBPE.restore_from(path)), or add the `target:` NeMo writes, e.g. "
            f"`target: nemo.collections.asr.models.EncDecCTCModelBPE` (compat.registry.supported_targets('model') "
            f"lists them), through override_config_path")
        self.source = source


class ConfigInterpolationError(NemoArchiveError, ValueError):
    """A ``${...}`` interpolation of an archive's config that cannot be resolved (a cycle, a missing key)."""

    def __init__(self, path: str, member: str, key: str, detail: str) -> None:
        super().__init__(f"{path}: {member}: the interpolation at `{key}` cannot be resolved: {detail}. Fix or remove "
                         f"it with override_config_path (a corrected copy of the config)")
        self.path = path
        self.member = member
        self.key = key


def _size(n: int) -> str:
    """``1536`` -> ``'1,536 bytes (1.5 KiB)'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


class ArchiveTooLargeError(NemoArchiveError, ValueError):
    """An archive member, the members to extract together, or the model a config describes, past a size limit.

    Raised from the tar headers before anything is written, and again while copying (should a stream yield more
    than its header said), so a "tar bomb" never fills the disk.
    """

    def __init__(self, path: str, member: str | None, detail: str, size: int, limit: int, setting: str, *,
                 unit: str | None = None) -> None:
        where = f"refusing to extract member {member!r}: " if member else ""
        amount, bound = (_size(size), _size(limit)) if unit is None else (f"{size:,} {unit}", f"{limit:,}")
        typical = ("are a few GB" if unit is None else "hold a few dozen members")
        super().__init__(
            f"{path}: {where}{detail} {amount}, more than the limit of {bound}. The largest real NeMo "
            f"checkpoints {typical}; if you trust this file, raise the limit with {setting}."
        )
        self.path = path
        self.member = member
        self.size = size
        self.limit = limit


class ExtractionError(NemoArchiveError, OSError):
    """The file system refused to store an archive member (no space left, permissions, ...)."""

    def __init__(self, path: str, member: str, folder: str, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(
            f"{path}: cannot extract member {member!r} into {folder}: {reason}. Free space or choose another folder "
            f"(extract_to=, or TMPDIR for the temporary one)."
        )
        self.errno = cause.errno
        self.strerror = cause.strerror
        self.path = path
        self.member = member

    def __str__(self) -> str:  # OSError's would print only "[Errno N] strerror" once errno is set
        return str(self.args[0])


class UnsupportedTensorError(NemoArchiveError, TypeError):
    """A weights entry that is not a plain dense tensor with storage: meta, sparse, quantised or nested."""

    def __init__(self, path: str, member: str, key: str, kind: str) -> None:
        super().__init__(
            f"{path}: {member}: entry {key!r} is {kind}; a .nemo's weights are plain dense tensors with data "
            f"(as torch.save(model.state_dict()) writes them). Re-export the checkpoint from the model it came from."
        )
        self.path = path
        self.member = member
        self.key = key


class WeightShapeError(NemoArchiveError, RuntimeError):
    """A weight whose shape differs from the one the config implies (checked before the model is allocated)."""

    def __init__(self, path: str, member: str, key: str, checkpoint_shape: tuple, model_shape: tuple) -> None:
        super().__init__(
            f"{path}: size mismatch for {key}: {member} holds a tensor of shape {checkpoint_shape}, the model the "
            f"config describes has {model_shape}. The config and the weights do not belong together (an edited or "
            f"hostile model_config.yaml?); nothing was built. Use the config the weights were saved with "
            f"(override_config_path=) or a matching .nemo."
        )
        self.path = path
        self.member = member
        self.key = key
        self.checkpoint_shape = checkpoint_shape
        self.model_shape = model_shape


class WeightKeysError(NemoArchiveError, RuntimeError):
    """With ``strict=True``: weights the model lacks, or model tensors the weights lack (checked before building)."""

    def __init__(self, path: str, member: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
        missing, unexpected = list(missing), list(unexpected)
        parts = []
        if missing:
            parts.append(f"Missing key(s) in state_dict: {_listing(missing)}")
        if unexpected:
            parts.append(f"Unexpected key(s) in state_dict: {_listing(unexpected)}")
        super().__init__(
            f"{path}: {member} does not fit the model the config describes; {'; '.join(parts)}. Nothing was built. "
            f"Pass strict=False to load a subset."
        )
        self.path = path
        self.member = member
        self.missing = missing
        self.unexpected = unexpected


class WeightDtypeError(NemoArchiveError, TypeError):
    """An integer, bool or complex weight where the model has a floating parameter (it would load as garbage)."""

    def __init__(self, path: str, member: str, key: str, checkpoint_dtype: object, model_dtype: object) -> None:
        super().__init__(
            f"{path}: {member}: {key!r} holds a {checkpoint_dtype} tensor where the model has a {model_dtype} one; "
            f"only floating tensors load into floating parameters (float64, float16 and bfloat16 are cast). "
            f"Re-export the checkpoint from the model it came from."
        )
        self.path = path
        self.member = member
        self.key = key


class ArchiveConfigError(NemoArchiveError, ConfigError):
    """A model config in an archive that nemofn cannot build (an unknown key, a wrong type, an invalid value such as
    a negative size): the :class:`~nemofn.core.schema.ConfigError` it raised, naming the archive and member too.

    :meth:`wrap` keeps the original error's class among the bases (a ``DatasetConfigError`` stays one).
    """

    def __init__(self, path: str, member: str, error: ConfigError) -> None:
        super().__init__(f"{path}: {member}: {error}", key=error.key, suggestion=error.suggestion)
        self.path = path
        self.member = member
        self.error = error

    @classmethod
    def wrap(cls, path: str, member: str, error: ConfigError) -> ArchiveConfigError:
        """``error`` as an :class:`ArchiveConfigError` that is still an instance of ``type(error)``."""
        kind = cls if type(error) is ConfigError else _with_archive(type(error))
        return kind(path, member, error)


_WITH_ARCHIVE: dict[type, type] = {}


def _with_archive(kind: type) -> type:
    if kind not in _WITH_ARCHIVE:
        _WITH_ARCHIVE[kind] = type(f"Archive{kind.__name__}", (ArchiveConfigError, kind),
                                   {"__module__": __name__, "__doc__": ArchiveConfigError.__doc__})
    return _WITH_ARCHIVE[kind]
