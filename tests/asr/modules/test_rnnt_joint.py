"""RNNTJoint: NeMo's keys and shapes, parity with NeMo 3.0's joints (RNNT, TDT, hybrid), the log-softmax rule,
single steps, dropout, config handling."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from compat.archive import load_config, load_state_dict
from nemofn.asr.configs.modules import RNNTJointConfig, RNNTJointNetConfig
from nemofn.asr.modules.registry import build_module
from nemofn.asr.modules.rnnt_joint import RNNTJoint
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError
from nemofn.core.tree import flatten, unflatten

TRANSDUCERS = ("fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe")
ATOL = 1e-4

# State-dict keys and shapes of NeMo 3.0's own RNNTJoint, printed once from the side venv with
# `RNNTJoint(jointnet=dict(encoder_hidden=20, pred_hidden=16, joint_hidden=12, ...), num_classes=10, ...)`.
NEMO_NO_DROPOUT = [  # activation="tanh", dropout=0.0, num_extra_outputs=3
    ("pred.weight", (12, 16)),
    ("pred.bias", (12,)),
    ("enc.weight", (12, 20)),
    ("enc.bias", (12,)),
    ("joint_net.1.weight", (14, 12)),
    ("joint_net.1.bias", (14,)),
]
NEMO_DROPOUT = [  # activation="relu", dropout=0.1
    ("pred.weight", (12, 16)),
    ("pred.bias", (12,)),
    ("enc.weight", (12, 20)),
    ("enc.bias", (12,)),
    ("joint_net.2.weight", (11, 12)),
    ("joint_net.2.bias", (11,)),
]


def _block(activation="relu", dropout=0.0, **kw) -> dict:
    jointnet = {"encoder_hidden": 20, "pred_hidden": 16, "joint_hidden": 12, "activation": activation,
                "dropout": dropout}
    return {"_target_": "nemo.collections.asr.modules.RNNTJoint", "jointnet": jointnet, "num_classes": 10, **kw}


def _shapes(params: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in flatten(params).items()]


@pytest.mark.parametrize("block, expected", [
    (_block("tanh", 0.0, num_extra_outputs=3), NEMO_NO_DROPOUT),
    (_block("relu", 0.1), NEMO_DROPOUT),
], ids=["dropout_0", "dropout_0.1"])
def test_keys_and_shapes_equal_nemos(block, expected):
    joint = RNNTJoint.from_config(block)
    params, buffers = joint.init(0)
    assert buffers == {}
    assert sorted(_shapes(params)) == sorted(expected)


def _references(nemo3_dir, name):
    path = nemo3_dir / f"{name}.nemo"
    cfg, state = load_config(path), load_state_dict(path)
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
    params = unflatten({k.removeprefix("joint."): v for k, v in state.items() if k.startswith("joint.")})
    return RNNTJoint.from_config(cfg.joint), params, ref


@pytest.mark.parametrize("name", TRANSDUCERS)
def test_init_matches_the_archive_and_outputs_match_nemo(nemo3_dir, name):
    joint, params, ref = _references(nemo3_dir, name)
    assert _shapes(joint.init(0)[0]) == _shapes(params)
    assert joint.blank_id == ref["blank_id"] and joint.num_extra_outputs == ref["num_extra_outputs"]
    assert joint.num_classes_with_blank == ref["joint_out"].shape[-1]
    assert list(joint.vocabulary) == list(ref["vocabulary"])
    f, g = ref["encoded"].transpose(1, 2), ref["decoder_out"].transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(joint.project_encoder(params, f), ref["joint_enc_proj"], atol=ATOL, rtol=0)
        torch.testing.assert_close(joint.project_prednet(params, g), ref["joint_pred_proj"], atol=ATOL, rtol=0)
        out, buffers = joint.apply(params, {}, ref["encoded"], ref["decoder_out"])  # log_softmax: null, on the CPU
        torch.testing.assert_close(out, ref["joint_out"], atol=ATOL, rtol=0)
        logits = joint.replace(log_softmax=False).joint(params, f, g)
        torch.testing.assert_close(logits, ref["joint_logits"], atol=ATOL, rtol=0)
    assert buffers == {}


def test_log_softmax_rule_temperature_and_single_steps():
    joint = RNNTJoint.from_config(_block("sigmoid", num_extra_outputs=2))
    assert joint.log_softmax is None and joint.num_classes_with_blank == 13 and joint.blank_id == 10
    params, _ = joint.init(RngKey(4))
    f, g = torch.randn(2, 5, 20), torch.randn(2, 3, 16)
    logits = joint.replace(log_softmax=False).joint(params, f, g)
    hidden = torch.sigmoid(torch.nn.functional.linear(f, params["enc"]["weight"], params["enc"]["bias"]).unsqueeze(2)
                           + torch.nn.functional.linear(g, params["pred"]["weight"], params["pred"]["bias"])
                           .unsqueeze(1))
    out = params["joint_net"]["1"]
    torch.testing.assert_close(logits, torch.nn.functional.linear(hidden, out["weight"], out["bias"]))
    assert logits.shape == (2, 5, 3, 13)
    torch.testing.assert_close(joint.joint(params, f, g), logits.log_softmax(-1))  # None on the CPU: log-softmax
    torch.testing.assert_close(joint.replace(log_softmax=True).joint(params, f, g), logits.log_softmax(-1))
    hot = joint.replace(temperature=2.0)
    torch.testing.assert_close(hot.joint(params, f, g), (logits / 2.0).log_softmax(-1))
    torch.testing.assert_close(hot.replace(log_softmax=False).joint(params, f, g), logits)  # NeMo: no division
    # single decoding steps: f [B, J], g [B, J] -> [B, V + 1 + D], the same values as the broadcast joint
    fp, gp = joint.project_encoder(params, f), joint.project_prednet(params, g)
    step = joint.joint_after_projection(params, fp[:, 4], gp[:, 1])
    assert step.shape == (2, 13)
    torch.testing.assert_close(step, logits[:, 4, 1].log_softmax(-1))
    nemo_style = joint.joint_after_projection(params, fp[:, 4:5], gp[:, 1:2])  # [B, 1, J] pairs, as label looping
    torch.testing.assert_close(nemo_style[:, 0, 0], step)


def test_dropout_and_masking_only_in_training():
    joint = RNNTJoint.from_config(_block("relu", 0.5, log_softmax=False))
    params, _ = joint.init(0)
    f, g = torch.randn(2, 4, 20), torch.randn(2, 3, 16)
    evaluated = joint.joint(params, f, g)
    assert torch.equal(joint.joint(params, f, g, train=False, rng=RngKey(0)), evaluated)
    torch.manual_seed(0)
    trained = joint.joint(params, f, g, train=True, rng=RngKey(0))
    torch.manual_seed(0)
    assert torch.equal(joint.joint(params, f, g, train=True, rng=RngKey(0)), trained)
    assert not torch.allclose(trained, evaluated)
    with pytest.raises(ValueError, match="needs a random key"):
        joint.joint(params, f, g, train=True)
    no_dropout = joint.replace(dropout=0.0)
    plain = {**params, "joint_net": {"1": params["joint_net"]["2"]}}
    assert torch.equal(no_dropout.joint(plain, f, g, train=True), evaluated)
    # dropout acts on the activation, before the output layer: dropping (almost) everything leaves the bias
    torch.manual_seed(0)
    torch.testing.assert_close(joint.replace(dropout=0.999999).joint(params, f, g, train=True, rng=RngKey(0)),
                               params["joint_net"]["2"]["bias"].expand_as(evaluated))
    # HAINAN masking zeroes whole prediction-net steps (their projection) in training
    masked = no_dropout.replace(masking_prob=0.5)
    torch.manual_seed(1)
    out = masked.joint(plain, f, g, train=True, rng=RngKey(0))
    fp = torch.nn.functional.linear(f, params["enc"]["weight"], params["enc"]["bias"])
    gp = torch.nn.functional.linear(g, params["pred"]["weight"], params["pred"]["bias"])
    torch.manual_seed(1)
    keep = torch.rand(2, 1, 3, 1) > 0.5
    expected = torch.nn.functional.linear(torch.relu(fp.unsqueeze(2) + gp.unsqueeze(1) * keep),
                                          params["joint_net"]["2"]["weight"], params["joint_net"]["2"]["bias"])
    torch.testing.assert_close(out, expected)
    assert torch.equal(masked.joint(plain, f, g), evaluated)


def test_init_is_torch_linear_default():
    joint = RNNTJoint(num_classes=200, encoder_hidden=256, pred_hidden=64, joint_hidden=128)
    params, _ = joint.init(0)
    for name, fan_in in (("enc", 256), ("pred", 64)):
        for leaf in params[name].values():
            bound = 1 / math.sqrt(fan_in)
            assert leaf.abs().max() <= bound and leaf.abs().max() > 0.9 * bound
    out = params["joint_net"]["1"]
    assert out["weight"].shape == (201, 128) and out["weight"].abs().max() <= 1 / math.sqrt(128)
    assert not torch.equal(params["enc"]["weight"][:, :64], params["pred"]["weight"])
    assert torch.equal(joint.init(0)[0]["enc"]["weight"], params["enc"]["weight"])


def test_config_errors_name_the_full_key():
    with pytest.raises(ConfigError) as info:
        RNNTJoint.from_config({**_block(), "jointnet": {**_block()["jointnet"], "joint_hiden": 4}},
                              path="model.joint")
    assert str(info.value) == ("unknown key model.joint.jointnet.joint_hiden; did you mean "
                               "model.joint.jointnet.joint_hidden?")
    with pytest.raises(ConfigError, match="unknown key joint.num_clases; did you mean joint.num_classes"):
        RNNTJoint.from_config({**_block(), "num_clases": 3})
    with pytest.raises(ConfigError, match=r"joint.jointnet.activation: invalid value 'gelu'; expected one of "
                                          r"\['relu', 'tanh', 'sigmoid'\]"):
        RNNTJoint.from_config(_block("gelu"))
    with pytest.raises(ConfigError, match="joint.jointnet.activation: invalid value 'RELU'"):  # NeMo refuses it too
        RNNTJoint.from_config(_block("RELU"))
    with pytest.raises(ValueError, match="jointnet.activation='gelu' is not supported"):
        RNNTJoint(num_classes=3, encoder_hidden=4, pred_hidden=4, joint_hidden=4, activation="gelu")
    with pytest.raises(ConfigError, match="joint.fuse_loss_wer is true, so joint.fused_batch_size cannot be null") \
            as info:
        RNNTJoint.from_config(_block(fuse_loss_wer=True))
    assert info.value.key == "joint.fused_batch_size"
    with pytest.raises(ConfigError, match="joint.fused_batch_size cannot be null"):
        RNNTJoint.from_config(_block(experimental_fuse_loss_wer=True))
    with pytest.raises(ValueError, match="fused_batch_size cannot be null"):
        RNNTJoint(num_classes=3, encoder_hidden=4, pred_hidden=4, joint_hidden=4, fuse_loss_wer=True)
    missing = _block()
    del missing["jointnet"]["encoder_hidden"]
    with pytest.raises(ConfigError, match=r"joint.jointnet: missing required key\(s\) encoder_hidden") as info:
        RNNTJoint.from_config(missing)
    assert info.value.key == "joint.jointnet.encoder_hidden"
    with pytest.raises(ValueError, match=r"in config block `model.joint`: .*dropout=1.0"):
        build_module(_block(dropout=1.0), where="model.joint")


def test_from_config_defaults_are_nemos_and_every_spelling_builds():
    block = _block()
    joint = RNNTJoint.from_config(block)
    # NeMo's defaults: dropout 0, num_extra_outputs 0, vocabulary None, log_softmax None, preserve_memory,
    # fuse_loss_wer False, fused_batch_size None, masking_prob -1
    assert joint == RNNTJoint(num_classes=10, encoder_hidden=20, pred_hidden=16, joint_hidden=12)
    fused = RNNTJoint.from_config(_block(experimental_fuse_loss_wer=True, fused_batch_size=4,
                                         vocabulary=list("abcdefghij")))
    assert fused.fuse_loss_wer and fused.fused_batch_size == 4 and fused.vocabulary == tuple("abcdefghij")
    structured = OmegaConf.structured(RNNTJointConfig(
        jointnet=RNNTJointNetConfig(encoder_hidden=20, pred_hidden=16, joint_hidden=12, activation="relu"),
        num_classes=10))
    assert RNNTJoint.from_config(structured) == joint
    assert build_module(OmegaConf.create(block), where="model.joint") == joint
    from compat.registry import build_module as compat_build, canonical_target
    for target in ("nemo.collections.asr.modules.RNNTJoint", "nemo.collections.asr.modules.rnnt.RNNTJoint"):
        assert canonical_target(target) == "nemo.collections.asr.modules.RNNTJoint"
        assert compat_build({**block, "_target_": target}) == joint
