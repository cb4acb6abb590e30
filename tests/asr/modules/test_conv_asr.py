"""ConvASREncoder / JasperBlock / SqueezeExcite: NeMo's keys, shapes, lengths, masking, options, compile."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nemofn.asr.modules.conv_asr import ConvASREncoder, JasperBlockConfig
from nemofn.asr.modules.decoder import ConvASRDecoder
from nemofn.asr.modules.jasper import GroupShuffle, JasperBlock, SqueezeExcite, compute_new_kernel_size
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError
from nemofn.core.tree import flatten, leaves, tree_map


def _block(filters, repeat, kernel, *, stride=1, dilation=1, residual=False, **extra):
    return {"filters": filters, "repeat": repeat, "kernel": [kernel], "stride": [stride], "dilation": [dilation],
            "dropout": 0.0, "residual": residual, **extra}


# The tiny QuartzNet of NEMO_FACTS 3.3 (key listing printed by real NeMo 3.0): 64 mels, a separable C1 (k33),
# one residual B-block with repeat 2, a 1x1 C3 to 64 channels, and a decoder to 5 labels + blank.
TINY_QUARTZNET = [
    _block(32, 1, 33, separable=True),
    _block(32, 2, 33, residual=True, separable=True),
    _block(64, 1, 1),
]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
NEMO_TINY_KEYS = (
    ["preprocessor.featurizer.window", "preprocessor.featurizer.fb",
     "encoder.encoder.0.mconv.0.conv.weight", "encoder.encoder.0.mconv.1.conv.weight"]
    + [f"encoder.encoder.0.mconv.2.{k}" for k in BN]
    + ["encoder.encoder.1.mconv.0.conv.weight", "encoder.encoder.1.mconv.1.conv.weight"]
    + [f"encoder.encoder.1.mconv.2.{k}" for k in BN]
    + ["encoder.encoder.1.mconv.5.conv.weight", "encoder.encoder.1.mconv.6.conv.weight"]
    + [f"encoder.encoder.1.mconv.7.{k}" for k in BN]
    + ["encoder.encoder.1.res.0.0.conv.weight"]
    + [f"encoder.encoder.1.res.0.1.{k}" for k in BN]
    + ["encoder.encoder.2.mconv.0.conv.weight"]
    + [f"encoder.encoder.2.mconv.1.{k}" for k in BN]
    + ["decoder.decoder_layers.0.weight", "decoder.decoder_layers.0.bias"]
)
NEMO_TINY_SHAPES = {
    "encoder.encoder.0.mconv.0.conv.weight": (64, 1, 33),
    "encoder.encoder.0.mconv.1.conv.weight": (32, 64, 1),
    "encoder.encoder.1.mconv.0.conv.weight": (32, 1, 33),
    "encoder.encoder.1.mconv.1.conv.weight": (32, 32, 1),
    "encoder.encoder.1.mconv.5.conv.weight": (32, 1, 33),
    "encoder.encoder.1.mconv.6.conv.weight": (32, 32, 1),
    "encoder.encoder.1.res.0.0.conv.weight": (32, 32, 1),
    "encoder.encoder.2.mconv.0.conv.weight": (64, 32, 1),
    "decoder.decoder_layers.0.weight": (6, 64, 1),
    "decoder.decoder_layers.0.bias": (6,),
}


def _state_names(module, prefix):
    params, buffers = module.init(0)
    return flatten(params, prefix), flatten(buffers, prefix)


def test_tiny_quartznet_keys_and_param_count_match_nemo():
    enc = ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=64)
    dec = ConvASRDecoder(feat_in=enc.feat_out, num_classes=5)
    ep, eb = _state_names(enc, "encoder.")
    dp, db = _state_names(dec, "decoder.")
    ours = {**ep, **eb, **dp, **db}
    nemo_model_keys = [k for k in NEMO_TINY_KEYS if not k.startswith("preprocessor.")]
    assert sorted(ours) == sorted(nemo_model_keys)
    assert len(ours) + 2 == len(NEMO_TINY_KEYS) == 37  # + the preprocessor's window and fb buffers
    for name, shape in NEMO_TINY_SHAPES.items():
        assert tuple(ours[name].shape) == shape, name
    assert sum(t.numel() for t in {**ep, **dp}.values()) == 12_166
    assert eb["encoder.encoder.0.mconv.2.num_batches_tracked"].dtype == torch.long


def _quartznet_15x5():
    """``examples/asr/conf/quartznet/quartznet_15x5.yaml``'s encoder blocks (repeat 5, separable)."""
    b_blocks = [_block(f, 5, k, residual=True, separable=True)
                for f, k in [(256, 33)] * 3 + [(256, 39)] * 3 + [(512, 51)] * 3 + [(512, 63)] * 3 + [(512, 75)] * 3]
    return ([_block(256, 1, 33, stride=2, separable=True)] + b_blocks
            + [_block(512, 1, 87, dilation=2, separable=True), _block(1024, 1, 1)])


