"""Initialisers equal torch.nn.init value for value from the same generator state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.nn import init

SHAPES = [(6, 4), (8, 2, 5), (4, 3, 3, 3)]


def _gen():
    return RngKey(0).fold_in("init").generator()


def _torch(fn, shape, **kwargs):
    return fn(torch.empty(shape), generator=_gen(), **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_torch(shape):
    assert init.fan_in_and_fan_out(shape) == nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_helpers_equal_torch_nn_init(shape):
    pairs = [
        (init.xavier_uniform(shape, _gen(), gain=0.7), _torch(nn.init.xavier_uniform_, shape, gain=0.7)),
        (init.xavier_normal(shape, _gen()), _torch(nn.init.xavier_normal_, shape)),
        (init.kaiming_uniform(shape, _gen(), a=math.sqrt(5)), _torch(nn.init.kaiming_uniform_, shape, a=math.sqrt(5))),
        (init.kaiming_uniform(shape, _gen(), mode="fan_out", nonlinearity="relu"),
         _torch(nn.init.kaiming_uniform_, shape, mode="fan_out", nonlinearity="relu")),
        (init.kaiming_normal(shape, _gen(), nonlinearity="relu"),
         _torch(nn.init.kaiming_normal_, shape, nonlinearity="relu")),
        (init.uniform(shape, _gen(), -0.3, 0.2), _torch(nn.init.uniform_, shape, a=-0.3, b=0.2)),
        (init.normal(shape, _gen(), 1.0, 0.5), _torch(nn.init.normal_, shape, mean=1.0, std=0.5)),
    ]
    for ours, theirs in pairs:
        assert ours.shape == shape and ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_tds_bounds():
    w = init.tds_uniform((64, 16, 4), _gen())
    bound = 2.0 / math.sqrt(16 * 4)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    w = init.tds_normal((256, 64, 4), _gen())
    assert abs(w.std().item() - 2.0 / math.sqrt(64 * 4)) < 0.01


def test_init_by_mode_uses_nemo_arguments():
    shape = (8, 4, 3)
    torch.testing.assert_close(init.init_by_mode("kaiming_normal", shape, _gen()),
                               _torch(nn.init.kaiming_normal_, shape, nonlinearity="relu"), rtol=0, atol=0)
    torch.testing.assert_close(init.init_by_mode("xavier_uniform", shape, _gen()),
                               _torch(nn.init.xavier_uniform_, shape), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown init mode 'default'"):
        init.init_by_mode("default", shape, _gen())


def test_check_init_mode_lists_modes():
    init.check_init_mode("tds_uniform")
    with pytest.raises(ValueError, match="xavier_uniform"):
        init.check_init_mode("glorot")


def test_torch_default_weight_and_bias():
    out = init.torch_default_weight_and_bias((5, 3), _gen(), bias=True)
    torch.set_rng_state(_gen().get_state())
    ref = nn.Linear(3, 5)
    torch.testing.assert_close(out["weight"], ref.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out["bias"], ref.bias.detach(), rtol=0, atol=0)
    assert set(init.torch_default_weight_and_bias((5, 3), _gen(), bias=False)) == {"weight"}


def test_errors_and_empty_shapes():
    with pytest.raises(ValueError, match="at least 2 dims"):
        init.xavier_uniform((4,), _gen())
    with pytest.raises(ValueError, match="fan_in"):
        init.kaiming_uniform((4, 4), _gen(), mode="fan")
    assert init.xavier_uniform((0, 4), _gen()).shape == (0, 4)
    assert init.kaiming_normal((4, 0), _gen()).shape == (4, 0)
