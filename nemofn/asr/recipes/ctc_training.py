"""Train a CTC model from a NeMo-layout experiment config (``model:`` + ``trainer:``) with the Fabric loop.

This is the functional path that ``scripts/asr/demo.py`` and the NeMo-style scripts sit on::

    model, result = train_ctc(cfg.model, cfg.trainer, log_dir="runs/demo")
    state = result.state.model                      # ModelState with NeMo keys
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nemofn.asr.models.ctc_model import CTCModel
from nemofn.train.loop import FitConfig, FitResult, fit
from nemofn.train.step import StepConfig

__all__ = ["fit_config_from_trainer", "train_ctc", "ValidationWER", "TRAINER_KEYS_IGNORED"]

#: Lightning ``trainer:`` keys that have no effect here (exp_manager owns logging/checkpoints in NeMo configs).
TRAINER_KEYS_IGNORED = frozenset({
    "enable_checkpointing", "logger", "benchmark", "num_sanity_val_steps", "enable_progress_bar",
    "enable_model_summary", "deterministic", "sync_batchnorm", "callbacks", "use_distributed_sampler",
})
_TRAINER_KEYS = frozenset({
    "devices", "num_nodes", "accelerator", "strategy", "precision", "max_epochs", "max_steps",
    "accumulate_grad_batches", "gradient_clip_val", "log_every_n_steps", "val_check_interval",
    "check_val_every_n_epoch",
}) | TRAINER_KEYS_IGNORED


def fit_config_from_trainer(trainer: Mapping[str, Any], **options: Any) -> tuple[FitConfig, float | None]:
    """Maps a Lightning-style ``trainer:`` block to a :class:`FitConfig` (plus the clip value).

    ``val_check_interval`` as an int means every N steps and as a float ``1.0`` every epoch, as in Lightning;
    ``max_steps: -1`` means "no step limit". Unknown keys raise, naming the key.
    """
    unknown = sorted(set(trainer) - _TRAINER_KEYS)
    if unknown:
        raise ValueError(f"trainer config has unsupported key(s) {unknown}; supported: {sorted(_TRAINER_KEYS)}")
    if trainer.get("sync_batchnorm"):
        raise ValueError("trainer.sync_batchnorm=true is not supported by nemofn's functional BatchNorm; remove it "
                         "(under DDP the running statistics are broadcast from rank 0)")
    max_steps = trainer.get("max_steps", -1)
    max_steps = None if max_steps is None or max_steps < 0 else int(max_steps)
    max_epochs = trainer.get("max_epochs")
    max_epochs = None if max_epochs is None or max_epochs < 0 else int(max_epochs)
    interval = trainer.get("val_check_interval", 1.0)
    val_steps = int(interval) if isinstance(interval, int) and interval > 0 else None
    if isinstance(interval, float) and interval != 1.0:
        raise ValueError(f"trainer.val_check_interval={interval}: only 1.0 (every epoch) or an int number of steps "
                         "is supported")
    val_epochs = None if val_steps else int(trainer.get("check_val_every_n_epoch", 1) or 1)
    precision = str(trainer.get("precision", "32-true"))
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(precision, precision)
    strategy = trainer.get("strategy", "auto")
    kwargs = dict(
        max_steps=max_steps, max_epochs=max_epochs,
        accumulate_grad_batches=int(trainer.get("accumulate_grad_batches", 1) or 1),
        val_every_n_steps=val_steps, val_every_n_epochs=val_epochs,
        log_every_n_steps=int(trainer.get("log_every_n_steps", 50) or 50),
        accelerator=str(trainer.get("accelerator", "auto")), devices=trainer.get("devices", 1),
        num_nodes=int(trainer.get("num_nodes", 1)), strategy=strategy if strategy != "ddp" or
        trainer.get("devices", 1) != 1 else "auto", precision=precision,
    )
    kwargs.update(options)
    clip = trainer.get("gradient_clip_val")
    return FitConfig(**kwargs), (float(clip) if clip else None)


class ValidationWER:
    """``FitConfig.val_metrics`` for a CTC model: ``{"wer": corpus WER of greedy transcripts}`` on a dataset
    (logged as ``val_wer``, the metric NeMo's CTC models log and ``exp_manager`` configs monitor)."""

    def __init__(self, model: CTCModel, dataset: Any, batch_size: int = 32) -> None:
        self.model, self.dataset, self.batch_size = model, dataset, batch_size

    def __call__(self, state: Any) -> dict[str, float]:
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                             collate_fn=self.dataset.collate_fn)
        wer, _, _ = self.model.evaluate_wer(state, loader)
        return {"wer": wer}