def _citrinet_384():
    """``examples/asr/conf/citrinet/citrinet_384.yaml``'s encoder blocks (model_defaults resolved)."""
    se = {"separable": True, "se": True, "se_context_size": -1}
    kernels = [11, 13, 15, 17, 19, 21, 13, 15, 17, 19, 21, 23, 25, 25, 27, 29, 31, 33, 35, 37, 39]
    blocks = [_block(384, 1, 5, **se)]
    for i, k in enumerate(kernels):
        strided = i in (0, 6, 13)
        extra = {"stride_last": True, "residual_mode": "stride_add"} if strided else {}
        blocks.append(_block(384, 5, k, stride=2 if strided else 1, residual=True, **se, **extra))
    return blocks + [_block(640, 1, 41, **se)]


def test_full_size_configs_match_nemo_key_and_param_counts():
    qn = ConvASREncoder(_quartznet_15x5(), activation="relu", feat_in=64)
    qn_dec = ConvASRDecoder(feat_in=qn.feat_out, num_classes=28)
    (ep, eb), (dp, _) = _state_names(qn, "encoder."), _state_names(qn_dec, "decoder.")
    assert len(ep) + len(eb) + len(dp) + 2 == 639  # + the preprocessor's two buffers
    assert sum(t.numel() for t in [*ep.values(), *dp.values()]) == 18_924_381
    assert ep["encoder.encoder.17.mconv.0.conv.weight"].shape == (1024, 512, 1)
    assert dp["decoder.decoder_layers.0.weight"].shape == (29, 1024, 1)
    assert [f"encoder.encoder.1.mconv.{i}.conv.weight" in ep for i in (0, 1, 5, 6, 10, 11, 15, 16, 20, 21)] == [
        True] * 10
    assert qn.subsampling_factor == 2 and qn.feat_out == 1024

    ct = ConvASREncoder(_citrinet_384(), activation="relu", feat_in=80)
    ct_dec = ConvASRDecoder(feat_in=ct.feat_out, num_classes=128)
    (ep, eb), (dp, _) = _state_names(ct, "encoder."), _state_names(ct_dec, "decoder.")
    assert len(ep) + len(eb) + len(dp) + 2 == 925
    assert ep["encoder.encoder.1.mconv.23.fc.0.weight"].shape == (48, 384)
    assert ep["encoder.encoder.1.mconv.23.fc.2.weight"].shape == (384, 48)
    assert ct.subsampling_factor == 8


def test_citrinet_like_block_has_se_stride_add_and_stride_last():
    jasper = [_block(48, 1, 5, separable=True, se=True),
              _block(48, 3, 11, stride=2, residual=True, separable=True, se=True, stride_last=True,
                     residual_mode="stride_add")]
    enc = ConvASREncoder(jasper, activation="relu", feat_in=16)
    params, _ = enc.init(0)
    flat = flatten(params)
    # repeat 3 separable: dw/pw/bn at 0,1,2 / 5,6,7 / 10,11,12, then SE at 13 with C // 8 hidden units
    assert flat["encoder.1.mconv.13.fc.0.weight"].shape == (6, 48)
    assert flat["encoder.1.mconv.13.fc.2.weight"].shape == (48, 6)
    assert "encoder.0.mconv.3.fc.0.weight" in flat
    blk = enc.blocks[1]
    strides = [layer.stride for layer in blk.mconv if hasattr(layer, "stride") and layer.kernel_size > 1]
    assert strides == [1, 1, 2]  # stride_last: only the last depthwise conv strides
    assert blk.res[0][0].stride == 2  # stride_add: the residual 1x1 conv strides too
    assert enc.subsampling_factor == 2
    x = torch.randn(2, 16, 37)
    (y, lens), _ = enc.apply(*enc.init(0), x, torch.tensor([37, 20]))
    assert y.shape == (2, 48, 19) and lens.tolist() == [19, 10]


