"""Declaring config schemas: field helpers, the type trees of annotations, and schema inspection.

A schema is a dataclass written the OmegaConf structured-config way; :func:`option`, :func:`ignored` and
:func:`default_only` add what annotations cannot say (see :mod:`nemofn.core.schema`, which checks configs against
schemas and re-exports these names). Each field's annotation (plus its ``types``) is normalised once into a small
tree: ``("any",)``, ``("scalar", int)``, ``("list", elem)``, ``("dict", value)``, ``("schema", cls)``,
``("opt", inner)`` or ``("union", (members...))``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from omegaconf import MISSING

__all__ = ["FieldSpec", "SchemaField", "option", "ignored", "default_only", "schema_fields", "field_spec",
           "is_required", "describe_type", "matches_type", "ANY"]

_META = "nemofn_schema"


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What a schema field's metadata adds to its annotation (see the module doc)."""

    status: str = "used"  # "used", "ignored" (no effect in nemofn) or "default_only"
    reason: str = ""
    types: tuple = ()
    choices: tuple = ()
    supported: tuple = ()
    check: Callable[[Any], str | None] | None = None
    select: Callable[[Mapping, str], type] | None = None


_USED = FieldSpec()


def _field(default: Any, default_factory: Callable[[], Any] | None, spec: FieldSpec) -> Any:
    metadata = {_META: spec}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)) or (dataclasses.is_dataclass(default) and type(default).__hash__ is None):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option(default: Any = MISSING, *, default_factory: Callable[[], Any] | None = None, types: tuple = (),
           choices: tuple = (), supported: tuple = (), reason: str = "",
           check: Callable[[Any], str | None] | None = None,
           select: Callable[[Mapping, str], type] | None = None) -> Any:
    """A schema field nemofn uses.

    Args:
        default, default_factory: as ``dataclasses.field`` (a list/dict/dataclass default is copied per instance).
        types: accepted value types when the annotation cannot say it (annotate the field ``Any`` so that
            ``OmegaConf.structured`` accepts the schema), e.g. ``(int, str, list)``; ``None`` in it allows null.
        choices: the valid values (others raise "invalid value").
        supported: of ``choices``, those nemofn implements; the others raise "not supported", giving ``reason``.
        check: ``value -> problem or None`` for other value rules.
        select: ``(block, full_key) -> schema`` for a block whose schema depends on its content.
    """
    if select is not None and not types:
        types = (dict,)
    spec = FieldSpec("used", reason, tuple(types), tuple(choices), tuple(supported), check, select)
    return _field(default, default_factory, spec)


def ignored(default: Any = None, *, reason: str, types: tuple = (),
            default_factory: Callable[[], Any] | None = None) -> Any:
    """A key NeMo knows that has no effect in nemofn: accepted with any value of its type, logged once."""
    return _field(default, default_factory, FieldSpec("ignored", reason, tuple(types)))


def default_only(default: Any, *, reason: str, types: tuple = ()) -> Any:
    """A key accepted only with its default (or, for an empty default, an empty/null value); else it raises."""
    return _field(default, None, FieldSpec("default_only", reason, tuple(types)))


# ------------------------------------------------------------------------------------------------ type trees
ANY = ("any",)


def _norm(tp: Any) -> tuple:
    if tp is Any or tp is object or tp is None:
        return ANY
    if isinstance(tp, tuple) and tp and tp[0] in ("any", "scalar", "list", "dict", "schema", "opt", "union"):
        return tp
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = tuple(dict.fromkeys(_norm(a) for a in args if a is not type(None)))
        inner = members[0] if len(members) == 1 else ("union", members)
        return ("opt", inner) if type(None) in args else inner
    if tp in (list, tuple) or origin in (list, tuple, typing.List, typing.Tuple):
        elems = [a for a in args if a is not Ellipsis]
        if not elems:
            return ("list", ANY)
        normed = tuple(dict.fromkeys(_norm(a) for a in elems))
        return ("list", normed[0] if len(normed) == 1 else ("union", normed))
    if tp is dict or origin in (dict, typing.Dict, Mapping):
        return ("dict", _norm(args[1]) if len(args) == 2 else ANY)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return ("schema", tp)
    if tp in (bool, int, float, str):
        return ("scalar", tp)
    return ANY


def _with_types(annotated: tuple, spec_types: tuple) -> tuple:
    if not spec_types:
        return annotated
    members = tuple(dict.fromkeys(_norm(t) for t in spec_types if t is not None and t is not type(None)))
    union = members[0] if len(members) == 1 else ("union", members)
    nullable = annotated[0] == "opt" or None in spec_types or type(None) in spec_types
    return ("opt", union) if nullable else union


def describe_type(t: tuple) -> str:
    """``("opt", ("scalar", int))`` -> ``"int or null"``."""
    kind = t[0]
    if kind == "any":
        return "any value"
    if kind == "scalar":
        return t[1].__name__
    if kind == "list":
        return "a list" if t[1] == ANY else f"a list of {describe_type(t[1])}"
    if kind == "dict":
        return "a mapping"
    if kind == "schema":
        return f"a mapping ({t[1].__name__})"
    if kind == "opt":
        return f"{describe_type(t[1])} or null"
    names = [describe_type(m) for m in t[1]]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def matches_type(value: Any, t: tuple) -> bool:
    """Whether ``value`` has the shape of type tree ``t`` (containers are not looked into)."""
    kind = t[0]
    if kind == "any":
        return True
    if kind == "opt":
        return value is None or matches_type(value, t[1])
    if kind == "union":
        return any(matches_type(value, m) for m in t[1])
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind in ("dict", "schema"):
        return isinstance(value, Mapping)
    tp = t[1]
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, tp)


# ------------------------------------------------------------------------------------------ schema inspection
@dataclasses.dataclass(frozen=True)
class SchemaField:
    """One field of a schema: its normalised type, its :class:`FieldSpec` and its default (``MISSING``: must be set)."""

    name: str
    type: tuple
    spec: FieldSpec
    default: Any


@lru_cache(maxsize=None)
def schema_fields(schema: type) -> dict[str, SchemaField]:
    """``{name: field}`` of a schema dataclass: normalised type, :class:`FieldSpec` and default."""
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        raise TypeError(f"a schema must be a dataclass type, got {schema!r}")
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        spec = f.metadata.get(_META, _USED)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out[f.name] = SchemaField(f.name, _with_types(_norm(hints.get(f.name, Any)), spec.types), spec, default)
    return out


def field_spec(schema: type, name: str) -> FieldSpec:
    """The :class:`FieldSpec` of ``schema.name``."""
    return schema_fields(schema)[name].spec


def is_required(schema: type, name: str) -> bool:
    """Whether ``schema.name`` has no default (``MISSING``)."""
    default = schema_fields(schema)[name].default
    return isinstance(default, str) and default == MISSING
