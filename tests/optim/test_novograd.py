"""Functional Novograd against a plain per-tensor reference written from NeMo's algorithm."""

from __future__ import annotations

import pytest
import torch

from nemofn.optim import novograd

STEPS = 50


class ReferenceNovograd:
    """NeMo's ``Novograd.step`` spelled out one tensor at a time (no foreach, Python branches allowed)."""

    def __init__(self, params, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.0, grad_averaging=False,
                 amsgrad=False, luc=False, luc_trust=1e-3, luc_eps=1e-8):
        self.params = params
        self.b1, self.b2 = betas
        self.eps, self.wd, self.avg, self.ams = eps, weight_decay, grad_averaging, amsgrad
        self.luc, self.trust, self.luc_eps = luc, luc_trust, luc_eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros([]) for _ in params]
        self.vmax = [torch.zeros([]) for _ in params]

    def step(self, grads, lr):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g = g.clone()
            norm_sq = g.norm().pow(2)
            if self.v[i] == 0:
                self.v[i].copy_(norm_sq)
            else:
                self.v[i].mul_(self.b2).add_(norm_sq, alpha=1.0 - self.b2)
            if self.ams:
                torch.max(self.vmax[i], self.v[i], out=self.vmax[i])
                denom = self.vmax[i].sqrt() + self.eps
            else:
                denom = self.v[i].sqrt() + self.eps
            g.div_(denom)
            if self.wd != 0:
                g.add_(p, alpha=self.wd)
            if self.avg:
                g.mul_(1 - self.b1)
            self.m[i].mul_(self.b1).add_(g)
            if self.luc:
                factor = self.trust * torch.norm(p) / (torch.norm(self.m[i]) + self.luc_eps)
                factor = min(float(factor), lr)
                p.add_(self.m[i], alpha=-factor)
            else:
                p.add_(self.m[i], alpha=-lr)


def _run_reference(problem, steps, zero_first=0, **cfg):
    params = problem.params()
    ref = ReferenceNovograd(params, **cfg)
    out = []
    for k in range(steps):
        grads = problem.grads(params)
        if k < zero_first:
            grads[1] = torch.zeros_like(grads[1])
        ref.step(grads, problem.lr_at(k, 1e-2))
        out.append([p.clone() for p in params])
    return out


def _run_ours(problem, steps, zero_first=0, lr_as_tensor=False, **cfg):
    params = problem.params()
    opt = novograd(**cfg)
    state = opt.init(params)
    out = []
    for k in range(steps):
        grads = problem.grads(params)
        if k < zero_first:
            grads[1] = torch.zeros_like(grads[1])
        lr = problem.lr_at(k, 1e-2)
        state = opt.update(params, grads, state, lr=torch.tensor(lr, dtype=torch.float64) if lr_as_tensor else lr)
        out.append([p.clone() for p in params])
    return out


CONFIGS = [
    dict(),
    dict(betas=(0.8, 0.5), weight_decay=1e-3),
    dict(grad_averaging=True, weight_decay=1e-2),
    dict(amsgrad=True),
    dict(luc=True, luc_trust=1e-2),
    dict(luc=True, amsgrad=True, weight_decay=1e-3, grad_averaging=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_reference(problem, cfg):
    problem.assert_close(_run_ours(problem, STEPS, **cfg), _run_reference(problem, STEPS, **cfg))


def test_zero_gradients_restart_the_second_moment(problem):
    # While a tensor's gradients are all zero its v stays 0, and the first non-zero norm is copied in (not averaged).
    problem.assert_close(_run_ours(problem, 20, zero_first=3), _run_reference(problem, 20, zero_first=3))


def test_tensor_lr(problem):
    problem.assert_close(_run_ours(problem, 20, lr_as_tensor=True, luc=False), _run_reference(problem, 20))
    problem.assert_close(_run_ours(problem, 20, lr_as_tensor=True, luc=True), _run_reference(problem, 20, luc=True))


def test_does_not_write_grads(problem):
    params = problem.params()
    grads = problem.grads(params)
    before = [g.clone() for g in grads]
    opt = novograd(weight_decay=1e-3, grad_averaging=True)
    opt.update(params, grads, opt.init(params), lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(grads, before))


def test_state_layout(problem):
    params = problem.params()
    state = novograd(amsgrad=True).init(params)
    assert state["exp_avg_sq"].shape == (len(params),)
    assert state["max_exp_avg_sq"].shape == (len(params),)
    assert [m.shape for m in state["exp_avg"]] == [p.shape for p in params]
    assert "max_exp_avg_sq" not in novograd().init(params)


def test_defaults_are_nemos():
    h = novograd().hparams
    assert h["betas"] == (0.95, 0.98) and h["eps"] == 1e-8 and h["weight_decay"] == 0.0
    assert not h["grad_averaging"] and not h["amsgrad"] and not h["luc"]
    assert h["luc_trust"] == 1e-3 and h["luc_eps"] == 1e-8


@pytest.mark.parametrize("bad", [dict(eps=-1.0), dict(betas=(1.0, 0.5)), dict(betas=(0.9, -0.1)),
                                 dict(weight_decay=-1.0)])
def test_invalid_hparams(bad):
    with pytest.raises(ValueError):
        novograd(**bad)


def test_mismatched_lists_are_rejected(problem):
    params = problem.params()
    opt = novograd()
    state = opt.init(params)
    with pytest.raises(ValueError, match="grads"):
        opt.update(params, problem.grads(params)[:-1], state, lr=0.1)
    with pytest.raises(ValueError, match="different parameter list"):
        opt.update(params[:-1], problem.grads(params)[:-1], state, lr=0.1)
