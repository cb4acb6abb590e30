"""ConvASRDecoder: keys, shapes, blank-last log-probs, temperature, config handling, init."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nemofn.asr.modules.decoder import ConvASRDecoder
from nemofn.core.schema import ConfigError
from nemofn.core.tree import flatten


def test_params_shapes_and_log_softmax_output():
    dec = ConvASRDecoder(feat_in=16, num_classes=5)
    params, buffers = dec.init(0)
    assert buffers == {}
    shapes = {k: tuple(v.shape) for k, v in flatten(params).items()}
    assert shapes == {"decoder_layers.0.weight": (6, 16, 1), "decoder_layers.0.bias": (6,)}
    assert dec.num_classes_with_blank == 6
    x = torch.randn(3, 16, 7)
    log_probs, new_buffers = dec.apply(params, buffers, x)
    assert log_probs.shape == (3, 7, 6) and new_buffers is buffers
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 7))
    w, b = params["decoder_layers"]["0"]["weight"], params["decoder_layers"]["0"]["bias"]
    logits = torch.einsum("vc,bct->btv", w[:, :, 0], x) + b
    torch.testing.assert_close(log_probs, logits.log_softmax(-1))


def test_temperature_divides_logits():
    dec = ConvASRDecoder(feat_in=4, num_classes=3)
    params, _ = dec.init(1)
    x = torch.randn(1, 4, 5)
    base, _ = dec.apply(params, {}, x)
    hot, _ = dec.replace(temperature=2.0).apply(params, {}, x)
    assert dec.temperature == 1.0
    logits = base - base.logsumexp(-1, keepdim=True)  # log-probs are logits up to a per-frame constant
    torch.testing.assert_close(hot, (logits / 2.0).log_softmax(-1))


def test_vocabulary_sets_num_classes_and_must_agree():
    labels = [" ", "a", "b"]
    assert ConvASRDecoder(feat_in=4, num_classes=-1, vocabulary=labels).num_classes == 3
    assert ConvASRDecoder(feat_in=4, num_classes=0, vocabulary=labels).num_classes_with_blank == 4
    assert ConvASRDecoder(feat_in=4, num_classes=3, vocabulary=labels).vocabulary == (" ", "a", "b")
    with pytest.raises(ValueError, match="num_classes=4 but the vocabulary has 3"):
        ConvASRDecoder(feat_in=4, num_classes=4, vocabulary=labels)
    with pytest.raises(ValueError, match="neither vocabulary nor num_classes"):
        ConvASRDecoder(feat_in=4, num_classes=-1)
    assert ConvASRDecoder(feat_in=4, num_classes=3, add_blank=False).num_classes_with_blank == 3


def test_from_config():
    cfg = OmegaConf.create({"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 8,
                            "num_classes": 2, "vocabulary": ["x", "y"]})
    dec = ConvASRDecoder.from_config(cfg)
    assert dec == ConvASRDecoder(feat_in=8, num_classes=2, vocabulary=["x", "y"])
    with pytest.raises(ConfigError, match="unknown key decoder.num_class; did you mean decoder.num_classes"):
        ConvASRDecoder.from_config({"feat_in": 8, "num_class": 2})
    with pytest.raises(ValueError, match="feat_out"):
        ConvASRDecoder.from_config({"feat_in": None, "num_classes": 2})


def test_init_is_xavier_weight_and_torch_default_bias():
    dec = ConvASRDecoder(feat_in=64, num_classes=63)
    params, _ = dec.init(0)
    w, b = params["decoder_layers"]["0"]["weight"], params["decoder_layers"]["0"]["bias"]
    xavier = math.sqrt(6 / (64 + 64))
    assert w.abs().max() <= xavier and w.abs().max() > 0.8 * xavier
    assert b.abs().max() <= 1 / math.sqrt(64)
    assert torch.equal(w, dec.init(0)[0]["decoder_layers"]["0"]["weight"])
    default = ConvASRDecoder(feat_in=64, num_classes=63, init_mode=None).init(0)[0]
    assert default["decoder_layers"]["0"]["weight"].abs().max() <= 1 / math.sqrt(64)
