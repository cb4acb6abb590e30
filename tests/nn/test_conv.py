"""Conv1d / Conv2d / MaskedConv1d against torch.nn and a reference written from NeMo's MaskedConv1d."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.tree import flatten, tree_clone
from nemofn.nn.conv import Conv1d, Conv2d, MaskedConv1d, conv_out_length, get_same_padding


def _torch_conv(module: Conv1d | Conv2d, params: dict) -> nn.Module:
    cls = nn.Conv1d if isinstance(module, Conv1d) else nn.Conv2d
    ref = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
              padding=module.padding, dilation=module.dilation, groups=module.groups, bias=module.bias)
    ref.load_state_dict(params, strict=True)  # key names and shapes must be torch's
    return ref


CONV1D_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2),
    dict(in_channels=6, out_channels=6, kernel_size=7, padding=3, groups=6, bias=False),  # depthwise
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same"),  # even kernel: extra pad on the right
    dict(in_channels=4, out_channels=4, kernel_size=3, dilation=3, padding="same"),
    dict(in_channels=4, out_channels=5, kernel_size=3, padding="valid"),
    dict(in_channels=4, out_channels=5, kernel_size=1, padding=(1,)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kwargs", CONV1D_CASES)
def test_conv1d_matches_torch(kwargs):
    conv = Conv1d(**kwargs)
    params, buffers = conv.init(RngKey(0))
    assert buffers == {}
    x = torch.randn(3, kwargs["in_channels"], 17)
    y, new_buffers = conv.apply(params, buffers, x)
    assert new_buffers is buffers
    torch.testing.assert_close(y, _torch_conv(conv, params)(x))


CONV2D_CASES = [
    dict(in_channels=1, out_channels=4, kernel_size=3, stride=2, padding=1),  # Conformer's first subsampling conv
    dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1, groups=4),  # dw_striding
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(in_channels=4, out_channels=4, kernel_size=(2, 3), padding="same", bias=False),
]


@pytest.mark.parametrize("kwargs", CONV2D_CASES)
def test_conv2d_matches_torch(kwargs):
    conv = Conv2d(**kwargs)
    params, _ = conv.init(RngKey(1))
    x = torch.randn(2, kwargs["in_channels"], 11, 9)
    y, _ = conv.apply(params, {}, x)
    torch.testing.assert_close(y, _torch_conv(conv, params)(x))


def test_param_shapes_and_keys():
    assert {k: tuple(v.shape) for k, v in Conv1d(8, 16, 5, groups=4).init(0)[0].items()} == {
        "weight": (16, 2, 5), "bias": (16,)}
    assert {k: tuple(v.shape) for k, v in Conv2d(3, 8, (3, 5), bias=False).init(0)[0].items()} == {
        "weight": (8, 3, 3, 5)}
    params, buffers = MaskedConv1d(8, 16, 5).init(0)
    assert {k: tuple(v.shape) for k, v in flatten(params).items()} == {"conv.weight": (16, 8, 5)}
    assert buffers == {}
    params, _ = MaskedConv1d(8, 8, 5, groups=8, bias=True).init(0)
    assert {k: tuple(v.shape) for k, v in flatten(params).items()} == {"conv.weight": (8, 1, 5), "conv.bias": (8,)}


@pytest.mark.parametrize("cls, shape", [(Conv1d, (6, 4, 3)), (Conv2d, (6, 2, 3, 3))])
def test_default_init_equals_torch_default(cls, shape):
    """Starting torch's global generator where our key's generator starts, nn.ConvNd's own
    reset_parameters draws exactly our weight and bias (same formulas, same draw order)."""
    key = RngKey(7).fold_in("conv")
    module = cls(shape[1] * 2, shape[0], shape[2], groups=2)
    params, _ = module.init(key)
    torch.set_rng_state(key.generator().get_state())
    ref = (nn.Conv1d if cls is Conv1d else nn.Conv2d)(shape[1] * 2, shape[0], shape[2], groups=2)
    torch.testing.assert_close(params["weight"], ref.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(params["bias"], ref.bias.detach(), rtol=0, atol=0)


NEMO_MODES = {
    "xavier_uniform": lambda w: nn.init.xavier_uniform_(w, gain=1.0),
    "xavier_normal": lambda w: nn.init.xavier_normal_(w, gain=1.0),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


@pytest.mark.parametrize("mode", sorted(NEMO_MODES))
def test_nemo_init_modes_match_init_weights(mode):
    """NeMo builds nn.Conv1d (default init) and then init_weights redraws only the weight: replay that on
    torch's global generator and compare value for value; the bias keeps torch's default."""
    key = RngKey(3)
    params, _ = Conv1d(4, 6, 5, init=mode).init(key)
    torch.set_rng_state(key.generator().get_state())
    ref = nn.Conv1d(4, 6, 5)
    with torch.no_grad():
        NEMO_MODES[mode](ref.weight)
    torch.testing.assert_close(params["weight"], ref.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(params["bias"], ref.bias.detach(), rtol=0, atol=0)
    default_params, _ = Conv1d(4, 6, 5).init(key)
    torch.testing.assert_close(params["bias"], default_params["bias"], rtol=0, atol=0)
    assert not torch.equal(params["weight"], default_params["weight"])


def test_masked_conv_init_mode_reaches_inner_weight():
    params, _ = MaskedConv1d(64, 64, 1, init="xavier_uniform").init(0)
    bound = math.sqrt(6.0 / (64 + 64))
    w = params["conv"]["weight"]
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound  # the default init's bound would be 1/8 = 0.125 < 0.9 * 0.2165


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="init mode"):
        Conv1d(4, 4, 3, init="orthogonal")
    with pytest.raises(ValueError, match="stride 1"):
        Conv1d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv1d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d(4, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="depthwise"):
        MaskedConv1d(8, 8, 3, heads=2)
    with pytest.raises(ValueError, match="padding"):
        MaskedConv1d(8, 8, 3, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="stride OR dilation"):
        get_same_padding(3, 2, 2)
    assert get_same_padding(33, 1, 1) == 16 and get_same_padding(87, 1, 2) == 86


def _nemo_masked_conv_reference(x, lengths, weight, bias, *, kernel_size, stride=1, padding=0, dilation=1,
                                groups=1, heads=-1, use_mask=True, out_channels):
    """NeMo's MaskedConv1d.forward, re-written with plain torch.nn pieces."""
    if use_mask:
        mask = torch.arange(x.shape[2]).unsqueeze(0) < lengths.unsqueeze(1)
        x = x * mask.unsqueeze(1)
    asym = isinstance(padding, tuple)
    conv_padding = 0 if asym else padding
    conv_in, conv_out, conv_groups = (heads, heads, heads) if heads != -1 else (x.shape[1], out_channels, groups)
    conv = nn.Conv1d(conv_in, conv_out, kernel_size, stride=stride, padding=conv_padding, dilation=dilation,
                     groups=conv_groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    same = stride == 1 and 2 * conv_padding == dilation * (kernel_size - 1)
    same_asym = asym and stride == 1 and sum(padding) == dilation * (kernel_size - 1)
    if same or same_asym:
        out_lengths = lengths
    else:
        total = sum(padding) if asym else 2 * conv_padding
        out_lengths = torch.div(lengths + total - dilation * (kernel_size - 1) - 1, stride, rounding_mode="trunc") + 1
    if asym:
        x = nn.ConstantPad1d(padding, 0.0)(x)
    shape = x.shape
    if heads != -1:
        x = x.view(-1, heads, shape[-1])
    out = conv(x)
    if heads != -1:
        out = out.view(shape[0], out_channels, -1)
    return out, out_lengths


MASKED_CASES = [
    dict(in_channels=6, out_channels=6, kernel_size=11, padding=5, groups=6),  # QuartzNet depthwise, same pad
    dict(in_channels=6, out_channels=8, kernel_size=1),  # pointwise
    dict(in_channels=6, out_channels=8, kernel_size=11, stride=2, padding=5),  # strided (C1 / Citrinet)
    dict(in_channels=6, out_channels=6, kernel_size=7, dilation=2, padding=6, groups=6, bias=True),
    dict(in_channels=6, out_channels=6, kernel_size=5, padding=(4, 0), groups=6),  # causal, asymmetric
    dict(in_channels=6, out_channels=8, kernel_size=5, stride=3, padding=(3, 1)),  # asymmetric, strided
    dict(in_channels=6, out_channels=8, kernel_size=3, use_mask=False),
    dict(in_channels=6, out_channels=6, kernel_size=5, padding=2, groups=6, heads=3),
    dict(in_channels=6, out_channels=6, kernel_size=4, stride=2, groups=6, heads=2),
]


@pytest.mark.parametrize("kwargs", MASKED_CASES)
def test_masked_conv1d_matches_nemo_reference(kwargs):
    module = MaskedConv1d(**kwargs)
    params, buffers = module.init(RngKey(2))
    before = tree_clone(params)
    x = torch.randn(3, kwargs["in_channels"], 23)
    lengths = torch.tensor([23, 17, 4])
    (y, out_lengths), new_buffers = module.apply(params, buffers, x, lengths, train=True)
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("in_channels", "bias")}
    ref_y, ref_lengths = _nemo_masked_conv_reference(
        x, lengths, params["conv"]["weight"], params["conv"].get("bias"), **ref_kwargs)
    torch.testing.assert_close(y, ref_y)
    assert out_lengths.dtype == lengths.dtype
    assert torch.equal(out_lengths, ref_lengths)
    assert new_buffers is buffers
    for name, value in flatten(before).items():
        assert torch.equal(flatten(params)[name], value)


