"""``fit``: the hand-written training loop over Lightning Fabric (no LightningModule, no Trainer).

Read :func:`_run` top to bottom: set up Fabric, the state and the loaders; optionally resume; optionally run a
sanity validation; then for each group of ``accumulate_grad_batches`` batches take a
:func:`~nemofn.train.step.train_step`, and log, validate and checkpoint when their intervals come up. Everything
that makes a run repeatable lives in the :class:`~nemofn.core.state.TrainState` (optimizer state, step, RNG key,
data position), so a run stopped after any checkpoint and resumed ends bitwise equal to the uninterrupted run (CPU,
fp32).

Extension points, for a front end such as ``compat.Trainer`` (the loop knows nothing of it):

* ``FitConfig.callbacks``: objects given to ``Fabric(callbacks=...)``; the loop calls their methods, when they have
  them, through ``fabric.call``: ``on_fit_start(ctx)``, ``on_train_epoch_start(ctx)``,
  ``on_train_batch_start(ctx, batch, batch_idx)``, ``on_train_batch_end(ctx, metrics, batch_idx)`` (metrics are
  device tensors: no sync), ``on_log(ctx, values)`` (floats, at log steps), ``on_validation_end(ctx, values)``,
  ``on_train_epoch_end(ctx)`` and ``on_fit_end(ctx)``. ``ctx`` is the :class:`FitContext`: the live state, Fabric,
  the runtime; a callback stops training with ``ctx.should_stop = True``.
* ``FitConfig.validate``: ``validate(ctx, loaders, limit_batches) -> {name: float}``, one pass over the validation
  loaders; the default (:func:`evaluate`) averages :func:`~nemofn.train.step.eval_step`'s metrics, logged as
  ``val_<name>``. A custom function names its metrics itself (e.g. ``val_loss``, ``val_wer``).

Validation follows Lightning's ``val_check_interval`` / ``check_val_every_n_epoch`` (:mod:`nemofn.train.schedule`);
``limit_train_batches`` / ``limit_val_batches`` cap the batches per epoch / per validation.

Non-finite steps: ``train_step`` leaves out a step whose loss or gradient norm is NaN/Inf (``StepConfig.
skip_nonfinite``); the loop counts them on the device and reads the count at log steps (:mod:`nemofn.train.skips`):
``skipped_steps`` is logged, skips are warned about with the manifest lines of their batches, and
``FitConfig.max_consecutive_skips`` (default 10) consecutive ones stop the run with
:class:`~nemofn.train.skips.NonFiniteLossError`.

Multi-process runs: with ``strategy="ddp_spawn"`` Fabric starts the processes, each gets a private copy of the
given state (the caller's is left unchanged) and ``fit`` returns rank 0's result, on the CPU. With ``"ddp"`` (and
``"fsdp2"``) the script itself is re-launched per rank and each process gets its own result. Gradients are averaged
over ranks by DDP's hooks. BatchNorm running statistics follow DDP's ``broadcast_buffers`` rule unless
``StepConfig.sync_batchnorm`` all-reduces the batch statistics. Validation runs on each rank's share of the
validation data and the default metrics are averaged over ranks. ``"fsdp2"`` shards the root module with FSDP2 (no
checkpointing yet; see ``nemofn.train.adapter.FSDP_STATUS``).
"""

from __future__ import annotations

import atexit
import gc
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from nemofn.core.state import ModelState, TrainState
from nemofn.train.adapter import FabricRuntime, fsdp2_strategy, setup_fabric
from nemofn.train.checkpoint import checkpoint_name, latest_checkpoint, load_checkpoint, save_checkpoint
from nemofn.train.data import limited_batches, make_loader
from nemofn.train.logging import ProgressBar, make_loggers, to_floats
from nemofn.train.samplers import is_resumable_sampler
from nemofn.train.schedule import ValidationSchedule
from nemofn.train.skips import NonFiniteLossError, SkippedStep, SkipTracker, batch_namer
from nemofn.train.step import MicroBatches, StepConfig, eval_step, train_step

