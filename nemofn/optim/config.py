"""Optimizer + schedule from a NeMo ``optim:`` config (``ModelPT.setup_optimization`` / ``prepare_lr_scheduler``).

::

    optim:
      name: novograd          # or _target_: torch.optim.AdamW; missing/null means adam
      lr: 0.01
      betas: [0.8, 0.5]       # every other key is an optimizer argument (unless `args` is given)
      weight_decay: 0.001
      sched:
        name: CosineAnnealing
        warmup_steps: 1000    # every key except name, t_*, monitor, reduce_on_plateau is a schedule argument
        min_lr: 1e-5
        max_steps: 100000     # optional; -1 means "no schedule"

``max_steps`` precedence (NeMo section 6.3): the ``max_steps=`` argument plays the role of a trainer's
``max_steps`` and, when ``>= 0``, overrides ``sched.max_steps`` (as ``setup_optimization`` does); otherwise
``sched.max_steps`` is used, where ``-1`` means constant lr. NeMo silently drops the scheduler when neither gives a
value; here a schedule that needs ``max_steps`` raises instead (compute one with :func:`compute_max_steps`), and
one that does not (``NoamAnnealing``, ``WarmupPolicy``, ``WarmupHoldPolicy``) is built without it.

Other differences from NeMo, all where NeMo fails or misbehaves: ``sched.args: {name: auto, params: {...}}`` uses
the given params (NeMo's config-version upgrade flattens ``params`` away first, so it silently falls back to the
params-class defaults); a missing ``sched.name`` or ``optim.lr`` raises; ``_target_`` class paths are mapped to
registry names (``torch.optim.AdamW`` -> ``adamw``) instead of being imported.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

from nemofn.optim.base import Optimizer
from nemofn.optim.registry import get_optimizer, get_schedule, schedule_needs_max_steps
from nemofn.optim.schedules import Constant, Schedule

__all__ = ["build_optimization", "compute_max_steps", "NEMO_OPTIMIZER_PARAMS"]

# NeMo's optimizer params dataclasses (nemo/core/config/optimizers.py), used by `args: {name: auto}`.
NEMO_OPTIMIZER_PARAMS: dict[str, dict[str, Any]] = {
    "sgd_params": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    "adam_params": dict(eps=1e-8, weight_decay=0.0, amsgrad=False),
    "adamw_params": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    "novograd_params": dict(betas=(0.95, 0.98), eps=1e-8, weight_decay=0.0, grad_averaging=False, amsgrad=False,
                            luc=False, luc_trust=1e-3, luc_eps=1e-8),
}
_PARAMS_CLASS_TO_NAME = {"SGDParams": "sgd_params", "AdamParams": "adam_params", "AdamWParams": "adamw_params",
                         "NovogradParams": "novograd_params"}
_SCHED_NON_ARGS = ("name", "t_max_epochs", "t_accumulate_grad_batches", "t_limit_train_batches", "t_num_workers",
                   "monitor", "reduce_on_plateau")


def compute_max_steps(max_epochs: int, accumulate_grad_batches: int, limit_train_batches: int | float | None,
                      num_workers: int | float, num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps of a run, exactly as NeMo's ``compute_max_steps``.

    Args:
        max_epochs: epochs of the run.
        accumulate_grad_batches: micro-batches per optimizer step.
        limit_train_batches: an int caps the batches per epoch; a float is a fraction of them (``0.0`` means 0);
            ``None`` means 1.0 (Lightning's default).
        num_workers: data-parallel ranks (the dataset is split across them).
        num_samples: dataset length.
        batch_size: per-rank batch size.
        drop_last: whether the last partial batch is dropped (rounds down instead of up).
    """
    if limit_train_batches is None:
        limit_train_batches = 1.0
    rounding = math.floor if drop_last else math.ceil
    sampler_num_samples = math.ceil(num_samples / max(1, num_workers))
    steps_per_epoch = rounding(sampler_num_samples / batch_size)
    if isinstance(limit_train_batches, int) or limit_train_batches == 0.0:
        steps_per_epoch = min(steps_per_epoch, int(limit_train_batches))
    elif steps_per_epoch != float("inf"):
        steps_per_epoch = int(steps_per_epoch * limit_train_batches)
    return math.ceil(steps_per_epoch / accumulate_grad_batches) * max_epochs


def _plain(cfg: Any) -> Any:
    """An OmegaConf node or Mapping -> plain nested dict/list (resolved), deep-copied."""
    if cfg is None:
        return None
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return copy.deepcopy(cfg)


def _flatten_params(args: dict) -> dict:
    """Hydra-0.x configs nest arguments under ``params`` (and name classes with ``cls``); NeMo lifts them."""
    args = dict(args)
    if "cls" in args and "_target_" not in args:
        args["_target_"] = args.pop("cls")
    args.update(args.pop("params", None) or {})
    return args


