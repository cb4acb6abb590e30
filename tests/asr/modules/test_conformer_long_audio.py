"""Long audio through the ConformerEncoder: ``rel_pos_local_attn`` against NeMo 3.0 (stored fixture), receptive
field and bounded memory on long inputs, and time-chunked conv subsampling equal to the unchunked one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nemofn.asr.modules.conformer import ConformerEncoder
from nemofn.asr.modules.subsampling import ConvSubsampling
from nemofn.core.rng import RngKey
from nemofn.core.tree import flatten, unflatten

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "data" / "nemo3_local_attn.json"


def _reference_helpers():
    spec = importlib.util.spec_from_file_location("make_local_attn_reference",
                                                  REPO / "scripts" / "dev" / "make_local_attn_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference_helpers()
ENCODER_CASES = json.loads(FIXTURE.read_text())["encoder"]


@pytest.mark.parametrize("case", ENCODER_CASES, ids=[c["name"] for c in ENCODER_CASES])
def test_local_attention_encoder_matches_nemo(case):
    """NeMo's ConformerEncoder (eval) built with rel_pos_local_attn, on a padded batch, to 1e-5."""
    enc = ConformerEncoder(**case["config"])
    specs = case["params"]
    params, buffers = enc.init(0)
    ours = {**flatten(params), **flatten(buffers)}
    assert {k for k in ours if not k.endswith("num_batches_tracked")} == {key for key, *_ in specs}  # NeMo's keys
    drawn = REF.draw_tensors(specs, case["seed"])
    params = enc.tie_shared_params(unflatten({k: drawn[k] for k in flatten(params)}))
    buffers = unflatten({k: drawn.get(k, v) for k, v in flatten(buffers).items()})
    x = REF.draw_input(case["input_shape"], case["input_seed"])
    (y, y_len), _ = enc.apply(params, buffers, x, torch.tensor(case["lengths"]))
    assert y_len.tolist() == case["output_lengths"]
    expected = REF.decode_array(case["output"])
    assert y.shape == expected.shape
    assert (y - expected).abs().max().item() <= 1e-5


def _eval_state(enc: ConformerEncoder, seed: int = 0):
    params, buffers = enc.init(seed)
    gen = torch.Generator().manual_seed(seed)
    for layer in buffers.get("layers", {}).values():  # realistic BN statistics, so eval is not an identity
        layer["conv"]["batch_norm"]["running_mean"] = torch.randn(enc.d_model, generator=gen) * 0.1
        layer["conv"]["batch_norm"]["running_var"] = torch.rand(enc.d_model, generator=gen) + 0.5
    return params, buffers


def test_local_attention_keeps_the_keys_of_rel_pos():
    """A rel_pos checkpoint loads key for key into rel_pos_local_attn; each layer owns its position biases (also
    with untie_biases=False, as NeMo builds it)."""
    base = dict(feat_in=16, n_layers=2, d_model=32, n_heads=4, conv_kernel_size=5, untie_biases=False)
    full_p, full_b = ConformerEncoder(**base).init(0)
    local = ConformerEncoder(**base, self_attention_model="rel_pos_local_attn", att_context_size=[8, 8])
    local_p, local_b = local.init(0)
    assert list(flatten(local_p)) == list(flatten(full_p)) and list(flatten(local_b)) == list(flatten(full_b))
    assert full_p["layers"]["0"]["self_attn"]["pos_bias_u"] is full_p["layers"]["1"]["self_attn"]["pos_bias_u"]
    assert local_p["layers"]["0"]["self_attn"]["pos_bias_u"] is not local_p["layers"]["1"]["self_attn"]["pos_bias_u"]
    pad, att = local.masks(torch.tensor([5, 3]), 5)
    assert att is None and pad.tolist()[1] == [False] * 3 + [True] * 2


@pytest.mark.parametrize("context,match", [(None, "context size must be set > 0"),
                                           ([-1, 8], "both >= 0"), ([0, 0], "context size must be set > 0")])
def test_local_attention_needs_a_context(context, match):
    with pytest.raises(ValueError, match=match):
        ConformerEncoder(feat_in=16, n_layers=1, d_model=32, self_attention_model="rel_pos_local_attn",
                         att_context_size=context)