__all__ = ["FitConfig", "FitResult", "FitContext", "fit", "evaluate", "PRECISIONS"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def _positive_or_none(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"FitConfig.{attribute.name} must be a positive int or None, got {value!r}")


def _non_negative_or_none(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"FitConfig.{attribute.name} must be an int >= 0 or None, got {value!r}")


def _limit(instance: Any, attribute: Any, value: int | float | None) -> None:
    if value is not None:
        limited_batches(1, value, f"FitConfig.{attribute.name}")


@attrs.frozen
class FitConfig:
    """Options of :func:`fit` (names and meanings follow Lightning's Trainer where one exists).

    Attributes:
        max_steps, max_epochs: stop at whichever comes first (at least one is required).
        batch_size: per-device batch size (required unless ``train_data`` is a DataLoader that has one).
        accumulate_grad_batches: batches per optimizer step (no gradient sync on the accumulating ones).
        val_check_interval, check_val_every_n_epoch: when to validate (see :mod:`nemofn.train.schedule`); the
            default validates at the end of every epoch.
        limit_train_batches, limit_val_batches: an int caps the batches of each epoch / validation, a float in
            ``[0, 1]`` takes that fraction; ``None``: all.
        num_sanity_val_steps: validation batches run (and discarded) before training, to catch errors early.
        log_every_n_steps: how often metrics are synced to the host, logged and added to the history.
        accelerator, devices, num_nodes, strategy, precision: as ``lightning_fabric.Fabric``; ``strategy="fsdp2"``
            shards the root module with FSDP2; precision is one of :data:`PRECISIONS`. Ignored when ``fit`` is given
            a launched ``fabric``.
        loggers: ``"csv"``, ``"tensorboard"`` or Fabric logger objects; files go under ``log_dir/run_name``.
        checkpoint_dir: where checkpoints go (``None``: no checkpoints); ``checkpoint_every_n_steps`` interval;
            ``save_last``: also save when training ends.
        resume_from: a checkpoint path, or ``"last"`` for the newest one in ``checkpoint_dir`` (none: start fresh).
        seed: the base RNG key and the shuffle seed of a fresh state (a reused resumable loader keeps its own seed).
        shuffle, drop_last, num_workers, collate_fn, val_batch_size: data-loading options for datasets.
        batch_sampler: a resumable batch-sampler factory for the training data (see
            :func:`nemofn.train.data.make_loader`), e.g. duration-sorted batches; default: shuffled batches.
        validate: ``validate(ctx, loaders, limit_batches) -> {name: float}`` (see the module doc); default
            :func:`evaluate`.
        callbacks: objects with loop hook methods (see the module doc).
        progress_bar: show a tqdm bar on rank 0.
        max_consecutive_skips: stop with :class:`~nemofn.train.skips.NonFiniteLossError` (naming the steps and
            their batches' manifest lines) once this many consecutive steps were skipped for a non-finite loss or
            gradient norm (``StepConfig.skip_nonfinite``); ``None`` or 0: never stop. Skips are read at log steps,
            so the stop can come up to ``log_every_n_steps`` steps late; the parameters are those of the last
            finite step. Isolated skips are counted (``skipped_steps`` in the logs) and warned about.
    """

    max_steps: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_epochs: int | None = attrs.field(default=None, validator=_positive_or_none)
    batch_size: int | None = attrs.field(default=None, validator=_positive_or_none)
    accumulate_grad_batches: int = attrs.field(default=1, validator=_positive_or_none)
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int | None = attrs.field(default=1, validator=_positive_or_none)
    limit_train_batches: int | float | None = attrs.field(default=None, validator=_limit)
    limit_val_batches: int | float | None = attrs.field(default=None, validator=_limit)
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = attrs.field(default=50, validator=_positive_or_none)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    loggers: Sequence[Any] = ("csv",)
    log_dir: str = "nemofn_logs"
    run_name: str = "nemofn"
    checkpoint_dir: str | None = None
    checkpoint_every_n_steps: int | None = attrs.field(default=None, validator=_positive_or_none)
    save_last: bool = True
    resume_from: str | None = None
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0
    collate_fn: Callable | None = None
    batch_sampler: Callable | None = None
    val_batch_size: int | None = None
    validate: Callable[..., dict[str, float]] | None = None
    callbacks: Sequence[Any] = ()
    progress_bar: bool = True
    max_consecutive_skips: int | None = attrs.field(default=10, validator=_non_negative_or_none)

    def __attrs_post_init__(self) -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("fit needs max_steps or max_epochs (or both; training stops at the first reached)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not supported; use one of {PRECISIONS}")
        on_cpu = self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())
        if self.precision == "16-mixed" and on_cpu:
            raise ValueError("precision='16-mixed' needs a CUDA GPU (fp16 autocast + GradScaler); on CPU use "
                             "'bf16-mixed' or '32-true'")
        ValidationSchedule.resolve(self.val_check_interval, self.check_val_every_n_epoch, 10**9)