def train_ctc(model_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any], *, model: CTCModel | None = None,
              state: Any = None, compile: bool = False, **fit_options: Any) -> tuple[CTCModel, FitResult]:
    """Builds the model, its data and optimization from the config, and trains it with :func:`nemofn.train.fit`.

    Args:
        model_cfg: the ``model:`` block (``train_ds`` needed; ``validation_ds`` used when it has a manifest).
        trainer_cfg: the ``trainer:`` block (see :func:`fit_config_from_trainer`).
        model, state: start from an existing model / :class:`~nemofn.core.state.ModelState` (fine-tuning).
        compile: ``torch.compile`` the objective.
        fit_options: extra :class:`FitConfig` fields (``log_dir``, ``checkpoint_dir``, ``resume_from``, ``seed``...).
    """
    model = model if model is not None else CTCModel.from_config(model_cfg)
    fit_cfg, clip = fit_config_from_trainer(trainer_cfg, **fit_options)
    train_cfg = model.dataset_config(model_cfg["train_ds"])
    train_loader = model.dataloader(train_cfg, shuffle_seed=fit_cfg.seed)
    dataset = train_loader.dataset
    val_data = None
    val_cfg = model_cfg.get("validation_ds")
    if val_cfg is not None and val_cfg.get("manifest_filepath"):
        val_data = model.dataloader(model.dataset_config(val_cfg)).dataset
    val_batch_size = int((val_cfg or {}).get("batch_size", 32))
    if fit_cfg.max_steps is not None:
        max_steps = fit_cfg.max_steps
    else:
        from nemofn.optim.config import compute_max_steps

        max_steps = compute_max_steps(fit_cfg.max_epochs, fit_cfg.accumulate_grad_batches, 1.0,
                                      1, len(dataset), int(train_cfg.get("batch_size", 32)),
                                      bool(train_cfg.get("drop_last", False)))
    optimizer, schedule, _ = model.optimization(max_steps=max_steps)
    step = StepConfig(objective=model.network.objective, optimizer=optimizer, schedule=schedule,
                      clip_grad_norm=clip, compile=compile)
    fit_cfg = fit_cfg.__class__(**{**_fields(fit_cfg), "batch_size": int(train_cfg.get("batch_size", 32)),
                                   "shuffle": bool(train_cfg.get("shuffle", True)),
                                   "num_workers": int(train_cfg.get("num_workers", 0) or 0),
                                   "collate_fn": dataset.collate_fn,
                                   "batch_sampler": _batch_sampler(train_cfg, dataset),
                                   "val_batch_size": val_batch_size,
                                   "val_metrics": ValidationWER(model, val_data, val_batch_size) if val_data is not None else None})
    start = state if state is not None else model.init_state(fit_cfg.seed)
    return model, fit(start, step, dataset, val_data, config=fit_cfg)


def _batch_sampler(train_cfg: Mapping[str, Any], dataset: Any) -> Any:
    """NeMo's ``use_semi_sorted_batching`` as a resumable factory for :func:`fit` (``None``: shuffled batches)."""
    if not train_cfg.get("use_semi_sorted_batching", False):
        return None
    from functools import partial

    from nemofn.asr.data.batching import SemiSortedBatchSampler

    factor = train_cfg.get("randomization_factor")
    return partial(SemiSortedBatchSampler, dataset.durations, int(train_cfg.get("batch_size", 32)),
                   shuffle=bool(train_cfg.get("shuffle", True)), drop_last=bool(train_cfg.get("drop_last", False)),
                   randomization_factor=0.1 if factor is None else float(factor))


def _fields(cfg: FitConfig) -> dict[str, Any]:
    import attrs

    return attrs.asdict(cfg, recurse=False)
