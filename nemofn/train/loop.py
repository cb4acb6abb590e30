"""``fit``: the hand-written training loop over Lightning Fabric (no LightningModule, no Trainer).

Read :func:`_run` top to bottom: set up Fabric, the state and the loaders; optionally resume; then for each group
of ``accumulate_grad_batches`` batches take a :func:`~nemofn.train.step.train_step`, and log, validate and
checkpoint when their intervals come up. Everything that makes a run repeatable lives in the
:class:`~nemofn.core.state.TrainState` (optimizer state, step, RNG key, data position), so a run stopped after any
checkpoint and resumed ends bitwise equal to the uninterrupted run (CPU, fp32).

Multi-process runs: with ``strategy="ddp_spawn"`` Fabric starts the processes, each gets a private copy of the
given state (the caller's is left unchanged) and ``fit`` returns rank 0's result, on the CPU. With ``"ddp"`` (and
``"fsdp2"``) the script itself is re-launched per rank and each process gets its own result. Gradients are averaged
over ranks by DDP's hooks. BatchNorm running statistics follow DDP's ``broadcast_buffers`` rule: each training
forward starts from rank 0's statistics, which each rank then updates from its own batch, so checkpoints (written
by rank 0) hold rank 0's. ``sync_batchnorm`` is not available with nemofn's functional BatchNorm and raises.
``"fsdp2"`` shards the root module with FSDP2 (no checkpointing yet; see ``nemofn.train.adapter.FSDP_STATUS``).
"""

from __future__ import annotations

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
from nemofn.train.data import make_loader
from nemofn.train.logging import ProgressBar, make_loggers, to_floats
from nemofn.train.step import MicroBatches, StepConfig, eval_step, train_step

__all__ = ["FitConfig", "FitResult", "fit", "evaluate", "PRECISIONS"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def _positive_or_none(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"FitConfig.{attribute.name} must be a positive int or None, got {value!r}")


@attrs.frozen
class FitConfig:
    """Options of :func:`fit` (names follow Lightning's Trainer where one exists).

    Attributes:
        max_steps, max_epochs: stop at whichever comes first (at least one is required).
        batch_size: per-device batch size (required unless ``train_data`` is a DataLoader that has one).
        accumulate_grad_batches: batches per optimizer step (no gradient sync on the accumulating ones).
        val_every_n_steps / val_every_n_epochs: validation interval (when ``val_data`` is given; with neither
            set, validation runs after every epoch, as Lightning's default).
        log_every_n_steps: how often metrics are synced to the host, logged and added to the history.
        accelerator, devices, num_nodes, strategy, precision: as ``lightning_fabric.Fabric``; ``strategy="fsdp2"``
            shards the root module with FSDP2; precision is one of :data:`PRECISIONS`.
        loggers: ``"csv"``, ``"tensorboard"`` or Fabric logger objects; files go under ``log_dir/run_name``.
        checkpoint_dir: where checkpoints go (``None``: no checkpoints); ``checkpoint_every_n_steps`` interval;
            ``save_last``: also save when training ends.
        resume_from: a checkpoint path, or ``"last"`` for the newest one in ``checkpoint_dir`` (none: start fresh).
        seed: the base RNG key and the shuffle seed of a fresh state.
        shuffle, drop_last, num_workers, collate_fn, val_batch_size: data-loading options.
        batch_sampler: a resumable batch-sampler factory for the training data (see
            :func:`nemofn.train.data.make_loader`), e.g. duration-sorted batches; default: shuffled batches.
        val_metrics: ``val_metrics(model_state) -> {name: float}``, extra validation metrics that need more than the
            objective (e.g. a WER, which decodes to text); run after the loss pass and logged as ``val_<name>``.
            It is called on every rank with the full model state and must not change it.
        progress_bar: show a tqdm bar on rank 0.
        sync_batchnorm: not supported (raises); see the module doc.
    """

    max_steps: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_epochs: int | None = attrs.field(default=None, validator=_positive_or_none)
    batch_size: int | None = attrs.field(default=None, validator=_positive_or_none)
    accumulate_grad_batches: int = attrs.field(default=1, validator=_positive_or_none)
    val_every_n_steps: int | None = attrs.field(default=None, validator=_positive_or_none)
    val_every_n_epochs: int | None = attrs.field(default=None, validator=_positive_or_none)
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
    val_metrics: Callable[[ModelState], Any] | None = None
    progress_bar: bool = True
    sync_batchnorm: bool = False

    def __attrs_post_init__(self) -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("fit needs max_steps or max_epochs (or both; training stops at the first reached)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not supported; use one of {PRECISIONS}")
        on_cpu = self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())
        if self.precision == "16-mixed" and on_cpu:
            raise ValueError("precision='16-mixed' needs a CUDA GPU (fp16 autocast + GradScaler); on CPU use "
                             "'bf16-mixed' or '32-true'")
        if self.sync_batchnorm:
            raise NotImplementedError(
                "sync_batchnorm=True is not supported: Fabric implements it by swapping nn.BatchNorm submodules for "
                "nn.SyncBatchNorm, and nemofn's BatchNorm is a pure function with no submodule to swap. Under DDP the "
                "running statistics follow broadcast_buffers (rank 0's statistics are used on every rank)")


