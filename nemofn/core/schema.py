"""Checking a config against a dataclass schema: unknown keys, wrong types and invalid values, named by full path.

Schemas are dataclasses written the OmegaConf structured-config way (``MISSING`` for a value that must be set,
``field(default_factory=...)`` for containers, ``Optional`` / ``List`` / ``Dict`` / ``Any`` annotations), so
``OmegaConf.structured(Schema)`` works on them. Field metadata says what annotations cannot:

* :func:`option`: a value of several types (``types=(int, str, list)``, with an ``Any`` annotation), the valid
  values (``choices``) and those nemofn implements (``supported``), a custom ``check``, or a block whose schema
  depends on its content (``select``, e.g. by ``_target_`` or ``name``);
* :func:`ignored`: a key NeMo knows that has no effect in nemofn (accepted; logged once, at info level);
* :func:`default_only`: a key accepted only with its default value (another value raises, saying why);
* :func:`positive` / :func:`non_negative`: a size or count (an int, a float or a list of them, e.g. ``kernel:
  [11]``) that must be > 0 / >= 0, optionally with sentinel values such as NeMo's ``-1`` for "unset"
  (:func:`at_least` is the ``check`` they use).

:func:`validate` walks a ``DictConfig``, a dict or a dataclass instance without resolving anything: ``???``
(MISSING) values and ``${...}`` interpolations pass unchecked. Integers are accepted where floats belong (YAML
``1`` for ``1.0``); bools are not numbers. Errors are :class:`ConfigError` naming the full key path::

    unknown key model.optim.lrr; did you mean model.optim.lr?
    model.preprocessor.features: wrong type: got 'sixtyfour' (str), expected int

With ``unknown="warn"`` an unknown key is logged once (by full path) instead, and returned, so the caller can
drop it (:func:`drop_keys`). :func:`module_kwargs` is what a module's ``from_config`` uses: validate, resolve,
refuse values still ``???``, and return constructor kwargs.

The field helpers and schema inspection live in :mod:`nemofn.core.schema_fields` and are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from rapidfuzz import fuzz, process

from nemofn.core.schema_fields import (
    FieldSpec,
    SchemaField,
    default_only,
    describe_type,
    field_spec,
    ignored,
    is_required,
    matches_type,
    option,
    schema_fields,
)

__all__ = [
    "MISSING", "ConfigError", "FieldSpec", "SchemaField", "option", "ignored", "default_only", "validate",
    "validate_section", "module_kwargs", "to_plain", "resolved_plain", "find_missing", "drop_keys", "schema_fields",
    "field_spec", "is_required", "defaults_of", "join_key", "closest_key", "reset_logged_keys", "positive",
    "non_negative", "at_least", "MAX_LAYERS",
]

logger = logging.getLogger(__name__)

UNKNOWN_MODES = ("error", "warn")
_LOGGED: set[str] = set()


class ConfigError(ValueError):
    """A config value or key that nemofn cannot use.

    Attributes:
        key: the full dotted path of the offending key (``model.encoder.d_modle``), when one is at fault.
        suggestion: for an unknown key, the full path of the closest known key (``model.encoder.d_model``).
    """

    def __init__(self, message: str, *, key: str | None = None, suggestion: str | None = None):
        super().__init__(message)
        self.key = key
        self.suggestion = suggestion


def defaults_of(schema: type) -> dict[str, Any]:
    """The schema's defaults as a plain dict (nested schemas expanded; ``???`` where a value must be set)."""
    return {name: to_plain(f.default) for name, f in schema_fields(schema).items()}


# ------------------------------------------------------------------------------------------ sizes and counts
def _numbers(value: Any) -> list:
    """The numbers in ``value`` (itself, or the items of a list, nested); bools and other values are skipped."""
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return []


