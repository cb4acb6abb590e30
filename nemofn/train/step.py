"""``train_step`` and ``eval_step``: plain functions over a :class:`~nemofn.core.state.TrainState`.

The objective protocol
    Models provide the training objective as a function::

        objective(params, buffers, batch, *, train: bool, rng: RngKey | None)
            -> (loss: Tensor [], metrics: dict[str, Tensor], new_buffers: tree)

    ``loss`` is the scalar to minimise, ``metrics`` are extra scalars to log (detached or not; they are detached
    here), ``new_buffers`` is the model's ``apply`` output buffers (same structure as ``buffers``; ``{}`` or the
    input ``buffers`` when nothing changes). It must be pure like ``apply``: no host syncs, no mutation. ``rng``
    is the run's *base* key, the same object every step (so ``torch.compile`` does not recompile); the step seeds
    torch's global generator from ``key.fold_in(step).fold_in(rank)`` before calling it.

The step
    ``train_step(state, batch, cfg, runtime=None)`` runs forward and backward on each micro-batch (gradients land
    in the parameters' ``.grad``: ``loss.backward()``, or ``fabric.backward`` with a runtime, so DDP averages
    them), copies the new buffers into the state's buffers, clips by global norm, and updates the parameters and
    optimizer state in place with the lr ``cfg.schedule(state.step)``. It returns a new state and consumes the
    old one. Metrics are tensors (no ``.item()``): the caller syncs only when it logs.

Without Fabric (``runtime=None``) the objective is called directly on the state's trees. With a
:class:`~nemofn.train.adapter.FabricRuntime` it goes through the Fabric-wrapped :class:`TreeModule` (DDP hooks,
autocast), ``fabric.backward`` (GradScaler for ``16-mixed``), ``fabric.no_backward_sync`` on all micro-batches
but the last, ``fabric.clip_gradients`` (unscales first) and the optimizer shim (GradScaler's skip on overflow).
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import torch

from nemofn.core.rng import RngKey
from nemofn.core.state import TrainState
from nemofn.core.tree import Tree, tree_copy_
from nemofn.optim.clip import clip_by_global_norm, global_norm
from nemofn.train.adapter import collect_grads

__all__ = ["Objective", "StepConfig", "MicroBatches", "SupervisedObjective", "train_step", "eval_step"]


class Objective(Protocol):
    """``objective(params, buffers, batch, *, train, rng) -> (loss, metrics, new_buffers)``; see the module doc."""

    def __call__(self, params: Tree, buffers: Tree, batch: Any, *, train: bool,
                 rng: RngKey | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], Tree]: ...


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
    """

    objective: Objective
    optimizer: Any
    schedule: Callable[[int], float] = attrs.field(converter=_as_schedule)
    clip_grad_norm: float | None = attrs.field(default=None, validator=_check_clip)
    track_grad_norm: bool = True
    compile: bool = False
    compile_options: dict = attrs.field(factory=lambda: {"fullgraph": True})
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
                                       self.track_grad_norm, self.compile, self.compile_options))


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


def _forward(state: TrainState, cfg: StepConfig, runtime: Any, batch: Any, *, train: bool) -> tuple:
    rng = state.rng if train else None
    if runtime is None:
        out = cfg.objective_fn(state.model.params, state.model.buffers, batch, train=train, rng=rng)
    else:
        out = runtime.module(cfg.objective_fn, batch, train=train, rng=rng)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError(f"the objective must return (loss, metrics, new_buffers), got {type(out).__name__}"
                        f"{f' of length {len(out)}' if isinstance(out, tuple) else ''}")
    return out


