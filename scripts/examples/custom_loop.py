"""A custom training loop: nemofn modules, an explicit TrainState, and Lightning Fabric over ``train_step``.

    python scripts/examples/custom_loop.py [--steps 300] [--precision bf16-mixed]

The model is a pure function of its parameter tree; ``train_step`` consumes the state and returns the next one.
"""

import argparse

import torch
import torch.nn.functional as F
from lightning_fabric import Fabric

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.nn.activation import Activation
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.sequential import Sequential
from nemofn.optim import adamw
from nemofn.optim.schedules import CosineAnnealing
from nemofn.train import StepConfig, eval_step, setup_fabric, train_step

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--precision", default="32-true")
args = parser.parse_args()

net = Sequential([Linear(8, 64), Activation("gelu"), Dropout(0.1), Linear(64, 1)])


def objective(params, buffers, batch, *, train, rng):
    """(loss, metrics, new_buffers) for a regression batch (x [B, 8], y [B, 1])."""
    x, y = batch
    pred, buffers = net.apply(params, buffers, x, train=train, rng=rng)
    return F.mse_loss(pred, y), {"mae": (pred - y).abs().mean()}, buffers


def synthetic_batch(g: torch.Generator, n: int = 64):
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, :4].sum(1, keepdim=True) - 0.5 * x[:, 4:].pow(2).sum(1, keepdim=True)).tanh()


fabric = Fabric(accelerator="cpu", devices=1, precision=args.precision)
fabric.launch()
cfg = StepConfig(objective, adamw(weight_decay=1e-4),
                 CosineAnnealing(3e-3, max_steps=args.steps, warmup_steps=20, min_lr=1e-5), clip_grad_norm=1.0)
model = ModelState.create(*net.init(RngKey(0)))
state, runtime = setup_fabric(fabric, model, cfg.optimizer, rng=RngKey(1))

data = torch.Generator().manual_seed(0)
val_batch = synthetic_batch(torch.Generator().manual_seed(123), n=512)
for _ in range(args.steps):
    state, metrics = train_step(state, fabric.to_device(synthetic_batch(data)), cfg, runtime=runtime)
    if state.step % 50 == 0 or state.step == 1:  # metrics are device tensors: read them only when printing
        val = eval_step(state, fabric.to_device(val_batch), cfg, runtime=runtime)
        fabric.print(f"step {state.step:4d}  loss {metrics['loss'].item():.4f}  val_loss {val['loss'].item():.4f}  "
                     f"lr {metrics['lr']:.2e}  grad_norm {metrics['grad_norm'].item():.3f}")