@attrs.frozen(eq=False)
class FitResult:
    """What :func:`fit` returns: the final :class:`TrainState` and the logged metrics, one dict per log point.

    ``history`` rows hold ``step``, ``epoch``, ``elapsed_s`` (seconds since the loop started, this process) and
    either the training metrics (``loss``, ``lr``, ``grad_norm``, ``samples_per_s``, ``skipped_steps`` (so far),
    the objective's) or the validation metrics (``val_loss`` and the others the validation function names).
    ``skipped_steps``: the steps left out for a non-finite loss or gradient norm in this run (this process).
    """

    state: TrainState
    history: list[dict[str, float]]
    skipped_steps: int = 0


@attrs.define(eq=False)
class FitContext:
    """The loop's live context, handed to callbacks and to the validation function.

    Attributes:
        fabric, runtime: the launched Fabric and the :class:`FabricRuntime` (module, optimizer shim).
        config, step_config: the :class:`FitConfig` and :class:`StepConfig`.
        state: the live :class:`TrainState` (replaced after every step: read it, do not keep it).
        batches_per_epoch: training batches per epoch and rank (after ``limit_train_batches``).
        total_steps: the optimizer steps the run will take.
        history: the rows logged so far.
        current_epoch: the epoch of the batches being trained (Lightning's ``current_epoch``: at the end of an
            epoch it is still that epoch, while ``state.data`` already points at the next one).
        should_stop: set it to end training after the current step.
        sanity_checking: true while the sanity validation runs.
    """

    fabric: Any
    runtime: FabricRuntime
    config: FitConfig
    step_config: StepConfig
    state: TrainState
    batches_per_epoch: int = 0
    total_steps: int = 0
    history: list = attrs.field(factory=list)
    current_epoch: int = 0
    should_stop: bool = False
    sanity_checking: bool = False

    @property
    def global_step(self) -> int:
        return self.state.step

    @property
    def epoch(self) -> int:
        """Lightning's ``current_epoch`` (see :attr:`current_epoch`)."""
        return self.current_epoch


def fit(model: ModelState | TrainState, step: StepConfig, train_data: Any, val_data: Any = None,
        config: FitConfig | None = None, *, fabric: Any = None, **options: Any) -> FitResult:
    """Trains ``model`` with ``step`` on ``train_data``; returns the final state and the metric history.

    Args:
        model: a fresh :class:`ModelState`, or a :class:`TrainState` to continue (consumed; with ``ddp_spawn`` it is
            copied into the workers instead and left unchanged).
        step: the :class:`StepConfig` (objective, optimizer, schedule, clipping, compile).
        train_data / val_data: map-style datasets or DataLoaders (see :func:`nemofn.train.data.make_loader`);
            ``val_data`` may be a list of them when ``config.validate`` handles several.
        config: a :class:`FitConfig`, or give its fields as keyword ``options`` instead.
        fabric: an already launched ``Fabric`` to run on (its accelerator, devices, strategy, precision, loggers
            and callbacks are used; the ones in ``config`` are then ignored).
    """
    if config is not None and options:
        raise TypeError(f"pass either config= or keyword options, not both (got options {sorted(options)})")
    config = config if config is not None else FitConfig(**options)
    if fabric is not None:
        return _run(fabric, model, step, train_data, val_data, config)
    from lightning_fabric import Fabric

    strategy = config.strategy
    if strategy == "fsdp2":
        if not isinstance(config.devices, int):
            raise ValueError("strategy='fsdp2' needs an int number of devices")
        strategy = fsdp2_strategy(config.devices * config.num_nodes)
    loggers = make_loggers(config.loggers, config.log_dir, config.run_name)
    fabric = Fabric(accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
                    strategy=strategy, precision=config.precision, loggers=loggers, callbacks=list(config.callbacks))
    if _spawns(fabric):
        # torch.multiprocessing would hand the workers *shared* memory for these tensors, and every rank would then
        # update the same parameters. Send a serialised copy instead (the given state is left unchanged).
        model = _Packed.of(model)
    result = fabric.launch(_run, model, step, train_data, val_data, config)
    return result.unpack() if isinstance(result, _Packed) else result


