"""fit: the loss falls, logs and checkpoints are written, validation runs, and a resumed run is bitwise exact."""

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
                 log_every_n_steps=2, val_every_n_epochs=2, val_every_n_steps=5, accelerator="cpu",
                 loggers=("csv", "tensorboard"), log_dir=str(tmp_path / "logs"), progress_bar=True,
                 checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_n_steps=10)
    state, history = result.state, result.history
    assert state.step == 24 and state.data.epoch == 4 and state.data.batch == 0
    train_rows = [h for h in history if "loss" in h]
    val_rows = [h for h in history if "val_loss" in h]
    assert [h["step"] for h in train_rows] == list(range(2, 25, 2))
    assert {"lr", "grad_norm", "samples_per_s", "epoch", "elapsed_s"} <= set(train_rows[0])
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(history, history[1:]))
    assert [h["step"] for h in val_rows] == [5, 10, 12, 15, 20, 24]
    assert val_rows[-1]["val_loss"] < 0.5 * val_rows[0]["val_loss"]
    run_dir = tmp_path / "logs" / "nemofn" / "version_0"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"loss", "lr", "grad_norm", "val_loss", "step"} <= set(rows[0])
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["last.ckpt", "step=00000010.ckpt", "step=00000020.ckpt", "step=00000024.ckpt"]


def test_val_metrics_are_computed_from_the_model_state_and_logged(tmp_path):
    val = _data(32, seed=1)
    x, y = val.tensors
    seen_steps = []

    def val_mae(model_state):
        seen_steps.append(len(seen_steps))
        with torch.no_grad():
            pred, _ = NET.apply(model_state.params, model_state.buffers, x, train=False)
        return {"mae": (pred - y).abs().mean()}

    result = fit(_model(), _step(), _data(96), val, max_steps=12, batch_size=16, val_every_n_steps=6,
                 val_metrics=val_mae, loggers=("csv",), log_dir=str(tmp_path / "logs"), accelerator="cpu",
                 progress_bar=False)
    val_rows = [h for h in result.history if "val_loss" in h]
    assert [h["step"] for h in val_rows] == [6, 12] and len(seen_steps) == 2
    assert all(isinstance(h["val_mae"], float) for h in val_rows)
    assert val_rows[1]["val_mae"] < val_rows[0]["val_mae"]
    with open(tmp_path / "logs" / "nemofn" / "version_0" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("val_mae")]
    assert len(logged) == 2 and float(logged[1]["val_mae"]) == pytest.approx(val_rows[1]["val_mae"])


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
    with pytest.raises(NotImplementedError, match="sync_batchnorm=True is not supported.*broadcast_buffers"):
        FitConfig(max_steps=1, sync_batchnorm=True)
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
