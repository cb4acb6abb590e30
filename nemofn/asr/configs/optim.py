"""Schema of the ``optim:`` block and its ``sched``: the valid keys depend on the optimizer and schedule name.

An ``optim`` block holds :class:`OptimConfig`'s keys plus the keyword arguments of the optimizer it names
(``name: adamw`` or ``_target_: torch.optim.AdamW``), as :mod:`nemofn.optim.registry` builds it; ``sched`` holds
:class:`SchedConfig`'s keys plus the arguments of its schedule. So ``optim.lrr`` with ``name: adamw`` is an unknown
key whose closest match is ``lr``. NeMo's older forms are checked the same way: ``args: {name: auto, params:
{...}}``, ``args: {_target_: ...Params, ...}`` and ``cls`` (Hydra 0.x) for ``_target_``. The schemas are made from
the factories' signatures (:func:`optimizer_schema`, :func:`schedule_schema`), so an optimizer added with
``register_optimizer`` is checked too. A name given as ``???`` or an interpolation cannot be looked up: then any
keys pass.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from nemofn.core.schema import MISSING, ConfigError, closest_key, ignored, join_key, option, to_plain, validate

__all__ = ["OptimConfig", "SchedConfig", "select_optim", "select_sched", "optimizer_schema", "schedule_schema",
           "validate_optim"]

_FROM_TRAINER = ("filled by NeMo from the trainer to compute max_steps; nemofn takes max_steps from the trainer "
                 "(build_optimization(max_steps=...)) or from optim.sched.max_steps")


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (value == MISSING or "${" in value))


def _class_name(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def select_optim(block: Mapping, path: str) -> type:
    """The schema of an ``optim`` block: :class:`OptimConfig` plus its optimizer's arguments."""
    target = block.get("_target_")
    key = join_key(path, "_target_" if not _unset(target) else "name")
    name = _class_name(target).lower() if not _unset(target) else block.get("name", "adam")
    if name is None:
        name = "adam"  # NeMo's default too
    if _unset(name):
        return _OpenOptimConfig
    from nemofn.optim.registry import OPTIMIZERS, optimizer_factory

    try:
        factory = optimizer_factory(name)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}{_did_you_mean(name, OPTIMIZERS)}", key=key) from None
    return _optimizer_schema(factory, str(name).lower())


def select_sched(block: Mapping, path: str) -> type:
    """The schema of an ``optim.sched`` block: :class:`SchedConfig` plus its schedule's arguments."""
    args = block.get("args")
    target = block.get("_target_")
    if isinstance(args, Mapping) and not _unset(args.get("_target_")):
        target = args.get("_target_")
    key = join_key(path, "name")
    name = _class_name(target).replace("Params", "") if not _unset(target) else block.get("name")
    if _unset(name):
        return _OpenSchedConfig
    from nemofn.optim.registry import SCHEDULES, schedule_factory

    try:
        factory = schedule_factory(name)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}{_did_you_mean(name, SCHEDULES)}", key=key) from None
    return _schedule_schema(factory, str(name))


def _did_you_mean(name: Any, table: Mapping[str, Any]) -> str:
    best = closest_key(str(name), list(table), partial=True)
    return f"; did you mean {best}?" if best else ""


@dataclass
class SchedConfig:
    """Keys of every ``optim.sched`` block (the schedule's own arguments are added per schedule)."""

    name: Optional[str] = MISSING
    max_steps: Optional[int] = None
    args: Optional[Any] = option(None, types=(dict, None))
    _target_: Optional[str] = None
    monitor: Optional[str] = ignored(reason="the metric of NeMo's ReduceLROnPlateau; nemofn's schedules are "
                                            "functions of the step")
    reduce_on_plateau: Optional[bool] = ignored(False, reason="only read for NeMo's ReduceLROnPlateau, which "
                                                              "nemofn does not implement")
    t_max_epochs: Optional[int] = ignored(reason=_FROM_TRAINER)
    t_accumulate_grad_batches: Optional[int] = ignored(reason=_FROM_TRAINER)
    t_limit_train_batches: Optional[Any] = ignored(types=(int, float, None), reason=_FROM_TRAINER)
    t_num_workers: Optional[int] = ignored(reason=_FROM_TRAINER)


