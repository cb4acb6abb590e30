"""Functional SGD against ``torch.optim.SGD`` trajectories."""

from __future__ import annotations

import pytest
import torch

from nemofn.optim import sgd

STEPS = 50
CONFIGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, dampening=0.1, weight_decay=1e-2),
    dict(momentum=0.8, nesterov=True, weight_decay=5e-2),
    dict(weight_decay=1e-2, maximize=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_matches_torch_sgd(problem, cfg):
    ours = problem.run_ours(sgd(**cfg), 0.01, STEPS)
    ref = problem.run_torch(lambda ps: torch.optim.SGD(ps, lr=0.01, **cfg), 0.01, STEPS)
    problem.assert_close(ours, ref)
    # torch's own foreach path runs the very same kernels: bit-identical.
    ref_foreach = problem.run_torch(lambda ps: torch.optim.SGD(ps, lr=0.01, foreach=True, **cfg), 0.01, STEPS)
    problem.assert_equal(ours, ref_foreach)


def test_fused_matches_torch_fused(problem):
    cfg = dict(momentum=0.9, weight_decay=1e-2)
    ours = problem.run_ours(sgd(fused=True, **cfg), 0.01, 20)
    ref = problem.run_torch(lambda ps: torch.optim.SGD(ps, lr=0.01, fused=True, **cfg), 0.01, 20)
    problem.assert_equal(ours, ref)


def test_tensor_lr_equals_float_lr(problem):
    lr = problem.EXACT_LR
    opt = sgd(momentum=0.9, nesterov=True)
    problem.assert_equal(problem.run_ours(opt, lr, 10, lr_as_tensor=True), problem.run_ours(opt, lr, 10))


def test_state_is_torch_like(problem):
    params = problem.params()
    opt = sgd(momentum=0.9)
    state = opt.init(params)
    assert state["momentum_buffer"] == [None] * len(params)
    state = opt.update(params, problem.grads(params), state, lr=0.1)
    assert [b.shape for b in state["momentum_buffer"]] == [p.shape for p in params]
    assert sgd().init(params) == {"momentum_buffer": []}


def test_invalid_hparams():
    with pytest.raises(ValueError, match="nesterov"):
        sgd(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        sgd(momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        sgd(momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        sgd(weight_decay=-1.0)
