"""nemofn.asr.configs.transducer: transducer ``model:`` blocks (RNN-T, TDT, hybrid) checked whole, NeMo 3.0's
RNNTDecodingConfig and merging a partial decoding config onto it."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from compat.archive import load_config
from nemofn.asr.configs import (
    TRANSDUCER_DECODING_DEFAULTS,
    EncDecCTCBPEConfig,
    EncDecCTCConfig,
    EncDecHybridRNNTCTCBPEConfig,
    EncDecHybridRNNTCTCConfig,
    EncDecRNNTBPEConfig,
    EncDecRNNTConfig,
    RNNTDecodingConfig,
    merge_transducer_decoding,
    model_schema,
    validate_model_config,
)
from nemofn.asr.configs.models import _CTCModelConfig
from nemofn.asr.configs.transducer import (
    RNNT_LOSS_NAMES,
    RNNT_REDUCTIONS,
    TRANSDUCER_STRATEGIES,
    TRANSDUCER_SUPPORTED_STRATEGIES,
    UNDECLARED_DECODING_KEYS,
    _TransducerModelConfig,
    default_transducer_decoding,
)
from nemofn.core.schema import ConfigError, defaults_of, reset_logged_keys, schema_fields

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "asr"
RNNT = CONFIG_DIR / "fastconformer_transducer_bpe.yaml"
TDT = CONFIG_DIR / "fastconformer_tdt_bpe.yaml"
HYBRID_TDT = CONFIG_DIR / "fastconformer_hybrid_tdt_ctc_bpe.yaml"
REFERENCES = {"fastconformer_rnnt_bpe": EncDecRNNTBPEConfig, "fastconformer_tdt_bpe": EncDecRNNTBPEConfig,
              "fastconformer_hybrid_bpe": EncDecHybridRNNTCTCBPEConfig}


def _model(path: Path, *overrides: str):
    cfg = OmegaConf.load(path)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides))).model if overrides else cfg.model


# ------------------------------------------------------------------------------------------ real configs
def test_reference_nemo_configs_validate(nemo3_dir):
    for name, schema in REFERENCES.items():
        cfg = load_config(nemo3_dir / f"{name}.nemo")  # model_config.yaml written by NeMo 3.0 itself
        assert model_schema(cfg) is schema, name
        assert validate_model_config(cfg) == [], name
        built_from = OmegaConf.load(nemo3_dir / "configs" / "transducers" / f"{name}.yaml").model
        assert model_schema(built_from) is schema and validate_model_config(built_from) == [], name


def test_repo_transducer_configs_validate():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    transducers = [p for p in paths if "joint" in OmegaConf.load(p).model]
    assert {p.stem for p in transducers} >= {"fastconformer_transducer_bpe", "fastconformer_tdt_bpe",
                                             "fastconformer_hybrid_transducer_ctc_bpe",
                                             "fastconformer_hybrid_tdt_ctc_bpe", "parakeet_tdt_0.6b"}
    for path in paths:  # the CTC ones still go to the CTC schemas
        model = OmegaConf.load(path).model
        assert validate_model_config(model) == [], path.name
        if path not in transducers and "tokenizer" in model and "preprocessor" in model:
            assert model_schema(model) is EncDecCTCBPEConfig, path.name


# ------------------------------------------------------------------------------------------------- typos
TYPOS = [
    (HYBRID_TDT, "model.joint.jointnet.activaton=relu", "model.joint.jointnet.activaton",
     "model.joint.jointnet.activation"),
    (HYBRID_TDT, "model.loss.tdt_kwargs.sigmaa=0.1", "model.loss.tdt_kwargs.sigmaa", "model.loss.tdt_kwargs.sigma"),
    (HYBRID_TDT, "model.aux_ctc.ctc_loss_weigth=0.2", "model.aux_ctc.ctc_loss_weigth",
     "model.aux_ctc.ctc_loss_weight"),
    (TDT, "model.decoding.greedy.max_symbol=3", "model.decoding.greedy.max_symbol",
     "model.decoding.greedy.max_symbols"),
    (RNNT, "model.decoding.beam.tsd_max_sym_ex=3", "model.decoding.beam.tsd_max_sym_ex",
     "model.decoding.beam.tsd_max_sym_exp"),
    (RNNT, "model.loss.warprnnt_numba_kwargs.fastemit=0.1", "model.loss.warprnnt_numba_kwargs.fastemit",
     "model.loss.warprnnt_numba_kwargs.fastemit_lambda"),
    (RNNT, "model.loss.loss_nam=tdt", "model.loss.loss_nam", "model.loss.loss_name"),
    (RNNT, "model.decoder.prednet.pred_hiden=3", "model.decoder.prednet.pred_hiden",
     "model.decoder.prednet.pred_hidden"),
    (RNNT, "model.rnnt_reductio=sum", "model.rnnt_reductio", "model.rnnt_reduction"),
    (RNNT, "model.ctc_reduction=sum", "model.ctc_reduction", "model.rnnt_reduction"),  # a CTC model's key
    (RNNT, "model.compute_eval_los=true", "model.compute_eval_los", "model.compute_eval_loss"),
    (HYBRID_TDT, "model.aux_ctc.decoding.greedy.preserve_alignment=true",
     "model.aux_ctc.decoding.greedy.preserve_alignment", "model.aux_ctc.decoding.greedy.preserve_alignments"),
    (HYBRID_TDT, "model.aux_ctc.decoder.num_clases=3", "model.aux_ctc.decoder.num_clases",
     "model.aux_ctc.decoder.num_classes"),
    (TDT, "model.train_ds.batch_sizee=4", "model.train_ds.batch_sizee", "model.train_ds.batch_size"),
    (TDT, "model.optim.sched.warmup_stepz=10", "model.optim.sched.warmup_stepz", "model.optim.sched.warmup_steps"),
]


@pytest.mark.parametrize("path, override, key, suggestion", TYPOS, ids=[t[1].split("=")[0] for t in TYPOS])
def test_typos_anywhere_name_the_full_key_and_the_closest_one(path, override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        validate_model_config(_model(path, override))
    assert str(info.value) == f"unknown key {key}; did you mean {suggestion}?"
    assert (info.value.key, info.value.suggestion) == (key, suggestion)


@pytest.mark.parametrize("override, message", [
    ("model.decoding.strategy=beem", "model.decoding.strategy: invalid value 'beem'; expected one of ['greedy', "
                                     "'greedy_batch', 'beam', 'tsd', 'alsd', 'maes', 'malsd_batch', 'maes_batch']"),
    ("model.loss.loss_name=rnnt", "model.loss.loss_name: invalid value 'rnnt'; expected one of ['default'"),
    ("model.rnnt_reduction=none", "model.rnnt_reduction: invalid value 'none'; expected one of ['mean_batch', "
                                  "'mean_volume', 'mean', 'sum']"),  # NeMo takes null, not 'none'
    ("model.aux_ctc.ctc_reduction=avg", "model.aux_ctc.ctc_reduction: invalid value 'avg'"),
    ("model.joint.jointnet.activation=gelu", "model.joint.jointnet.activation: invalid value 'gelu'"),
    ("model.decoding.greedy.max_symbols=ten", "model.decoding.greedy.max_symbols: wrong type: got 'ten' (str), "
                                              "expected int"),
    ("model.loss.tdt_kwargs.durations=4", "model.loss.tdt_kwargs.durations: wrong type: got 4 (int)"),
    ("model.decoding=null", "model.decoding: wrong type: got None (NoneType), expected a mapping "
                            "(RNNTBPEDecodingConfig)"),  # NeMo needs a decoding block (it injects none)
    ("model.variational_noise.std=0.1", "model.variational_noise.std: invalid value 0.1: gradient noise on the "
                                        "prediction network is not implemented in nemofn; set it to 0"),
    ("model.normalize_joint_txu=true", "model.normalize_joint_txu: True is not supported in nemofn"),
    ("model.interctc.loss_weights=[0.3]", "model.interctc.loss_weights: [0.3] is not supported in nemofn: InterCTC"),
    ("model.joint._target_=nemo.collections.asr.modules.HATJoint",
     "model.joint._target_: 'nemo.collections.asr.modules.HATJoint' is not a module nemofn implements"),
    ("model.decoder._target_=nemo.collections.asr.modules.ConvASRDecoder",
     "model.decoder._target_: 'nemo.collections.asr.modules.ConvASRDecoder' is not a module for model.decoder"),
    ("model.aux_ctc.decoder._target_=nemo.collections.asr.modules.RNNTDecoder",
     "model.aux_ctc.decoder._target_: 'nemo.collections.asr.modules.RNNTDecoder' is not a module for "
     "model.aux_ctc.decoder"),
])
def test_invalid_values_and_features_nemofn_lacks_are_named(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate_model_config(_model(HYBRID_TDT, override))


def test_nemo_values_nemofn_does_not_run_are_valid_here():
    """Beam strategies and losses nemofn lacks are NeMo values: the schema accepts them, the model refuses them."""
    assert set(TRANSDUCER_SUPPORTED_STRATEGIES) < set(TRANSDUCER_STRATEGIES)
    for strategy in TRANSDUCER_STRATEGIES:
        assert validate_model_config(_model(TDT, f"model.decoding.strategy={strategy}")) == []
    for name in RNNT_LOSS_NAMES:
        assert validate_model_config(_model(RNNT, f"model.loss.loss_name={name}")) == []
    assert validate_model_config(_model(RNNT, "model.variational_noise.std=0.0", "model.rnnt_reduction=null")) == []
    cfg = _model(RNNT)
    cfg.loss.multiblank_rnnt_kwargs = {"big_blank_durations": [2, 4], "sigma": 0.05}
    cfg.decoding.big_blank_durations = [2, 4]
    assert validate_model_config(cfg) == []


def test_model_defaults_need_the_hidden_sizes_and_accept_other_keys():
    cfg = _model(RNNT, "model.model_defaults.filters=256", "model.model_defaults.se=true")  # ContextNet's keys
    assert validate_model_config(cfg) == []
    del cfg.model_defaults["pred_hidden"]
    with pytest.raises(ConfigError, match=r"^model.model_defaults: invalid value .*: pred_hidden must be set") as info:
        validate_model_config(cfg)
    assert info.value.key == "model.model_defaults"


def test_schema_choice():
    rnnt = _model(RNNT)
    assert model_schema(rnnt) is EncDecRNNTBPEConfig
    assert model_schema(_model(HYBRID_TDT)) is EncDecHybridRNNTCTCBPEConfig
    char = OmegaConf.to_container(rnnt, resolve=False)
    del char["tokenizer"]
    char["labels"] = list("ab ")
    assert model_schema(char) is EncDecRNNTConfig and validate_model_config(char) == []
    char["aux_ctc"] = {"decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                                   "num_classes": -1, "vocabulary": []}}
    assert model_schema(char) is EncDecHybridRNNTCTCConfig and validate_model_config(char) == []
    del char["joint"]  # no joint: a CTC model, where a transducer's keys are unknown
    assert model_schema(char) is EncDecCTCConfig
    with pytest.raises(ConfigError, match="^unknown key model.rnnt_reduction; did you mean model.ctc_reduction"):
        validate_model_config(char)
    # a BPE transducer's saved config has labels (NeMo writes the tokenizer's vocabulary there)
    assert validate_model_config(_model(RNNT, "model.labels=[a,b]")) == []


def test_dataclass_configs():
    for schema in (EncDecRNNTConfig, EncDecRNNTBPEConfig, EncDecHybridRNNTCTCConfig, EncDecHybridRNNTCTCBPEConfig):
        instance = schema()
        assert model_schema(instance) is schema and validate_model_config(instance) == []
        structured = OmegaConf.structured(schema)
        assert structured.decoding.greedy.max_symbols_per_step == 10 and structured.decoder.blank_as_pad is True
    assert OmegaConf.structured(EncDecHybridRNNTCTCBPEConfig).aux_ctc.ctc_loss_weight == 0.5  # NeMo's default


def test_warn_mode_returns_unknown_keys_once(caplog):
    reset_logged_keys()
    cfg = _model(HYBRID_TDT, "model.from_a_newer_nemo=1", "model.decoding.greedy.new_opt=2",
                 "model.aux_ctc.new_key=3", "model.loss.tdt_kwargs.gamma=0.1")
    with caplog.at_level(logging.WARNING, logger="nemofn.core.schema"):
        for _ in range(2):
            found = validate_model_config(cfg, unknown_keys="warn")
            assert sorted(found) == ["model.aux_ctc.new_key", "model.decoding.greedy.new_opt",
                                     "model.from_a_newer_nemo", "model.loss.tdt_kwargs.gamma"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4


def test_keys_shared_with_ctc_models_stay_in_step():
    ctc_only = {"decoder", "decoding", "ctc_reduction", "compute_eval_loss", "variational_noise", "log_prediction"}
    transducer_only = {"decoder", "decoding", "joint", "loss", "rnnt_reduction", "compute_eval_loss",
                       "variational_noise", "log_prediction", "normalize_joint_txu", "normalize_encoder_norm",
                       "normalize_decoder_norm", "normalize_joint_norm"}
    ctc, transducer = schema_fields(_CTCModelConfig), schema_fields(_TransducerModelConfig)
    assert set(ctc) - ctc_only == set(transducer) - transducer_only
    for name in set(ctc) - ctc_only - {"model_defaults", "encoder"}:
        assert ctc[name].spec.status == transducer[name].spec.status, name
        assert defaults_of(_CTCModelConfig)[name] == defaults_of(_TransducerModelConfig)[name], name


def test_reductions_and_loss_names_match_the_loss_code():
    from nemofn.asr.models.transducer_network import RNNT_LOSS_NAMES as IMPLEMENTED
    from nemofn.asr.rnnt_loss import TRANSDUCER_REDUCTIONS

    assert set(RNNT_REDUCTIONS) | {"none"} == set(TRANSDUCER_REDUCTIONS)  # NeMo spells "no reduction" null
    assert set(IMPLEMENTED) <= set(RNNT_LOSS_NAMES)


# ---------------------------------------------------------------------------------------------- decoding
# NeMo 3.0's RNNTDecodingConfig(): its keys in order, and the greedy / beam blocks' keys (read from
# OmegaConf.structured(RNNTDecodingConfig) with nemo_toolkit 3.0.0).
NEMO_DECODING_KEYS = ["model_type", "strategy", "compute_hypothesis_token_set", "preserve_alignments",
                      "tdt_include_token_duration", "confidence_cfg", "fused_batch_size", "compute_timestamps",
                      "compute_langs", "word_seperator", "segment_seperators", "segment_gap_threshold",
                      "rnnt_timestamp_type", "greedy", "beam", "temperature", "durations", "big_blank_durations",
                      "strip_lang_tags", "lang_tag_pattern"]
NEMO_GREEDY_KEYS = ["max_symbols_per_step", "preserve_alignments", "preserve_frame_confidence",
                    "tdt_include_token_duration", "tdt_include_duration_confidence", "confidence_method_cfg",
                    "loop_labels", "use_cuda_graph_decoder", "ngram_lm_model", "ngram_lm_alpha", "boosting_tree",
                    "boosting_tree_alpha", "enable_per_stream_biasing"]
NEMO_BEAM_KEYS = ["beam_size", "search_type", "score_norm", "return_best_hypothesis", "tsd_max_sym_exp_per_step",
                  "alsd_max_target_len", "nsc_max_timesteps_expansion", "nsc_prefix_alpha", "maes_num_steps",
                  "maes_prefix_alpha", "maes_expansion_gamma", "maes_expansion_beta", "language_model",
                  "softmax_temperature", "preserve_alignments", "ngram_lm_model", "ngram_lm_alpha", "boosting_tree",
                  "boosting_tree_alpha", "hat_subtract_ilm", "hat_ilm_weight", "max_symbols_per_step",
                  "blank_lm_score_mode", "pruning_mode", "allow_cuda_graphs"]


def test_decoding_defaults_are_nemos():
    d = TRANSDUCER_DECODING_DEFAULTS
    assert list(d) == NEMO_DECODING_KEYS
    assert list(d["greedy"]) == NEMO_GREEDY_KEYS and list(d["beam"]) == NEMO_BEAM_KEYS
    assert (d["model_type"], d["strategy"], d["rnnt_timestamp_type"], d["temperature"]) == ("rnnt", "greedy_batch",
                                                                                           "all", 1.0)
    assert d["durations"] == [] and d["big_blank_durations"] == [] and d["segment_seperators"] == [".", "!", "?"]
    assert d["greedy"]["max_symbols_per_step"] == 10 and d["greedy"]["loop_labels"] is True
    assert d["beam"]["beam_size"] == 4 and d["beam"]["tsd_max_sym_exp_per_step"] == 50
    assert d["beam"]["alsd_max_target_len"] == 1.0 and d["beam"]["maes_expansion_gamma"] == 2.3
    assert (d["beam"]["blank_lm_score_mode"], d["beam"]["pruning_mode"]) == ("lm_weighted_full", "late")
    assert d["confidence_cfg"]["method_cfg"]["temperature"] == "DEPRECATED"
    assert d["greedy"]["boosting_tree"]["num_of_transcriptions"] == 5
    # the keys NeMo reads without declaring them are accepted but are not defaults
    full = defaults_of(RNNTDecodingConfig)
    for block, keys in UNDECLARED_DECODING_KEYS.items():
        assert set(full[block]) - set(d[block]) == set(keys)
    assert default_transducer_decoding() == OmegaConf.create(d)
    assert default_transducer_decoding() is not default_transducer_decoding()


def test_merge_checks_every_nested_key():
    merged = merge_transducer_decoding({"strategy": "greedy", "greedy": {"max_symbols": 5}})
    assert merged.strategy == "greedy" and merged.greedy.max_symbols == 5 and merged.beam.beam_size == 4
    assert merged.greedy.max_symbols_per_step == 10 and merged.durations == []
    assert merge_transducer_decoding(None) == default_transducer_decoding()
    with pytest.raises(ConfigError) as info:
        merge_transducer_decoding({"greedy": {"max_symbol": 5}}, "model.decoding")
    assert str(info.value) == ("unknown key model.decoding.greedy.max_symbol; did you mean "
                               "model.decoding.greedy.max_symbols?")
    with pytest.raises(ConfigError, match="decoding.strategy: invalid value 'greedyy'"):
        merge_transducer_decoding({"strategy": "greedyy"})
    with pytest.raises(ConfigError, match="decoding.beam.beam_size: wrong type"):
        merge_transducer_decoding({"beam": {"beam_size": "four"}})
    merged = merge_transducer_decoding({"strategy": "beam", "old_key": 1, "beam": {"gone": 2}}, unknown="warn")
    assert merged.strategy == "beam" and "old_key" not in merged and "gone" not in merged.beam


def test_merge_takes_tdt_durations_from_the_loss_as_nemo_does():
    loss = {"loss_name": "tdt", "tdt_kwargs": {"durations": [0, 1, 2], "sigma": 0.05}}
    merged = merge_transducer_decoding({"model_type": "tdt", "durations": [0, 1, 2, 3, 4]}, loss=loss)
    assert merged.durations == [0, 1, 2]
    rnnt = merge_transducer_decoding(_model(RNNT).decoding, loss=_model(RNNT).loss)
    assert rnnt.durations == [] and rnnt.greedy.max_symbols == 10 and rnnt.beam.tsd_max_sym_exp == 50
    tdt = _model(TDT)
    assert merge_transducer_decoding(tdt.decoding, loss=tdt.loss).durations == [0, 1, 2, 3, 4]  # interpolations
    assert dataclasses.asdict(RNNTDecodingConfig())["beam"]["beam_size"] == 4