def test_stride_without_stride_last_strides_every_repeat():
    enc = ConvASREncoder([_block(8, 2, 3, stride=2, separable=False)], activation="relu", feat_in=4)
    (y, lens), _ = enc.apply(*enc.init(0), torch.randn(1, 4, 17), torch.tensor([17]))
    assert y.shape[-1] == 5 and lens.tolist() == [5]  # 17 -> 9 -> 5
    assert enc.subsampling_factor == 2  # NeMo counts the configured stride once


def test_outputs_on_valid_frames_do_not_depend_on_padding():
    jasper = [_block(24, 1, 7, stride=2, separable=True),
              _block(24, 2, 5, residual=True, separable=True, se=True),
              _block(24, 2, 5, dilation=2, residual=True, separable=True, se=True, se_context_size=4),
              _block(32, 1, 1)]
    enc = ConvASREncoder(jasper, activation="relu", feat_in=8)
    params, buffers = enc.init(1)
    g = torch.Generator().manual_seed(0)
    short = torch.randn(1, 8, 30, generator=g)
    padded = torch.cat([short, 100 * torch.randn(1, 8, 26, generator=g)], dim=-1)
    (y1, l1), _ = enc.apply(params, buffers, short, torch.tensor([30]))
    (y2, l2), _ = enc.apply(params, buffers, padded, torch.tensor([30]))
    assert l1.tolist() == l2.tolist() == [15]
    torch.testing.assert_close(y2[..., :15], y1[..., :15], atol=1e-5, rtol=1e-5)


def test_future_context_limits_look_ahead():
    block = _block(6, 1, 7, separable=False, future_context=1)
    enc = ConvASREncoder([block], activation="relu", feat_in=6)
    params, buffers = enc.init(0)
    mconv0 = enc.blocks[0].mconv[0]
    assert mconv0.padding == (5, 1)
    x = torch.randn(1, 6, 20)
    x2 = x.clone()
    x2[..., 11:] += 5.0
    lens = torch.tensor([20])
    (y, out_len), _ = enc.apply(params, buffers, x, lens)
    (y2, _), _ = enc.apply(params, buffers, x2, lens)
    assert out_len.tolist() == [20]
    torch.testing.assert_close(y[..., :10], y2[..., :10])  # frame t sees x[t-5 .. t+1] only
    assert not torch.allclose(y[..., 10], y2[..., 10])


def test_kernel_size_factor_and_even_kernels():
    assert compute_new_kernel_size(32, 1.0) == 33
    assert compute_new_kernel_size(33, 0.5) == 17
    assert compute_new_kernel_size(3, 0.1) == 1
    enc = ConvASREncoder([_block(8, 1, 33, separable=True, kernel_size_factor=0.5)], activation="relu", feat_in=4)
    assert flatten(enc.init(0)[0])["encoder.0.mconv.0.conv.weight"].shape == (4, 1, 17)


def test_groups_add_a_shuffle_slot_and_shuffle_interleaves():
    enc = ConvASREncoder([_block(8, 2, 3, groups=2)], activation="relu", feat_in=8)
    names = sorted(flatten(enc.init(0)[0]))
    # [conv, bn, shuffle, act, drop] then [conv, bn, shuffle]
    assert names == ["encoder.0.mconv.0.conv.weight", "encoder.0.mconv.1.bias", "encoder.0.mconv.1.weight",
                     "encoder.0.mconv.5.conv.weight", "encoder.0.mconv.6.bias", "encoder.0.mconv.6.weight"]
    assert flatten(enc.init(0)[0])["encoder.0.mconv.0.conv.weight"].shape == (8, 4, 3)
    x = torch.arange(6.0).view(1, 6, 1)
    y, _ = GroupShuffle(groups=2, channels=6).apply({}, {}, x)
    assert y.flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_heads_share_depthwise_weights():
    enc = ConvASREncoder([_block(8, 1, 5, separable=True, heads=2)], activation="relu", feat_in=8)
    params, buffers = enc.init(0)
    assert flatten(params)["encoder.0.mconv.0.conv.weight"].shape == (2, 1, 5)
    (y, _), _ = enc.apply(params, buffers, torch.randn(2, 8, 11), torch.tensor([11, 6]))
    assert y.shape == (2, 8, 11)
    with pytest.raises(ValueError, match="heads"):
        ConvASREncoder([_block(8, 1, 5, heads=2)], activation="relu", feat_in=4)


