"""DDP through Fabric with 2 CPU processes (gloo): gradients are averaged, and 2 ranks x batch B == 1 x batch 2B."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.nn.activation import Activation
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.optim.sgd import sgd
from nemofn.train.loop import fit
from nemofn.train.step import StepConfig, SupervisedObjective

NET = Sequential([Linear(3, 16), Activation("tanh"), Linear(16, 2)])  # no batch statistics


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, torch.stack([x.sum(1), x[:, 0] * x[:, 2]], dim=1))


def _step() -> StepConfig:
    return StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), 2e-2, clip_grad_norm=1.0)


def test_ddp_averages_gradients_and_broadcasts_rank0_buffers(monkeypatch):
    from lightning_fabric import Fabric

    # Spawned processes unpickle the worker by module name; pytest's importlib mode gives this file no importable
    # name, so the workers live in a helper module on a path the children inherit.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    worker = importlib.import_module("nemofn_ddp_worker").run_all
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn", precision="32-true")
    result = fabric.launch(worker)
    assert result["grad_error"] < 1e-6  # each rank's .grad is the mean of the ranks' own gradients
    # BatchNorm statistics: each training forward starts from rank 0's buffers (DDP broadcast_buffers), then every
    # rank updates its copy from its own batch.
    assert result["bn_from_rank0"] < 1e-6 and result["bn_ranks_apart"] > 1e-3


def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b():
    common = dict(max_steps=6, log_every_n_steps=1, accelerator="cpu", loggers=(), progress_bar=False, seed=3)
    data = _data(64)
    one = fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, batch_size=16, devices=1, **common)
    two = fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, batch_size=8, devices=2,
              strategy="ddp_spawn", **common)
    assert two.state.step == 6 and two.state.data == one.state.data
    for row_one, row_two in zip(one.history, two.history):  # rank 0's loss is its half; the lr must agree
        assert row_one["lr"] == row_two["lr"]
        assert abs(row_one["grad_norm"] - row_two["grad_norm"]) < 1e-5
    for name, a, b in zip(one.state.model.param_names, one.state.model.param_list, two.state.model.param_list):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name


BN_NET = Sequential([Linear(3, 16), BatchNorm1d(16), Activation("tanh"), Linear(16, 2)])


def test_sync_batchnorm_in_fit_makes_two_ranks_equal_one_process_with_batch_statistics():
    """StepConfig.sync_batchnorm through fit: BatchNorm statistics of the global batch, so 2 ranks x B equal 1 x 2B
    (parameters and running statistics); without it the ranks' statistics differ (rank 0's are kept)."""
    common = dict(max_steps=4, log_every_n_steps=1, accelerator="cpu", loggers=(), progress_bar=False, seed=3)
    data = _data(64)

    def step(sync):
        # SGD, not Adam: the bias before BatchNorm has a zero gradient in exact arithmetic, and Adam would blow its
        # rounding noise up to full-size steps
        return StepConfig(SupervisedObjective(BN_NET, F.mse_loss), sgd(), 5e-2, sync_batchnorm=sync)

    one = fit(ModelState.create(*BN_NET.init(RngKey(0))), step(False), data, batch_size=16, devices=1, **common)
    two = fit(ModelState.create(*BN_NET.init(RngKey(0))), step(True), data, batch_size=8, devices=2,
              strategy="ddp_spawn", **common)
    a, b = one.state.model, two.state.model
    for name, x, y in zip(a.param_names + a.buffer_names, a.param_list + a.buffer_list, b.param_list + b.buffer_list):
        assert torch.allclose(x.float(), y.float(), rtol=0, atol=1e-5), name
