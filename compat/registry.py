"""Map from NeMo class paths (``target`` / ``_target_`` config values) to nemofn and compat builders.

Builders are registered as import-path strings ``"package.module:QualName"`` and imported only on first use, so
``import compat.registry`` costs nothing beyond the standard library. Module builders (preprocessor, encoder,
decoder, ...) have a ``from_config(cfg)`` classmethod that ignores ``_target_``; model classes have NeMo's
``from_config_dict(cfg, trainer=None)``.

Every NeMo path that names the same class (``nemo.collections.asr.modules.ConvASREncoder`` and
``nemo.collections.asr.modules.conv_asr.ConvASREncoder``) resolves to one *canonical* target: the spelling NeMo
itself writes (the short ``modules.X`` form for modules, ``<module>.<Class>`` for models, as ``ModelPT`` injects
it). :func:`nemo_target_for` gives that spelling back for one of our classes, for writing a ``.nemo``.

The writer's safety check (:func:`check_config_targets`) uses NeMo 3.0's allow-list of class-path prefixes, so a
``.nemo`` we write is never refused by real NeMo with ``UnsafeTargetError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from compat.errors import TargetImportError, UnknownTargetError, UnsafeTargetError

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "register_target",
    "register_model_target",
    "canonical_target",
    "builder_path",
    "resolve_target",
    "build_module",
    "nemo_target_for",
    "supported_targets",
    "is_allowed_target",
    "check_config_targets",
]

# NeMo 3.0's `nemo.core.classes.common.ALLOWED_TARGET_PREFIXES`.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "nemo.collections.",
    "nemo.core.",
    "nemo.utils.",
    "nemo.lightning.",
    "tests.collections.",
    "torch.nn.",
    "torch.optim.",
    "torch.utils.data.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.strategies.",
    "lightning.pytorch.accelerators.",
    "omegaconf.",
    "megatron.",
)

_CANONICAL: dict[str, str] = {}  # any accepted NeMo path -> canonical NeMo path
_BUILDER: dict[str, str] = {}  # canonical NeMo path -> "module:QualName"
_KIND: dict[str, str] = {}  # canonical NeMo path -> "module" | "model"
_REVERSE: dict[str, str] = {}  # "module:QualName" -> canonical NeMo path
_RESOLVED: dict[str, Any] = {}  # "module:QualName" -> imported object


def _path_of(obj: Any) -> str:
    """``"module:QualName"`` of a class (or function)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def register_target(
    nemo_target: str,
    builder: str | type,
    *,
    aliases: Iterable[str] = (),
    kind: str = "module",
    overwrite: bool = False,
) -> None:
    """Registers the builder for a NeMo class path.

    Args:
        nemo_target: the canonical NeMo path, written back into configs (``nemo.collections.asr.modules.X``).
        builder: ``"package.module:QualName"`` (imported lazily) or the class itself.
        aliases: other NeMo paths for the same class; they resolve to the same builder.
        kind: ``"module"`` (has ``from_config(cfg)``) or ``"model"`` (has ``from_config_dict(cfg, trainer)``).
        overwrite: replace an existing, different registration instead of raising ``ValueError``.
    """
    if kind not in ("module", "model"):
        raise ValueError(f"kind must be 'module' or 'model', got {kind!r}")
    if isinstance(builder, str):
        if builder.count(":") != 1 or not all(builder.split(":")):
            raise ValueError(f"builder {builder!r} must look like 'package.module:QualName'")
        path = builder
    else:
        path = _path_of(builder)
        _RESOLVED[path] = builder
    names = [nemo_target, *aliases]
    for name in names:
        if not isinstance(name, str) or "." not in name:
            raise ValueError(f"NeMo target {name!r} must be a dotted class path like 'nemo.collections.asr.X'")
        old = _CANONICAL.get(name)
        if old is not None and _BUILDER[old] != path and not overwrite:
            raise ValueError(
                f"{name!r} is already registered to {_BUILDER[old]!r}; pass overwrite=True to replace it with {path!r}"
            )
    for name in names:
        _CANONICAL[name] = nemo_target
    _BUILDER[nemo_target] = path
    _KIND[nemo_target] = kind
    if overwrite or path not in _REVERSE or not isinstance(builder, str):
        _REVERSE[path] = nemo_target


def register_model_target(
    nemo_target: str, model_cls: str | type, *, aliases: Iterable[str] = (), overwrite: bool = False
) -> None:
    """Registers a model class (``ModelPT`` subclass) for a config's top-level ``target``.

    Use it for your own models: ``register_model_target("nemo.collections.asr.models.MyModel", MyModel)``.
    The target must start with one of :data:`ALLOWED_TARGET_PREFIXES` for real NeMo to restore the ``.nemo``.
    """
    register_target(nemo_target, model_cls, aliases=aliases, kind="model", overwrite=overwrite)


def canonical_target(target: str) -> str:
    """The canonical NeMo spelling of ``target`` (aliases map to it). Raises :class:`UnknownTargetError`."""
    try:
        return _CANONICAL[target]
    except (KeyError, TypeError):
        hint = ""
        if isinstance(target, str) and target.startswith("nemo."):
            hint = (
                "nemofn implements only the NeMo classes listed; a config naming another one needs a nemofn "
                "builder registered with compat.registry.register_target(...)."
            )
        raise UnknownTargetError(target, supported_targets(), hint) from None


def builder_path(target: str) -> str:
    """``"package.module:QualName"`` registered for a NeMo target (or alias)."""
    return _BUILDER[canonical_target(target)]


def _import(path: str, target: str) -> Any:
    if path in _RESOLVED:
        return _RESOLVED[path]
    module_name, qualname = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise TargetImportError(target, path, exc) from exc
    _RESOLVED[path] = obj
    return obj


