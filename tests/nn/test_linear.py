"""Linear / Embedding against torch.nn."""

from __future__ import annotations

import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.tree import tree_clone
from nemofn.nn.linear import Embedding, Linear


def test_linear_matches_torch_and_keys():
    module = Linear(6, 4)
    params, buffers = module.init(RngKey(0))
    ref = nn.Linear(6, 4)
    ref.load_state_dict(params, strict=True)
    x = torch.randn(2, 3, 6)
    before = tree_clone(params)
    y, new_buffers = module.apply(params, buffers, x, train=True)
    torch.testing.assert_close(y, ref(x))
    assert new_buffers is buffers
    assert all(torch.equal(params[k], v) for k, v in before.items())
    assert set(Linear(6, 4, bias=False).init(0)[0]) == {"weight"}


def test_linear_default_init_equals_torch_default():
    key = RngKey(4).fold_in("linear_q")
    params, _ = Linear(10, 7).init(key)
    torch.set_rng_state(key.generator().get_state())
    ref = nn.Linear(10, 7)
    torch.testing.assert_close(params["weight"], ref.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(params["bias"], ref.bias.detach(), rtol=0, atol=0)


def test_linear_init_is_deterministic_per_key():
    a, _ = Linear(5, 5).init(RngKey(1))
    b, _ = Linear(5, 5).init(1)
    c, _ = Linear(5, 5).init(RngKey(2))
    assert torch.equal(a["weight"], b["weight"])
    assert not torch.equal(a["weight"], c["weight"])


def test_embedding_matches_torch_and_padding_row():
    module = Embedding(10, 4, padding_idx=0)
    params, _ = module.init(0)
    assert torch.equal(params["weight"][0], torch.zeros(4))
    ref = nn.Embedding(10, 4, padding_idx=0)
    ref.load_state_dict(params, strict=True)
    ids = torch.tensor([[0, 3, 9], [1, 1, 0]])
    y, _ = module.apply(params, {}, ids)
    torch.testing.assert_close(y, ref(ids))
    weight = params["weight"].clone().requires_grad_()
    out, _ = module.apply({"weight": weight}, {}, ids)
    out.sum().backward()
    assert torch.equal(weight.grad[0], torch.zeros(4))  # padding_idx gets no gradient, as in torch
