"""Eager overhead of ``nemofn.train.train_step`` against a plain ``nn.Module`` + ``torch.optim`` loop, and
compiled-vs-eager step time, on the same tiny MLP (CPU).

    python scripts/bench/train_step_overhead.py [--steps 400] [--width 64] [--depth 4] [--batch 32] [--threads N]
                                                [--no-compile]

Every variant does the same work per step: forward, MSE loss, backward, clip to global norm 1.0, AdamW update
(foreach kernels), gradients reset to ``None``. The time of each step is measured separately, the variants taking
turns in chunks (so background load hits all alike); the table gives the median, minimum and 10th/90th percentiles
in microseconds after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState, TrainState
from nemofn.nn.activation import Activation
from nemofn.nn.linear import Linear
from nemofn.nn.sequential import Sequential
from nemofn.optim import adamw
from nemofn.train.step import StepConfig, SupervisedObjective, train_step


def build_nemofn(width: int, depth: int) -> Sequential:
    layers = []
    for _ in range(depth):
        layers += [Linear(width, width), Activation("gelu")]
    return Sequential(layers + [Linear(width, 1)])


def build_torch(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def time_interleaved(variants: list[tuple[str, Callable[[], None]]], steps: int, warmup: int,
                     rounds: int = 20) -> dict[str, list[float]]:
    """Per-step times (us) of each variant, run round-robin in ``rounds`` chunks so that background load on a
    shared machine hits every variant alike."""
    for _, step in variants:
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, step in variants:
            for _ in range(per_round):
                t0 = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - t0) * 1e6)
    return times


def nemofn_runner(net: Sequential, batch, compile: bool, fabric_runtime: bool) -> Callable[[], None]:
    cfg = StepConfig(SupervisedObjective(net, F.mse_loss), adamw(), 1e-3, clip_grad_norm=1.0, compile=compile)
    model = ModelState.create(*net.init(RngKey(0)))
    holder = {}
    if fabric_runtime:
        from lightning_fabric import Fabric

        from nemofn.train.adapter import setup_fabric

        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        fabric.launch()
        holder["state"], runtime = setup_fabric(fabric, model, cfg.optimizer, rng=1)
    else:
        holder["state"], runtime = TrainState.create(model, cfg.optimizer, rng=1), None

    def step() -> None:
        holder["state"], metrics = train_step(holder["state"], batch, cfg, runtime=runtime)

    return step


def torch_runner(module: nn.Module, batch, compile: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, foreach=True)
    forward = torch.compile(module, fullgraph=True) if compile else module
    x, y = batch

    def step() -> None:
        loss = F.mse_loss(forward(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, args.width, generator=g), torch.randn(args.batch, 1, generator=g))
    net = build_nemofn(args.width, args.depth)
    module = build_torch(args.width, args.depth)
    n_tensors = len(list(module.parameters()))
    variants: list[tuple[str, Callable[[], None]]] = [
        ("torch nn.Module + torch.optim.AdamW, eager", torch_runner(module, batch, compile=False)),
        ("nemofn train_step, eager (no Fabric)", nemofn_runner(net, batch, compile=False, fabric_runtime=False)),
        ("nemofn train_step, eager (Fabric runtime)", nemofn_runner(net, batch, compile=False, fabric_runtime=True)),
    ]
    if not args.no_compile:
        variants += [
            ("torch nn.Module compiled + torch.optim.AdamW", torch_runner(build_torch(args.width, args.depth), batch,
                                                                         compile=True)),
            ("nemofn train_step, compiled objective", nemofn_runner(net, batch, compile=True, fabric_runtime=False)),
        ]

    print(f"MLP width {args.width}, depth {args.depth} (+ head), {n_tensors} parameter tensors, batch {args.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} timed steps each")
    print(f"{'variant':48s} {'median us':>10s} {'min':>8s} {'p10':>8s} {'p90':>8s} {'median vs torch':>16s}")
    base = None
    for name, times in time_interleaved(variants, args.steps, args.warmup).items():
        median = statistics.median(times)
        deciles = statistics.quantiles(times, n=10)
        base = base or median
        print(f"{name:48s} {median:10.0f} {min(times):8.0f} {deciles[0]:8.0f} {deciles[-1]:8.0f} "
              f"{median / base:15.2f}x")


if __name__ == "__main__":
    main()