def resolve_target(target: str, *, kind: str | None = None) -> Any:
    """Imports and returns the class registered for a NeMo target.

    Args:
        target: a NeMo class path, canonical or alias.
        kind: when given (``"module"`` / ``"model"``), the registration must be of that kind.
    """
    canonical = canonical_target(target)
    if kind is not None and _KIND[canonical] != kind:
        raise UnknownTargetError(
            target,
            supported_targets(kind),
            f"{target!r} is registered as a {_KIND[canonical]}, not a {kind}.",
        )
    return _import(_BUILDER[canonical], canonical)


def build_module(cfg: Mapping[str, Any]) -> Any:
    """Builds the nemofn module a ``_target_`` config names: ``Builder.from_config(cfg)``.

    Args:
        cfg: a ``DictConfig`` or dict with a ``_target_`` key (e.g. a model config's ``encoder`` section).
    """
    if "_target_" not in cfg:
        raise UnknownTargetError(
            None, supported_targets("module"), f"the config has no '_target_' key (keys: {list(cfg.keys())})."
        )
    builder = resolve_target(cfg["_target_"], kind="module")
    if not hasattr(builder, "from_config"):
        raise TypeError(f"{_path_of(builder)} (for {cfg['_target_']!r}) has no from_config(cfg) classmethod")
    return builder.from_config(cfg)


def nemo_target_for(obj: Any, *, search_bases: bool = False) -> str:
    """The canonical NeMo class path for one of our classes (or its instance, or its ``"module:QualName"``).

    Args:
        obj: a class, an instance, or a ``"package.module:QualName"`` string.
        search_bases: for a class not registered itself, use its nearest registered base class.
    """
    if isinstance(obj, str):
        candidates = [obj]
    else:
        cls = obj if isinstance(obj, type) else type(obj)
        candidates = [_path_of(c) for c in (cls.__mro__ if search_bases else (cls,))]
    for path in candidates:
        if path in _REVERSE:
            return _REVERSE[path]
    raise UnknownTargetError(
        candidates[0],
        sorted(_REVERSE),
        "Register the class with compat.registry.register_model_target('nemo.collections....', cls)"
        + ("" if search_bases else " or pass search_bases=True to use a registered base class") + ".",
    )


def supported_targets(kind: str | None = None) -> list[str]:
    """Every accepted NeMo path (canonical and aliases), sorted; only ``kind`` ones when given."""
    return sorted(name for name, canonical in _CANONICAL.items() if kind is None or _KIND[canonical] == kind)


def is_allowed_target(value: Any, extra_prefixes: Iterable[str] = ()) -> bool:
    """True when ``value`` is a str starting with one of NeMo 3.0's allowed prefixes (or ``extra_prefixes``)."""
    return isinstance(value, str) and value.startswith((*ALLOWED_TARGET_PREFIXES, *extra_prefixes))


def check_config_targets(cfg: Any, extra_prefixes: Iterable[str] = ()) -> None:
    """Raises :class:`UnsafeTargetError` naming the first ``target`` / ``_target_`` NeMo 3.0 would refuse.

    Checked: the root ``target`` (the model class), every ``_target_`` at any depth (lists included), and Hydra
    0.x ``cls`` keys that sit beside ``params``. A nested key merely called ``target`` is an ordinary
    hyperparameter and is not checked.

    Args:
        cfg: a plain container (``dict`` / ``list``) or an OmegaConf config.
        extra_prefixes: more prefixes to accept (for archives that only nemofn will read).
    """
    extra = tuple(extra_prefixes)
    if isinstance(cfg, Mapping) and "target" in cfg and not is_allowed_target(cfg["target"], extra):
        raise UnsafeTargetError("target", cfg["target"], (*ALLOWED_TARGET_PREFIXES, *extra))
    _check_nested(cfg, "", extra)


def _check_nested(node: Any, prefix: str, extra: tuple[str, ...]) -> None:
    if isinstance(node, Mapping):
        keys = ["_target_"] + (["cls"] if "params" in node else [])
        for key in keys:
            if key in node and not is_allowed_target(node[key], extra):
                raise UnsafeTargetError(f"{prefix}{key}", node[key], (*ALLOWED_TARGET_PREFIXES, *extra))
        pairs: Iterable[tuple[Any, Any]] = node.items()
    elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
        pairs = enumerate(node)
    else:
        return
    for key, value in pairs:
        _check_nested(value, f"{prefix}{key}.", extra)


_ASR_MODULES = "nemo.collections.asr.modules"
_ASR_MODELS = "nemo.collections.asr.models"

for _name, _file, _builder in (
    ("AudioToMelSpectrogramPreprocessor", "audio_preprocessing", "nemofn.asr.modules.preprocessor"),
    ("SpectrogramAugmentation", "audio_preprocessing", "nemofn.asr.modules.spec_augment"),
    ("ConvASREncoder", "conv_asr", "nemofn.asr.modules.conv_asr"),
    ("ConformerEncoder", "conformer_encoder", "nemofn.asr.modules.conformer"),
    ("ConvASRDecoder", "conv_asr", "nemofn.asr.modules.decoder"),
):
    register_target(f"{_ASR_MODULES}.{_name}", f"{_builder}:{_name}", aliases=[f"{_ASR_MODULES}.{_file}.{_name}"])

for _name, _file in (("EncDecCTCModel", "ctc_models"), ("EncDecCTCModelBPE", "ctc_bpe_models")):
    # NeMo writes `<module>.<Class>` into `target` (ModelPT.__init__), so the long form is canonical.
    register_model_target(
        f"{_ASR_MODELS}.{_file}.{_name}", f"compat.collections.asr.models:{_name}", aliases=[f"{_ASR_MODELS}.{_name}"]
    )
