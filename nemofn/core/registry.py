"""One registry of NeMo class paths (``_target_`` / ``target`` config values) for modules and models.

A NeMo class path (``nemo.collections.asr.modules.ConvASREncoder``) maps to a builder registered as an import-path
string ``"package.module:QualName"``, imported only on first use, so this file (stdlib only) costs nothing to
import and nemofn never imports the packages it names. nemofn's ASR modules register here
(:mod:`nemofn.asr.modules.targets`); ``compat`` registers NeMo's model classes here too
(``compat.registry.register_model_target``), and adds NeMo's allow-list checks on top.

Every NeMo path that names the same class (``nemo.collections.asr.modules.ConvASREncoder`` and
``nemo.collections.asr.modules.conv_asr.ConvASREncoder``) resolves to one *canonical* target: the spelling NeMo
itself writes. Lookups are exact: a path that merely ends with a known class name is not accepted.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

__all__ = ["UnknownTargetError", "TargetImportError", "register_target", "canonical_target", "builder_path",
           "resolve_target", "nemo_target_for", "supported_targets"]


def _listing(names: Iterable[str], limit: int = 20) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``... (+N more)``); ``<none>`` when empty."""
    names = list(names)
    if not names:
        return "<none>"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... (+{len(names) - limit} more)"


class UnknownTargetError(LookupError):
    """A NeMo class path has no builder registered."""

    def __init__(self, target: object, supported: Iterable[str], hint: str = "") -> None:
        super().__init__(
            f"no nemofn builder is registered for {target!r}. Supported targets: {_listing(supported, limit=60)}. "
            + (hint or "Register your own with compat.registry.register_target(...) or register_model_target(...).")
        )
        self.target = target


class TargetImportError(ImportError):
    """A registered builder path could not be imported."""

    def __init__(self, target: str, builder: str, cause: BaseException) -> None:
        super().__init__(
            f"{target!r} maps to {builder!r}, which could not be imported ({type(cause).__name__}: {cause}). "
            f"Check that the module exists and defines that name, or re-register the target."
        )
        self.target = target
        self.builder = builder


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