@attrs.frozen
class _Packed:
    """An object serialised by value (``torch.save``), to cross a process boundary as private bytes."""

    data: bytes

    @classmethod
    def of(cls, obj: Any) -> _Packed:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return cls(buffer.getvalue())

    def unpack(self) -> Any:
        return torch.load(io.BytesIO(self.data), weights_only=False)  # our own bytes


def _spawns(fabric: Any) -> bool:
    return type(fabric.strategy.launcher).__name__ == "_MultiProcessingLauncher"


def _train_loader(train_data: Any, cfg: FitConfig, fabric: Any, seed: int) -> Any:
    return make_loader(train_data, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=seed,
                       num_replicas=fabric.world_size, rank=fabric.global_rank, drop_last=cfg.drop_last,
                       collate_fn=cfg.collate_fn, num_workers=cfg.num_workers, batch_sampler=cfg.batch_sampler)


def _val_loaders(val_data: Any, cfg: FitConfig, fabric: Any, batch_size: int) -> list[Any]:
    if val_data is None:
        return []
    items = list(val_data) if isinstance(val_data, (list, tuple)) else [val_data]
    loaders = []
    for item in items:
        loader = make_loader(item, batch_size=cfg.val_batch_size or batch_size, shuffle=False,
                             num_replicas=fabric.world_size, rank=fabric.global_rank, collate_fn=cfg.collate_fn,
                             num_workers=cfg.num_workers)
        loaders.append(fabric.setup_dataloaders(loader, use_distributed_sampler=False))
    return loaders


_TEARDOWN_REGISTERED = False


