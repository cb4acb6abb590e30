"""Network, data and rank worker of ``test_sync_batchnorm.py``.

A plain module (not a test file) so that the spawned ranks can import ``run_rank`` by name; the test puts this
folder on ``sys.path``, which the children inherit.

The network is ``Conv1d -> BatchNorm1d ([B, C, T]) -> tanh -> reshape -> BatchNorm2d ([B, C, H, W])``, so the
gradient of the convolution's parameters and of the input pass through both synced batch norms.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from nemofn.core.rng import RngKey
from nemofn.nn.conv import Conv1d
from nemofn.nn.norm import BatchNorm1d, BatchNorm2d
from nemofn.nn.sync_batchnorm import sync_batchnorm
from nemofn.train.loop import release_process_group

CONV = Conv1d(3, 4, 3, padding=1)
BN1 = BatchNorm1d(4, eps=1e-3, momentum=0.1)  # Jasper's batch norm
BN2 = BatchNorm2d(2, momentum=None)  # cumulative average: factor 1 / num_batches_tracked
STEPS = 2
# Samples per rank in each scenario: unequal halves (count weighting), then an empty shard on rank 0.
SCENARIOS = {"unequal": (3, 5), "empty_rank": (0, 8)}


def init_state() -> tuple[dict, dict]:
    """Parameters (non-trivial BN weights) and buffers of the network."""
    g = torch.Generator().manual_seed(11)
    conv_params, _ = CONV.init(RngKey(0))
    params, buffers = {"conv": conv_params}, {}
    for name, bn in (("bn1", BN1), ("bn2", BN2)):
        p, b = bn.init(RngKey(0))
        c = bn.num_features
        params[name] = {"weight": torch.rand(c, generator=g) + 0.5, "bias": torch.randn(c, generator=g)}
        buffers[name] = b
    return params, buffers


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``STEPS`` batches of ``(x [n, 3, 6], target [n, 2, 2, 6])``, with a channel offset so means are not 0."""
    g = torch.Generator().manual_seed(5)
    out = []
    for step in range(STEPS):
        x = torch.randn(n, 3, 6, generator=g) * (1.5 + step) + torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1)
        out.append((x, torch.randn(n, 2, 2, 6, generator=g)))
    return out


def forward(params: dict, buffers: dict, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """x ``[B, 3, 6]`` -> ``[B, 2, 2, 6]`` in training mode, and the new buffers."""
    h, _ = CONV.apply(params["conv"], {}, x, train=True)
    h, bn1 = BN1.apply(params["bn1"], buffers["bn1"], h, train=True)
    h = torch.tanh(h).reshape(x.shape[0], 2, 2, 6)
    h, bn2 = BN2.apply(params["bn2"], buffers["bn2"], h, train=True)
    return h, {"bn1": bn1, "bn2": bn2}


def per_sample_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: a per-sample loss, so the whole-batch loss is the mean of it."""
    return ((y - target) ** 2 * torch.linspace(0.5, 1.5, 6)).sum((1, 2, 3))


def _train_steps(rank: int, world_size: int, sizes: tuple[int, ...]) -> dict:
    """Runs ``STEPS`` DDP training forwards/backwards on this rank's slice under ``sync_batchnorm``.

    Loss scaling: rank ``r`` uses ``loss_r = W * sum_{i in r} l_i / N`` (``W`` ranks, ``N`` samples in all).
    DDP averages the parameter gradients, ``(1/W) * sum_r d loss_r / dp = d(sum_i l_i / N) / dp``: the gradient
    of the single-process mean loss. The input gradient is not averaged: the synced backward gives rank ``r``
    ``d(sum_r' loss_r') / dx_r = W * d(mean loss) / dx_r``, so the caller divides it by ``W``.
    """
    from nemofn.core.state import ModelState
    from nemofn.train.adapter import TreeModule

    params, buffers = init_state()
    model = ModelState.create(params)
    ddp = torch.nn.parallel.DistributedDataParallel(TreeModule(model))
    start, total = sum(sizes[:rank]), sum(sizes)
    result = {"y": [], "x_grad": [], "grads": [], "buffers": []}
    for x_full, target_full in batches(total):
        x = x_full[start:start + sizes[rank]].clone().requires_grad_()
        target = target_full[start:start + sizes[rank]]
        with sync_batchnorm() as synced:
            assert synced
            # The TreeModule holds the parameters only; the buffers of the previous step come in by closure.
            y, buffers = ddp(lambda p, _b, inp, b=buffers: forward(p, b, inp), x)
        loss = world_size * per_sample_loss(y, target).sum() / total
        loss.backward()
        result["y"].append(y.detach())
        result["x_grad"].append(x.grad / world_size)
        result["grads"].append({name: p.grad.clone() for name, p in ddp.module.named_parameters()})
        result["buffers"].append({f"{m}.{k}": v.clone() for m, b in buffers.items() for k, v in b.items()})
        for p in ddp.module.parameters():
            p.grad = None
    return result


def run_rank(rank: int, world_size: int, rendezvous: str, out_dir: str) -> None:
    """Entry point of one spawned rank: every scenario, results saved as ``out_dir/<scenario>_rank<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))  # a mismatched collective fails, not hangs
    try:
        for name, sizes in SCENARIOS.items():
            torch.save(_train_steps(rank, world_size, sizes), Path(out_dir) / f"{name}_rank{rank}.pt")
    finally:
        release_process_group()  # before the interpreter exits: see nemofn.train.loop.release_process_group