@attrs.frozen(eq=False)
class FitResult:
    """What :func:`fit` returns: the final :class:`TrainState` and the logged metrics, one dict per log point.

    ``history`` rows hold ``step``, ``epoch``, ``elapsed_s`` (seconds since the loop started, this process) and
    either the training metrics (``loss``, ``lr``, ``grad_norm``, ``samples_per_s``, the objective's) or the
    validation metrics prefixed ``val_`` (``val_loss``, the objective's, and those of ``FitConfig.val_metrics``).
    """

    state: TrainState
    history: list[dict[str, float]]


def fit(model: ModelState | TrainState, step: StepConfig, train_data: Any, val_data: Any = None,
        config: FitConfig | None = None, **options: Any) -> FitResult:
    """Trains ``model`` with ``step`` on ``train_data``; returns the final state and the metric history.

    Args:
        model: a fresh :class:`ModelState`, or a :class:`TrainState` to continue (consumed; with ``ddp_spawn`` it is
            copied into the workers instead and left unchanged).
        step: the :class:`StepConfig` (objective, optimizer, schedule, clipping, compile).
        train_data / val_data: map-style datasets or DataLoaders (rebuilt on a resumable sampler).
        config: a :class:`FitConfig`, or give its fields as keyword ``options`` instead.
    """
    if config is not None and options:
        raise TypeError(f"pass either config= or keyword options, not both (got options {sorted(options)})")
    config = config if config is not None else FitConfig(**options)
    from lightning_fabric import Fabric

    strategy = config.strategy
    if strategy == "fsdp2":
        if not isinstance(config.devices, int):
            raise ValueError("strategy='fsdp2' needs an int number of devices")
        strategy = fsdp2_strategy(config.devices * config.num_nodes)
    loggers = make_loggers(config.loggers, config.log_dir, config.run_name)
    fabric = Fabric(accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
                    strategy=strategy, precision=config.precision, loggers=loggers)
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


