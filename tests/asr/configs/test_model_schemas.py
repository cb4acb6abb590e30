"""nemofn.asr.configs.models: whole ``model:`` blocks, typos at every level, warn mode, real configs, dataclasses."""

from __future__ import annotations

import logging
import re
import tarfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nemofn.asr.configs import (
    AudioToMelSpectrogramPreprocessorConfig,
    ConformerEncoderConfig,
    ConvASRDecoderConfig,
    ConvASREncoderConfig,
    DatasetConfigError,
    EncDecCTCBPEConfig,
    EncDecCTCConfig,
    FinetuneModelConfig,
    JasperEncoderConfig,
    SpectrogramAugmentationConfig,
    model_schema,
    validate_model_config,
)
from nemofn.asr.configs.models import CTC_REDUCTIONS
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.core.schema import ConfigError, reset_logged_keys
from nemofn.core.tree import flatten

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "asr"
CHAR = CONFIG_DIR / "quartznet_demo_char.yaml"
BPE = CONFIG_DIR / "fastconformer_demo_bpe.yaml"


def _model(path: Path, *overrides: str):
    cfg = OmegaConf.load(path)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides))).model if overrides else cfg.model


TYPOS = [
    (BPE, "model.encoder.d_modle=128", "model.encoder.d_modle", "model.encoder.d_model"),
    (CHAR, "model.optim.lrr=0.1", "model.optim.lrr", "model.optim.lr"),
    (CHAR, "model.optimm.lr=0.1", "model.optimm", "model.optim"),
    (BPE, "model.spec_augmnt.freq_masks=0", "model.spec_augmnt", "model.spec_augment"),
    (CHAR, "model.train_ds.batch_sizee=4", "model.train_ds.batch_sizee", "model.train_ds.batch_size"),
    (CHAR, "model.optim.sched.warmup_stepz=10", "model.optim.sched.warmup_stepz", "model.optim.sched.warmup_steps"),
    (BPE, "model.tokenizer.dirr=x", "model.tokenizer.dirr", "model.tokenizer.dir"),
    (CHAR, "model.preprocessor.n_ffts=512", "model.preprocessor.n_ffts", "model.preprocessor.n_fft"),
    (CHAR, "model.decoder.vocabularyy=[]", "model.decoder.vocabularyy", "model.decoder.vocabulary"),
    (CHAR, "model.decoding.greedy.preserve_alignment=true", "model.decoding.greedy.preserve_alignment",
     "model.decoding.greedy.preserve_alignments"),
    (CHAR, "model.ctc_reductions=sum", "model.ctc_reductions", "model.ctc_reduction"),
]


