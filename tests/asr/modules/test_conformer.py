"""ConformerEncoder: NeMo's keys, config handling, masking, training behaviour and torch.compile."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nemofn.asr.modules.conformer import ConformerConvolution, ConformerEncoder
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError
from nemofn.core.tree import flatten, leaves

# The 2-layer model NeMo 3.0 built (NEMO_FACTS 3.4): 90 keys = 2 preprocessor + 6 pre_encode + 2 x 40 layer
# keys + 2 decoder keys. (NEMO_FACTS' "38 keys per layer" is a miscount of its own list: it has 40 keys, which is
# also what the reference checkpoints hold and what makes the 90.)
OBSERVED_CONFIG = dict(feat_in=80, n_layers=2, d_model=64, n_heads=4, subsampling="striding", subsampling_factor=4,
                       conv_kernel_size=31)
OBSERVED_LAYER = {
    "norm_feed_forward1.weight": (64,), "norm_feed_forward1.bias": (64,),
    "feed_forward1.linear1.weight": (256, 64), "feed_forward1.linear1.bias": (256,),
    "feed_forward1.linear2.weight": (64, 256), "feed_forward1.linear2.bias": (64,),
    "norm_conv.weight": (64,), "norm_conv.bias": (64,),
    "conv.pointwise_conv1.weight": (128, 64, 1), "conv.pointwise_conv1.bias": (128,),
    "conv.depthwise_conv.weight": (64, 1, 31), "conv.depthwise_conv.bias": (64,),
    "conv.batch_norm.weight": (64,), "conv.batch_norm.bias": (64,), "conv.batch_norm.running_mean": (64,),
    "conv.batch_norm.running_var": (64,), "conv.batch_norm.num_batches_tracked": (),
    "conv.pointwise_conv2.weight": (64, 64, 1), "conv.pointwise_conv2.bias": (64,),
    "norm_self_att.weight": (64,), "norm_self_att.bias": (64,),
    "self_attn.pos_bias_u": (4, 16), "self_attn.pos_bias_v": (4, 16),
    **{f"self_attn.linear_{n}.{w}": (64, 64) if w == "weight" else (64,) for n in ("q", "k", "v", "out")
       for w in ("weight", "bias")},
    "self_attn.linear_pos.weight": (64, 64),
    "norm_feed_forward2.weight": (64,), "norm_feed_forward2.bias": (64,),
    "feed_forward2.linear1.weight": (256, 64), "feed_forward2.linear1.bias": (256,),
    "feed_forward2.linear2.weight": (64, 256), "feed_forward2.linear2.bias": (64,),
    "norm_out.weight": (64,), "norm_out.bias": (64,),
}
OBSERVED_PRE_ENCODE = {"pre_encode.conv.0.weight": (64, 1, 3, 3), "pre_encode.conv.0.bias": (64,),
                       "pre_encode.conv.2.weight": (64, 64, 3, 3), "pre_encode.conv.2.bias": (64,),
                       "pre_encode.out.weight": (64, 1280), "pre_encode.out.bias": (64,)}

SMALL = dict(feat_in=16, n_layers=2, d_model=32, n_heads=4, conv_kernel_size=5, subsampling_factor=4)


def _state_shapes(enc, rng=0):
    params, buffers = enc.init(rng)
    return {k: tuple(v.shape) for k, v in {**flatten(params), **flatten(buffers)}.items()}


def test_observed_two_layer_model_keys_and_shapes():
    shapes = _state_shapes(ConformerEncoder(**OBSERVED_CONFIG))
    expected = dict(OBSERVED_PRE_ENCODE)
    for i in range(2):
        expected.update({f"layers.{i}.{k}": v for k, v in OBSERVED_LAYER.items()})
    assert len(OBSERVED_LAYER) == 40
    assert shapes == expected
    assert 2 + len(shapes) + 2 == 90


def test_default_init_is_torch_default_and_pos_biases_are_zero():
    params, buffers = ConformerEncoder(**SMALL).init(RngKey(7))
    layer = params["layers"]["0"]
    assert not layer["self_attn"]["pos_bias_u"].any() and not layer["self_attn"]["pos_bias_v"].any()
    w = layer["feed_forward1"]["linear1"]["weight"]
    assert w.abs().max() <= 1 / 32 ** 0.5 and w.std() > 0.5 / 32 ** 0.5 / 3 ** 0.5  # U(-1/sqrt(fan_in), ...)
    assert torch.equal(layer["norm_out"]["weight"], torch.ones(32))
    assert buffers["layers"]["1"]["conv"]["batch_norm"]["num_batches_tracked"].dtype == torch.int64
    again, _ = ConformerEncoder(**SMALL).init(RngKey(7))
    assert all(torch.equal(a, b) for a, b in zip(leaves(params), leaves(again)))


def test_tied_biases_repeat_under_every_layer_as_one_tensor():
    enc = ConformerEncoder(**SMALL, untie_biases=False)
    params, _ = enc.init(0)
    u0 = params["layers"]["0"]["self_attn"]["pos_bias_u"]
    assert params["layers"]["1"]["self_attn"]["pos_bias_u"] is u0
    assert set(_state_shapes(enc)) == set(_state_shapes(ConformerEncoder(**SMALL)))
    copied = {**params, "layers": {k: {**v, "self_attn": {**v["self_attn"],
                                                          "pos_bias_u": v["self_attn"]["pos_bias_u"].clone()}}
                                   for k, v in params["layers"].items()}}
    tied = enc.tie_shared_params(copied)
    assert tied["layers"]["1"]["self_attn"]["pos_bias_u"] is tied["layers"]["0"]["self_attn"]["pos_bias_u"]


def test_abs_pos_and_out_proj_and_no_subsampling_keys():
    shapes = _state_shapes(ConformerEncoder(**SMALL, self_attention_model="abs_pos", feat_out=24))
    assert not any("pos_bias" in k or "linear_pos" in k for k in shapes)
    assert shapes["out_proj.weight"] == (24, 32)
    assert ConformerEncoder(**SMALL, feat_out=24).feat_out == 24
    assert ConformerEncoder(**SMALL, feat_out=32).feat_out == 32  # same size: no out_proj
    assert "out_proj.weight" not in _state_shapes(ConformerEncoder(**SMALL, feat_out=32))
    linear = _state_shapes(ConformerEncoder(**{**SMALL, "subsampling_factor": 1}))
    assert linear["pre_encode.weight"] == (32, 16)


def test_reduction_keys_and_lengths():
    enc = ConformerEncoder(**SMALL, reduction="striding", reduction_position=0, reduction_factor=2)
    shapes = _state_shapes(enc)
    assert shapes["reduction_subsampling.reduction_enc.conv.0.weight"] == (32, 1, 3, 3)
    assert shapes["reduction_subsampling.reduction_enc.out.weight"] == (32, 32 * 16)
    params, buffers = enc.init(0)
    (y, y_len), _ = enc.apply(params, buffers, torch.randn(2, 16, 64), torch.tensor([64, 37]))
    assert y.shape == (2, 32, 8) and y_len.tolist() == [8, 5]  # 64 -> 16 -> 8; 37 -> 10 -> 5
    with pytest.raises(ValueError, match="reduction_position"):
        ConformerEncoder(**SMALL, reduction="pooling", reduction_position=5, reduction_factor=2)


def test_from_config_drops_target_and_names_unknown_keys():
    cfg = OmegaConf.create({"_target_": "nemo.collections.asr.modules.ConformerEncoder", **SMALL,
                            "att_context_size": [-1, -1], "feat_out": -1})
    enc = ConformerEncoder.from_config(cfg)
    assert enc.att_context == (-1, -1) and enc.subsampling_factor == 4 and enc.feat_out == 32
    hash(enc)
    with pytest.raises(ConfigError, match="unknown key encoder.n_layerz; did you mean encoder.n_layers"):
        ConformerEncoder.from_config({**SMALL, "n_layerz": 3})


@pytest.mark.parametrize("kwargs,match", [
    (dict(att_context_size=[[-1, -1], [8, 0]]), "several context sizes"),
    (dict(conv_context_style="dcc"), "dcc"),
    (dict(att_context_style="chunked_limited_with_rc"), "chunked_limited_with_rc"),
])
def test_unimplemented_options_raise(kwargs, match):
    with pytest.raises(NotImplementedError, match=match):
        ConformerEncoder(**SMALL, **kwargs)


def test_masks_for_context_styles():
    lengths = torch.tensor([5, 3])
    pad, att = ConformerEncoder(**SMALL).masks(lengths, 5)
    assert pad.tolist()[1] == [False] * 3 + [True] * 2
    assert not att[0].any() and att[1, :, 3:].all() and att[1, 3:].all() and not att[1, :3, :3].any()
    _, att = ConformerEncoder(**SMALL, att_context_size=[1, 0]).masks(torch.tensor([5]), 5)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.equal(~att[0], (j <= i) & (j >= i - 1))
    _, att = ConformerEncoder(**SMALL, att_context_size=[2, 1], att_context_style="chunked_limited").masks(
        torch.tensor([6]), 6)
    ci, cj = i.new_tensor(range(6)) // 2, i.new_tensor(range(6)) // 2
    diff = ci[:, None] - cj[None, :]
    assert torch.equal(~att[0], (diff >= 0) & (diff <= 1))


def _eval_state(enc, seed=0):
    params, buffers = enc.init(seed)
    gen = torch.Generator().manual_seed(seed)
    for layer in buffers.get("layers", {}).values():  # realistic BN statistics, so eval is not an identity
        layer["conv"]["batch_norm"]["running_mean"] = torch.randn(enc.d_model, generator=gen) * 0.1
        layer["conv"]["batch_norm"]["running_var"] = torch.rand(enc.d_model, generator=gen) + 0.5
    return params, buffers


@pytest.mark.parametrize("extra", [{}, dict(self_attention_model="abs_pos"), dict(subsampling="dw_striding"),
                                   dict(untie_biases=False, conv_norm_type="layer_norm"),
                                   dict(reduction="pooling", reduction_position=0, reduction_factor=2),
                                   dict(reduction="striding", reduction_position=-1, reduction_factor=2)])
def test_padded_batch_gives_each_items_unpadded_result(extra):
    enc = ConformerEncoder(**SMALL, **extra)
    params, buffers = _eval_state(enc)
    lengths = torch.tensor([64, 41, 17])
    x = torch.randn(3, 16, 64)
    (y, y_len), new_buffers = enc.apply(params, buffers, x, lengths)
    assert new_buffers == buffers
    assert y.shape[:2] == (3, 32) and y_len.dtype == torch.int64
    for i, n in enumerate(lengths.tolist()):
        (alone, n_len), _ = enc.apply(params, buffers, x[i: i + 1, :, :n], torch.tensor([n]))
        assert n_len.item() == y_len[i].item()
        torch.testing.assert_close(y[i, :, : y_len[i]], alone[0], rtol=1e-4, atol=1e-5)


def test_causal_conv_module_does_not_look_ahead():
    conv = ConformerConvolution(8, 5, conv_context_size=(4, 0))
    params, buffers = conv.init(0)
    x = torch.randn(1, 10, 8)
    y, _ = conv.apply(params, buffers, x)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    y2, _ = conv.apply(params, buffers, x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_training_updates_batch_norm_and_needs_a_key():
    enc = ConformerEncoder(**SMALL, stochastic_depth_drop_prob=0.5)
    params, buffers = enc.init(0)
    x, lengths = torch.randn(2, 16, 40), torch.tensor([40, 30])
    with pytest.raises(ValueError, match="random key"):
        enc.apply(params, buffers, x, lengths, train=True)
    before = buffers["layers"]["0"]["conv"]["batch_norm"]["running_mean"].clone()
    torch.manual_seed(0)
    (y, _), new_buffers = enc.apply(params, buffers, x, lengths, train=True, rng=RngKey(0))
    torch.manual_seed(0)
    (y2, _), _ = enc.apply(params, buffers, x, lengths, train=True, rng=RngKey(0))
    assert torch.equal(y, y2)
    assert torch.equal(buffers["layers"]["0"]["conv"]["batch_norm"]["running_mean"], before)  # not mutated
    assert new_buffers["layers"]["1"]["conv"]["batch_norm"]["num_batches_tracked"].item() == 1
    assert not torch.equal(new_buffers["layers"]["0"]["conv"]["batch_norm"]["running_mean"], before)
    assert enc.layer_drop_probs == (0.0, 0.5)


def test_gradients_reach_every_parameter():
    enc = ConformerEncoder(**SMALL, untie_biases=False)
    params, buffers = enc.init(0)
    for t in leaves(params):
        t.requires_grad_(True)
    (y, _), _ = enc.apply(params, buffers, torch.randn(2, 16, 40), torch.tensor([40, 25]))
    y.square().mean().backward()
    missing = [k for k, t in flatten(params).items() if t.grad is None or not t.grad.abs().sum() > 0]
    assert missing == []


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compiled_apply_equals_eager_with_varying_lengths():
    enc = ConformerEncoder(**{**SMALL, "n_layers": 1})
    params, buffers = _eval_state(enc)

    def run(x, lengths):
        return enc.apply(params, buffers, x, lengths)[0]

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 16, 48)
    for lengths in ([48, 30, 12], [20, 48, 33]):
        lengths = torch.tensor(lengths)
        (y, y_len), (ye, ye_len) = compiled(x, lengths), run(x, lengths)
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-5)
        assert torch.equal(y_len, ye_len)


@pytest.mark.slow
@pytest.mark.usefixtures("_fresh_dynamo")
def test_inductor_compiled_apply_equals_eager():
    enc = ConformerEncoder(**SMALL, subsampling="dw_striding")
    params, buffers = _eval_state(enc)

    def run(x, lengths):
        return enc.apply(params, buffers, x, lengths)[0]

    compiled = torch.compile(run, fullgraph=True)
    x, lengths = torch.randn(3, 16, 48), torch.tensor([48, 30, 12])
    torch.testing.assert_close(compiled(x, lengths), run(x, lengths), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("_fresh_dynamo")
def test_compiled_training_apply_equals_eager():
    """Dropout everywhere, stochastic depth and batch-norm updates compile without graph breaks."""
    enc = ConformerEncoder(**SMALL, dropout_emb=0.1, dropout_att=0.1, stochastic_depth_drop_prob=0.3)
    params, buffers = enc.init(0)
    key = RngKey(1)

    def run(x, lengths):
        return enc.apply(params, buffers, x, lengths, train=True, rng=key)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    x, lengths = torch.randn(3, 16, 48), torch.tensor([48, 30, 12])
    torch.manual_seed(5)
    expected = run(x, lengths)
    torch.manual_seed(5)
    got = compiled(x, lengths)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
