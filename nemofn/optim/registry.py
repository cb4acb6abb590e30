"""Optimizers and schedules by NeMo name (``AVAILABLE_OPTIMIZERS`` / ``AVAILABLE_SCHEDULERS``).

``get_optimizer("novograd", betas=(0.8, 0.5))`` returns a ready :class:`~nemofn.optim.base.Optimizer` (NeMo
returns a ``partial`` of a torch class; here the learning rate is not an optimizer argument but a per-step input).
``get_schedule("CosineAnnealing", 0.02, max_steps=1000)`` returns a pure ``step -> lr`` schedule.

Unknown names raise ``ValueError`` listing the known ones; unknown keyword arguments raise ``TypeError`` naming
the key and listing the accepted ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nemofn.optim import schedules as _s
from nemofn.optim.adam import adam, adamw
from nemofn.optim.base import Optimizer
from nemofn.optim.novograd import novograd
from nemofn.optim.sgd import sgd

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "get_optimizer", "register_optimizer", "get_schedule", "register_schedule",
    "schedule_needs_max_steps", "check_kwargs", "optimizer_factory", "schedule_factory", "accepted_kwargs",
]

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"sgd": sgd, "adam": adam, "adamw": adamw, "novograd": novograd}

SCHEDULES: dict[str, Callable[..., _s.Schedule]] = {
    cls.__name__: cls
    for cls in (
        _s.WarmupPolicy, _s.WarmupHoldPolicy, _s.SquareAnnealing, _s.CosineAnnealing, _s.NoamAnnealing,
        _s.NoamHoldAnnealing, _s.WarmupHoldAnnealOneMinusSquareRoot, _s.WarmupHoldAnnealLinear, _s.WarmupAnnealing,
        _s.InverseSquareRootAnnealing, _s.T5InverseSquareRootAnnealing, _s.SquareRootAnnealing,
        _s.PolynomialDecayAnnealing, _s.PolynomialHoldDecayAnnealing,
    )
}

# Names NeMo knows that nemofn does not implement (so the error can say "not implemented" rather than "unknown").
_NEMO_ONLY_OPTIMIZERS = ("adadelta", "adamax", "adagrad", "rmsprop", "rprop", "adafactor", "adan", "lamb",
                         "fused_adam", "distributed_fused_adam", "megatron_fused_adam", "mcore_distributed_optim")
_NEMO_ONLY_SCHEDULES = {
    "StepLR": "a torch scheduler",
    "ExponentialLR": "a torch scheduler stepped per epoch",
    "ReduceLROnPlateau": "driven by a monitored metric, not a function of the step",
    "CyclicLR": "a torch scheduler that also cycles momentum",
}


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str, skip: tuple[str, ...] = ()) -> None:
    """Raises ``TypeError`` naming every key of ``kwargs`` that ``fn`` does not accept."""
    accepted = accepted_kwargs(fn, skip)
    if accepted is None:
        return
    allowed = list(accepted)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        hint = ""
        if "lr" in unknown:
            hint = " (the learning rate is not an optimizer argument: it is passed to update(..., lr=) each step)"
        raise TypeError(f"{what} got unknown argument(s) {', '.join(map(repr, unknown))}{hint}; "
                        f"accepted: {', '.join(allowed)}")


def accepted_kwargs(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments ``fn`` accepts (``{name: Parameter}``), or ``None`` when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in skip}


def _lookup(table: dict[str, Any], name: str, kind: str, nemo_only: Any) -> Any:
    if name in table:
        return table[name]
    folded = {k.lower(): v for k, v in table.items()}
    if isinstance(name, str) and name.lower() in folded:
        return folded[name.lower()]
    known = ", ".join(sorted(table))
    if name in nemo_only:
        reason = nemo_only[name] if isinstance(nemo_only, dict) else "NeMo has it"
        raise ValueError(f"{kind} {name!r} ({reason}) is not implemented in nemofn; available: {known}")
    raise ValueError(f"unknown {kind} {name!r}; available: {known}")


def optimizer_factory(name: str) -> Callable[..., Optimizer]:
    """The factory registered as optimizer ``name`` (case-insensitive); ``ValueError`` names the known ones."""
    return _lookup(OPTIMIZERS, name, "optimizer", _NEMO_ONLY_OPTIMIZERS)


def schedule_factory(name: str) -> Callable[..., _s.Schedule]:
    """The factory registered as schedule ``name`` (case-insensitive); ``ValueError`` names the known ones."""
    return _lookup(SCHEDULES, name, "schedule", _NEMO_ONLY_SCHEDULES)


def register_optimizer(name: str, factory: Callable[..., Optimizer]) -> None:
    """Adds ``factory(**kwargs) -> Optimizer`` under ``name``. Refuses to override an existing name (as NeMo)."""
    if name in OPTIMIZERS:
        raise ValueError(f"cannot override the existing optimizer {name!r}; pick another name")
    OPTIMIZERS[name] = factory


def get_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """Builds the optimizer registered as ``name`` (NeMo's lowercase names; case-insensitive) with ``kwargs``."""
    factory = _lookup(OPTIMIZERS, name, "optimizer", _NEMO_ONLY_OPTIMIZERS)
    check_kwargs(factory, kwargs, f"optimizer {name!r}")
    return factory(**kwargs)


def register_schedule(name: str, factory: Callable[..., _s.Schedule]) -> None:
    """Adds ``factory(base_lr, **kwargs) -> (step -> lr)`` under ``name``. Refuses to override an existing name.

    A factory whose ``max_steps`` argument has no default, or that has ``needs_max_steps = True``, is treated as
    needing ``max_steps`` by ``build_optimization``.
    """
    if name in SCHEDULES:
        raise ValueError(f"cannot override the existing schedule {name!r}; pick another name")
    SCHEDULES[name] = factory


def schedule_needs_max_steps(name: str) -> bool:
    """Whether the schedule ``name`` cannot be built without ``max_steps``."""
    factory = _lookup(SCHEDULES, name, "schedule", _NEMO_ONLY_SCHEDULES)
    if getattr(factory, "needs_max_steps", False):
        return True
    param = inspect.signature(factory).parameters.get("max_steps")
    return param is not None and param.default is inspect.Parameter.empty


def get_schedule(name: str, base_lr: float, **kwargs: Any) -> _s.Schedule:
    """Builds the schedule registered as ``name`` (NeMo's scheduler names) with peak lr ``base_lr``.

    As NeMo's ``get_scheduler``, a ``max_steps`` argument is dropped when the schedule does not take one.
    """
    factory = _lookup(SCHEDULES, name, "schedule", _NEMO_ONLY_SCHEDULES)
    if "max_steps" in kwargs and "max_steps" not in inspect.signature(factory).parameters:
        kwargs = {k: v for k, v in kwargs.items() if k != "max_steps"}
    check_kwargs(factory, kwargs, f"schedule {name!r}", skip=("base_lr",))
    return factory(base_lr, **kwargs)
