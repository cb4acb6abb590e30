"""Shared fixtures for the optimizer tests: a small random problem with several tensors of different shapes."""

from __future__ import annotations

import pytest
import torch

SHAPES = [(4, 3), (7,), (2, 3, 5), (1,), (6, 1)]
EXACT_LR = 2.0**-7  # a base lr whose schedule values are exact in float32


class Problem:
    """A smooth non-quadratic loss over a list of tensors, so gradients depend on the current parameters."""

    EXACT_LR = EXACT_LR

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.init = [torch.randn(s, generator=g) for s in SHAPES]
        self.targets = [torch.randn(s, generator=g) for s in SHAPES]
        self.scales = [torch.rand(s, generator=g) + 0.5 for s in SHAPES]

    def params(self) -> list[torch.Tensor]:
        return [p.clone() for p in self.init]

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        return sum(((p - t) ** 2 * c).sum() + torch.sin(3 * p).sum() for p, t, c in
                   zip(params, self.targets, self.scales))

    def grads(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        leaves = [p.detach().requires_grad_(True) for p in params]
        return list(torch.autograd.grad(self.loss(leaves), leaves))

    @staticmethod
    def lr_at(step: int, base: float) -> float:
        """A varying lr, so that the tests also cover lr changes between steps. With a power-of-two ``base`` every
        value is exact in float32, so runs with a float32 tensor lr can be compared bit for bit."""
        return base * (1.0 + (step % 4) / 8.0)

    def run_torch(self, make_opt, base_lr: float, steps: int) -> list[list[torch.Tensor]]:
        """Trajectory of a ``torch.optim`` optimizer: params after each step."""
        params = [torch.nn.Parameter(p) for p in self.params()]
        opt = make_opt(params)
        out = []
        for k in range(steps):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(k, base_lr)
            opt.zero_grad()
            self.loss(params).backward()
            opt.step()
            out.append([p.detach().clone() for p in params])
        return out

    def run_ours(self, opt, base_lr: float, steps: int, lr_as_tensor: bool = False) -> list[list[torch.Tensor]]:
        """Trajectory of a functional optimizer: params after each step."""
        params = self.params()
        state = opt.init(params)
        out = []
        for k in range(steps):
            lr = self.lr_at(k, base_lr)
            state = opt.update(params, self.grads(params), state, lr=torch.tensor(lr) if lr_as_tensor else lr)
            out.append([p.clone() for p in params])
        return out

    @staticmethod
    def assert_close(ours, ref, tol: float = 1e-6) -> None:
        """Every tensor of every step within ``tol`` (relative and absolute)."""
        assert len(ours) == len(ref) > 0
        for k, (a, b) in enumerate(zip(ours, ref)):
            for i, (x, y) in enumerate(zip(a, b)):
                torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"step {k}, tensor {i}: {m}")

    @staticmethod
    def assert_equal(ours, ref) -> None:
        """Every tensor of every step bit-identical."""
        assert len(ours) == len(ref) > 0
        for k, (a, b) in enumerate(zip(ours, ref)):
            for i, (x, y) in enumerate(zip(a, b)):
                assert torch.equal(x, y), f"step {k}, tensor {i} differs (max {(x - y).abs().max().item():.3g})"


@pytest.fixture
def problem() -> Problem:
    return Problem(seed=0)