def test_context_wider_than_the_input_equals_full_attention():
    base = dict(feat_in=16, n_layers=2, d_model=32, n_heads=4, conv_kernel_size=5, subsampling="dw_striding",
                subsampling_factor=4, subsampling_conv_channels=8)
    full = ConformerEncoder(**base)
    params, buffers = _eval_state(full)
    params["layers"]["1"]["self_attn"]["pos_bias_v"] += 0.3  # a visible positional term
    local = ConformerEncoder(**base, self_attention_model="rel_pos_local_attn", att_context_size=[100, 100])
    x = torch.randn(2, 16, 150)
    lengths = torch.tensor([150, 97])
    (y_full, n_full), _ = full.apply(params, buffers, x, lengths)
    (y_local, n_local), _ = local.apply(params, buffers, x, lengths)
    assert torch.equal(n_full, n_local)
    for i, n in enumerate(n_full.tolist()):
        torch.testing.assert_close(y_local[i, :, :n], y_full[i, :, :n], atol=1e-5, rtol=0)


def test_long_input_frame_depends_only_on_its_receptive_field():
    """20,000 frames, 2 layers, context [8, 8], conv kernel 5: a frame sees at most 2 * (8 + 2) frames to each
    side; changing every frame farther away leaves it as it was, changing one inside moves it."""
    enc = ConformerEncoder(feat_in=32, n_layers=2, d_model=32, n_heads=4, subsampling=None, conv_kernel_size=5,
                           self_attention_model="rel_pos_local_attn", att_context_size=[8, 8])
    params, buffers = _eval_state(enc)
    t, mid, reach = 20_000, 12_345, 20
    x = torch.randn(1, 32, t)
    with torch.no_grad():
        (y, _), _ = enc.apply(params, buffers, x)
        far = x.clone()
        far[..., : mid - reach] = torch.randn(1, 32, mid - reach)
        far[..., mid + reach + 1:] = torch.randn(1, 32, t - mid - reach - 1)
        (y_far, _), _ = enc.apply(params, buffers, far)
        near = x.clone()
        near[..., mid + 15] += 1.0
        (y_near, _), _ = enc.apply(params, buffers, near)
    assert y.shape == (1, 32, t)
    torch.testing.assert_close(y_far[..., mid], y[..., mid], atol=1e-6, rtol=0)
    assert (y_near[..., mid] - y[..., mid]).abs().max() > 1e-4


def test_encoder_on_200k_frames_builds_no_time_by_time_tensor():
    """A [T, T] mask at 200,000 frames would take 40 GB (bool) or 160 GB (float): it must never be built."""
    enc = ConformerEncoder(feat_in=8, n_layers=1, d_model=8, n_heads=2, subsampling=None, conv_kernel_size=3,
                           ff_expansion_factor=1, self_attention_model="rel_pos_local_attn", att_context_size=[16, 16])
    params, buffers = _eval_state(enc)
    with torch.no_grad():
        (y, n), _ = enc.apply(params, buffers, torch.randn(1, 8, 200_000))
    assert y.shape == (1, 8, 200_000) and n.item() == 200_000 and torch.isfinite(y).all()


# --------------------------------------------------------------------------------------- chunked subsampling
SUBSAMPLINGS = [("striding", 4, False), ("striding", 8, True), ("dw_striding", 8, False), ("dw_striding", 4, True),
                ("dw_striding", 16, False)]