def test_dense_residual_panes_and_growing_outputs():
    jasper = [_block(8, 1, 3, residual=True, residual_dense=True),
              _block(12, 1, 3, residual=True, residual_dense=True),
              _block(16, 1, 3, residual=True, residual_dense=True)]
    enc = ConvASREncoder(jasper, activation="relu", feat_in=4)
    flat = flatten(enc.init(0)[0])
    assert [flat[f"encoder.2.res.{j}.0.conv.weight"].shape[1] for j in range(3)] == [4, 8, 12]
    assert "encoder.1.res.2.0.conv.weight" not in flat
    params, buffers = enc.init(0)
    xs = [torch.randn(1, 4, 9)]
    lens = torch.tensor([9])
    for i, block in enumerate(enc.blocks):
        (xs, lens), _ = block.apply(params["encoder"][str(i)], buffers["encoder"][str(i)], xs, lens)
        assert len(xs) == i + 2
    (y, _), _ = enc.apply(params, buffers, xs[0], torch.tensor([9]))
    assert torch.equal(y, xs[-1])


def test_residual_max_differs_from_add():
    add = ConvASREncoder([_block(4, 1, 3, residual=True)], activation="identity", feat_in=4)
    mx = ConvASREncoder([_block(4, 1, 3, residual=True, residual_mode="max")], activation="identity", feat_in=4)
    params, buffers = add.init(0)
    x, lens = torch.randn(1, 4, 6), torch.tensor([6])
    (ya, _), _ = add.apply(params, buffers, x, lens)
    (ym, _), _ = mx.apply(params, buffers, x, lens)
    blk = add.blocks[0]
    p = params["encoder"]["0"]
    b = buffers["encoder"]["0"]
    (main, _), _ = blk.mconv[0].apply(p["mconv"]["0"], {}, x, lens)
    main, _ = blk.mconv[1].apply(p["mconv"]["1"], b["mconv"]["1"], main)
    (res, _), _ = blk.res[0][0].apply(p["res"]["0"]["0"], {}, x, lens)
    res, _ = blk.res[0][1].apply(p["res"]["0"]["1"], b["res"]["0"]["1"], res)
    torch.testing.assert_close(ya, main + res)
    torch.testing.assert_close(ym, torch.maximum(main, res))


def test_unmasked_convs_keep_nemo_keys_and_lengths():
    enc = ConvASREncoder([_block(8, 1, 3, stride=2, residual=True, residual_mode="stride_add")], activation="relu",
                         feat_in=4, conv_mask=False)
    names = sorted(flatten(enc.init(0)[0]))
    assert "encoder.0.mconv.0.weight" in names and "encoder.0.res.0.0.weight" in names
    (y, lens), _ = enc.apply(*enc.init(0), torch.randn(1, 4, 9), torch.tensor([9]))
    assert y.shape[-1] == 5 and lens.tolist() == [9]  # NeMo leaves lengths alone without masked convs


@pytest.mark.parametrize("mode, groups", [("group", 2), ("instance", 8), ("layer", 1)])
def test_group_norm_variants_have_no_buffers(mode, groups):
    enc = ConvASREncoder([_block(8, 1, 3)], activation="relu", feat_in=4, normalization_mode=mode, norm_groups=2)
    params, buffers = enc.init(0)
    assert buffers == {}
    assert enc.blocks[0].mconv[1].num_groups == groups
    assert sorted(flatten(params)) == ["encoder.0.mconv.0.conv.weight", "encoder.0.mconv.1.bias",
                                       "encoder.0.mconv.1.weight"]


