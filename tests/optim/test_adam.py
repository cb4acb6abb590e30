"""Functional Adam / AdamW against ``torch.optim.Adam`` / ``torch.optim.AdamW`` trajectories."""

from __future__ import annotations

import pytest
import torch

from nemofn.optim import adam, adamw

STEPS = 50
ADAM_CONFIGS = [
    dict(),
    dict(weight_decay=1e-2),
    dict(amsgrad=True),
    dict(amsgrad=True, weight_decay=1e-2, betas=(0.8, 0.95), eps=1e-6),
    dict(maximize=True),
]
ADAMW_CONFIGS = [dict(), dict(weight_decay=0.1), dict(amsgrad=True, betas=(0.9, 0.98), weight_decay=1e-3)]


def _id(cfg):
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=_id)
def test_adam_matches_torch(problem, cfg):
    ours = problem.run_ours(adam(**cfg), 1e-2, STEPS)
    ref = problem.run_torch(lambda ps: torch.optim.Adam(ps, lr=1e-2, **cfg), 1e-2, STEPS)
    problem.assert_close(ours, ref)
    ref_foreach = problem.run_torch(lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True, **cfg), 1e-2, STEPS)
    problem.assert_equal(ours, ref_foreach)


@pytest.mark.parametrize("cfg", ADAMW_CONFIGS, ids=_id)
def test_adamw_matches_torch(problem, cfg):
    ours = problem.run_ours(adamw(**cfg), 1e-2, STEPS)
    ref = problem.run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, **cfg), 1e-2, STEPS)
    problem.assert_close(ours, ref)
    ref_foreach = problem.run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True, **cfg), 1e-2, STEPS)
    problem.assert_equal(ours, ref_foreach)


def test_adamw_default_weight_decay_is_torchs():
    assert adamw().hparams["weight_decay"] == 1e-2
    assert adam().hparams["weight_decay"] == 0.0


@pytest.mark.parametrize("make,torch_cls", [(adam, torch.optim.Adam), (adamw, torch.optim.AdamW)])
def test_fused_matches_torch_fused(problem, make, torch_cls):
    lr = problem.EXACT_LR
    ours = problem.run_ours(make(fused=True, amsgrad=True), lr, 20)
    ref = problem.run_torch(lambda ps: torch_cls(ps, lr=lr, fused=True, amsgrad=True), lr, 20)
    problem.assert_equal(ours, ref)
    # A tensor lr goes straight into the fused kernel.
    problem.assert_equal(problem.run_ours(make(fused=True, amsgrad=True), lr, 20, lr_as_tensor=True), ref)


def test_tensor_lr_equals_float_lr(problem):
    lr = problem.EXACT_LR
    opt = adamw(weight_decay=0.05)
    problem.assert_equal(problem.run_ours(opt, lr, 10, lr_as_tensor=True), problem.run_ours(opt, lr, 10))


def test_state_layout(problem):
    params = problem.params()
    state = adam(amsgrad=True).init(params)
    assert sorted(state) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert all(s.device.type == "cpu" and s.dim() == 0 for s in state["step"])
    assert len({id(s) for s in state["step"]}) == len(params), "step counters must be distinct tensors"
    state = adam().update(params, problem.grads(params), adam().init(params), lr=1e-3)
    assert all(float(s) == 1.0 for s in state["step"])


@pytest.mark.parametrize("bad", [dict(betas=(1.0, 0.9)), dict(betas=(0.9,)), dict(eps=-1.0), dict(weight_decay=-1)])
def test_invalid_hparams(bad):
    with pytest.raises(ValueError):
        adam(**bad)