def at_least(minimum: float, *, strict: bool = False, sentinels: tuple = (), maximum: float | None = None) -> Any:
    """A ``check`` for sizes and counts: every number of the value (an int, a float, or a list of them) must be
    ``>= minimum`` (``> minimum`` with ``strict``) or one of ``sentinels``. Null and strings pass (the annotation
    decides whether they are allowed).

    ``at_least(0, strict=True, sentinels=(-1,))`` gives e.g. ``"must be > 0 (a size or count), or -1"``. With
    ``maximum`` a number must also be ``<= maximum`` (a count of layers: see :data:`MAX_LAYERS`).
    """
    bound = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum:,}" if maximum is not None else "")
    also = f", or {' or '.join(repr(s) for s in sentinels)}" if sentinels else ""

    def check(value: Any) -> str | None:
        for number in _numbers(value):
            if number in sentinels:
                continue
            if number < minimum or (strict and number == minimum) or (maximum is not None and number > maximum):
                where = f" (the item {number!r})" if isinstance(value, (list, tuple)) else ""
                return f"must be {bound} (a size or count){also}{where}"
        return None

    return check


#: The most layers (or block repeats) a count field takes. The deepest NeMo ASR models have a few dozen; a count in
#: the millions (an edited or hostile config) would build millions of modules before any weight could be checked.
MAX_LAYERS = 10_000


def positive(default: Any = MISSING, *, sentinels: tuple = (), types: tuple = (),
             default_factory: Any = None, maximum: float | None = None) -> Any:
    """A schema field for a size or count that must be > 0 (and ``<= maximum``; each item, for a list), or one of
    ``sentinels``."""
    return option(default, default_factory=default_factory, types=types,
                  check=at_least(0, strict=True, sentinels=sentinels, maximum=maximum))


def non_negative(default: Any = MISSING, *, sentinels: tuple = (), types: tuple = (),
                 default_factory: Any = None, maximum: float | None = None) -> Any:
    """A schema field for a size or count that must be >= 0 (and ``<= maximum``; each item, for a list), or one of
    ``sentinels``."""
    return option(default, default_factory=default_factory, types=types,
                  check=at_least(0, sentinels=sentinels, maximum=maximum))


# --------------------------------------------------------------------------------------------- plain values
def _is_missing(value: Any) -> bool:
    return isinstance(value, str) and value == MISSING


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _unchecked(value: Any) -> bool:
    return _is_missing(value) or _is_interpolation(value)


def to_plain(cfg: Any) -> Any:
    """A ``DictConfig``/``ListConfig``, dataclass or attrs instance, or nested mapping -> plain dicts and lists.

    Nothing is resolved: interpolations stay ``"${...}"`` strings and MISSING values stay ``"???"``.
    """
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=False)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    attributes = getattr(type(cfg), "__attrs_attrs__", None)
    if attributes is not None:
        return {a.alias or a.name: to_plain(getattr(cfg, a.name)) for a in attributes if a.init}
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_interpolation(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_interpolation(v) for v in value)
    return _is_interpolation(value)


def resolved_plain(cfg: Any, path: str = "") -> Any:
    """Like :func:`to_plain`, with interpolations resolved (a ``DictConfig`` node resolves against its root).

    Raises:
        ConfigError: an interpolation that cannot be resolved (named with ``path``).
    """
    try:
        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
        plain = to_plain(cfg)
        if _has_interpolation(plain):
            return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
        return plain
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None) or ""
        key = join_key(path, where) if where else (path or None)
        raise ConfigError(f"{key or 'config'}: cannot resolve an interpolation: {err}".splitlines()[0],
                          key=key) from err


def find_missing(value: Any, path: str = "") -> str | None:
    """The full key of the first ``???`` (MISSING) value in plain ``value``, or None."""
    if _is_missing(value):
        return path
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = find_missing(v, join_key(path, str(k)))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_missing(v, f"{path}[{i}]")
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------------- keys
def join_key(path: str, key: str) -> str:
    """``join_key("model", "encoder") == "model.encoder"``; an empty ``path`` gives ``key``."""
    return f"{path}.{key}" if path else key


def closest_key(key: str, candidates: list[str], *, partial: bool = False,
                cutoff: float | None = None) -> str | None:
    """The candidate most similar to ``key`` (case-insensitive), or None when none is close.

    Keys are compared whole (rapidfuzz ``ratio`` >= 60: ``lrr`` -> ``lr``); with ``partial`` a candidate may also
    contain ``key`` (``WRatio`` >= 80: ``Cosine`` -> ``CosineAnnealing``), which suits class names. ``cutoff``
    (0-100) replaces the score a candidate needs, e.g. a higher one where a miss is an error rather than a hint.
    """
    if not candidates:
        return None
    scorer, default_cutoff = (fuzz.WRatio, 80) if partial else (fuzz.ratio, 60)
    cutoff = default_cutoff if cutoff is None else cutoff
    best = process.extractOne(key, candidates, scorer=scorer, processor=str.lower, score_cutoff=cutoff)
    return best[0] if best else None