@pytest.mark.parametrize("kind,factor,causal", SUBSAMPLINGS)
@pytest.mark.parametrize("chunking", [2, 4, 16, 1024])
def test_time_chunked_subsampling_equals_unchunked(kind, factor, causal, chunking):
    sub = ConvSubsampling(kind, factor, 20, 24, 16, subsampling_conv_chunking_factor=-1, is_causal=causal)
    params, _ = sub.init(RngKey(1))
    x = torch.randn(3, 203, 20)
    lengths = torch.tensor([203, 150, 37])
    (y, n), _ = sub.apply(params, {}, x, lengths)
    chunked = sub.replace(subsampling_conv_chunking_factor=chunking)
    assert chunked.num_time_chunks(tuple(x.shape)) == min(chunking, y.shape[1]) > 1
    (y_c, n_c), _ = chunked.apply(params, {}, x, lengths)
    assert torch.equal(n_c, n)
    torch.testing.assert_close(y_c, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,factor,causal", SUBSAMPLINGS[:3])
def test_auto_chunking_kicks_in_past_the_budget_outside_training(kind, factor, causal):
    sub = ConvSubsampling(kind, factor, 20, 24, 16, is_causal=causal, auto_chunk_bytes=16 * 2**10)
    params, _ = sub.init(RngKey(2))
    x = torch.randn(2, 300, 20)
    lengths = torch.tensor([300, 211])
    chunks = sub.num_time_chunks(tuple(x.shape))
    assert chunks > 1 and sub.num_time_chunks(tuple(x.shape), train=True) == 1
    (y, n), _ = sub.replace(subsampling_conv_chunking_factor=-1).apply(params, {}, x, lengths)
    (y_auto, n_auto), _ = sub.apply(params, {}, x, lengths)
    assert torch.equal(n_auto, n)
    torch.testing.assert_close(y_auto, y, atol=1e-6, rtol=0)
    assert sub.num_time_chunks((1, 20, 20)) == 1  # short inputs are not chunked


def test_auto_chunks_of_a_60_minute_file_stay_within_the_budget():
    """60 minutes at 10 ms: 360,000 frames. Unchunked, the first conv stage of a 256-channel striding subsampling
    holds 256 x 180,000 x 40 floats (7.4 GB); auto mode splits it into chunks of at most 128 MiB."""
    sub = ConvSubsampling("striding", 4, 80, 256, 256)
    t1, f1 = sub.time_sizes(360_000)[1], 40
    total = 256 * t1 * f1 * 4
    chunks = sub.num_time_chunks((1, 360_000, 80))
    assert total > 7e9 and chunks >= total / sub.auto_chunk_bytes
    assert 256 * (-(-t1 // chunks) + 2) * f1 * 4 <= sub.auto_chunk_bytes * 1.01


def test_chunked_subsampling_trains_with_the_same_gradients():
    sub = ConvSubsampling("dw_striding", 8, 16, 12, 8, subsampling_conv_chunking_factor=-1)
    params, _ = sub.init(RngKey(3))
    x = torch.randn(2, 120, 16, requires_grad=True)
    lengths = torch.tensor([120, 77])
    (y, _), _ = sub.apply(params, {}, x, lengths, train=True)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (y4, _), _ = sub.replace(subsampling_conv_chunking_factor=4).apply(params, {}, x, lengths, train=True)
    (g4,) = torch.autograd.grad(y4.square().sum(), x)
    torch.testing.assert_close(g4, g, atol=1e-5, rtol=1e-5)


def test_chunking_factor_values():
    for ok in (-1, 1, 2, 8, 64):
        ConvSubsampling("striding", 4, 80, 64, 64, subsampling_conv_chunking_factor=ok)
    for bad in (0, 3, -2, 5):
        with pytest.raises(ValueError, match="subsampling_conv_chunking_factor should be -1, 1, or a power of 2"):
            ConvSubsampling("striding", 4, 80, 64, 64, subsampling_conv_chunking_factor=bad)


def test_encoder_output_does_not_depend_on_the_chunking_factor():
    base = dict(feat_in=16, n_layers=1, d_model=16, n_heads=2, conv_kernel_size=5, subsampling="dw_striding",
                subsampling_factor=8, subsampling_conv_channels=8, self_attention_model="rel_pos_local_attn",
                att_context_size=[4, 4])
    enc = ConformerEncoder(**base, subsampling_conv_chunking_factor=-1)
    params, buffers = _eval_state(enc)
    x = torch.randn(2, 16, 400)
    lengths = torch.tensor([400, 233])
    (y, n), _ = enc.apply(params, buffers, x, lengths)
    for factor in (1, 2, 32):
        (y_f, n_f), _ = ConformerEncoder(**base, subsampling_conv_chunking_factor=factor).apply(params, buffers, x,
                                                                                                lengths)
        assert torch.equal(n_f, n)
        torch.testing.assert_close(y_f, y, atol=1e-5, rtol=0)


def test_local_attention_and_chunked_subsampling_compile_without_graph_breaks():
    torch._dynamo.reset()
    enc = ConformerEncoder(feat_in=16, n_layers=1, d_model=32, n_heads=4, conv_kernel_size=5, subsampling="dw_striding",
                           subsampling_factor=4, subsampling_conv_chunking_factor=2, global_tokens=2,
                           self_attention_model="rel_pos_local_attn", att_context_size=[3, 5])
    params, buffers = _eval_state(enc)

    def run(x, lengths):
        return enc.apply(params, buffers, x, lengths)[0]

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 16, 48)
    try:
        for lengths in ([48, 30, 12], [20, 48, 33]):
            lengths = torch.tensor(lengths)
            (y, y_len), (ye, ye_len) = compiled(x, lengths), run(x, lengths)
            torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-5)
            assert torch.equal(y_len, ye_len)
    finally:
        torch._dynamo.reset()
