"""Run by ``test_fsdp2.py``: ``fit(strategy="fsdp2", devices=2)`` (Fabric re-launches this script for rank 1).

Usage: ``python nemofn_fsdp2_script.py OUT.pt``; rank 0 writes the final full parameters to ``OUT.pt``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.nn.activation import Activation
from nemofn.nn.linear import Linear
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.train.loop import fit
from nemofn.train.step import StepConfig, SupervisedObjective

NET = Sequential([Linear(3, 16), Activation("tanh"), Linear(16, 2)])


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, torch.stack([x.sum(1), x[:, 0] * x[:, 2]], dim=1))


def step() -> StepConfig:
    return StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), 2e-2, clip_grad_norm=1.0)


COMMON = dict(max_steps=6, log_every_n_steps=1, accelerator="cpu", loggers=(), progress_bar=False, seed=3)

if __name__ == "__main__":
    result = fit(ModelState.create(*NET.init(RngKey(0))), step(), data(), batch_size=8, devices=2, strategy="fsdp2",
                 **COMMON)
    full = [p.full_tensor().detach() for p in result.state.model.param_list]  # a collective: every rank calls it
    if torch.distributed.get_rank() == 0:
        torch.save({"params": full, "history": result.history}, sys.argv[1])
