"""The optimizer interface shared by every optimizer: state save/load, argument checks, compile-friendliness."""

from __future__ import annotations

import io

import pytest
import torch

from nemofn.optim import adam, adamw, novograd, sgd

OPTIMIZERS = {
    "sgd": lambda: sgd(momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd-nesterov": lambda: sgd(momentum=0.9, nesterov=True),
    "adam-amsgrad": lambda: adam(amsgrad=True, weight_decay=1e-3),
    "adamw": lambda: adamw(weight_decay=0.1),
    "adamw-fused": lambda: adamw(fused=True),
    "novograd": lambda: novograd(betas=(0.8, 0.5), weight_decay=1e-3),
    "novograd-luc-amsgrad": lambda: novograd(luc=True, amsgrad=True, grad_averaging=True),
}


def _train(problem, opt, params, state, start, stop):
    for k in range(start, stop):
        state = opt.update(params, problem.grads(params), state, lr=problem.lr_at(k, 1e-2))
    return state


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("resume_at", [0, 7])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_saved_state_resumes_bit_exactly(problem, name, resume_at):
    opt = OPTIMIZERS[name]()
    # Uninterrupted run.
    params = problem.params()
    state = _train(problem, opt, params, opt.init(params), 0, 15)
    # Interrupted run: save params + state, load into fresh objects, continue.
    params_b = problem.params()
    state_b = _train(problem, opt, params_b, opt.init(params_b), 0, resume_at)
    saved = _roundtrip({"params": params_b, "opt_state": state_b})
    del params_b, state_b
    params_c = saved["params"]
    _train(problem, opt, params_c, saved["opt_state"], resume_at, 15)
    problem.assert_equal([params_c], [params])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_returns_state_with_same_tensors(problem, name):
    opt = OPTIMIZERS[name]()
    params = problem.params()
    state = _train(problem, opt, params, opt.init(params), 0, 1)
    leaves = {k: list(v) if isinstance(v, list) else v for k, v in state.items()}
    new_state = opt.update(params, problem.grads(params), state, lr=1e-3)
    for key, value in leaves.items():
        if isinstance(value, list):
            assert all(a is b for a, b in zip(value, new_state[key])), key
        else:
            assert value is new_state[key], key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_params_may_be_leaf_parameters(problem, name):
    # update runs under no_grad, so in-place writes to requires_grad leaves are allowed.
    opt = OPTIMIZERS[name]()
    params = [torch.nn.Parameter(p) for p in problem.params()]
    before = [p.detach().clone() for p in params]
    opt.update(params, problem.grads(params), opt.init(params), lr=1e-2)
    assert all(not torch.equal(a, b) for a, b in zip(params, before))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mismatched_lengths_are_rejected(problem, name):
    opt = OPTIMIZERS[name]()
    params = problem.params()
    state = opt.init(params)
    with pytest.raises(ValueError, match="grads"):
        opt.update(params, problem.grads(params)[1:], state, lr=1e-2)


@pytest.mark.parametrize("name", ["sgd", "adamw", "novograd"])
def test_rejects_multi_element_lr(problem, name):
    opt = OPTIMIZERS[name]()
    params = problem.params()
    with pytest.raises(ValueError, match="one element"):
        opt.update(params, problem.grads(params), opt.init(params), lr=torch.ones(2))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgd", "adam-amsgrad", "adamw", "novograd", "novograd-luc-amsgrad"])
def test_update_compiles_without_graph_breaks(problem, name):
    opt = OPTIMIZERS[name]()
    params, params_ref = problem.params(), problem.params()
    state, state_ref = opt.init(params), opt.init(params_ref)
    step = torch.compile(lambda p, g, s, lr: opt.update(p, g, s, lr=lr), fullgraph=True)
    for k in range(4):
        lr = torch.tensor(problem.lr_at(k, 1e-2))
        step(params, problem.grads(params), state, lr)
        opt.update(params_ref, problem.grads(params_ref), state_ref, lr=lr)
    # Compiled kernels round differently (and Adam's compiled path computes its bias corrections in float32).
    problem.assert_close([params], [params_ref], tol=1e-4)