def test_masked_conv1d_ignores_padding_beyond_lengths():
    module = MaskedConv1d(4, 4, 5, padding=2)
    params, _ = module.init(0)
    x = torch.randn(2, 4, 12)
    lengths = torch.tensor([12, 6])
    noisy = x.clone()
    noisy[1, :, 6:] = 1e3
    (y, _), _ = module.apply(params, {}, x, lengths)
    (y_noisy, _), _ = module.apply(params, {}, noisy, lengths)
    torch.testing.assert_close(y, y_noisy)
    (y_unmasked, _), _ = module.replace(use_mask=False).apply(params, {}, noisy, lengths)
    assert not torch.allclose(y_unmasked[1], y[1])


def test_same_padding_keeps_the_lengths_tensor():
    lengths = torch.tensor([9, 3])
    module = MaskedConv1d(2, 2, 3, padding=1)
    (_, out_lengths), _ = module.apply(module.init(0)[0], {}, torch.randn(2, 2, 9), lengths)
    assert out_lengths is lengths


def test_conv_out_length_matches_torch_output_size():
    for k, s, p, d in [(3, 2, 1, 1), (11, 2, 5, 1), (5, 3, 0, 2), (1, 1, 0, 1)]:
        x = torch.randn(1, 1, 40)
        y = torch.nn.functional.conv1d(x, torch.ones(1, 1, k), stride=s, padding=p, dilation=d)
        assert int(conv_out_length(torch.tensor([40]), k, s, 2 * p, d)) == y.shape[-1]
