"""BatchNorm / LayerNorm / GroupNorm against torch.nn, including running statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemofn.core.tree import tree_clone
from nemofn.nn.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm


def _torch_bn(module, params, buffers):
    cls = nn.BatchNorm1d if isinstance(module, BatchNorm1d) else nn.BatchNorm2d
    ref = cls(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine)
    ref.load_state_dict({**params, **buffers}, strict=True)  # our names are torch's
    return ref


BN_CASES = [
    (BatchNorm1d(5, eps=1e-3, momentum=0.1), (4, 5, 9)),  # Jasper's BN
    (BatchNorm1d(5), (7, 5)),
    (BatchNorm1d(5, momentum=None), (4, 5, 9)),  # cumulative moving average
    (BatchNorm1d(5, momentum=0.3, affine=False), (3, 5, 6)),
    (BatchNorm2d(3, momentum=0.2), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("module, shape", BN_CASES)
def test_batchnorm_train_steps_and_eval_match_torch(module, shape):
    params, buffers = module.init(0)
    if module.affine:
        params = {"weight": torch.rand(module.num_features) + 0.5, "bias": torch.randn(module.num_features)}
    ref = _torch_bn(module, params, buffers).train()
    for step in range(3):
        x = torch.randn(*shape) * (step + 1) + step
        before = tree_clone(buffers)
        before_params = tree_clone(params)
        y, new_buffers = module.apply(params, buffers, x, train=True)
        torch.testing.assert_close(y, ref(x))
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(new_buffers[name], getattr(ref, name))
            assert torch.equal(buffers[name], before[name]), f"{name} was mutated by apply"
        assert new_buffers["num_batches_tracked"].dtype == torch.long
        assert new_buffers["num_batches_tracked"].shape == ()
        assert int(new_buffers["num_batches_tracked"]) == int(ref.num_batches_tracked) == step + 1
        assert int(buffers["num_batches_tracked"]) == step
        for name, value in before_params.items():
            assert torch.equal(params[name], value)
        buffers = new_buffers
    ref.eval()
    x = torch.randn(*shape)
    y, eval_buffers = module.apply(params, buffers, x, train=False)
    torch.testing.assert_close(y, ref(x))
    assert eval_buffers is buffers


def test_batchnorm_state_keys_and_values():
    params, buffers = BatchNorm1d(4).init(0)
    assert set(params) == {"weight", "bias"}
    assert set(buffers) == {"running_mean", "running_var", "num_batches_tracked"}
    assert torch.equal(params["weight"], torch.ones(4)) and torch.equal(params["bias"], torch.zeros(4))
    assert torch.equal(buffers["running_var"], torch.ones(4)) and torch.equal(buffers["running_mean"], torch.zeros(4))
    assert buffers["num_batches_tracked"].dtype == torch.long and buffers["num_batches_tracked"].shape == ()
    torch_keys = set(nn.BatchNorm1d(4).state_dict())
    assert torch_keys == set(params) | set(buffers)
    assert BatchNorm1d(4, affine=False).init(0)[0] == {}


def test_batchnorm_gradients_flow_to_params():
    module = BatchNorm1d(3)
    params, buffers = module.init(0)
    params = {k: v.requires_grad_() for k, v in params.items()}
    x = torch.randn(4, 3, 5, requires_grad=True)
    y, new_buffers = module.apply(params, buffers, x, train=True)
    (y * torch.randn_like(y)).sum().backward()
    assert params["weight"].grad is not None and x.grad is not None
    assert not new_buffers["running_mean"].requires_grad


def test_batchnorm_rejects_wrong_rank():
    with pytest.raises(ValueError, match="BatchNorm1d expects"):
        BatchNorm1d(3).apply(*BatchNorm1d(3).init(0), torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="BatchNorm2d expects"):
        BatchNorm2d(3).apply(*BatchNorm2d(3).init(0), torch.randn(2, 3, 4))


@pytest.mark.parametrize("shape, normalized", [((2, 7, 6), 6), ((2, 3, 4, 5), (4, 5))])
def test_layernorm_matches_torch(shape, normalized):
    module = LayerNorm(normalized, eps=1e-6)
    params, buffers = module.init(0)
    params = {k: torch.randn_like(v) for k, v in params.items()}
    ref = nn.LayerNorm(normalized, eps=1e-6)
    ref.load_state_dict(params, strict=True)
    x = torch.randn(*shape)
    y, _ = module.apply(params, buffers, x, train=True)
    torch.testing.assert_close(y, ref(x))


def test_layernorm_variants():
    assert set(LayerNorm(4, bias=False).init(0)[0]) == {"weight"}
    assert LayerNorm([4, 2], elementwise_affine=False).init(0)[0] == {}
    x = torch.randn(3, 4)
    y, _ = LayerNorm(4, elementwise_affine=False).apply({}, {}, x)
    torch.testing.assert_close(y, nn.LayerNorm(4, elementwise_affine=False)(x))


@pytest.mark.parametrize("groups, channels", [(1, 6), (3, 6), (6, 6)])  # NeMo's layer / group / instance
def test_groupnorm_matches_torch(groups, channels):
    module = GroupNorm(groups, channels)
    params, _ = module.init(0)
    params = {k: torch.randn_like(v) for k, v in params.items()}
    ref = nn.GroupNorm(groups, channels)
    ref.load_state_dict(params, strict=True)
    x = torch.randn(2, channels, 10)
    y, _ = module.apply(params, {}, x)
    torch.testing.assert_close(y, ref(x))


def test_groupnorm_validates_groups():
    with pytest.raises(ValueError, match="divisible by num_groups"):
        GroupNorm(4, 6)
    assert GroupNorm(2, 6, affine=False).init(0) == ({}, {})