def _optimizer_args(name: str, args: Any) -> dict:
    """NeMo's ``parse_optimizer_args`` for the mapping forms: ``_target_``, ``name: auto|<x>_params``, or plain."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ValueError(f"optim.args must be a mapping of optimizer arguments, got {type(args).__name__}")
    args = _flatten_params(args)
    if "_target_" in args:
        cls_name = str(args.pop("_target_")).rsplit(".", 1)[-1]
        if cls_name not in _PARAMS_CLASS_TO_NAME:
            raise ValueError(f"optim.args._target_ names {cls_name!r}; known params classes: "
                             f"{', '.join(_PARAMS_CLASS_TO_NAME)}")
        return {**NEMO_OPTIMIZER_PARAMS[_PARAMS_CLASS_TO_NAME[cls_name]], **args}
    if "name" in args:
        params_name = args.pop("name")
        params_name = f"{name}_params" if params_name == "auto" else params_name
        if params_name not in NEMO_OPTIMIZER_PARAMS:
            raise ValueError(f"optim.args.name resolves to {params_name!r}; known: {', '.join(NEMO_OPTIMIZER_PARAMS)}")
        return {**NEMO_OPTIMIZER_PARAMS[params_name], **args}
    return args


def _build_optimizer(cfg: dict) -> tuple[Optimizer, float]:
    target = cfg.pop("_target_", None)
    if target is not None:
        name = str(target).rsplit(".", 1)[-1].lower()  # NeMo derives the name from the class path
    else:
        name = cfg.get("name") or "adam"
    lr = cfg.get("lr")
    if lr is None:
        raise ValueError("optim.lr is missing; set the peak learning rate, e.g. optim.lr=0.001")
    if "args" in cfg:
        kwargs = _optimizer_args(name, cfg["args"])
    else:
        kwargs = {k: v for k, v in cfg.items() if k not in ("name", "cls", "lr")}
    kwargs.pop("lr", None)
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return get_optimizer(name, **kwargs), float(lr)
    except (TypeError, ValueError) as e:
        raise type(e)(f"optim (name={name!r}): {e}") from None


def _resolve_max_steps(sched: dict, max_steps: int | None) -> tuple[bool, int | None]:
    """Returns ``(use_schedule, max_steps)`` following NeMo's precedence."""
    if max_steps is not None and max_steps >= 0:
        return True, int(max_steps)
    from_cfg = sched.get("max_steps")
    if from_cfg is None:
        return True, None
    if from_cfg == -1:
        warnings.warn("optim.sched.max_steps is -1: no schedule, the lr stays at optim.lr", stacklevel=3)
        return False, None
    if from_cfg < 0:
        raise ValueError(f"optim.sched.max_steps must be >= 0 (or -1 for no schedule), got {from_cfg}")
    return True, from_cfg


def _build_schedule(sched: dict, lr: float, max_steps: int | None) -> Schedule:
    if "args" in sched:
        args = _flatten_params(sched["args"] or {})
        args.pop("name", None)  # `auto` or a params-class name; NeMo only uses it to pick default values
    else:
        args = {k: v for k, v in sched.items() if k not in _SCHED_NON_ARGS}
    if "_target_" in args:
        name = str(args.pop("_target_")).rsplit(".", 1)[-1].replace("Params", "")
    else:
        name = sched.get("name")
    if not name:
        raise ValueError("optim.sched has no `name` (e.g. name: CosineAnnealing); NeMo would silently train "
                         "without a schedule here. Remove `sched` for a constant lr")
    use, resolved = _resolve_max_steps(sched, max_steps)
    if not use:
        return Constant(lr)
    if resolved is None and schedule_needs_max_steps(name):
        raise ValueError(f"optim.sched {name} needs max_steps, but neither optim.sched.max_steps nor "
                         "build_optimization(max_steps=...) gives one (NeMo derives it from the trainer and would "
                         "silently skip the schedule). Set optim.sched.max_steps, or pass max_steps= "
                         "(e.g. from compute_max_steps(...))")
    args.pop("max_steps", None)
    if resolved is not None:
        args["max_steps"] = resolved
    try:
        return get_schedule(name, lr, **args)
    except (TypeError, ValueError) as e:
        raise type(e)(f"optim.sched (name={name!r}): {e}") from None


def build_optimization(optim_cfg: Mapping, *, max_steps: int | None = None) -> tuple[Optimizer, Schedule, float]:
    """Builds ``(optimizer, schedule, base_lr)`` from a NeMo ``optim:`` config (dict or OmegaConf node).

    Args:
        optim_cfg: the ``optim`` section (``name``/``_target_``, ``lr``, optimizer keys or ``args``, ``sched``).
        max_steps: total optimizer steps of the run (a trainer's ``max_steps``); when ``>= 0`` it overrides
            ``sched.max_steps``. ``None`` or ``-1`` leaves ``sched.max_steps`` in charge.

    Returns:
        The optimizer, a schedule ``step -> lr`` (constant ``lr`` without ``sched`` or with ``max_steps: -1``), and
        ``lr`` as a float.

    Raises:
        ValueError: unknown optimizer/schedule name, missing ``lr``, conflicting steps/ratios, or a schedule that
            needs ``max_steps`` without one. TypeError: an unknown argument (named in the message).
    """
    cfg = _plain(optim_cfg)
    if not isinstance(cfg, dict):
        raise ValueError(f"optim config must be a mapping, got {type(optim_cfg).__name__}")
    sched = cfg.pop("sched", None)
    optimizer, lr = _build_optimizer(cfg)
    if sched is None:
        return optimizer, Constant(lr), lr
    if not isinstance(sched, dict):
        raise ValueError(f"optim.sched must be a mapping, got {type(sched).__name__}")
    return optimizer, _build_schedule(sched, lr, max_steps), lr