def _log_once(level: int, key: str, message: str) -> None:
    token = f"{level}:{key}"
    if token not in _LOGGED:
        _LOGGED.add(token)
        logger.log(level, message)


def reset_logged_keys() -> None:
    """Forgets which keys were logged, so that they are logged again (for tests)."""
    _LOGGED.clear()


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def drop_keys(cfg: Any, keys: list[str], prefix: str = "") -> None:
    """Deletes ``keys`` (full paths that start with ``prefix``) from ``cfg`` (a DictConfig or dict), in place."""
    for key in keys:
        rel = key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key
        tokens = [int(i) if i else k for k, i in _TOKEN.findall(rel)]
        node = cfg
        try:
            for token in tokens[:-1]:
                node = node[token]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(node, DictConfig):
            with open_dict(node):
                node.pop(tokens[-1], None)
        elif isinstance(node, dict):
            node.pop(tokens[-1], None)


# ------------------------------------------------------------------------------------------------- walking
@dataclasses.dataclass
class _Walk:
    unknown: str
    error: type[ConfigError]
    found: list[str]

    def fail(self, message: str, key: str | None, suggestion: str | None = None) -> typing.NoReturn:
        raise self.error(message, key=key, suggestion=suggestion)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(value: Any, t: tuple, path: str, walk: _Walk) -> None:
    if _unchecked(value):
        return
    kind = t[0]
    if kind == "any":
        return
    if kind == "opt":
        if value is not None:
            _check(value, t[1], path, walk)
        return
    if kind == "union":
        for member in t[1]:
            if matches_type(value, member):
                _check(value, member, path, walk)
                return
    if not matches_type(value, t):
        got = f"{_short(value)} ({type(value).__name__})"
        walk.fail(f"{path}: wrong type: got {got}, expected {describe_type(t)}", path)
    if kind == "list":
        for i, item in enumerate(value):
            _check(item, t[1], f"{path}[{i}]", walk)
    elif kind == "dict":
        for k, item in value.items():
            _check(item, t[1], join_key(path, str(k)), walk)
    elif kind == "schema":
        _check_block(value, t[1], path, walk)


def _emptyish(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and not value)


def _is_default(value: Any, default: Any) -> bool:
    """The default itself or, for an empty default (``None``, ``False``, ``[]``, ...), any empty value."""
    if (isinstance(value, type(default)) or isinstance(default, type(value))) and value == default:
        return True
    return _emptyish(default) and _emptyish(value)


def _check_field(value: Any, f: SchemaField, path: str, walk: _Walk) -> None:
    spec = f.spec
    if spec.status == "default_only" and value is None and _emptyish(f.default):
        return  # `is_tarred: null` means "off" too
    if spec.select is not None and isinstance(value, Mapping):
        _check_block(value, spec.select(value, path), path, walk)
    else:
        _check(value, f.type, path, walk)
    if _unchecked(value):
        return
    hashable = not isinstance(value, (list, dict))
    if spec.choices and hashable and value not in spec.choices and value is not None:
        walk.fail(f"{path}: invalid value {_short(value)}; expected one of {list(spec.choices)}", path)
    if spec.supported and hashable and value not in spec.supported and value is not None:
        walk.fail(f"{path}: {_short(value)} is not supported in nemofn: {spec.reason}", path)
    if spec.status == "default_only" and not _is_default(value, f.default):
        walk.fail(f"{path}: {_short(value)} is not supported in nemofn: {spec.reason} (remove the key or set it to "
                  f"{f.default!r})", path)
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            walk.fail(f"{path}: invalid value {_short(value)}: {problem}", path)
    if spec.status == "ignored":
        _log_once(logging.INFO, path, f"config key {path} has no effect in nemofn: {spec.reason}")


