"""Schema of the ``decoding:`` block of CTC models: NeMo 3.0's ``CTCDecodingConfig`` with its defaults.

:data:`CTC_DECODING_DEFAULTS` is ``CTCDecodingConfig()`` as NeMo 3.0 writes it into every ``model_config.yaml``
(the same for ``CTCBPEDecodingConfig``). :func:`merge_decoding` is NeMo's ``OmegaConf.merge(CTCDecodingConfig(),
user_cfg)`` with every nested key checked, so a typo such as ``decoding.greedy.preserve_alignment`` is named with the
closest key. Which settings nemofn can run (greedy only) is decided where decoding happens, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from nemofn.core.schema import defaults_of, drop_keys, option, to_plain, validate

__all__ = [
    "ConfidenceMethodConfig", "ConfidenceConfig", "BoostingTreeModelConfig", "GreedyCTCInferConfig",
    "FlashlightConfig", "PyCTCDecodeConfig", "BeamCTCInferConfig", "WfstCTCInferConfig", "CTCDecodingConfig",
    "CTCBPEDecodingConfig", "CTC_STRATEGIES", "CTC_DECODING_DEFAULTS", "default_decoding", "merge_decoding",
]

#: The ``decoding.strategy`` values NeMo's CTC decoding knows.
CTC_STRATEGIES = ("greedy", "greedy_batch", "beam", "pyctcdecode", "flashlight", "wfst", "beam_batch")


@dataclass
class ConfidenceMethodConfig:
    name: str = "entropy"
    entropy_type: str = "tsallis"
    alpha: float = 0.33
    entropy_norm: str = "exp"
    temperature: Any = "DEPRECATED"


@dataclass
class ConfidenceConfig:
    preserve_frame_confidence: bool = False
    preserve_token_confidence: bool = False
    preserve_word_confidence: bool = False
    exclude_blank: bool = True
    aggregation: str = "min"
    tdt_include_duration: bool = False
    method_cfg: ConfidenceMethodConfig = field(default_factory=ConfidenceMethodConfig)


@dataclass
class BoostingTreeModelConfig:
    model_path: Optional[str] = None
    key_phrases_file: Optional[str] = None
    key_phrases_list: Optional[List[str]] = None
    key_phrase_items_list: Optional[List[Any]] = None
    context_score: float = 1.0
    depth_scaling: float = 2.0
    unk_score: float = 0.0
    final_eos_score: float = 1.0
    score_per_phrase: float = 0.0
    source_lang: str = "en"
    use_triton: bool = True
    uniform_weights: bool = False
    use_bpe_dropout: bool = False
    num_of_transcriptions: int = 5
    bpe_alpha: float = 0.3


@dataclass
class GreedyCTCInferConfig:
    preserve_alignments: bool = False
    compute_timestamps: bool = False
    preserve_frame_confidence: bool = False
    confidence_method_cfg: Optional[ConfidenceMethodConfig] = field(default_factory=ConfidenceMethodConfig)
    ngram_lm_model: Optional[str] = None
    ngram_lm_alpha: float = 0.0
    boosting_tree: BoostingTreeModelConfig = field(default_factory=BoostingTreeModelConfig)
    boosting_tree_alpha: Optional[float] = 0.0
    allow_cuda_graphs: bool = True


@dataclass
class FlashlightConfig:
    lexicon_path: Optional[str] = None
    boost_path: Optional[str] = None
    beam_size_token: int = 16
    beam_threshold: float = 20.0
    unk_weight: float = -math.inf
    sil_weight: float = 0.0


@dataclass
class PyCTCDecodeConfig:
    beam_prune_logp: float = -10.0
    token_min_logp: float = -5.0
    prune_history: bool = False
    hotwords: Optional[List[str]] = None
    hotword_weight: float = 10.0


@dataclass
class BeamCTCInferConfig:
    beam_size: int = 4
    search_type: str = "default"
    preserve_alignments: bool = False
    compute_timestamps: bool = False
    return_best_hypothesis: bool = True
    allow_cuda_graphs: bool = True
    beam_alpha: Optional[float] = None
    beam_beta: float = 1.0
    beam_threshold: float = 20.0
    kenlm_path: Optional[str] = None
    ngram_lm_alpha: Optional[float] = 1.0
    ngram_lm_model: Optional[str] = None
    boosting_tree: BoostingTreeModelConfig = field(default_factory=BoostingTreeModelConfig)
    boosting_tree_alpha: Optional[float] = 0.0
    flashlight_cfg: Optional[FlashlightConfig] = field(default_factory=FlashlightConfig)
    pyctcdecode_cfg: Optional[PyCTCDecodeConfig] = field(default_factory=PyCTCDecodeConfig)


@dataclass
class WfstCTCInferConfig:
    beam_size: int = 4
    search_type: str = "riva"
    return_best_hypothesis: bool = True
    preserve_alignments: bool = False
    compute_timestamps: bool = False
    decoding_mode: str = "nbest"
    open_vocabulary_decoding: bool = False
    beam_width: float = 10.0
    lm_weight: float = 1.0
    device: str = "cuda"
    arpa_lm_path: Optional[str] = None
    wfst_lm_path: Optional[str] = None
    riva_decoding_cfg: Optional[Dict[str, Any]] = field(default_factory=dict)


@dataclass
class CTCDecodingConfig:
    """NeMo 3.0's ``CTCDecodingConfig`` (fields, nesting and defaults)."""

    strategy: str = option("greedy_batch", choices=CTC_STRATEGIES)
    preserve_alignments: Optional[bool] = None
    compute_timestamps: Optional[bool] = None
    word_seperator: str = " "
    segment_seperators: Optional[List[str]] = field(default_factory=lambda: [".", "!", "?"])
    segment_gap_threshold: Optional[int] = None
    ctc_timestamp_type: str = "all"  # char, word or all
    batch_dim_index: int = 0
    greedy: GreedyCTCInferConfig = field(default_factory=GreedyCTCInferConfig)
    beam: BeamCTCInferConfig = field(default_factory=BeamCTCInferConfig)
    wfst: WfstCTCInferConfig = field(default_factory=WfstCTCInferConfig)
    confidence_cfg: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    temperature: float = 1.0


