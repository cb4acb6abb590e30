"""RNNTDecoder: NeMo's keys and shapes, parity with NeMo 3.0's prediction networks, step == predict, init, dropout,
config handling."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from compat.archive import load_config, load_state_dict
from nemofn.asr.configs.modules import RNNTDecoderConfig, RNNTPredNetConfig
from nemofn.asr.modules.registry import build_module
from nemofn.asr.modules.rnnt_decoder import RNNTDecoder
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError
from nemofn.core.tree import flatten, unflatten

TRANSDUCERS = ("fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe")
ATOL = 1e-4

# State-dict keys and shapes of NeMo 3.0's own RNNTDecoder, printed once from the side venv with
# `RNNTDecoder(prednet=dict(...), vocab_size=10, ...).state_dict()` for the configs named.
NEMO_TWO_LAYERS = [  # prednet=dict(pred_hidden=16, pred_rnn_layers=2, dropout=0.1)
    ("prediction.embed.weight", (11, 16)),
    ("prediction.dec_rnn.lstm.weight_ih_l0", (64, 16)),
    ("prediction.dec_rnn.lstm.weight_hh_l0", (64, 16)),
    ("prediction.dec_rnn.lstm.bias_ih_l0", (64,)),
    ("prediction.dec_rnn.lstm.bias_hh_l0", (64,)),
    ("prediction.dec_rnn.lstm.weight_ih_l1", (64, 16)),
    ("prediction.dec_rnn.lstm.weight_hh_l1", (64, 16)),
    ("prediction.dec_rnn.lstm.bias_ih_l1", (64,)),
    ("prediction.dec_rnn.lstm.bias_hh_l1", (64,)),
]
NEMO_PROJECTED = [  # prednet=dict(pred_hidden=16, pred_rnn_layers=2, rnn_hidden_size=24)
    ("prediction.embed.weight", (11, 16)),
    ("prediction.dec_rnn.lstm.weight_ih_l0", (96, 16)),
    ("prediction.dec_rnn.lstm.weight_hh_l0", (96, 16)),
    ("prediction.dec_rnn.lstm.bias_ih_l0", (96,)),
    ("prediction.dec_rnn.lstm.bias_hh_l0", (96,)),
    ("prediction.dec_rnn.lstm.weight_hr_l0", (16, 24)),
    ("prediction.dec_rnn.lstm.weight_ih_l1", (96, 16)),
    ("prediction.dec_rnn.lstm.weight_hh_l1", (96, 16)),
    ("prediction.dec_rnn.lstm.bias_ih_l1", (96,)),
    ("prediction.dec_rnn.lstm.bias_hh_l1", (96,)),
    ("prediction.dec_rnn.lstm.weight_hr_l1", (16, 24)),
]
NEMO_NO_PAD = [  # prednet=dict(pred_hidden=16, pred_rnn_layers=1), blank_as_pad=False
    ("prediction.embed.weight", (10, 16)),
    ("prediction.dec_rnn.lstm.weight_ih_l0", (64, 16)),
    ("prediction.dec_rnn.lstm.weight_hh_l0", (64, 16)),
    ("prediction.dec_rnn.lstm.bias_ih_l0", (64,)),
    ("prediction.dec_rnn.lstm.bias_hh_l0", (64,)),
]


def _block(prednet: dict, **kw) -> dict:
    return {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "prednet": prednet, "vocab_size": 10, **kw}


def _shapes(params: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in flatten(params).items()]


@pytest.mark.parametrize("block, expected", [
    (_block({"pred_hidden": 16, "pred_rnn_layers": 2, "dropout": 0.1}), NEMO_TWO_LAYERS),
    (_block({"pred_hidden": 16, "pred_rnn_layers": 2, "rnn_hidden_size": 24}), NEMO_PROJECTED),
    (_block({"pred_hidden": 16, "pred_rnn_layers": 1}, blank_as_pad=False), NEMO_NO_PAD),
], ids=["two_layers", "projected", "no_pad"])
def test_keys_and_shapes_equal_nemos(block, expected):
    dec = RNNTDecoder.from_config(block)
    params, buffers = dec.init(0)
    assert buffers == {}
    assert sorted(_shapes(params)) == sorted(expected)


def _references(nemo3_dir, name):
    path = nemo3_dir / f"{name}.nemo"
    cfg, state = load_config(path), load_state_dict(path)
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
    params = unflatten({k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")})
    return RNNTDecoder.from_config(cfg.decoder), params, ref


@pytest.mark.parametrize("name", TRANSDUCERS)
def test_init_matches_the_archive_and_forward_matches_nemo(nemo3_dir, name):
    dec, params, ref = _references(nemo3_dir, name)
    assert _shapes(dec.init(0)[0]) == _shapes(params)
    with torch.no_grad():
        (g, lengths, (h, c)), buffers = dec.apply(params, {}, ref["targets"], ref["targets_len"])
    assert buffers == {} and lengths is ref["targets_len"]
    assert g.shape == ref["decoder_out"].shape
    for i, n in enumerate(ref["targets_len"].tolist()):  # past n + 1 the outputs depend on the padding
        torch.testing.assert_close(g[i, :, :n + 1], ref["decoder_out"][i, :, :n + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(h, ref["decoder_state_h"], atol=ATOL, rtol=0)
    torch.testing.assert_close(c, ref["decoder_state_c"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", TRANSDUCERS[:1])
def test_steps_from_the_blank_reproduce_the_forward(nemo3_dir, name):
    dec, params, ref = _references(nemo3_dir, name)
    targets = ref["targets"]
    with torch.no_grad():
        g, state = dec.predict(params, targets, None, add_sos=True)
        labels = torch.full((targets.shape[0],), dec.blank_idx)
        step_state = None
        for u in range(targets.shape[1] + 1):
            out, step_state = dec.step(params, labels, step_state)
            torch.testing.assert_close(out, g[:, u], atol=1e-6, rtol=0)
            if u < targets.shape[1]:
                labels = targets[:, u]
    torch.testing.assert_close(step_state[0], state[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(step_state[1], state[1], atol=1e-6, rtol=0)


def _torch_lstm(dec: RNNTDecoder, params: dict) -> torch.nn.LSTM:
    lstm = torch.nn.LSTM(dec.pred_hidden, dec.cell_size, num_layers=dec.pred_rnn_layers, proj_size=dec.proj_size)
    lstm.load_state_dict(params["prediction"]["dec_rnn"]["lstm"], strict=True)  # our names and shapes are torch's
    return lstm.eval()


@pytest.mark.parametrize("prednet, blank_as_pad", [
    ({"pred_hidden": 16, "pred_rnn_layers": 2}, True),
    ({"pred_hidden": 16, "pred_rnn_layers": 2, "rnn_hidden_size": 24}, True),
    ({"pred_hidden": 8, "pred_rnn_layers": 1}, False),
], ids=["two_layers", "projected", "no_pad"])
def test_forward_equals_torch_lstm_and_steps_equal_predict(prednet, blank_as_pad):
    dec = RNNTDecoder.from_config(_block(prednet, blank_as_pad=blank_as_pad))
    params, _ = dec.init(RngKey(3))
    targets = torch.randint(0, dec.vocab_size, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (g, _, (h, c)), _ = dec.apply(params, {}, targets, torch.tensor([5, 3, 1]))
        x = torch.nn.functional.embedding(targets, params["prediction"]["embed"]["weight"])
        x = torch.cat([torch.zeros(3, 1, dec.pred_hidden), x], dim=1).transpose(0, 1)
        expected, (eh, ec) = _torch_lstm(dec, params)(x)
        torch.testing.assert_close(g, expected.permute(1, 2, 0))
        torch.testing.assert_close((h, c), (eh, ec))
        assert h.shape == (dec.pred_rnn_layers, 3, dec.pred_hidden)
        assert c.shape == (dec.pred_rnn_layers, 3, dec.cell_size)
        # decoding: the blank label gives the zero start input even without an embedding row for it
        step_g, state = dec.step(params, torch.full((3,), dec.blank_idx), None)
        torch.testing.assert_close(step_g, g[:, :, 0])
        for u in range(5):
            step_g, state = dec.step(params, targets[:, u], state)
            torch.testing.assert_close(step_g, g[:, :, u + 1])
        # predict(None) is one zero-input step (NeMo's priming call)
        primed, _ = dec.predict(params, None, None, add_sos=False, batch_size=3)
        torch.testing.assert_close(primed[:, 0], g[:, :, 0])
    zeros = dec.initial_state(2, dtype=torch.float64)
    assert zeros[0].shape == (dec.pred_rnn_layers, 2, dec.pred_hidden) and zeros[0].dtype == torch.float64
    assert zeros[1].shape == (dec.pred_rnn_layers, 2, dec.cell_size) and not zeros[1].any()


def test_init_follows_nemo():
    dec = RNNTDecoder(vocab_size=50, pred_hidden=64, pred_rnn_layers=2)
    params, _ = dec.init(0)
    embed = params["prediction"]["embed"]["weight"]
    assert embed.shape == (51, 64) and not embed[dec.blank_idx].any()
    assert abs(embed[:50].std().item() - 1.0) < 0.05 and abs(embed[:50].mean().item()) < 0.05  # N(0, 1)
    lstm = params["prediction"]["dec_rnn"]["lstm"]
    bound, r = 1 / math.sqrt(64), 64
    for layer in range(2):
        for name in ("weight_ih", "weight_hh"):
            w = lstm[f"{name}_l{layer}"]
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound and abs(w.mean()) < 0.01
        b_ih, b_hh = lstm[f"bias_ih_l{layer}"], lstm[f"bias_hh_l{layer}"]
        assert torch.all(b_ih[r:2 * r] == 1.0)  # forget_gate_bias
        assert not b_hh[r:2 * r].any()  # hidden_hidden_bias_scale = 0
        for other in (b_ih[:r], b_ih[2 * r:], b_hh[:r], b_hh[2 * r:]):  # the other gates keep torch's uniform init
            assert other.abs().max() <= bound and other.abs().min() > 0 and other.std() > 0.3 * bound
    assert not torch.equal(lstm["weight_ih_l0"], lstm["weight_ih_l1"])
    again, _ = dec.init(0)
    assert all(torch.equal(a, b) for a, b in zip(flatten(params).values(), flatten(again).values()))

    scaled, _ = dec.replace(weights_init_scale=0.5, hidden_hidden_bias_scale=0.25, forget_gate_bias=2.0).init(0)
    for name, t in flatten(scaled["prediction"]["dec_rnn"]["lstm"]).items():
        base = lstm[name].clone()
        if name.startswith("bias_ih"):
            base[r:2 * r] = 2.0
        if name.startswith("bias_hh"):
            hh = dec.replace(hidden_hidden_bias_scale=1.0).init(0)[0]["prediction"]["dec_rnn"]["lstm"][name]
            base[r:2 * r] = hh[r:2 * r] * 0.25
        torch.testing.assert_close(t, base * 0.5, rtol=0, atol=1e-7)
    torch.testing.assert_close(scaled["prediction"]["embed"]["weight"], embed)  # the embedding is not scaled
    untouched, _ = dec.replace(forget_gate_bias=None).init(0)  # None: no forget-gate init at all, as NeMo
    b_hh = untouched["prediction"]["dec_rnn"]["lstm"]["bias_hh_l0"]
    assert b_hh[r:2 * r].abs().min() > 0
    proj = RNNTDecoder(vocab_size=5, pred_hidden=8, rnn_hidden_size=32).init(0)[0]["prediction"]["dec_rnn"]["lstm"]
    assert proj["weight_hr_l0"].abs().max() <= 1 / math.sqrt(32) and torch.all(proj["bias_ih_l0"][32:64] == 1.0)


def test_dropout_only_in_training():
    dec = RNNTDecoder(vocab_size=10, pred_hidden=32, pred_rnn_layers=2, dropout=0.3)
    params, _ = dec.init(1)
    targets, lengths = torch.randint(0, 10, (4, 6)), torch.full((4,), 6)
    (evaluated, _, _), _ = dec.apply(params, {}, targets, lengths)
    (again, _, _), _ = dec.apply(params, {}, targets, lengths, train=False, rng=RngKey(0))
    assert torch.equal(evaluated, again)
    (plain, _, _), _ = dec.replace(dropout=0.0).apply(params, {}, targets, lengths, train=True)
    assert torch.equal(plain, evaluated)  # no dropout: train and eval agree, no key needed
    torch.manual_seed(0)
    (trained, _, _), _ = dec.apply(params, {}, targets, lengths, train=True, rng=RngKey(0))
    zeros = (trained == 0).float().mean().item()
    assert 0.2 < zeros < 0.4  # the output dropout zeroes about p of the outputs
    (trained2, _, _), _ = dec.apply(params, {}, targets, lengths, train=True, rng=RngKey(0))
    assert not torch.equal(trained, trained2)
    torch.manual_seed(0)
    (trained3, _, _), _ = dec.apply(params, {}, targets, lengths, train=True, rng=RngKey(0))
    assert torch.equal(trained, trained3)  # drawn from torch's global generator
    with pytest.raises(ValueError, match="needs a random key"):
        dec.apply(params, {}, targets, lengths, train=True)
    # a one-layer net has no inter-layer dropout: the kept outputs are the eval outputs scaled by 1 / (1 - p)
    one = dec.replace(pred_rnn_layers=1)
    p1, _ = one.init(1)
    (ev, _, _), _ = one.apply(p1, {}, targets, lengths)
    (tr, _, _), _ = one.apply(p1, {}, targets, lengths, train=True, rng=RngKey(0))
    kept = tr != 0
    torch.testing.assert_close(tr[kept], ev[kept] / 0.7)
    # with two layers the inter-layer dropout changes the kept outputs too
    (tr2, _, _), _ = dec.apply(params, {}, targets, lengths, train=True, rng=RngKey(0))
    kept2 = tr2 != 0
    assert not torch.allclose(tr2[kept2], evaluated[kept2] / 0.7)


def test_random_state_sampling_only_in_training():
    dec = RNNTDecoder(vocab_size=10, pred_hidden=8, rnn_hidden_size=16, random_state_sampling=True)
    params, _ = dec.init(2)
    targets, lengths = torch.randint(0, 10, (2, 3)), torch.full((2,), 3)
    (ev, _, _), _ = dec.apply(params, {}, targets, lengths)
    (zero_state, _, _), _ = dec.replace(random_state_sampling=False).apply(params, {}, targets, lengths, train=True)
    assert torch.equal(ev, zero_state)
    torch.manual_seed(5)
    (tr, _, _), _ = dec.apply(params, {}, targets, lengths, train=True, rng=RngKey(0))
    assert not torch.allclose(tr, ev)
    torch.manual_seed(5)
    h0 = torch.randn(1, 2, 8)
    c0 = torch.randn(1, 2, 16)
    (given, _, _), _ = dec.apply(params, {}, targets, lengths, states=(h0, c0), train=True, rng=RngKey(0))
    torch.testing.assert_close(given, tr)  # N(0, 1) states from the global generator, h then c
    with pytest.raises(ValueError, match="needs a random key"):
        dec.apply(params, {}, targets, lengths, train=True)


def test_gradients_flow_and_the_blank_row_gets_none():
    dec = RNNTDecoder(vocab_size=6, pred_hidden=8, pred_rnn_layers=2)
    params, _ = dec.init(0)
    for leaf in flatten(params).values():
        leaf.requires_grad_(True)
    targets = torch.tensor([[1, 6, 2], [6, 6, 3]])  # the blank id (6) as padding
    (g, _, _), _ = dec.apply(params, {}, targets, torch.tensor([3, 3]), train=True, rng=RngKey(0))
    g.square().sum().backward()
    embed = params["prediction"]["embed"]["weight"]
    assert not embed.grad[6].any() and embed.grad[1].abs().sum() > 0
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0
               for leaf in flatten(params["prediction"]["dec_rnn"]).values())


def test_config_errors_name_the_full_key():
    with pytest.raises(ConfigError) as info:
        RNNTDecoder.from_config(_block({"pred_hiden": 16, "pred_rnn_layers": 1}), path="model.decoder")
    assert str(info.value) == ("unknown key model.decoder.prednet.pred_hiden; did you mean "
                               "model.decoder.prednet.pred_hidden?")
    with pytest.raises(ConfigError, match="unknown key decoder.blank_as_padd; did you mean decoder.blank_as_pad"):
        RNNTDecoder.from_config(_block({"pred_hidden": 16, "pred_rnn_layers": 1}, blank_as_padd=True))
    with pytest.raises(ConfigError, match=r"decoder.prednet: missing required key\(s\) pred_rnn_layers") as info:
        RNNTDecoder.from_config(_block({"pred_hidden": 16}))
    assert info.value.key == "decoder.prednet.pred_rnn_layers"
    with pytest.raises(ConfigError, match=r"decoder.vocab_size is \?\?\?"):
        RNNTDecoder.from_config({**_block({"pred_hidden": 16, "pred_rnn_layers": 1}), "vocab_size": "???"})
    with pytest.raises(ConfigError, match="decoder.prednet.dropout: wrong type"):
        RNNTDecoder.from_config(_block({"pred_hidden": 16, "pred_rnn_layers": 1, "dropout": "high"}))
    with pytest.raises(NotImplementedError, match=r"model.decoder.prednet.t_max=100: chrono"):
        RNNTDecoder.from_config(_block({"pred_hidden": 16, "pred_rnn_layers": 1, "t_max": 100}),
                                path="model.decoder")
    for mode in ("batch", "layer"):
        with pytest.raises(NotImplementedError, match=f"decoder.normalization_mode='{mode}'"):
            RNNTDecoder.from_config(_block({"pred_hidden": 16, "pred_rnn_layers": 1}, normalization_mode=mode))
    with pytest.raises(ConfigError, match="decoder.normalization_mode: invalid value 'group'"):
        RNNTDecoder.from_config(_block({"pred_hidden": 16, "pred_rnn_layers": 1}, normalization_mode="group"))
    with pytest.raises(NotImplementedError, match="prednet.t_max"):
        RNNTDecoder(vocab_size=4, pred_hidden=4, t_max=10)
    with pytest.raises(ValueError, match=r"in config block `model.decoder`: .*dropout=1.5"):
        build_module(_block({"pred_hidden": 16, "pred_rnn_layers": 1, "dropout": 1.5}), where="model.decoder")


def test_from_config_defaults_are_nemos_and_every_spelling_builds():
    block = _block({"pred_hidden": 16, "pred_rnn_layers": 1})
    dec = RNNTDecoder.from_config(block)
    # NeMo's defaults: dropout 0, forget_gate_bias 1, weights_init_scale 1, hidden_hidden_bias_scale 0,
    # rnn_hidden_size -1, t_max None, normalization_mode None, random_state_sampling False, blank_as_pad True
    assert dec == RNNTDecoder(vocab_size=10, pred_hidden=16)
    assert dec.blank_idx == 10 and dec.proj_size == 0 and dec.cell_size == 16
    assert RNNTDecoder(vocab_size=10, pred_hidden=16, rnn_hidden_size=8).proj_size == 0  # smaller: no projection
    structured = OmegaConf.structured(RNNTDecoderConfig(prednet=RNNTPredNetConfig(pred_hidden=16, pred_rnn_layers=1),
                                                        vocab_size=10))
    assert RNNTDecoder.from_config(structured) == dec
    assert build_module(OmegaConf.create(block), where="model.decoder") == dec
    from compat.registry import build_module as compat_build, canonical_target
    for target in ("nemo.collections.asr.modules.RNNTDecoder", "nemo.collections.asr.modules.rnnt.RNNTDecoder"):
        assert canonical_target(target) == "nemo.collections.asr.modules.RNNTDecoder"
        assert compat_build({**block, "_target_": target}) == dec