def release_process_group() -> None:
    """Destroys the default process group and frees it now, while the interpreter is fully alive.

    With gloo, a process group still alive at interpreter shutdown can abort the process ("terminate called without
    an active exception"): its worker thread frees a finished collective, whose saved thread-local state holds a
    Python object, and needs the GIL after finalisation began. ``destroy_process_group`` alone is not enough when a
    reference cycle (a DDP wrapper, a reducer) still holds the group: the collection frees it, joining its threads.
    Fabric tears the group down only for NCCL.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()


def _run(fabric: Any, model: ModelState | TrainState, step: StepConfig, train_data: Any, val_data: Any,
         cfg: FitConfig) -> FitResult:
    global _TEARDOWN_REGISTERED
    if fabric.world_size > 1 and not _TEARDOWN_REGISTERED:
        atexit.register(release_process_group)
        _TEARDOWN_REGISTERED = True
    if isinstance(model, _Packed):
        model = model.unpack()
    given_sampler = getattr(train_data, "batch_sampler", None)
    data_seed = given_sampler.seed if is_resumable_sampler(given_sampler) else cfg.seed
    state, runtime = setup_fabric(fabric, model, step.optimizer, rng=cfg.seed, data_seed=data_seed)
    loader = _train_loader(train_data, cfg, fabric, state.data.seed)
    sampler = loader.batch_sampler
    train_loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    val_loaders = _val_loaders(val_data, cfg, fabric, sampler.batch_size)
    validate = cfg.validate if cfg.validate is not None else _default_validate

    resume = _resume_path(cfg)
    if resume is not None:
        load_checkpoint(resume, state, fabric=fabric)
        fabric.print(f"resumed from {resume} at step {state.step} (epoch {state.data.epoch}, batch "
                     f"{state.data.batch})")

    sampler.seed = state.data.seed  # a resumed run keeps the shuffle seed it started with
    per_epoch = limited_batches(sampler.batches_per_epoch, cfg.limit_train_batches, "limit_train_batches")
    if per_epoch == 0:
        raise ValueError(f"the training data gives no batch per epoch ({sampler.batches_per_epoch} batches of "
                         f"{sampler.batch_size} per rank, limit_train_batches={cfg.limit_train_batches})")
    accumulate = cfg.accumulate_grad_batches
    steps_per_epoch = math.ceil(per_epoch / accumulate)
    total_steps = min(n for n in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * steps_per_epoch) if n)
    schedule = ValidationSchedule.resolve(cfg.val_check_interval, cfg.check_val_every_n_epoch, per_epoch)
    val_limit = cfg.limit_val_batches
    validating = bool(val_loaders) and val_limit != 0
    ctx = FitContext(fabric, runtime, cfg, step, state, batches_per_epoch=per_epoch, total_steps=total_steps,
                     current_epoch=state.data.epoch)
    bar = ProgressBar(total_steps, state.step, cfg.progress_bar and fabric.is_global_zero,
                      samples_per_step=sampler.batch_size * accumulate * fabric.world_size)
    saved_at = -1
    where = f" (rank {fabric.global_rank}'s batches)" if fabric.world_size > 1 else ""
    skips = SkipTracker(cfg.max_consecutive_skips, batch_namer(sampler, loader.dataset), warn=fabric.is_global_zero,
                        where=where)

    fabric.call("on_fit_start", ctx)
    if validating and cfg.num_sanity_val_steps > 0:
        ctx.sanity_checking = True
        validate(ctx, val_loaders, cfg.num_sanity_val_steps)  # results discarded, as Lightning's sanity check
        ctx.sanity_checking = False

    while not _finished(ctx.state, cfg) and not ctx.should_stop:
        sampler.set_position(ctx.state.data.epoch, ctx.state.data.batch)
        ctx.current_epoch = ctx.state.data.epoch
        fabric.call("on_train_epoch_start", ctx)
        group: list[Any] = []
        for batch in train_loader:
            group.append(batch)
            done = ctx.state.data.batch + len(group)
            if len(group) < accumulate and done < per_epoch:
                continue  # accumulate more (the last group of an epoch may be shorter)
            epoch = ctx.state.data.epoch
            fabric.call("on_train_batch_start", ctx, group[-1], done - 1)
            step_input = MicroBatches(group) if accumulate > 1 else group[0]
            state, metrics = train_step(ctx.state, step_input, step, runtime=runtime)
            ctx.state = state.replace(data=state.data.advance(len(group), batches_per_epoch=per_epoch))
            ctx.current_epoch = epoch
            bar.step()
            read_due = skips.record(metrics, SkippedStep(ctx.state.step, epoch, done - len(group), len(group)))
            fabric.call("on_train_batch_end", ctx, metrics, done - 1)

            if ctx.state.step % cfg.log_every_n_steps == 0:
                values = to_floats(metrics)
                values.pop("skipped", None)
                failure = _read_skips(skips)  # the flags since the last log step (the sync just happened)
                if step.skip_nonfinite:
                    values["skipped_steps"] = float(skips.total)
                values["samples_per_s"] = bar.throughput()
                fabric.log_dict(values, step=ctx.state.step)
                ctx.history.append({"step": ctx.state.step, "epoch": ctx.state.data.epoch,
                                    "elapsed_s": bar.elapsed(), **values})
                bar.show(values)
                fabric.call("on_log", ctx, values)
                _raise_if(failure, fabric, bar)
            elif read_due:
                _raise_if(_read_skips(skips), fabric, bar)
            if validating and schedule.due(epoch, done, len(group), per_epoch):
                values = validate(ctx, val_loaders, val_limit)
                fabric.log_dict(values, step=ctx.state.step)
                ctx.history.append({"step": ctx.state.step, "epoch": ctx.state.data.epoch,
                                    "elapsed_s": bar.elapsed(), **values})
                fabric.call("on_validation_end", ctx, values)
            if cfg.checkpoint_dir and cfg.checkpoint_every_n_steps and ctx.state.step % cfg.checkpoint_every_n_steps == 0:
                _save(cfg, ctx.state, fabric)
                saved_at = ctx.state.step
            group = []
            if ctx.state.data.batch == 0:
                fabric.call("on_train_epoch_end", ctx)
                break  # the epoch is over (the sampler may hold more batches when limit_train_batches is set)
            if _finished(ctx.state, cfg) or ctx.should_stop:
                break

    _raise_if(_read_skips(skips), fabric, bar)
    if cfg.checkpoint_dir and cfg.save_last and saved_at != ctx.state.step:
        _save(cfg, ctx.state, fabric)
    bar.close()
    fabric.call("on_fit_end", ctx)
    for logger in fabric.loggers:
        logger.finalize("success")
    result = FitResult(ctx.state, ctx.history, skips.total)
    if _spawns(fabric) and fabric.is_global_zero:
        return _Packed.of(_to_cpu(result))  # the worker exits before the parent could map shared tensor memory
    return result


def _to_cpu(result: FitResult) -> FitResult:
    """The result with its tensors on the CPU (for returning it across processes)."""
    state = result.state
    if state.model.device.type == "cpu":
        return result
    from nemofn.core.tree import tree_map

    def cpu(x: Any) -> Any:
        return x.detach().cpu() if isinstance(x, torch.Tensor) else x

    model = ModelState.create(tree_map(cpu, state.model.params), tree_map(cpu, state.model.buffers))
    opt_state = {k: [cpu(v) for v in vs] if isinstance(vs, list) else cpu(vs) for k, vs in state.opt_state.items()}
    moved = TrainState(model, opt_state, rng=state.rng, step=state.step, data=state.data)
    return FitResult(moved, result.history, result.skipped_steps)


def _read_skips(skips: SkipTracker) -> NonFiniteLossError | None:
    """Reads the skip flags (counts, warns); returns the error to raise once the step's logging is done."""
    try:
        skips.flush()
    except NonFiniteLossError as err:
        return err
    return None


