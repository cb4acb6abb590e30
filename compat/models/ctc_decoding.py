"""CTC decoding configs: NeMo 3.0's ``CTCDecodingConfig`` defaults, and which settings compat can run.

``EncDecCTCModel`` injects :data:`CTC_DECODING_DEFAULTS` as ``cfg.decoding`` when the config has none (NeMo writes
the same block into every ``.nemo``), and ``change_decoding_strategy`` merges a user's partial config onto it.
Only greedy decoding exists here: ``strategy`` ``greedy`` and ``greedy_batch`` (they give the same ids), with an
optional ``temperature`` (the decoder divides its logits by it). Beam search, n-gram LM fusion, boosting trees,
timestamps, alignments and confidence raise ``NotImplementedError`` naming the setting.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["CTC_DECODING_DEFAULTS", "GREEDY_STRATEGIES", "merge_decoding_config", "check_decoding_supported"]

GREEDY_STRATEGIES = ("greedy", "greedy_batch")
KNOWN_STRATEGIES = (*GREEDY_STRATEGIES, "beam", "pyctcdecode", "flashlight", "wfst", "beam_batch")

_BOOSTING_TREE = {
    "model_path": None, "key_phrases_file": None, "key_phrases_list": None, "key_phrase_items_list": None,
    "context_score": 1.0, "depth_scaling": 2.0, "unk_score": 0.0, "final_eos_score": 1.0, "score_per_phrase": 0.0,
    "source_lang": "en", "use_triton": True, "uniform_weights": False, "use_bpe_dropout": False,
    "num_of_transcriptions": 5, "bpe_alpha": 0.3,
}
_CONFIDENCE_METHOD = {"name": "entropy", "entropy_type": "tsallis", "alpha": 0.33, "entropy_norm": "exp",
                      "temperature": "DEPRECATED"}

#: NeMo 3.0's ``CTCDecodingConfig()`` as written into ``model_config.yaml`` (same for ``CTCBPEDecodingConfig``).
CTC_DECODING_DEFAULTS: dict[str, Any] = {
    "strategy": "greedy_batch",
    "preserve_alignments": None,
    "compute_timestamps": None,
    "word_seperator": " ",
    "segment_seperators": [".", "!", "?"],
    "segment_gap_threshold": None,
    "ctc_timestamp_type": "all",
    "batch_dim_index": 0,
    "greedy": {
        "preserve_alignments": False, "compute_timestamps": False, "preserve_frame_confidence": False,
        "confidence_method_cfg": dict(_CONFIDENCE_METHOD), "ngram_lm_model": None, "ngram_lm_alpha": 0.0,
        "boosting_tree": dict(_BOOSTING_TREE), "boosting_tree_alpha": 0.0, "allow_cuda_graphs": True,
    },
    "beam": {
        "beam_size": 4, "search_type": "default", "preserve_alignments": False, "compute_timestamps": False,
        "return_best_hypothesis": True, "allow_cuda_graphs": True, "beam_alpha": None, "beam_beta": 1.0,
        "beam_threshold": 20.0, "kenlm_path": None, "ngram_lm_alpha": 1.0, "ngram_lm_model": None,
        "boosting_tree": dict(_BOOSTING_TREE), "boosting_tree_alpha": 0.0,
        "flashlight_cfg": {"lexicon_path": None, "boost_path": None, "beam_size_token": 16, "beam_threshold": 20.0,
                           "unk_weight": -math.inf, "sil_weight": 0.0},
        "pyctcdecode_cfg": {"beam_prune_logp": -10.0, "token_min_logp": -5.0, "prune_history": False,
                            "hotwords": None, "hotword_weight": 10.0},
    },
    "wfst": {
        "beam_size": 4, "search_type": "riva", "return_best_hypothesis": True, "preserve_alignments": False,
        "compute_timestamps": False, "decoding_mode": "nbest", "open_vocabulary_decoding": False, "beam_width": 10.0,
        "lm_weight": 1.0, "device": "cuda", "arpa_lm_path": None, "wfst_lm_path": None, "riva_decoding_cfg": {},
    },
    "confidence_cfg": {
        "preserve_frame_confidence": False, "preserve_token_confidence": False, "preserve_word_confidence": False,
        "exclude_blank": True, "aggregation": "min", "tdt_include_duration": False,
        "method_cfg": dict(_CONFIDENCE_METHOD),
    },
    "temperature": 1.0,
}


def default_decoding_config() -> DictConfig:
    """A fresh ``DictConfig`` of :data:`CTC_DECODING_DEFAULTS`."""
    return OmegaConf.create(copy.deepcopy(CTC_DECODING_DEFAULTS))


def merge_decoding_config(decoding_cfg: Any) -> DictConfig:
    """NeMo's ``OmegaConf.merge(CTCDecodingConfig(), decoding_cfg)`` (keys unknown to NeMo raise, naming them)."""
    base = default_decoding_config()
    if decoding_cfg is None:
        return base
    user = decoding_cfg if isinstance(decoding_cfg, DictConfig) else OmegaConf.create(dict(decoding_cfg))
    unknown = sorted(set(user.keys()) - set(base.keys()))
    if unknown:
        raise ValueError(f"decoding config: unknown key(s) {unknown}; CTC decoding keys are {sorted(base.keys())}")
    return OmegaConf.merge(base, user)


def _is_on(value: Any) -> bool:
    return value is not None and value is not False and value != 0


def check_decoding_supported(cfg: Any) -> None:
    """Raises ``NotImplementedError`` for decoding settings compat cannot run (``ValueError`` for a bad strategy)."""
    strategy = cfg.get("strategy", "greedy_batch")
    if strategy not in KNOWN_STRATEGIES:
        raise ValueError(f"decoding.strategy={strategy!r} is not a CTC strategy; use one of {list(KNOWN_STRATEGIES)}")
    if strategy not in GREEDY_STRATEGIES:
        raise NotImplementedError(
            f"decoding.strategy={strategy!r} is not implemented in compat: only greedy CTC decoding exists "
            f"({' / '.join(GREEDY_STRATEGIES)}). Call change_decoding_strategy({{'strategy': 'greedy_batch'}})."
        )
    greedy = cfg.get("greedy") or {}
    checks = {
        "decoding.compute_timestamps": cfg.get("compute_timestamps"),
        "decoding.preserve_alignments": cfg.get("preserve_alignments"),
        "decoding.greedy.compute_timestamps": greedy.get("compute_timestamps"),
        "decoding.greedy.preserve_alignments": greedy.get("preserve_alignments"),
        "decoding.greedy.preserve_frame_confidence": greedy.get("preserve_frame_confidence"),
        "decoding.greedy.ngram_lm_model": greedy.get("ngram_lm_model"),
        "decoding.greedy.boosting_tree.model_path": (greedy.get("boosting_tree") or {}).get("model_path"),
    }
    confidence = cfg.get("confidence_cfg") or {}
    for key in ("preserve_frame_confidence", "preserve_token_confidence", "preserve_word_confidence"):
        checks[f"decoding.confidence_cfg.{key}"] = confidence.get(key)
    for key, value in checks.items():
        if _is_on(value):
            raise NotImplementedError(f"{key}={value!r} is not implemented in compat's greedy CTC decoding; set it "
                                      "to false / null")
    temperature = cfg.get("temperature", 1.0)
    if temperature is None or not temperature > 0:
        raise ValueError(f"decoding.temperature must be > 0, got {temperature!r}")