@dataclass
class CTCBPEDecodingConfig(CTCDecodingConfig):
    """NeMo's ``CTCBPEDecodingConfig``: the same fields."""


#: NeMo 3.0's ``CTCDecodingConfig()`` as plain data (what ``model_config.yaml`` holds under ``decoding``).
CTC_DECODING_DEFAULTS: dict[str, Any] = defaults_of(CTCDecodingConfig)


def default_decoding() -> DictConfig:
    """A fresh ``DictConfig`` of :data:`CTC_DECODING_DEFAULTS`."""
    return OmegaConf.create(defaults_of(CTCDecodingConfig))


def merge_decoding(decoding_cfg: Any, path: str = "decoding", *, unknown: str = "error") -> DictConfig:
    """NeMo's ``OmegaConf.merge(CTCDecodingConfig(), decoding_cfg)`` with the user's keys checked first.

    Args:
        decoding_cfg: a partial decoding config (DictConfig, dict or :class:`CTCDecodingConfig`), or ``None``.
        path: the block's full key, for messages (``model.decoding``).
        unknown: ``"error"``, or ``"warn"`` to drop unknown keys with a warning (restoring foreign checkpoints).

    Raises:
        ConfigError: an unknown key (with the closest known one), a wrong type or an invalid strategy.
    """
    base = default_decoding()
    if decoding_cfg is None:
        return base
    user = to_plain(decoding_cfg)
    found = validate(user, CTCDecodingConfig, path, unknown=unknown)
    if found:
        drop_keys(user, found, path)
    return OmegaConf.merge(base, OmegaConf.create(user))