@pytest.mark.parametrize("path, override, key, suggestion", TYPOS, ids=[t[1].split("=")[0] for t in TYPOS])
def test_typos_at_every_level_name_the_key_and_the_closest_one(path, override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        validate_model_config(_model(path, override))
    assert str(info.value) == f"unknown key {key}; did you mean {suggestion}?"
    assert (info.value.key, info.value.suggestion) == (key, suggestion)


def test_typo_inside_a_jasper_block_and_wrong_types():
    cfg = _model(CHAR)
    cfg.encoder.jasper[2].filterz = 3
    with pytest.raises(ConfigError, match=r"unknown key model.encoder.jasper\[2\].filterz; did you mean "
                                          r"model.encoder.jasper\[2\].filters\?"):
        validate_model_config(cfg)
    with pytest.raises(ConfigError) as info:
        validate_model_config(_model(CHAR, "model.preprocessor.features=sixtyfour"))
    assert str(info.value) == "model.preprocessor.features: wrong type: got 'sixtyfour' (str), expected int"
    assert info.value.key == "model.preprocessor.features" and info.value.suggestion is None
    with pytest.raises(DatasetConfigError, match="model.train_ds.batch_size: wrong type"):
        validate_model_config(_model(CHAR, "model.train_ds.batch_size=all"))
    with pytest.raises(ConfigError, match="model.optim.betas: wrong type: got 0.9 \\(float\\), expected a list"):
        validate_model_config(_model(CHAR, "model.optim.betas=0.9"))


@pytest.mark.parametrize("override, message", [
    ("model.train_ds.trim_silence=true", "model.train_ds.trim_silence: True is not supported in nemofn: silence "
                                         "trimming"),
    ("model.train_ds.is_tarred=true", "model.train_ds.is_tarred: True is not supported in nemofn: tarred"),
    ("model.interctc.loss_weights=[0.3]", "model.interctc.loss_weights: [0.3] is not supported in nemofn: InterCTC"),
    ("model.encoder._target_=nemo.collections.asr.modules.SqueezeformerEncoder",
     "model.encoder._target_: 'nemo.collections.asr.modules.SqueezeformerEncoder' is not a module nemofn implements"),
    ("model.decoder._target_=nemo.collections.asr.modules.ConvASREncoder",
     "model.decoder._target_: 'nemo.collections.asr.modules.ConvASREncoder' is not a module for model.decoder"),
    ("model.ctc_reduction=avg", "model.ctc_reduction: invalid value 'avg'"),
    ("model.optim.name=adafactor", "model.optim.name: optimizer 'adafactor' (NeMo has it) is not implemented"),
])
def test_features_nemofn_lacks_are_named(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate_model_config(_model(CHAR, override))


def test_tokenizer_type_and_schema_choice():
    with pytest.raises(ConfigError, match="model.tokenizer.type: 'wpe' is not supported in nemofn: only "
                                          "SentencePiece"):
        validate_model_config(_model(BPE, "model.tokenizer.type=wpe"))
    assert model_schema(_model(BPE)) is EncDecCTCBPEConfig and model_schema(_model(CHAR)) is EncDecCTCConfig
    with pytest.raises(ConfigError, match="unknown key model.labels"):  # a BPE model has no labels
        validate_model_config(_model(BPE, "model.labels=[a,b]"))
    with pytest.raises(ConfigError, match="not the whole experiment config"):
        validate_model_config(OmegaConf.load(CHAR))


def test_fine_tuning_blocks_have_their_own_schema():
    cfg = OmegaConf.create({"model": {  # NeMo's speech_to_text_finetune.yaml layout
        "sample_rate": 16000, "train_ds": {"manifest_filepath": "???", "sample_rate": "${model.sample_rate}"},
        "char_labels": {"update_labels": False, "labels": None},
        "tokenizer": {"update_tokenizer": False, "dir": None, "type": "bpe"},
        "freeze_updates": {"enabled": True, "modules": {"encoder": -1, "preprocessor": [0, 100]}},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2},
        "optim": {"name": "adamw", "lr": 1e-4, "sched": {"name": "CosineAnnealing", "warmup_steps": 50}}}})
    assert model_schema(cfg.model) is FinetuneModelConfig
    assert validate_model_config(cfg.model) == []
    with pytest.raises(ConfigError, match="unknown key model.char_labels"):  # not a key of a model to build
        validate_model_config(cfg.model, finetune=False)
    cfg.model.tokenizer.update_tokenizr = True
    with pytest.raises(ConfigError, match="did you mean model.tokenizer.update_tokenizer"):
        validate_model_config(cfg.model)
    assert model_schema(OmegaConf.create({"optim": {"lr": 1}})) is FinetuneModelConfig  # no architecture
    with pytest.raises(ConfigError, match="unknown key model.ctc_reduction"):
        validate_model_config({"char_labels": {}, "ctc_reduction": "sum"})


def test_missing_values_and_interpolations_pass():
    cfg = OmegaConf.load(CHAR)
    cfg.model.encoder.feat_in = "???"
    cfg.model.decoder.feat_in = "${model.encoder.jasper[5].filters}"
    cfg.model.preprocessor.features = "${model.not_there}"  # not resolved, so not an error yet
    assert OmegaConf.is_missing(cfg.model.train_ds, "manifest_filepath")
    assert validate_model_config(cfg.model) == []


def test_warn_mode_warns_once_per_key(caplog):
    reset_logged_keys()
    cfg = _model(CHAR, "model.from_a_newer_nemo=1", "model.encoder.new_option=true", "model.decoding.new_opt=2")
    with caplog.at_level(logging.WARNING, logger="nemofn.core.schema"):
        for _ in range(2):
            found = validate_model_config(cfg, unknown_keys="warn")
            assert sorted(found) == ["model.decoding.new_opt", "model.encoder.new_option", "model.from_a_newer_nemo"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("is ignored" in w for w in warnings)


def test_restore_mode_builds_with_unknown_keys_left_out(caplog):
    cfg = _model(CHAR, "model.from_a_newer_nemo=1", "model.encoder.new_option=true")
    with pytest.raises(ConfigError, match="unknown key model.encoder.new_option"):
        CTCModel.from_config(cfg)
    reset_logged_keys()
    with caplog.at_level(logging.WARNING, logger="nemofn.core.schema"):
        model = CTCModel.from_config(cfg, unknown_keys="warn")
    assert "from_a_newer_nemo" not in model.cfg and "new_option" not in model.cfg.encoder
    assert "from_a_newer_nemo" in cfg  # the caller's config is not modified
    assert model.unknown_keys == "warn"
    assert any("model.encoder.new_option" in r.getMessage() for r in caplog.records)


def test_the_whole_config_is_checked_before_anything_is_built(tmp_path):
    # the tokenizer directory does not exist: the typo must be reported first, not a missing file
    cfg = _model(BPE, f"model.tokenizer.dir={tmp_path / 'nowhere'}", "model.encoder.n_layrs=2")
    with pytest.raises(ConfigError, match="model.encoder.n_layrs; did you mean model.encoder.n_layers"):
        CTCModel.from_config(cfg)


def test_repo_configs_validate():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert CHAR in paths and BPE in paths
    for path in paths:
        assert validate_model_config(OmegaConf.load(path).model) == [], path.name


def test_reference_nemo_configs_validate(nemo3_dir):
    for name in ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe"):
        with tarfile.open(nemo3_dir / f"{name}.nemo") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
            cfg = OmegaConf.create(yaml.safe_load(tar.extractfile(member)))  # written by NeMo 3.0 itself
        assert validate_model_config(cfg) == [], name
        assert validate_model_config(OmegaConf.load(nemo3_dir / "configs" / f"{name}.yaml").model) == [], name


def test_ctc_reductions_match_the_loss():
    from nemofn.asr.ctc import CTC_REDUCTIONS as LOSS_REDUCTIONS

    assert CTC_REDUCTIONS == LOSS_REDUCTIONS


def _as_dataclass(model_cfg) -> EncDecCTCConfig:
    """The QuartzNet demo ``model:`` block written as dataclasses (every value from the YAML)."""
    y = OmegaConf.to_container(model_cfg, resolve=True)

    def kw(block):
        return {k: v for k, v in block.items() if k != "_target_"}

    return EncDecCTCConfig(
        sample_rate=y["sample_rate"], labels=y["labels"],
        preprocessor=AudioToMelSpectrogramPreprocessorConfig(**kw(y["preprocessor"])),
        spec_augment=SpectrogramAugmentationConfig(**kw(y["spec_augment"])),
        encoder=ConvASREncoderConfig(feat_in=y["encoder"]["feat_in"], activation=y["encoder"]["activation"],
                                     conv_mask=y["encoder"]["conv_mask"],
                                     jasper=[JasperEncoderConfig(**b) for b in y["encoder"]["jasper"]]),
        decoder=ConvASRDecoderConfig(**kw(y["decoder"])),
        optim=y["optim"],
    )


def test_a_dataclass_config_builds_the_same_model_as_yaml():
    yaml_cfg = _model(CHAR)
    from_yaml = CTCModel.from_config(yaml_cfg)
    config = _as_dataclass(yaml_cfg)
    assert validate_model_config(config) == []
    for source in (config, OmegaConf.structured(config)):
        model = CTCModel.from_config(source)
        assert model.network == from_yaml.network
        assert model.cfg.decoder.vocabulary == from_yaml.cfg.decoder.vocabulary
        a, b = flatten(model.init_state(0).params), flatten(from_yaml.init_state(0).params)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    optimizer, schedule, lr = CTCModel.from_config(config).optimization(max_steps=100)
    assert lr == 0.003


def test_a_conformer_dataclass_config_with_filled_decoder_builds():
    config = EncDecCTCConfig(
        labels=list("abc "),
        encoder=ConformerEncoderConfig(feat_in=64, n_layers=1, d_model=16, n_heads=2, subsampling="dw_striding",
                                       subsampling_factor=8, subsampling_conv_channels=8, conv_kernel_size=9),
        decoder=ConvASRDecoderConfig(vocabulary=list("abc ")),  # feat_in and num_classes left ??? (filled)
    )
    model = CTCModel.from_config(config)
    assert model.network.decoder.feat_in == 16 and model.network.decoder.num_classes == 4
    with pytest.raises(ValueError, match="neither `labels`"):
        CTCModel.from_config(EncDecCTCConfig())  # labels left ???
