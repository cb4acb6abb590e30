"""``compat.Trainer``: Lightning's keys (typos named, no-effect keys warned), the model's hooks driving the
functional loop, validation in one forward pass per batch, callbacks, fast_dev_run, validate / test / predict."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

import compat.lightning as pl
from compat import Trainer
from compat.collections.asr.models import EncDecCTCModel
from compat.core.config.schemas import ConfigError
from compat.utils.trainer_utils import resolve_trainer_cfg

_SPEC = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).with_name("tiny_asr.py"))
helpers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(helpers)

QUIET = helpers.QUIET


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.small_corpus(tmp_path_factory.mktemp("trainer"))


def test_unknown_keys_are_named_with_the_closest_key_and_types_are_checked():
    with pytest.raises(ConfigError, match=r"unknown key trainer.max_stepz; did you mean trainer.max_steps\?"):
        Trainer(max_stepz=3)
    with pytest.raises(ConfigError, match=r"trainer.log_every_n_steps: wrong type: got 'often'"):
        Trainer(log_every_n_steps="often")
    with pytest.raises(NotImplementedError, match="bf16-true"):
        Trainer(precision="bf16-true", **{k: v for k, v in QUIET.items() if k != "accelerator"})
    with pytest.raises(NotImplementedError, match="ddp_spawn"):
        Trainer(strategy="ddp_spawn")


def test_a_key_without_effect_is_warned_about_once_by_name():
    import compat.trainer.trainer as module

    module._WARNED.discard("use_distributed_sampler")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(use_distributed_sampler=False, **QUIET)
        Trainer(use_distributed_sampler=False, **QUIET)
    messages = [str(w.message) for w in caught if "use_distributed_sampler" in str(w.message)]
    assert len(messages) == 1 and "no effect" in messages[0]


def test_nemo_trainer_blocks_are_accepted():
    cfg = {"devices": -1, "num_nodes": 1, "max_epochs": 2, "max_steps": -1, "val_check_interval": 1.0,
           "accelerator": "auto", "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                               "gradient_as_bucket_view": True},
           "accumulate_grad_batches": 1, "gradient_clip_val": 0.0, "precision": 32, "log_every_n_steps": 10,
           "enable_progress_bar": True, "num_sanity_val_steps": 0, "check_val_every_n_epoch": 1,
           "sync_batchnorm": True, "enable_checkpointing": False, "logger": False, "benchmark": False}
    trainer = pl.Trainer(**resolve_trainer_cfg(cfg))
    assert trainer.world_size == 1 and trainer.max_epochs == 2 and trainer.gradient_clip_val is None
    assert trainer.sync_batchnorm  # a no-op on one device


class CountingModel(EncDecCTCModel, nemo_target="nemo.collections.asr.models.CountingModel"):
    """Counts forward passes, to show that validation needs one per batch for the loss and the WER."""

    forwards = 0

    def forward(self, *args, **kwargs):
        type(self).forwards += 1
        return super().forward(*args, **kwargs)


def test_fit_runs_the_models_hooks_with_one_validation_forward_per_batch(corpus):
    torch.manual_seed(0)
    trainer = Trainer(max_steps=6, val_check_interval=3, check_val_every_n_epoch=None, **QUIET)
    model = CountingModel(helpers.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    CountingModel.forwards = 0
    trainer.fit(model)
    val_batches = 2 * len(model.val_dataloader())  # two validations
    assert CountingModel.forwards == 6 + val_batches
    assert trainer.global_step == 6 and {"val_loss", "val_wer"} <= set(trainer.callback_metrics)
    assert {"train_loss", "learning_rate", "loss", "lr"} <= set(trainer.logged_metrics)
    assert "grad_norm" not in trainer.logged_metrics  # as Lightning: no norm pass without gradient_clip_val
    assert trainer.logged_metrics["learning_rate"] == pytest.approx(trainer.logged_metrics["lr"])
    assert model.training  # modes restored after validation


def test_fit_with_gradient_clipping_logs_the_gradient_norm(corpus):
    torch.manual_seed(0)
    trainer = Trainer(max_steps=2, gradient_clip_val=1.0, **QUIET)
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    trainer.fit(model)
    assert trainer.logged_metrics["grad_norm"] > 0


class FrozenByStep(EncDecCTCModel, nemo_target="nemo.collections.asr.models.FrozenByStep"):
    """Overrides training_step: the loss times zero, so SGD without weight decay changes nothing."""

    def training_step(self, batch, batch_nb=0):
        out = super().training_step(batch, batch_nb)
        return {"loss": out["loss"] * 0.0, "log": {"custom": torch.tensor(7.0)}}


def test_a_subclass_overriding_training_step_changes_training(corpus):
    trainer = Trainer(max_steps=2, **QUIET)
    model = FrozenByStep(helpers.tiny_cfg(corpus["train"], optim={"name": "sgd", "lr": 0.5}), trainer=trainer)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight")}
    trainer.fit(model)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert trainer.logged_metrics["custom"] == 7.0


def test_lightning_callbacks_receive_their_hooks(corpus):
    calls = []

    class Recorder(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            calls.append("train_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls.append(("batch_end", trainer.global_step, batch_idx))

        def on_validation_end(self, trainer, pl_module):
            calls.append(("val_end", trainer.global_step, round(trainer.callback_metrics["val_wer"], 6) >= 0))

        def on_train_end(self, trainer, pl_module):
            calls.append("train_end")

    trainer = Trainer(max_steps=3, callbacks=[Recorder()], **QUIET)
    trainer.fit(EncDecCTCModel(helpers.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer))
    assert calls == ["train_start", ("batch_end", 1, 0), ("batch_end", 2, 1), ("batch_end", 3, 2),
                     ("val_end", 3, True), "train_end"]


def test_fast_dev_run_takes_one_batch_of_each(corpus):
    trainer = Trainer(fast_dev_run=True, max_epochs=10, **QUIET)
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    trainer.fit(model)
    assert trainer.global_step == 1 and "val_wer" in trainer.callback_metrics


def test_validate_test_and_predict(corpus):
    trainer = Trainer(max_steps=1, **QUIET)
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"], corpus["val"], corpus["val"]), trainer=trainer)
    [val] = trainer.validate(model, verbose=False)
    [test] = trainer.test(model, verbose=False)
    assert set(val) == {"val_loss", "val_wer"} and set(test) == {"test_loss", "test_wer"}
    assert val["val_loss"] == pytest.approx(test["test_loss"])
    outputs = trainer.predict(model, model.val_dataloader())
    assert len(outputs) == len(model.val_dataloader()) and outputs[0][0].dim() == 3
    with pytest.raises(ValueError, match="no test data"):
        trainer.test(EncDecCTCModel(helpers.tiny_cfg(corpus["train"]), trainer=trainer))


def test_limit_train_batches_and_max_epochs(corpus):
    trainer = Trainer(max_epochs=2, limit_train_batches=0.5, **QUIET)  # 3 batches per epoch -> 1
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"]), trainer=trainer)
    trainer.fit(model)
    assert trainer.global_step == 2 and trainer.current_epoch == 2  # as Lightning: the epochs completed
