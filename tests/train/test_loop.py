"""fit: the loss falls, logs and checkpoints are written, validation runs on Lightning's schedule, callbacks and a
custom validation function are called, batch limits hold, and a resumed run is bitwise exact."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.nn.activation import Activation
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.optim.schedules import CosineAnnealing
from nemofn.train.loop import FitConfig, fit

NET = Sequential([Linear(4, 16), BatchNorm1d(16), Activation("relu"), Dropout(0.2), Linear(16, 1)])


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.5 * x[:, :1] ** 2)


def _step(clip: float | None = 1.0):
    from nemofn.train.step import StepConfig, SupervisedObjective

    return StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(),
                      CosineAnnealing(3e-2, max_steps=40, warmup_steps=3, min_lr=1e-4), clip_grad_norm=clip)


def _model() -> ModelState:
    return ModelState.create(*NET.init(RngKey(0)))


QUIET = dict(accelerator="cpu", loggers=(), progress_bar=False)


def test_fit_trains_logs_validates_and_checkpoints(tmp_path):
    result = fit(_model(), _step(), _data(96), _data(32, seed=1), max_epochs=4, batch_size=16,
                 log_every_n_steps=2, val_check_interval=5, check_val_every_n_epoch=None, accelerator="cpu",
                 loggers=("csv", "tensorboard"), log_dir=str(tmp_path / "logs"), progress_bar=True,
                 checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_n_steps=10)
    state, history = result.state, result.history
    assert state.step == 24 and state.data.epoch == 4 and state.data.batch == 0
    train_rows = [h for h in history if "loss" in h]
    val_rows = [h for h in history if "val_loss" in h]
    assert [h["step"] for h in train_rows] == list(range(2, 25, 2))
    assert {"lr", "grad_norm", "samples_per_s", "epoch", "elapsed_s"} <= set(train_rows[0])
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(history, history[1:]))
    assert [h["step"] for h in val_rows] == [5, 10, 15, 20]
    assert val_rows[-1]["val_loss"] < 0.5 * val_rows[0]["val_loss"]
    run_dir = tmp_path / "logs" / "nemofn" / "version_0"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"loss", "lr", "grad_norm", "val_loss", "step"} <= set(rows[0])
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["last.ckpt", "step=00000010.ckpt", "step=00000020.ckpt", "step=00000024.ckpt"]


def test_validation_schedule_follows_lightning():
    common = dict(batch_size=16, log_every_n_steps=100, **QUIET)  # 6 batches per epoch
    def val_steps(**kw):
        result = fit(_model(), _step(), _data(96), _data(16, seed=1), max_epochs=4, **common, **kw)
        return [h["step"] for h in result.history if "val_loss" in h]

    assert val_steps() == [6, 12, 18, 24]                                           # 1.0: every epoch end
    assert val_steps(check_val_every_n_epoch=2) == [12, 24]
    assert val_steps(val_check_interval=0.5) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert val_steps(val_check_interval=4) == [4, 10, 16, 22]                        # counted within each epoch
    assert val_steps(val_check_interval=4, check_val_every_n_epoch=None) == [4, 8, 12, 16, 20, 24]
    assert val_steps(val_check_interval=4, limit_val_batches=0) == []
    with pytest.raises(ValueError, match=r"val_check_interval \(7\) .* check_val_every_n_epoch=None"):
        val_steps(val_check_interval=7)


def test_callbacks_see_every_hook_and_can_stop_training(tmp_path):
    calls = []

    class Recorder:
        def on_fit_start(self, ctx):
            calls.append(("fit_start", ctx.global_step, ctx.batches_per_epoch, ctx.total_steps))

        def on_train_epoch_start(self, ctx):
            calls.append(("epoch_start", ctx.epoch))

        def on_train_batch_start(self, ctx, batch, batch_idx):
            calls.append(("batch_start", batch_idx, tuple(batch[0].shape)))

        def on_train_batch_end(self, ctx, metrics, batch_idx):
            calls.append(("batch_end", ctx.global_step, "loss" in metrics))
            if ctx.global_step == 7:
                ctx.should_stop = True

        def on_validation_end(self, ctx, values):
            calls.append(("val_end", ctx.global_step, sorted(values)))

        def on_train_epoch_end(self, ctx):
            calls.append(("epoch_end", ctx.epoch))

        def on_fit_end(self, ctx):
            calls.append(("fit_end", ctx.global_step))

    result = fit(_model(), _step(), _data(64), _data(16, seed=1), max_steps=20, batch_size=16,
                 callbacks=[Recorder()], **QUIET)
    assert result.state.step == 7
    assert calls[0] == ("fit_start", 0, 4, 20)
    assert calls[1] == ("epoch_start", 0) and calls[2] == ("batch_start", 0, (16, 4))
    assert ("val_end", 4, ["val_loss"]) in calls and ("epoch_end", 0) in calls and ("epoch_start", 1) in calls
    assert [c[1] for c in calls if c[0] == "batch_start"] == [0, 1, 2, 3, 0, 1, 2]
    assert calls[-1] == ("fit_end", 7)


def test_a_custom_validation_function_gets_the_live_state_and_its_names_are_logged(tmp_path):
    val = _data(32, seed=1)
    x, y = val.tensors
    seen = []

    def validate(ctx, loaders, limit):
        seen.append((ctx.global_step, len(loaders), limit, ctx.sanity_checking))
        total, count = 0.0, 0
        for batch in loaders[0]:
            with torch.no_grad():
                pred, _ = NET.apply(ctx.state.model.params, ctx.state.model.buffers, batch[0], train=False)
            total += float((pred - batch[1]).abs().sum())
            count += len(batch[0])
        return {"val_mae": total / count}

    result = fit(_model(), _step(), _data(96), val, max_steps=12, batch_size=16, val_check_interval=6,
                 validate=validate, num_sanity_val_steps=2, limit_val_batches=3, loggers=("csv",),
                 log_dir=str(tmp_path / "logs"), accelerator="cpu", progress_bar=False)
    assert seen == [(0, 1, 2, True), (6, 1, 3, False), (12, 1, 3, False)]
    val_rows = [h for h in result.history if "val_mae" in h]
    assert [h["step"] for h in val_rows] == [6, 12] and val_rows[1]["val_mae"] < val_rows[0]["val_mae"]
    with open(tmp_path / "logs" / "nemofn" / "version_0" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("val_mae")]
    assert len(logged) == 2 and float(logged[1]["val_mae"]) == pytest.approx(val_rows[1]["val_mae"])


def test_limit_train_batches_shortens_every_epoch():
    result = fit(_model(), _step(), _data(96), max_epochs=3, batch_size=16, limit_train_batches=2,
                 log_every_n_steps=1, **QUIET)
    assert result.state.step == 6 and result.state.data.epoch == 3
    assert [h["epoch"] for h in result.history] == [0, 1, 1, 2, 2, 3]


def test_frozen_parameters_are_not_updated_and_keep_their_optimizer_state():
    model = _model()
    first = model.params["0"]["weight"]
    first.requires_grad_(False)
    before = first.detach().clone()
    result = fit(model, _step(), _data(64), max_steps=4, batch_size=16, **QUIET)
    state = result.state
    assert torch.equal(state.model.params["0"]["weight"], before)
    assert not torch.equal(state.model.params["4"]["weight"], _model().params["4"]["weight"])  # the rest trains
    index = state.model.param_names.index("0.weight")
    assert state.opt_state["step"][index] is None and state.opt_state["exp_avg"][index] is None  # no memory spent
    assert float(state.opt_state["step"][index + 1]) == 4.0


def test_resumed_run_is_bitwise_equal_to_the_uninterrupted_run(tmp_path):
    """CPU fp32 with dropout, BatchNorm statistics, shuffling, accumulation, clipping and a warmup-cosine lr."""
    common = dict(batch_size=8, accumulate_grad_batches=2, log_every_n_steps=1, **QUIET)
    data = _data(70)  # 9 batches per epoch: the last accumulation group of each epoch is a single batch
    full = fit(_model(), _step(), data, max_steps=13, **common).state

    ckpt = str(tmp_path / "ckpt")
    first = fit(_model(), _step(), data, max_steps=7, checkpoint_dir=ckpt, **common)
    assert first.state.data.epoch == 1 and first.state.data.batch == 4  # stopped mid-epoch
    resumed = fit(_model(), _step(), data, max_steps=13, checkpoint_dir=ckpt, resume_from="last", **common)
    assert [h["step"] for h in resumed.history] == list(range(8, 14))

    a, b = full.model, resumed.state.model
    assert resumed.state.step == full.step and resumed.state.data == full.data
    for name, x, y in zip(a.param_names + a.buffer_names, a.param_list + a.buffer_list, b.param_list + b.buffer_list):
        assert torch.equal(x, y), name
    for key in full.opt_state:
        assert all(torch.equal(x, y) for x, y in zip(full.opt_state[key], resumed.state.opt_state[key])), key


def test_fit_accepts_a_train_state_and_stops_at_max_steps_mid_epoch():
    first = fit(_model(), _step(), _data(64), max_steps=3, batch_size=8, **QUIET).state
    more = fit(first, _step(), _data(64), max_steps=5, batch_size=8, **QUIET).state
    assert first.consumed and more.step == 5 and more.data.batch == 5 and more.data.epoch == 0


def test_fit_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        FitConfig()
    with pytest.raises(ValueError, match="'16-mixed' needs a CUDA GPU.*'bf16-mixed'"):
        FitConfig(max_steps=1, precision="16-mixed", accelerator="cpu")
    with pytest.raises(ValueError, match="precision 'bf16-true' is not supported"):
        FitConfig(max_steps=1, precision="bf16-true")
    with pytest.raises(ValueError, match="val_check_interval=2.5"):
        FitConfig(max_steps=1, val_check_interval=2.5)
    with pytest.raises(ValueError, match="limit_train_batches"):
        FitConfig(max_steps=1, limit_train_batches=-2)
    with pytest.raises(ValueError, match="log_every_n_steps must be a positive int"):
        FitConfig(max_steps=1, log_every_n_steps=0)
    with pytest.raises(TypeError, match="either config= or keyword options"):
        fit(_model(), _step(), _data(8), config=FitConfig(max_steps=1), batch_size=2)
    with pytest.raises(ValueError, match="unknown logger 'wandb'"):
        fit(_model(), _step(), _data(8), max_steps=1, batch_size=2, loggers=("wandb",))


def test_importing_nemofn_train_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, nemofn, nemofn.train; print(sorted(m for m in sys.modules if m.startswith('lightning')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