def test_init_follows_nemo_init_weights():
    enc = ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=64)
    params, buffers = enc.init(RngKey(3))
    flat = flatten(params)
    w = flat["encoder.1.mconv.1.conv.weight"]  # [32, 32, 1]: xavier bound sqrt(6 / (32 + 32))
    bound = math.sqrt(6 / 64)
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert torch.equal(flat["encoder.1.mconv.2.weight"], torch.ones(32))
    assert torch.equal(flat["encoder.1.mconv.2.bias"], torch.zeros(32))
    assert all(torch.equal(a, b) for a, b in zip(leaves(params), leaves(enc.init(RngKey(3))[0])))
    assert not torch.equal(w, flatten(enc.init(RngKey(4))[0])["encoder.1.mconv.1.conv.weight"])
    default = ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=64, init_mode=None)
    wd = flatten(default.init(3)[0])["encoder.1.mconv.1.conv.weight"]
    assert wd.abs().max() <= 1 / math.sqrt(32)  # torch's default bound 1/sqrt(fan_in)
    se = SqueezeExcite(64, 8)
    fc0 = se.init(0)[0]["fc"]["0"]["weight"]
    assert fc0.abs().max() <= math.sqrt(6 / (64 + 8))


def test_train_mode_updates_batchnorm_buffers_without_mutating_inputs():
    enc = ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=64)
    params, buffers = enc.init(0)
    before = {k: v.clone() for k, v in flatten(buffers).items()}
    (_, _), new_buffers = enc.apply(params, buffers, torch.randn(2, 64, 20), torch.tensor([20, 11]), train=True)
    assert all(torch.equal(before[k], v) for k, v in flatten(buffers).items())
    assert flatten(new_buffers).keys() == before.keys()
    assert flatten(new_buffers)["encoder.1.mconv.7.num_batches_tracked"].item() == 1
    assert not torch.equal(flatten(new_buffers)["encoder.1.mconv.7.running_mean"], before[
        "encoder.1.mconv.7.running_mean"])


def test_dropout_and_local_se_need_rng_in_training():
    enc = ConvASREncoder([_block(8, 2, 3, dropout=0.5)], activation="relu", feat_in=4)
    args = (*enc.init(0), torch.randn(1, 4, 9), torch.tensor([9]))
    with pytest.raises(ValueError, match="rng"):
        enc.apply(*args, train=True)
    enc.apply(*args, train=True, rng=RngKey(0))
    se = SqueezeExcite(8, 2, context_window=4)
    p, _ = se.init(0)
    x, lens = torch.randn(2, 8, 10), torch.tensor([10, 7])
    with pytest.raises(ValueError, match="rng"):
        se.apply(p, {}, x, lens, train=True)
    (y_eval, _), _ = se.apply(p, {}, x, lens)
    (y_global, _), _ = SqueezeExcite(8, 2).apply(p, {}, x, lens)
    torch.testing.assert_close(y_eval, y_global)  # limited context only matters in training (NeMo)
    (y_train, _), _ = se.apply(p, {}, x, lens, train=True, rng=RngKey(0))
    assert y_train.shape == x.shape and torch.all(y_train[1, :, 7:] == 0)


def test_from_config_drops_target_and_names_unknown_keys():
    cfg = OmegaConf.create({"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64,
                            "activation": "relu", "conv_mask": True, "jasper": TINY_QUARTZNET})
    enc = ConvASREncoder.from_config(cfg)
    assert enc.feat_out == 64 and isinstance(enc.jasper[0], JasperBlockConfig)
    assert enc == ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=64)
    with pytest.raises(ConfigError, match="unknown key encoder.conv_masked; did you mean encoder.conv_mask"):
        ConvASREncoder.from_config({"feat_in": 4, "activation": "relu", "conv_masked": True,
                                    "jasper": TINY_QUARTZNET})
    with pytest.raises(ConfigError, match=r"unknown key model.encoder.jasper\[1\].filter; did you mean "
                                          r"model.encoder.jasper\[1\].filters") as info:
        ConvASREncoder.from_config({"feat_in": 4, "activation": "relu", "jasper": TINY_QUARTZNET[:1] + [
            {**TINY_QUARTZNET[1], "filter": 3}]}, path="model.encoder")
    assert info.value.key == "model.encoder.jasper[1].filter"
    with pytest.raises(ConfigError, match=r"encoder.jasper\[1\].filter; did you mean encoder.jasper\[1\].filters"):
        ConvASREncoder(TINY_QUARTZNET[:1] + [{**TINY_QUARTZNET[1], "filter": 3}], activation="relu", feat_in=4)
    with pytest.raises(ConfigError, match=r"encoder.jasper\[0\]: missing required key\(s\) dropout"):
        ConvASREncoder([{k: v for k, v in TINY_QUARTZNET[0].items() if k != "dropout"}], activation="relu",
                       feat_in=4)
    with pytest.raises(ValueError, match="unknown activation"):
        ConvASREncoder(TINY_QUARTZNET, activation="rleu", feat_in=4)
    with pytest.raises(NotImplementedError, match="quantize"):
        ConvASREncoder(TINY_QUARTZNET, activation="relu", feat_in=4, quantize=True)


