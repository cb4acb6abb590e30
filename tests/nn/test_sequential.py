"""Sequential: NeMo/torch key names with index gaps, chaining, buffer updates, purity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.tree import flatten, tree_clone
from nemofn.nn.activation import Activation
from nemofn.nn.conv import Conv1d
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential


def _model():
    return Sequential((
        Conv1d(4, 8, 3, padding=1, bias=False),
        BatchNorm1d(8, eps=1e-3),
        Activation("relu"),
        Dropout(0.2),
        Conv1d(8, 6, 1),
    ))


def _torch_model():
    return nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8, eps=1e-3), nn.ReLU(), nn.Dropout(0.2),
        nn.Conv1d(8, 6, 1),
    )


def test_keys_have_index_gaps_like_torch():
    params, buffers = _model().init(RngKey(0))
    state = {**flatten(params), **flatten(buffers)}
    assert list(flatten(params)) == ["0.weight", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert list(flatten(buffers)) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert set(state) == set(_torch_model().state_dict())
    assert Sequential((Activation("relu"), Dropout(0.1))).init(0) == ({}, {})


def test_children_get_distinct_keys():
    params, _ = Sequential((Linear(4, 4), Linear(4, 4))).init(0)
    assert not torch.equal(params["0"]["weight"], params["1"]["weight"])
    again, _ = Sequential((Linear(4, 4), Linear(4, 4))).init(0)
    assert torch.equal(params["1"]["weight"], again["1"]["weight"])


@pytest.mark.parametrize("train", [False, True])
def test_matches_torch_sequential(train):
    model = _model()
    params, buffers = model.init(RngKey(1))
    ref = _torch_model()
    ref.load_state_dict({**flatten(params), **flatten(buffers)}, strict=True)
    ref.train(train)
    x = torch.randn(3, 4, 10)
    params_before, buffers_before = tree_clone(params), tree_clone(buffers)
    torch.manual_seed(11)
    y, new_buffers = model.apply(params, buffers, x, train=train, rng=RngKey(2))
    torch.manual_seed(11)
    torch.testing.assert_close(y, ref(x))
    for name, value in flatten(new_buffers).items():
        torch.testing.assert_close(value, ref.state_dict()[name])
    for before, now in ((params_before, params), (buffers_before, buffers)):
        for name, value in flatten(before).items():
            assert torch.equal(flatten(now)[name], value), f"{name} was mutated"
    assert set(flatten(new_buffers)) == set(flatten(buffers))
    if not train:
        assert new_buffers["1"] is buffers["1"]


def test_nested_sequential_keys():
    inner = Sequential((Linear(3, 3), Activation("gelu"), Linear(3, 2, bias=False)))
    outer = Sequential((Activation("identity"), inner))
    params, _ = outer.init(0)
    assert list(flatten(params)) == ["1.0.weight", "1.0.bias", "1.2.weight"]
    y, _ = outer.apply(params, {}, torch.randn(5, 3))
    assert y.shape == (5, 2)
    assert len(inner) == 3 and isinstance(inner[1], Activation)


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="layer 1 is a ReLU"):
        Sequential((Linear(2, 2), nn.ReLU()))