def train_step(state: TrainState, batch: Any, cfg: StepConfig, *,
               runtime: Any = None) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer step. Consumes ``state``; returns ``(new_state, metrics)``.

    Args:
        state: the live :class:`TrainState` (its tensors are updated in place).
        batch: one batch, or :class:`MicroBatches` for gradient accumulation.
        cfg: the :class:`StepConfig`.
        runtime: a :class:`~nemofn.train.adapter.FabricRuntime` from ``setup_fabric``, or ``None``.

    Returns:
        ``metrics``: ``loss`` (mean over micro-batches), the objective's metrics (means), ``grad_norm`` (before
        clipping; unless ``track_grad_norm`` is off and there is no clipping), all 0-dim tensors on the device,
        and ``lr`` (float).
    """
    state.check_live()
    micro = batch.batches if isinstance(batch, MicroBatches) else (batch,)
    n = len(micro)
    model = state.model
    lr = float(cfg.schedule(state.step))
    state.step_key(0 if runtime is None else runtime.rank).seed_global()

    loss_sum: torch.Tensor | None = None
    metric_sums: dict[str, torch.Tensor] = {}
    for i, mb in enumerate(micro):
        accumulating = i < n - 1
        sync_ctx = (runtime.fabric.no_backward_sync(runtime.module, enabled=accumulating)
                    if runtime is not None and n > 1 else contextlib.nullcontext())
        with sync_ctx:
            loss, metrics, new_buffers = _forward(state, cfg, runtime, mb, train=True)
            scaled = loss / n if n > 1 else loss
            if runtime is None:
                scaled.backward()
            else:
                runtime.fabric.backward(scaled)
        if new_buffers:
            tree_copy_(model.buffers, new_buffers)
        loss = loss.detach()
        loss_sum = loss if loss_sum is None else loss_sum + loss
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            metric_sums[k] = v if k not in metric_sums else metric_sums[k] + v

    params = model.param_list
    grad_norm = None
    if runtime is None:
        grads = collect_grads(params, model.param_names)
        if cfg.clip_grad_norm is not None:
            grad_norm = clip_by_global_norm(grads, cfg.clip_grad_norm)
        elif cfg.track_grad_norm:
            grad_norm = global_norm(grads)
        opt_state = cfg.optimizer.update(params, grads, state.opt_state, lr=lr)
    else:
        if cfg.clip_grad_norm is not None or cfg.track_grad_norm:
            max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
            grad_norm = runtime.fabric.clip_gradients(runtime.module, runtime.optimizer, max_norm=max_norm,
                                                      error_if_nonfinite=False)
        shim = runtime.shim
        shim.opt_state = state.opt_state
        shim.param_groups[0]["lr"] = lr
        runtime.optimizer.step()
        opt_state, shim.opt_state = shim.opt_state, None
    for p in params:
        p.grad = None

    out: dict[str, Any] = {"loss": loss_sum / n if n > 1 else loss_sum, "lr": lr}
    for k, v in metric_sums.items():
        out[k] = v / n if n > 1 else v
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    state.consume("train_step")
    return attrs.evolve(state, opt_state=opt_state, step=state.step + 1), out


@torch.no_grad()
def eval_step(state: TrainState, batch: Any, cfg: StepConfig, *, runtime: Any = None) -> dict[str, torch.Tensor]:
    """Evaluates the objective with ``train=False`` and no gradients; the state is not consumed or changed.

    Returns:
        ``{"loss": Tensor [], **metrics}`` (detached tensors on the device; nothing is synced to the host).
    """
    state.check_live()
    loss, metrics, _ = _forward(state, cfg, runtime, batch, train=False)
    out = {"loss": loss.detach()}
    out.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()})
    return out



@attrs.frozen
class SupervisedObjective:
    """An :class:`Objective` for ``(inputs, targets)`` batches: ``loss_fn(model.apply(..., inputs), targets)``.

    Picklable (for ``ddp_spawn``) when ``loss_fn`` is a module-level function such as ``F.mse_loss``.

    Args:
        model: a nemofn ``Module`` whose ``apply(params, buffers, inputs, train=, rng=)`` returns
            ``(outputs, new_buffers)``.
        loss_fn: ``loss_fn(outputs, targets) -> Tensor []`` (mean reduction).
    """

    model: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, params: Tree, buffers: Tree, batch: Any, *, train: bool,
                 rng: RngKey | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], Tree]:
        inputs, targets = batch
        outputs, new_buffers = self.model.apply(params, buffers, inputs, train=train, rng=rng)
        return self.loss_fn(outputs, targets), {}, new_buffers