def _raise_if(failure: NonFiniteLossError | None, fabric: Any, bar: ProgressBar) -> None:
    if failure is None:
        return
    bar.close()
    for logger in fabric.loggers:
        logger.finalize("failed")  # the logged NaN losses reach the files
    raise failure


def _default_validate(ctx: FitContext, loaders: list[Any], limit: int | float | None) -> dict[str, float]:
    if len(loaders) > 1:
        raise ValueError("the default validation takes one validation set; pass FitConfig.validate to handle "
                         f"{len(loaders)} of them")
    means = evaluate(ctx.state, loaders[0], ctx.step_config, ctx.runtime, limit_batches=limit)
    return {f"val_{k}": v for k, v in means.items()}


@torch.no_grad()
def evaluate(state: TrainState, loader: Any, step: StepConfig, runtime: FabricRuntime | None = None, *,
             limit_batches: int | float | None = None) -> dict[str, float]:
    """Mean of :func:`eval_step`'s metrics over ``loader`` (then over ranks); one host sync at the end.

    Args:
        limit_batches: an int caps the batches, a float takes that fraction of them (``None``: all).
    """
    total = limited_batches(len(loader), limit_batches, "limit_val_batches") if limit_batches is not None else None
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in loader:
        if total is not None and count >= total:
            break
        for k, v in eval_step(state, batch, step, runtime=runtime).items():
            sums[k] = v if k not in sums else sums[k] + v
        count += 1
    means = {k: v / max(count, 1) for k, v in sums.items()}
    if runtime is not None and runtime.fabric.world_size > 1 and means:
        means = runtime.fabric.all_reduce(means, reduce_op="mean")
    return to_floats(means)


def _finished(state: TrainState, cfg: FitConfig) -> bool:
    return ((cfg.max_steps is not None and state.step >= cfg.max_steps)
            or (cfg.max_epochs is not None and state.data.epoch >= cfg.max_epochs))


def _save(cfg: FitConfig, state: TrainState, fabric: Any) -> None:
    path = Path(cfg.checkpoint_dir) / checkpoint_name(state.step)
    save_checkpoint(path, state, fabric=fabric, link_last=True)


def _resume_path(cfg: FitConfig) -> Path | None:
    if cfg.resume_from is None:
        return None
    if cfg.resume_from == "last":
        if cfg.checkpoint_dir is None:
            raise ValueError("resume_from='last' needs checkpoint_dir")
        return latest_checkpoint(cfg.checkpoint_dir)
    return Path(cfg.resume_from)
