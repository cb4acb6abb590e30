"""Dropout: identity outside training, explicit rng while training, torch's F.dropout numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemofn.core.rng import RngKey
from nemofn.nn.dropout import Dropout


def test_identity_when_not_training_or_p_zero():
    x = torch.randn(4, 5)
    y, buffers = Dropout(0.5).apply({}, {}, x)
    assert y is x and buffers == {}
    y, _ = Dropout(0.0).apply({}, {}, x, train=True)  # no rng needed: nothing random happens
    assert y is x
    assert Dropout(0.3).init(0) == ({}, {})


def test_training_requires_rng():
    with pytest.raises(ValueError, match=r"rng=RngKey\(\.\.\.\)"):
        Dropout(0.1).apply({}, {}, torch.randn(3), train=True)


def test_training_matches_f_dropout_from_the_seeded_global_generator():
    x = torch.randn(8, 16)
    key = RngKey(5).fold_in(3)
    key.seed_global()
    y, _ = Dropout(0.25).apply({}, {}, x, train=True, rng=key)
    key.seed_global()
    torch.testing.assert_close(y, F.dropout(x, 0.25, training=True), rtol=0, atol=0)
    key.seed_global()
    y_again, _ = Dropout(0.25).apply({}, {}, x, train=True, rng=key)
    torch.testing.assert_close(y, y_again, rtol=0, atol=0)


def test_drop_rate_and_scaling():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y, _ = Dropout(0.3).apply({}, {}, x, train=True, rng=RngKey(0))
    kept = y != 0
    assert abs(1.0 - kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y, _ = Dropout(1.0).apply({}, {}, x, train=True, rng=RngKey(0))
    assert torch.count_nonzero(y) == 0


def test_gradients_flow_through_kept_elements():
    x = torch.randn(50, requires_grad=True)
    torch.manual_seed(1)
    y, _ = Dropout(0.5).apply({}, {}, x, train=True, rng=RngKey(1))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_rejects_bad_p(p):
    with pytest.raises(ValueError, match="Dropout.p"):
        Dropout(p)
