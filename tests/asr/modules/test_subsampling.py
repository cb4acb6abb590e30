"""ConvSubsampling / StackingSubsampling / reduction: keys, lengths, masking, and torch.nn equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemofn.asr.modules.subsampling import (
    ConvSubsampling,
    StackingSubsampling,
    SubsamplingReductionModule,
    calc_length,
)
from nemofn.core.tree import flatten


def _shapes(tree):
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}


def test_striding_keys_match_nemo():
    p, b = ConvSubsampling("striding", 4, 80, 64, 64).init(0)
    assert b == {}
    assert _shapes(p) == {
        "out.weight": (64, 1280), "out.bias": (64,),
        "conv.0.weight": (64, 1, 3, 3), "conv.0.bias": (64,),
        "conv.2.weight": (64, 64, 3, 3), "conv.2.bias": (64,),
    }
    assert list(flatten(p))[:2] == ["out.weight", "out.bias"]  # NeMo registers `out` first
    assert _shapes(ConvSubsampling("striding", 4, 80, 256, 256).init(0)[0])["out.weight"] == (256, 5120)


def test_dw_striding_keys_match_nemo():
    p, _ = ConvSubsampling("dw_striding", 8, 80, 64, 32).init(0)
    assert _shapes(p) == {
        "out.weight": (64, 320), "out.bias": (64,),
        "conv.0.weight": (32, 1, 3, 3), "conv.0.bias": (32,),
        "conv.2.weight": (32, 1, 3, 3), "conv.2.bias": (32,),
        "conv.3.weight": (32, 32, 1, 1), "conv.3.bias": (32,),
        "conv.5.weight": (32, 1, 3, 3), "conv.5.bias": (32,),
        "conv.6.weight": (32, 32, 1, 1), "conv.6.bias": (32,),
    }


def _torch_reference(sub: ConvSubsampling, p, x):
    """The same stack built from torch.nn layers (what NeMo's nn.Sequential holds), on unpadded input."""
    layers = []
    for name in sorted(p["conv"], key=int):
        w = p["conv"][name]["weight"]
        groups = w.shape[0] if w.shape[1] == 1 and name != "0" else 1
        k = w.shape[-1]
        conv = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], k, stride=2 if k == 3 else 1,
                               padding=1 if k == 3 else 0, groups=groups)
        conv.weight.data, conv.bias.data = w, p["conv"][name]["bias"]
        layers.append((int(name), conv))
    seq = []
    for idx, conv in layers:
        seq.append(conv)
        if idx + 1 not in dict(layers):
            seq.append(torch.nn.ReLU())
    y = torch.nn.Sequential(*seq)(x.unsqueeze(1))
    b, c, t, f = y.shape
    return F.linear(y.transpose(1, 2).reshape(b, t, c * f), p["out"]["weight"], p["out"]["bias"])


@pytest.mark.parametrize("kind,factor", [("striding", 4), ("dw_striding", 8), ("striding", 2)])
def test_full_length_input_matches_torch_layers(kind, factor):
    sub = ConvSubsampling(kind, factor, 40, 24, 16)
    p, _ = sub.init(1)
    x = torch.randn(2, 50, 40)
    (y, lengths), _ = sub.apply(p, {}, x, torch.tensor([50, 50]))
    torch.testing.assert_close(y, _torch_reference(sub, p, x))
    assert lengths.dtype == torch.int64 and y.shape[1] == lengths[0]


@pytest.mark.parametrize("kind,factor,causal", [("striding", 4, False), ("dw_striding", 8, False),
                                                ("striding", 4, True), ("dw_striding", 4, True)])
def test_lengths_follow_nemos_calc_length(kind, factor, causal):
    sub = ConvSubsampling(kind, factor, 40, 24, 8, is_causal=causal)
    p, _ = sub.init(0)
    lengths = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 63, 64])
    (_, out), _ = sub.apply(p, {}, torch.randn(len(lengths), 64, 40), lengths)
    expected = calc_length(lengths, all_paddings=3 if causal else 2, kernel_size=3, stride=2, ceil_mode=False,
                           repeat_num=sub.num_stages)
    assert torch.equal(out, expected.to(torch.int64))
    assert torch.equal(sub.out_lengths(lengths), out)


