"""masked_update: frozen parameters are skipped exactly as torch.optim skips parameters without a gradient."""

from __future__ import annotations

import torch

from nemofn.optim.adam import adamw
from nemofn.optim.masked import init_masked, masked_update, merge_subset_state, subset_state
from nemofn.optim.novograd import novograd


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, generator=g), torch.randn(4, generator=g), torch.randn(2, 2, generator=g)]


def test_adamw_with_a_frozen_parameter_equals_torch_optim_skipping_it():
    ours, theirs = _params(), [torch.nn.Parameter(p.clone()) for p in _params()]
    opt = adamw(weight_decay=0.1)
    state = opt.init(ours)
    ref = torch.optim.AdamW(theirs, lr=0.01, weight_decay=0.1)
    frozen = ours[1].clone()
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        state = masked_update(opt, ours, [grads[0], grads[2]], state, [0, 2], lr=0.01)
        theirs[0].grad, theirs[1].grad, theirs[2].grad = grads[0], None, grads[2]
        ref.step()
    assert torch.equal(ours[1], frozen)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
    assert [float(s) for s in state["step"]] == [3.0, 0.0, 3.0]


def test_stacked_state_entries_are_gathered_and_written_back():
    params = _params()
    opt = novograd(betas=(0.8, 0.5))
    state = opt.init(params)
    assert state["exp_avg_sq"].shape == (3,)
    grads = [torch.ones_like(p) for p in params]
    state = masked_update(opt, params, [grads[0], grads[2]], state, [0, 2], lr=0.1)
    assert state["exp_avg_sq"][1] == 0 and state["exp_avg_sq"][0] > 0 and state["exp_avg_sq"][2] > 0
    sub = subset_state(state, [2], 3)
    assert sub["exp_avg"][0] is state["exp_avg"][2] and sub["exp_avg_sq"].shape == (1,)
    sub["exp_avg_sq"].fill_(7.0)
    merge_subset_state(state, sub, [2], 3)
    assert state["exp_avg_sq"].tolist()[2] == 7.0


def test_all_trainable_is_the_plain_update():
    a, b = _params(), _params()
    opt = adamw()
    sa, sb = opt.init(a), opt.init(b)
    grads = [torch.ones_like(p) for p in a]
    masked_update(opt, a, grads, sa, None, lr=0.1)
    opt.update(b, grads, sb, lr=0.1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_frozen_parameters_get_placeholders_filled_on_their_first_update():
    params = _params()
    opt = adamw()
    state = init_masked(opt, params, [0, 2])
    assert state["exp_avg"][1] is None and state["step"][1] is None and state["exp_avg"][0] is not None
    grads = [torch.ones_like(p) for p in params]
    state = masked_update(opt, params, [grads[0], grads[2]], state, [0, 2], lr=0.1)
    assert state["exp_avg"][1] is None
    state = masked_update(opt, params, grads, state, None, lr=0.1)  # unfrozen: created as torch.optim would
    assert [float(s) for s in state["step"]] == [2.0, 1.0, 2.0] and state["exp_avg"][1].shape == (4,)