@dataclass
class OptimConfig:
    """Keys of every ``optim`` block (the optimizer's own arguments are added per optimizer).

    ``name`` null means ``adam`` (as NeMo). ``lr`` must be set before an optimizer is built.
    """

    name: Optional[str] = None
    lr: Optional[float] = MISSING
    sched: Optional[Any] = option(None, select=select_sched, types=(dict, None))
    args: Optional[Any] = option(None, types=(dict, None))
    _target_: Optional[str] = None
    cls: Optional[str] = ignored(reason="a Hydra 0.x class path; the optimizer comes from name or _target_")


@dataclass
class _OpenOptimConfig(OptimConfig):
    __open__ = True


@dataclass
class _OpenSchedConfig(SchedConfig):
    __open__ = True


# ---------------------------------------------------------------------------------------- schemas from factories
def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # an annotation that does not evaluate here: the argument is then checked by name only
        return {}


def _kwarg_fields(factory: Callable[..., Any], skip: tuple[str, ...]) -> list[tuple] | None:
    from nemofn.optim.registry import accepted_kwargs

    accepted = accepted_kwargs(factory, skip)
    if accepted is None:
        return None
    hints = _hints(factory)
    out = []
    for name, param in accepted.items():
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        if isinstance(default, (list, dict)):
            default = tuple(default) if isinstance(default, list) else None
        out.append((name, hints.get(name, Any), dataclasses.field(default=default)))
    return out


def _make(name: str, fields: list[tuple] | None, base: type, extra: tuple[str, ...] = ()) -> type:
    if fields is None:  # the factory takes **kwargs: any key passes
        return dataclasses.make_dataclass(name, [], bases=(base,), namespace={"__open__": True})
    taken = {f.name for f in dataclasses.fields(base)} | set(extra)
    return dataclasses.make_dataclass(name, [f for f in fields if f[0] not in taken], bases=(base,))


def _selector(schema: type) -> Callable[[Mapping, str], type]:
    return lambda block, path: schema


@lru_cache(maxsize=None)
def _optimizer_schema(factory: Callable[..., Any], name: str) -> type:
    kwargs = _kwarg_fields(factory, ())
    title = "".join(part.capitalize() for part in name.split("_"))

    @dataclass
    class _Params:
        lr: Optional[float] = None

    params_schema = _make(f"{title}Params", kwargs, _Params)

    @dataclass
    class _Args(_Params):
        name: Optional[str] = None  # `auto` or a NeMo params-class name (`novograd_params`)
        _target_: Optional[str] = None  # a NeMo params class (`nemo.core.config.NovogradParams`)
        cls: Optional[str] = None
        params: Optional[Any] = option(None, select=_selector(params_schema), types=(dict, None))

    args_schema = _make(f"{title}Args", kwargs, _Args)

    @dataclass
    class _Base(OptimConfig):
        args: Optional[Any] = option(None, select=_selector(args_schema), types=(dict, None))

    return _make(f"{title}OptimConfig", kwargs, _Base)


@lru_cache(maxsize=None)
def _schedule_schema(factory: Callable[..., Any], name: str) -> type:
    kwargs = _kwarg_fields(factory, ("base_lr",))

    @dataclass
    class _Params:
        pass

    params_schema = _make(f"{name}Params", kwargs, _Params)

    @dataclass
    class _Args(_Params):
        name: Optional[str] = None  # `auto` or a NeMo params-class name
        _target_: Optional[str] = None
        cls: Optional[str] = None
        params: Optional[Any] = option(None, select=_selector(params_schema), types=(dict, None))

    args_schema = _make(f"{name}Args", kwargs, _Args)

    @dataclass
    class _Base(SchedConfig):
        args: Optional[Any] = option(None, select=_selector(args_schema), types=(dict, None))

    return _make(f"{name}SchedConfig", kwargs, _Base)


def optimizer_schema(name: str) -> type:
    """The ``optim`` schema of optimizer ``name`` (``ValueError`` for a name the registry does not know)."""
    from nemofn.optim.registry import optimizer_factory

    return _optimizer_schema(optimizer_factory(name), name.lower())


def schedule_schema(name: str) -> type:
    """The ``optim.sched`` schema of schedule ``name`` (``ValueError`` for a name the registry does not know)."""
    from nemofn.optim.registry import schedule_factory

    return _schedule_schema(schedule_factory(name), name)


def validate_optim(cfg: Any, path: str = "model.optim", *, unknown: str = "error") -> list[str]:
    """Checks an ``optim`` block (with its ``sched``) on its own; returns the unknown keys found in ``"warn"`` mode."""
    plain = to_plain(cfg)
    if not isinstance(plain, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(plain).__name__}", key=path)
    return validate(plain, select_optim(plain, path), path, unknown=unknown)