@pytest.mark.parametrize("kind,factor,causal", [("striding", 4, False), ("dw_striding", 8, False),
                                                ("dw_striding", 4, True)])
def test_padded_frames_do_not_leak_into_valid_outputs(kind, factor, causal):
    """Each item of a padded batch gives the same valid frames as when run alone, unpadded."""
    sub = ConvSubsampling(kind, factor, 32, 16, 8, is_causal=causal)
    p, _ = sub.init(2)
    lengths = torch.tensor([61, 37, 9])
    x = torch.randn(3, 61, 32) * 3 + 1  # non-zero padding, to prove it is masked
    (y, out), _ = sub.apply(p, {}, x, lengths)
    for i, n in enumerate(lengths.tolist()):
        (alone, n_out), _ = sub.apply(p, {}, x[i: i + 1, :n], torch.tensor([n]))
        assert n_out.item() == out[i].item()
        torch.testing.assert_close(y[i, : out[i]], alone[0, : out[i]], rtol=1e-5, atol=1e-5)
        # beyond the length every conv output was zeroed, so `out` sees zeros and gives its bias
        torch.testing.assert_close(y[i, out[i]:], p["out"]["bias"].expand_as(y[i, out[i]:]))


def test_unsupported_options_raise_with_reasons():
    for kind in ("vggnet", "striding_conv1d", "dw_striding_conv1d"):
        with pytest.raises(NotImplementedError, match=kind):
            ConvSubsampling(kind, 4, 80, 64, 64)
    with pytest.raises(ValueError, match="unknown subsampling"):
        ConvSubsampling("bogus", 4, 80, 64, 64)
    with pytest.raises(ValueError, match="power of 2"):
        ConvSubsampling("striding", 6, 80, 64, 64)
    with pytest.raises(ValueError, match="chunking_factor"):
        ConvSubsampling("striding", 4, 80, 64, 64, subsampling_conv_chunking_factor=3)
    ConvSubsampling("striding", 4, 80, 64, 64, subsampling_conv_chunking_factor=-1)


@pytest.mark.parametrize("norm", [False, True])
def test_stacking_subsampling(norm):
    sub = StackingSubsampling(4, 6, 10, norm=norm)
    p, _ = sub.init(0)
    assert set(_shapes(p)) == {"proj_out.weight", "proj_out.bias"} | (
        {"pre_norm.weight", "pre_norm.bias"} if norm else set())
    x = torch.randn(2, 10, 6)
    (y, lengths), _ = sub.apply(p, {}, x, torch.tensor([10, 5]))
    assert y.shape == (2, 3, 10)
    assert lengths.tolist() == [3, 1]  # (len + batch padding 2) // 4
    stacked = F.pad(x, (0, 0, 0, 2))
    if norm:
        stacked = F.layer_norm(stacked, (6,))
    torch.testing.assert_close(y, F.linear(stacked.reshape(2, 3, 24), p["proj_out"]["weight"], p["proj_out"]["bias"]))


def test_reduction_modules():
    x = torch.randn(2, 12, 8)
    pool = SubsamplingReductionModule("pooling", 8, 2)
    assert pool.init(0) == ({}, {})
    (y, lengths), _ = pool.apply({}, {}, x, torch.tensor([12, 7]))
    torch.testing.assert_close(y, F.max_pool1d(x.transpose(1, 2), 2).transpose(1, 2))
    assert lengths.tolist() == [6, 3]
    stride = SubsamplingReductionModule("striding", 8, 2)
    p, _ = stride.init(0)
    assert set(_shapes(p)) == {"reduction_enc.out.weight", "reduction_enc.out.bias",
                               "reduction_enc.conv.0.weight", "reduction_enc.conv.0.bias"}
    (y, lengths), _ = stride.apply(p, {}, x, torch.tensor([12, 7]))
    assert y.shape == (2, 6, 8) and lengths.tolist() == [6, 4]
