"""nemofn.asr.configs.modules: each schema equals the init fields of the module it configures (no drift)."""

from __future__ import annotations

import attrs
import pytest
import torch
from omegaconf import MISSING, OmegaConf

from nemofn.asr.configs.modules import (
    MODULE_SCHEMAS,
    AudioToMelSpectrogramPreprocessorConfig,
    ConformerEncoderConfig,
    ConvASRDecoderConfig,
    ConvASREncoderConfig,
    JasperEncoderConfig,
    SpectrogramAugmentationConfig,
    module_schema,
)
from nemofn.asr.modules.conformer import ConformerEncoder
from nemofn.asr.modules.conv_asr import ConvASREncoder, JasperBlockConfig
from nemofn.asr.modules.decoder import ConvASRDecoder
from nemofn.asr.modules.preprocessor import AudioToMelSpectrogramPreprocessor
from nemofn.asr.modules.registry import MODULES, build_module
from nemofn.asr.modules.spec_augment import SpectrogramAugmentation
from nemofn.core.schema import ConfigError, schema_fields

PAIRS = [
    (AudioToMelSpectrogramPreprocessor, AudioToMelSpectrogramPreprocessorConfig),
    (SpectrogramAugmentation, SpectrogramAugmentationConfig),
    (ConvASREncoder, ConvASREncoderConfig),
    (JasperBlockConfig, JasperEncoderConfig),
    (ConformerEncoder, ConformerEncoderConfig),
    (ConvASRDecoder, ConvASRDecoderConfig),
]


def _init_defaults(cls: type) -> dict:
    out = {}
    for a in attrs.fields(cls):
        if not a.init:
            continue
        default = a.default
        if isinstance(default, attrs.Factory):
            default = default.factory()
        out[a.alias] = MISSING if default is attrs.NOTHING else default
    return out


def _schema_defaults(schema: type) -> dict:
    return {name: f.default for name, f in schema_fields(schema).items() if name != "_target_"}


@pytest.mark.parametrize("module, schema", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_schema_fields_and_defaults_equal_the_module_init(module, schema):
    init, fields = _init_defaults(module), _schema_defaults(schema)
    assert list(fields) == list(init), "schema fields must be the module's init arguments, in order"
    assert fields == init


def test_every_module_of_the_registry_has_a_schema_naming_it():
    assert set(MODULE_SCHEMAS) == set(MODULES)
    for name, schema in MODULE_SCHEMAS.items():
        assert schema_fields(schema)["_target_"].default == f"nemo.collections.asr.modules.{name}"
        assert module_schema(f"nemo.collections.asr.modules.{name}") is schema
    with pytest.raises(ConfigError, match="'x.SqueezeformerEncoder' is not a module nemofn implements"):
        module_schema("x.SqueezeformerEncoder", "model.encoder")


def test_schema_instances_build_the_same_modules_as_dicts():
    assert AudioToMelSpectrogramPreprocessor.from_config(AudioToMelSpectrogramPreprocessorConfig(features=80)) \
        == AudioToMelSpectrogramPreprocessor(features=80)
    assert SpectrogramAugmentation.from_config(SpectrogramAugmentationConfig(freq_masks=2, time_width=0.05)) \
        == SpectrogramAugmentation(freq_masks=2, time_width=0.05)
    conformer = ConformerEncoderConfig(feat_in=16, n_layers=2, d_model=32, subsampling="dw_striding",
                                       subsampling_factor=8, subsampling_conv_channels=16, att_context_size=[-1, -1])
    assert ConformerEncoder.from_config(conformer) == ConformerEncoder(
        feat_in=16, n_layers=2, d_model=32, subsampling="dw_striding", subsampling_factor=8,
        subsampling_conv_channels=16, att_context_size=[-1, -1])
    block = JasperEncoderConfig(filters=8, repeat=1, kernel=[3], stride=[1], dilation=[1], dropout=0.0,
                                residual=False)
    enc = ConvASREncoder.from_config(ConvASREncoderConfig(jasper=[block], activation="relu", feat_in=4))
    assert enc.jasper[0].kernel == (3,) and enc.feat_out == 8
    assert ConvASRDecoder.from_config(ConvASRDecoderConfig(feat_in=8, num_classes=2)).num_classes == 2
    structured = OmegaConf.structured(ConvASREncoderConfig(jasper=[block], activation="relu", feat_in=4))
    assert ConvASREncoder.from_config(structured) == enc


def test_build_module_names_the_full_key():
    with pytest.raises(ConfigError) as info:
        build_module({"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 4, "n_layers": 1,
                      "d_modle": 8}, where="model.encoder")
    assert str(info.value) == "unknown key model.encoder.d_modle; did you mean model.encoder.d_model?"
    assert info.value.suggestion == "model.encoder.d_model"
    with pytest.raises(ConfigError, match=r"model.encoder.d_model is \?\?\?"):
        build_module({"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 4, "n_layers": 1,
                      "d_model": "???"}, where="model.encoder")
    with pytest.raises(ConfigError, match="model.encoder: missing required key\\(s\\) d_model"):
        build_module({"_target_": "ConformerEncoder", "feat_in": 4, "n_layers": 1}, where="model.encoder")
    with pytest.raises(ValueError, match="in config block `model.encoder`: d_model=6 must be divisible"):
        build_module({"_target_": "ConformerEncoder", "feat_in": 4, "n_layers": 1, "d_model": 6, "n_heads": 4},
                     where="model.encoder")


def test_interpolated_module_blocks_resolve_against_the_root():
    cfg = OmegaConf.create({"model": {"features": 40, "preprocessor": {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "features": "${model.features}", "dither": 0.0}}})
    pre = build_module(cfg.model.preprocessor, where="model.preprocessor")
    assert pre.features == 40
    (features, _), _ = pre.apply({}, pre.init()[1], torch.zeros(1, 1600), torch.tensor([1600]))
    assert features.shape[1] == 40
