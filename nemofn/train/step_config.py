"""How a step is taken: :class:`StepConfig` (objective, optimizer, schedule, options) and :class:`MicroBatches`.

A :class:`StepConfig` is a frozen value that pickles (``ddp_spawn`` sends it to each process): an optimizer built
from closures that do not pickle is sent as its registry name and hyperparameters and rebuilt on the other side, and
a compiled objective is compiled lazily in each process.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch

from nemofn.train.objective import Objective

__all__ = ["StepConfig", "MicroBatches"]


class _Compiled:
    """A picklable lazily-compiled wrapper: ``torch.compile(fn, **options)`` on first call (also in DDP workers)."""

    def __init__(self, fn: Callable, options: Mapping[str, Any]) -> None:
        self.fn = fn
        self.options = dict(options)
        self._compiled: Callable | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, **self.options)
        return self._compiled(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (_Compiled, (self.fn, self.options))


def _as_schedule(value: Callable[[int], float] | float) -> Callable[[int], float]:
    if callable(value):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lr = float(value)
        return _ConstantLr(lr)
    raise TypeError(f"schedule must be a callable step -> lr or a float, got {type(value).__name__}")


@attrs.frozen
class _ConstantLr:
    lr: float

    def __call__(self, step: int) -> float:
        return self.lr


def _check_clip(instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"StepConfig.clip_grad_norm must be > 0 or None, got {value!r}")


@attrs.frozen(eq=False)
class StepConfig:
    """How to take a step: the objective, the optimizer, the lr schedule and the options.

    Attributes:
        objective: the :class:`Objective` (``(params, buffers, batch, *, train, rng) -> (loss, metrics, bufs)``).
        optimizer: a functional optimizer (``nemofn.optim.adamw(...)`` etc.).
        schedule: ``step -> lr`` (``nemofn.optim.schedules``), or a constant float.
        clip_grad_norm: clip gradients to this global L2 norm; ``None`` = no clipping.
        track_grad_norm: report ``grad_norm`` in the metrics even without clipping (one foreach norm).
        compile: ``torch.compile`` the objective (forward and, through AOTAutograd, backward).
        compile_options: keyword arguments of ``torch.compile``; ``fullgraph=True`` by default, so a graph break
            on the hot path is an error instead of a silent slowdown.
        sync_batchnorm: in training forwards under DDP, BatchNorm layers use the statistics of the whole global
            batch (all-reduced over ranks, as ``nn.SyncBatchNorm``); no effect in a single process.
        skip_nonfinite: a step whose loss or gradient norm is NaN/Inf changes nothing (parameters, buffers and
            optimizer state stay bitwise as they were; the step counter still advances) and reports
            ``skipped = 1``. Decided on the device, no host sync (see :func:`~nemofn.train.step.train_step`).
            ``False`` applies every update as computed, NaN included.
    """

    objective: Objective
    optimizer: Any
    schedule: Callable[[int], float] = attrs.field(converter=_as_schedule)
    clip_grad_norm: float | None = attrs.field(default=None, validator=_check_clip)
    track_grad_norm: bool = True
    compile: bool = False
    compile_options: dict = attrs.field(factory=lambda: {"fullgraph": True})
    sync_batchnorm: bool = False
    skip_nonfinite: bool = True
    objective_fn: Callable = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not callable(self.objective):
            raise TypeError(f"StepConfig.objective must be callable, got {type(self.objective).__name__}")
        for attr in ("init", "update"):
            if not callable(getattr(self.optimizer, attr, None)):
                raise TypeError(f"StepConfig.optimizer must be a nemofn.optim Optimizer (init/update), got "
                                f"{type(self.optimizer).__name__}")
        fn = _Compiled(self.objective, self.compile_options) if self.compile else self.objective
        object.__setattr__(self, "objective_fn", fn)

    def __reduce__(self) -> tuple:
        # ``ddp_spawn`` pickles the config into each process. nemofn.optim optimizers hold closures; when one does
        # not pickle, send its registry name and hyperparameters and rebuild it on the other side.
        optimizer: Any = self.optimizer
        try:
            pickle.dumps(optimizer)
        except (pickle.PicklingError, AttributeError, TypeError):
            optimizer = _OptimizerSpec(optimizer.name, dict(optimizer.hparams))
        return (_rebuild_step_config, (self.objective, optimizer, self.schedule, self.clip_grad_norm,
                                       self.track_grad_norm, self.compile, self.compile_options,
                                       self.sync_batchnorm, self.skip_nonfinite))


@attrs.frozen
class _OptimizerSpec:
    name: str
    hparams: dict


def _rebuild_step_config(objective: Any, optimizer: Any, *args: Any) -> StepConfig:
    if isinstance(optimizer, _OptimizerSpec):
        from nemofn.optim.registry import get_optimizer

        try:
            optimizer = get_optimizer(optimizer.name, **optimizer.hparams)
        except (ValueError, TypeError) as err:
            raise TypeError(f"the optimizer {optimizer.name!r} cannot be pickled nor rebuilt from the nemofn.optim "
                            f"registry ({err}); register its factory with nemofn.optim.registry.register_optimizer "
                            "or use a strategy that does not pickle (e.g. 'ddp')") from err
    return StepConfig(objective, optimizer, *args)


class MicroBatches:
    """The micro-batches of one optimizer step (gradient accumulation): ``train_step(s, MicroBatches([b1, b2]), c)``.

    Each micro-batch's loss is divided by their number, so the gradient is that of the mean loss.
    """

    __slots__ = ("batches",)

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = tuple(batches)
        if not self.batches:
            raise ValueError("MicroBatches needs at least one batch")

    def __len__(self) -> int:
        return len(self.batches)
