"""Every layer's apply compiles with ``fullgraph=True`` (no graph breaks) and gives the eager output.

The default run uses the ``aot_eager`` backend (traces through dynamo and AOTAutograd, seconds in total);
the tests that also run inductor's C++ code generation are marked slow (about 25 s for the first one).
"""

from __future__ import annotations

import pytest
import torch

from nemofn.core.rng import RngKey
from nemofn.nn.activation import Activation
from nemofn.nn.conv import Conv1d, Conv2d, MaskedConv1d
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Embedding, Linear
from nemofn.nn.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from nemofn.nn.sequential import Sequential

KEY = RngKey(0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _sequential():
    return Sequential((Conv1d(4, 8, 3, padding=1), BatchNorm1d(8, eps=1e-3), Activation("relu"), Dropout(0.1),
                       Conv1d(8, 3, 1)))


# (name, module, example inputs)
CASES = {
    "conv1d": (Conv1d(4, 6, 5, stride=2, padding=2, groups=2), (torch.randn(2, 4, 16),)),
    "conv1d_same": (Conv1d(4, 4, 3, dilation=2, padding="same"), (torch.randn(2, 4, 16),)),
    "conv2d": (Conv2d(1, 4, 3, stride=2, padding=1), (torch.randn(2, 1, 12, 10),)),
    "masked_conv1d": (MaskedConv1d(4, 4, 5, padding=2, groups=4), (torch.randn(2, 4, 16), torch.tensor([16, 9]))),
    "masked_conv1d_strided_asym": (MaskedConv1d(4, 6, 5, stride=2, padding=(3, 1)),
                                   (torch.randn(2, 4, 16), torch.tensor([16, 9]))),
    "masked_conv1d_heads": (MaskedConv1d(4, 4, 3, padding=1, groups=4, heads=2),
                            (torch.randn(2, 4, 16), torch.tensor([16, 9]))),
    "batchnorm1d": (BatchNorm1d(4, eps=1e-3), (torch.randn(3, 4, 7),)),
    "batchnorm1d_cumulative": (BatchNorm1d(4, momentum=None), (torch.randn(3, 4, 7),)),
    "batchnorm2d": (BatchNorm2d(4), (torch.randn(3, 4, 5, 6),)),
    "layernorm": (LayerNorm(6), (torch.randn(2, 3, 6),)),
    "groupnorm": (GroupNorm(2, 4), (torch.randn(2, 4, 7),)),
    "dropout": (Dropout(0.3), (torch.randn(4, 9),)),
    "activation_swish": (Activation("swish"), (torch.randn(4, 9),)),
    "activation_hardtanh": (Activation("hardtanh", hardtanh_min=0.0, hardtanh_max=20.0), (torch.randn(4, 9) * 30,)),
    "linear": (Linear(6, 3), (torch.randn(2, 6),)),
    "embedding": (Embedding(10, 3), (torch.tensor([[1, 2], [9, 0]]),)),
    "sequential": (_sequential(), (torch.randn(2, 4, 11),)),
}


def _check_compiled_matches_eager(module, inputs, train, backend):
    params, buffers = module.init(KEY)

    def run(p, b, *xs):
        return module.apply(p, b, *xs, train=train, rng=KEY)

    compiled = torch.compile(run, fullgraph=True, backend=backend)
    torch.manual_seed(3)
    expected = run(params, buffers, *inputs)
    torch.manual_seed(3)
    got = compiled(params, buffers, *inputs)
    torch.testing.assert_close(got, expected)
    return params, buffers, got


# Modules whose apply differs between train and eval; the rest are compiled once (train=True).
MODE_DEPENDENT = ("batchnorm1d", "batchnorm1d_cumulative", "batchnorm2d", "dropout", "sequential")
PARAMS = [(name, True) for name in sorted(CASES)] + [(name, False) for name in MODE_DEPENDENT]


@pytest.mark.parametrize("name, train", PARAMS, ids=[f"{n}-{'train' if t else 'eval'}" for n, t in PARAMS])
def test_fullgraph_aot_eager(name, train):
    module, inputs = CASES[name]
    _check_compiled_matches_eager(module, inputs, train, "aot_eager")


def test_compiled_batchnorm_returns_new_buffers_without_mutating_inputs():
    module, inputs = CASES["batchnorm1d"]
    params, buffers, (_, new_buffers) = _check_compiled_matches_eager(module, inputs, True, "aot_eager")
    assert int(new_buffers["num_batches_tracked"]) == 1
    assert int(buffers["num_batches_tracked"]) == 0
    assert torch.equal(buffers["running_mean"], torch.zeros(4))
    assert torch.equal(buffers["running_var"], torch.ones(4))


def test_masked_conv1d_dynamic_time_axis_compiles_once():
    module = MaskedConv1d(4, 6, 11, stride=2, padding=5)
    params, buffers = module.init(KEY)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lambda p, x, n: module.apply(p, {}, x, n), fullgraph=True, dynamic=True,
                             backend=counter)
    for t in (20, 33, 47):
        x, lengths = torch.randn(2, 4, t), torch.tensor([t, t // 2])
        (y, out_lengths), _ = compiled(params, x, lengths)
        (y_ref, lengths_ref), _ = module.apply(params, {}, x, lengths)
        torch.testing.assert_close(y, y_ref)
        assert torch.equal(out_lengths, lengths_ref)
    assert counter.frame_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["masked_conv1d", "conv2d", "batchnorm1d", "sequential"])
def test_fullgraph_inductor(name):
    module, inputs = CASES[name]
    if name == "sequential":  # inductor draws dropout masks from its own RNG, so compare in eval mode
        _check_compiled_matches_eager(module, inputs, False, "inductor")
    else:
        _check_compiled_matches_eager(module, inputs, True, "inductor")

