"""Activation names follow NeMo's activation_registry and equal the torch modules it builds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemofn.nn.activation import ACTIVATION_NAMES, NEMO_ACTIVATION_NAMES, Activation

# What NeMo's activation_registry[name]() builds (torch modules with default arguments), plus our extras.
TORCH_EQUIVALENT = {
    "identity": nn.Identity(),
    "hardtanh": nn.Hardtanh(),
    "relu": nn.ReLU(),
    "selu": nn.SELU(),
    "swish": nn.SiLU(),
    "silu": nn.SiLU(),
    "gelu": nn.GELU(),
    "tanh": nn.Tanh(),
    "sigmoid": nn.Sigmoid(),
    "leaky_relu": nn.LeakyReLU(),
}


def test_every_name_is_covered():
    assert set(ACTIVATION_NAMES) == set(TORCH_EQUIVALENT)
    assert set(NEMO_ACTIVATION_NAMES) <= set(ACTIVATION_NAMES)
    assert set(NEMO_ACTIVATION_NAMES) == {"identity", "hardtanh", "relu", "selu", "swish", "silu", "gelu"}


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENT))
def test_matches_torch_module(name):
    x = torch.randn(3, 4, 5) * 4
    module = Activation(name)
    assert module.init(0) == ({}, {})
    y, buffers = module.apply({}, {}, x, train=True)
    torch.testing.assert_close(y, TORCH_EQUIVALENT[name](x))
    assert buffers == {}


def test_jasper_default_hardtanh_0_20():
    x = torch.linspace(-30, 30, 61)
    y, _ = Activation("hardtanh", hardtanh_min=0.0, hardtanh_max=20.0).apply({}, {}, x)
    torch.testing.assert_close(y, nn.Hardtanh(0.0, 20.0)(x))
    assert y.min() == 0 and y.max() == 20


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown activation 'mish'.*relu.*swish"):
        Activation("mish")