def _check_block(cfg: Mapping, schema: type, path: str, walk: _Walk) -> None:
    error = getattr(schema, "__config_error__", None)
    if error is not None and error is not walk.error:
        walk = _Walk(walk.unknown, error, walk.found)
    fields = schema_fields(schema)
    open_block = getattr(schema, "__open__", False)
    for key, value in cfg.items():
        key = str(key)
        full = join_key(path, key)
        f = fields.get(key)
        if f is not None:
            _check_field(value, f, full, walk)
        elif not open_block:
            _unknown(key, full, path, schema, fields, walk)


def _unknown(key: str, full: str, path: str, schema: type, fields: dict[str, SchemaField], walk: _Walk) -> None:
    suggestion = closest_key(key, list(fields))
    suggestion_full = join_key(path, suggestion) if suggestion else None
    if suggestion:
        hint = f"; did you mean {suggestion_full}?"
    else:
        known = sorted(n for n, f in fields.items() if f.spec.status != "ignored")
        hint = f" ({schema.__name__} keys: {', '.join(known)})"
    if walk.unknown == "error":
        walk.fail(f"unknown key {full}{hint}", full, suggestion_full)
    walk.found.append(full)
    _log_once(logging.WARNING, full, f"unknown config key {full} is ignored{hint}")


# --------------------------------------------------------------------------------------------- entry points
def validate(cfg: Any, schema: type, path: str = "", *, unknown: str = "error") -> list[str]:
    """Checks ``cfg`` against ``schema`` without resolving anything.

    Args:
        cfg: a ``DictConfig``, a mapping or a dataclass instance.
        schema: the dataclass the block must follow.
        path: the block's full key (``model.encoder``), used in messages.
        unknown: ``"error"`` raises on an unknown key; ``"warn"`` logs it once (by full path) and goes on.

    Returns:
        The full paths of the unknown keys found (always empty with ``unknown="error"``).

    Raises:
        ConfigError: the first unknown key (in ``"error"`` mode), wrong type, invalid or unsupported value.
    """
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown={unknown!r}: use one of {list(UNKNOWN_MODES)}")
    plain = to_plain(cfg)
    error = getattr(schema, "__config_error__", ConfigError)
    if not isinstance(plain, Mapping):
        raise error(f"{path or 'config'}: expected a mapping ({schema.__name__}), got {type(plain).__name__}",
                    key=path or None)
    walk = _Walk(unknown, error, [])
    _check_block(plain, schema, path, walk)
    return walk.found


def validate_section(cfg: Any, schema: type, path: str, *, unknown: str = "error") -> DictConfig:
    """Validates a config section (see :func:`validate`) and returns it as a ``DictConfig``.

    The node itself is returned when it is a ``DictConfig`` and nothing was dropped. In ``"warn"`` mode the unknown
    keys are removed from a deep copy, which keeps its parent, so interpolations such as ``${name}`` still resolve.
    """
    found = validate(cfg, schema, path, unknown=unknown)
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(to_plain(cfg))
    if found:
        node = copy.deepcopy(node)
        drop_keys(node, found, path)
    return node


def module_kwargs(cfg: Any, schema: type, path: str) -> dict[str, Any]:
    """Constructor kwargs of a module from its config block: validated, resolved, ``_target_`` dropped.

    Raises:
        ConfigError: an unknown key, a wrong type, an unresolvable interpolation, a value still ``???``, or a
            required key that is absent.
    """
    try:
        kwargs = resolved_plain(cfg, path)
    except ConfigError:
        validate(cfg, schema, path)  # a typo explains more than the failed interpolation it may cause
        raise
    validate(kwargs, schema, path)
    kwargs = dict(kwargs)
    kwargs.pop("_target_", None)
    missing = find_missing(kwargs, path)
    if missing:
        raise ConfigError(f"{missing} is ??? (a value that must be set); set it, e.g. {missing}=<value> on the "
                          "command line", key=missing)
    absent = [name for name in schema_fields(schema) if name != "_target_" and name not in kwargs
              and is_required(schema, name)]
    if absent:
        key = join_key(path, absent[0])
        raise ConfigError(f"{path or schema.__name__}: missing required key(s) {', '.join(absent)}", key=key)
    return kwargs