def _run(fabric: Any, model: ModelState | TrainState, step: StepConfig, train_data: Any, val_data: Any,
         cfg: FitConfig) -> FitResult:
    if isinstance(model, _Packed):
        model = model.unpack()
    state, runtime = setup_fabric(fabric, model, step.optimizer, rng=cfg.seed, data_seed=cfg.seed)
    world, rank = fabric.world_size, fabric.global_rank
    loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=state.data.seed,
                         num_replicas=world, rank=rank, drop_last=cfg.drop_last, collate_fn=cfg.collate_fn,
                         num_workers=cfg.num_workers, batch_sampler=cfg.batch_sampler)
    sampler = loader.batch_sampler
    train_loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    val_loader = None
    if val_data is not None:
        val_loader = fabric.setup_dataloaders(
            make_loader(val_data, batch_size=cfg.val_batch_size or sampler.batch_size, shuffle=False,
                        num_replicas=world, rank=rank, collate_fn=cfg.collate_fn, num_workers=cfg.num_workers),
            use_distributed_sampler=False)

    resume = _resume_path(cfg)
    if resume is not None:
        load_checkpoint(resume, state, fabric=fabric)
        fabric.print(f"resumed from {resume} at step {state.step} (epoch {state.data.epoch}, batch "
                     f"{state.data.batch})")

    sampler.seed = state.data.seed  # a resumed run keeps the shuffle seed it started with
    per_epoch = sampler.batches_per_epoch
    if per_epoch == 0:
        raise ValueError(f"the training data gives no batch per epoch ({len(sampler.epoch_indices(0))} samples per "
                         f"rank, batch_size {sampler.batch_size}, drop_last=True)")
    accumulate = cfg.accumulate_grad_batches
    steps_per_epoch = math.ceil(per_epoch / accumulate)
    total_steps = min(n for n in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * steps_per_epoch) if n)
    val_every_n_epochs = cfg.val_every_n_epochs or (None if cfg.val_every_n_steps else 1)
    bar = ProgressBar(total_steps, state.step, cfg.progress_bar and fabric.is_global_zero,
                      samples_per_step=sampler.batch_size * accumulate * world)
    history: list[dict[str, float]] = []
    saved_at = -1

    while not _finished(state, cfg):
        sampler.set_position(state.data.epoch, state.data.batch)
        group: list[Any] = []
        for batch in train_loader:
            group.append(batch)
            if len(group) < accumulate and state.data.batch + len(group) < per_epoch:
                continue  # accumulate more (the last group of an epoch may be shorter)
            step_input = MicroBatches(group) if accumulate > 1 else group[0]
            state, metrics = train_step(state, step_input, step, runtime=runtime)
            state = state.replace(data=state.data.advance(len(group), batches_per_epoch=per_epoch))
            group = []
            bar.step()
            epoch_ended = state.data.batch == 0

            if state.step % cfg.log_every_n_steps == 0:
                values = to_floats(metrics)
                values["samples_per_s"] = bar.throughput()
                fabric.log_dict(values, step=state.step)
                history.append({"step": state.step, "epoch": state.data.epoch, "elapsed_s": bar.elapsed(), **values})
                bar.show(values)
            if val_loader is not None and (
                    (cfg.val_every_n_steps and state.step % cfg.val_every_n_steps == 0)
                    or (epoch_ended and val_every_n_epochs and state.data.epoch % val_every_n_epochs == 0)):
                values = {f"val_{k}": v for k, v in evaluate(state, val_loader, step, runtime).items()}
                if cfg.val_metrics is not None:
                    values.update({f"val_{k}": float(v) for k, v in cfg.val_metrics(state.model).items()})
                fabric.log_dict(values, step=state.step)
                history.append({"step": state.step, "epoch": state.data.epoch, "elapsed_s": bar.elapsed(), **values})
            if cfg.checkpoint_dir and cfg.checkpoint_every_n_steps and state.step % cfg.checkpoint_every_n_steps == 0:
                _save(cfg, state, fabric)
                saved_at = state.step
            if _finished(state, cfg):
                break

    if cfg.checkpoint_dir and cfg.save_last and saved_at != state.step:
        _save(cfg, state, fabric)
    bar.close()
    for logger in fabric.loggers:
        logger.finalize("success")
    result = FitResult(state, history)
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
    return FitResult(moved, result.history)


@torch.no_grad()
def evaluate(state: TrainState, loader: Any, step: StepConfig,
             runtime: FabricRuntime | None = None) -> dict[str, float]:
    """Mean of :func:`eval_step`'s metrics over ``loader`` (then over ranks); one host sync at the end."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in loader:
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
