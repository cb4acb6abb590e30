"""Train a CTC model from a NeMo ``model:`` config on the functional loop, without compat (no Trainer, no .nemo).

The functional path for people who write their own loops or want no Lightning-shaped layer::

    cfg = OmegaConf.load("configs/asr/quartznet_demo_char.yaml")       # then fill the *_ds manifests
    model, result = train_ctc(cfg.model, FitConfig(max_steps=1000, val_check_interval=250,
                                                  check_val_every_n_epoch=None), clip_grad_norm=1.0)
    state = result.state.model                                          # ModelState with NeMo keys

The data come from ``train_ds`` / ``validation_ds`` (NeMo's dataset configs, duration-sorted batches with
``use_semi_sorted_batching``), the optimizer and schedule from ``optim`` (``max_steps`` from the fit config, or
NeMo's ``compute_max_steps`` from ``max_epochs``). Validation logs ``val_loss`` and ``val_wer`` (greedy, corpus WER
from summed counts, over all ranks) from one forward pass per batch. NeMo's scripts and ``trainer:`` blocks go
through ``compat.Trainer`` instead (``scripts/asr/speech_to_text_ctc.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from nemofn.asr.ctc import ctc_loss
from nemofn.asr.metrics import error_counts
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.train.data import limited_batches
from nemofn.train.logging import to_floats
from nemofn.train.loop import FitConfig, FitContext, FitResult, fit
from nemofn.train.step_config import StepConfig

__all__ = ["train_ctc", "CTCValidation"]


@attrs.frozen(eq=False)
class CTCValidation:
    """``FitConfig.validate`` for a CTC model: ``val_loss`` (mean over batches) and ``val_wer`` (summed word errors
    over summed reference words; characters with ``use_cer``) from one eval-mode forward per batch."""

    model: CTCModel
    use_cer: bool = False

    @torch.no_grad()
    def __call__(self, ctx: FitContext, loaders: list[Any], limit: int | float | None) -> dict[str, float]:
        unit, state = self.model, ctx.state.model
        network = unit.inference_network()
        loss_sum, batches, errors, words = 0.0, 0, 0, 0
        for loader in loaders:
            total = limited_batches(len(loader), limit, "limit_val_batches")
            for i, (signal, signal_len, tokens, tokens_len) in enumerate(loader):
                if i >= total:
                    break
                (log_probs, lengths), _ = network.apply(state.params, state.buffers, signal, signal_len, train=False)
                loss_sum += float(ctc_loss(log_probs, tokens, lengths, tokens_len, blank=network.blank_id,
                                           reduction=network.ctc_reduction, zero_infinity=True))
                batches += 1
                references = [unit.tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens.cpu(),
                                                                                       tokens_len.cpu())]
                e, w = error_counts(unit.decode(log_probs, lengths), references, use_cer=self.use_cer)
                errors, words = errors + e, words + w
        sums = {"loss": torch.tensor(loss_sum), "batches": torch.tensor(float(batches)),
                "errors": torch.tensor(float(errors)), "words": torch.tensor(float(words))}
        if ctx.fabric.world_size > 1:
            sums = ctx.fabric.all_reduce({k: v.to(ctx.fabric.device) for k, v in sums.items()}, reduce_op="sum")
        sums = to_floats(sums)
        return {"val_loss": sums["loss"] / max(sums["batches"], 1.0),
                "val_wer": sums["errors"] / max(sums["words"], 1.0)}


def train_ctc(model_cfg: Mapping[str, Any], config: FitConfig | None = None, *, model: CTCModel | None = None,
              state: Any = None, clip_grad_norm: float | None = None, compile: bool = False,
              **fit_options: Any) -> tuple[CTCModel, FitResult]:
    """Builds the model, its data and optimization from ``model_cfg`` and trains it with :func:`nemofn.train.fit`.

    Args:
        model_cfg: the ``model:`` block (``train_ds`` needed; ``validation_ds`` used when it has a manifest).
        config: the :class:`FitConfig` (or give its fields as keyword ``fit_options``); its ``batch_size`` and
            data options come from ``train_ds``.
        model, state: start from an existing model / :class:`~nemofn.core.state.ModelState` (fine-tuning).
        clip_grad_norm: gradient clipping (NeMo's ``trainer.gradient_clip_val``).
        compile: ``torch.compile`` the objective.
    """
    if config is not None and fit_options:
        raise TypeError(f"pass either config= or keyword options, not both (got options {sorted(fit_options)})")
    config = config if config is not None else FitConfig(**fit_options)
    model = model if model is not None else CTCModel.from_config(model_cfg)
    train_cfg = model.dataset_config(model_cfg["train_ds"])
    train_loader = model.dataloader(train_cfg, shuffle_seed=config.seed)
    val_cfg = model_cfg.get("validation_ds")
    val_loader = None
    if val_cfg is not None and val_cfg.get("manifest_filepath"):
        val_loader = model.dataloader(model.dataset_config(val_cfg))
    if config.max_steps is not None:
        max_steps = config.max_steps
    else:
        from nemofn.optim.config import compute_max_steps

        max_steps = compute_max_steps(config.max_epochs, config.accumulate_grad_batches,
                                      config.limit_train_batches, 1, len(train_loader.dataset),
                                      train_loader.batch_sampler.batch_size, train_loader.batch_sampler.drop_last)
    optimizer, schedule, _ = model.optimization(max_steps=max_steps)
    step = StepConfig(objective=model.network.objective, optimizer=optimizer, schedule=schedule,
                      clip_grad_norm=clip_grad_norm, compile=compile)
    config = attrs.evolve(config, validate=config.validate or CTCValidation(
        model, bool(model_cfg.get("use_cer", False))))
    start = state if state is not None else model.init_state(config.seed)
    return model, fit(start, step, train_loader, val_loader, config=config)