def test_frame_splicing_multiplies_input_channels():
    enc = ConvASREncoder([_block(8, 1, 3, separable=True)], activation="relu", feat_in=16, frame_splicing=3)
    assert flatten(enc.init(0)[0])["encoder.0.mconv.0.conv.weight"].shape == (48, 1, 3)


def test_block_rejects_bad_options():
    with pytest.raises(ValueError, match="normalization"):
        JasperBlock(4, 4, normalization="weird")
    with pytest.raises(ValueError, match="residual_mode"):
        JasperBlock(4, 4, residual_mode="concat")
    with pytest.raises(ValueError, match="stride OR dilation"):
        JasperBlock(4, 4, stride=2, dilation=2)
    with pytest.raises(ValueError, match="1-element"):
        JasperBlock(4, 4, kernel_size=[3, 5])


def test_compiled_apply_matches_eager():
    jasper = [_block(16, 2, 5, residual=True, separable=True, se=True, stride_last=True, stride=2,
                     residual_mode="stride_add")]
    enc = ConvASREncoder(jasper, activation="relu", feat_in=8)
    params, buffers = enc.init(0)
    x, lens = torch.randn(2, 8, 24), torch.tensor([24, 13])

    def run(p, b, x, lens):
        return enc.apply(p, b, x, lens, train=False)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    (y, yl), _ = compiled(params, buffers, x, lens)
    (ye, yel), _ = run(params, buffers, x, lens)
    torch.testing.assert_close(y, ye)
    assert torch.equal(yl, yel)


@pytest.mark.slow
def test_compiled_train_apply_matches_eager():
    jasper = [_block(16, 2, 5, residual=True, separable=True, se=True, stride_last=True, stride=2,
                     residual_mode="stride_add")]
    enc = ConvASREncoder(jasper, activation="relu", feat_in=8)
    params, buffers = enc.init(0)
    x, lens = torch.randn(2, 8, 24), torch.tensor([24, 13])
    key = RngKey(0)

    def train_step(p, b, x, lens):
        return enc.apply(p, b, x, lens, train=True, rng=key)

    compiled_params = tree_map(lambda t: t.clone().requires_grad_(True), params)
    eager_params = tree_map(lambda t: t.clone().requires_grad_(True), params)
    (yt, _), nb = torch.compile(train_step, fullgraph=True, backend="aot_eager")(compiled_params, buffers, x, lens)
    (yte, _), nbe = train_step(eager_params, buffers, x, lens)
    torch.testing.assert_close(yt, yte)
    for a, b in zip(leaves(nb), leaves(nbe)):
        torch.testing.assert_close(a, b)
    yt.square().mean().backward()
    yte.square().mean().backward()
    for a, b in zip(leaves(compiled_params), leaves(eager_params)):
        torch.testing.assert_close(a.grad, b.grad)

    local = ConvASREncoder([_block(16, 1, 5, separable=True, se=True, se_context_size=4)], activation="relu",
                           feat_in=8)
    p, b = local.init(0)
    fn = torch.compile(lambda p, b, x, lens: local.apply(p, b, x, lens, train=True, rng=key), fullgraph=True,
                       backend="aot_eager")
    (y, _), _ = fn(p, b, x, lens)  # the random SE window compiles without a graph break
    assert y.shape == (2, 16, 24) and torch.isfinite(y).all()
