"""Schemas of a transducer's ``model:`` block: RNN-T / TDT models and hybrid transducer + CTC models.

:class:`EncDecRNNTConfig` / :class:`EncDecRNNTBPEConfig` are the ``model:`` blocks of NeMo's ``EncDecRNNTModel`` /
``EncDecRNNTBPEModel`` (a TDT model is one of these with ``loss.loss_name: tdt``), and
:class:`EncDecHybridRNNTCTCConfig` / :class:`EncDecHybridRNNTCTCBPEConfig` add the auxiliary CTC head (``aux_ctc``).
Every top-level key NeMo's transducer classes (and ``ASRModel`` / ``ModelPT``) read is a field; the keys shared with
CTC models use the same schemas (:mod:`~nemofn.asr.configs.models`, :mod:`~nemofn.asr.configs.data`, ...), and
NeMo features nemofn lacks are accepted only at their default.

``decoding`` is NeMo 3.0's ``RNNTDecodingConfig`` (fields, nesting and defaults) plus the keys NeMo's decoding code
reads without declaring them (``greedy.max_symbols``, ``beam.tsd_max_sym_exp``, ...: NeMo's own example configs use
them). Every strategy NeMo knows is a valid value; which ones nemofn runs (:data:`TRANSDUCER_SUPPORTED_STRATEGIES`)
is decided where decoding happens. :func:`merge_transducer_decoding` is NeMo's
``OmegaConf.merge(RNNTDecodingConfig(), user_cfg)`` with every key checked first. Likewise ``loss.loss_name`` takes
every name of NeMo's ``RNNT_LOSS_RESOLVER``; the loss builder refuses those nemofn does not implement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from nemofn.asr.configs.data import ASRDatasetConfig
from nemofn.asr.configs.decoding import (
    BoostingTreeModelConfig,
    CTCBPEDecodingConfig,
    CTCDecodingConfig,
    ConfidenceConfig,
    ConfidenceMethodConfig,
)
from nemofn.asr.configs.models import CTC_REDUCTIONS, ModelPTKeys, TokenizerConfig
from nemofn.asr.configs.modules import (
    AudioToMelSpectrogramPreprocessorConfig,
    ConformerEncoderConfig,
    ConvASRDecoderConfig,
    RNNTDecoderConfig,
    RNNTJointConfig,
    SpectrogramAugmentationConfig,
    select_module,
)
from nemofn.asr.configs.optim import select_optim
from nemofn.core.schema import (
    MISSING,
    default_only,
    defaults_of,
    drop_keys,
    ignored,
    non_negative,
    option,
    positive,
    resolved_plain,
    validate,
)

__all__ = [
    "GreedyRNNTInferConfig", "BeamRNNTInferConfig", "RNNTDecodingConfig", "RNNTBPEDecodingConfig",
    "WarpRNNTNumbaKwargs", "TDTKwargs", "TDTPytorchKwargs", "MultiblankKwargs", "TransducerLossConfig",
    "TransducerModelDefaults", "VariationalNoiseConfig", "AuxCTCConfig", "AuxCTCBPEConfig", "EncDecRNNTConfig",
    "EncDecRNNTBPEConfig", "EncDecHybridRNNTCTCConfig", "EncDecHybridRNNTCTCBPEConfig", "transducer_schema",
    "TRANSDUCER_STRATEGIES", "TRANSDUCER_SUPPORTED_STRATEGIES", "RNNT_LOSS_NAMES", "RNNT_REDUCTIONS",
    "TRANSDUCER_DECODING_DEFAULTS", "UNDECLARED_DECODING_KEYS", "default_transducer_decoding",
    "merge_transducer_decoding",
]

#: NeMo 3.0's transducer ``decoding.strategy`` values (``TransducerDecodingStrategyType``).
TRANSDUCER_STRATEGIES = ("greedy", "greedy_batch", "beam", "tsd", "alsd", "maes", "malsd_batch", "maes_batch")
#: The strategies nemofn runs (label-looping greedy search for RNN-T and TDT).
TRANSDUCER_SUPPORTED_STRATEGIES = ("greedy", "greedy_batch")
#: The names of NeMo 3.0's ``RNNT_LOSS_RESOLVER`` (``default`` is ``warprnnt_numba``).
RNNT_LOSS_NAMES = ("default", "warprnnt", "warprnnt_numba", "pytorch", "multiblank_rnnt", "multiblank_rnnt_pytorch",
                   "graph_w_transducer", "graph_rnnt", "tdt", "tdt_pytorch")
#: NeMo's ``rnnt_reduction`` values (``null``: the per-utterance losses, unreduced).
RNNT_REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum")

_BLANK_LM_MODES = ("no_score", "lm_weighted_full", "NO_SCORE", "LM_WEIGHTED_FULL")  # values, and names as YAML
_PRUNING_MODES = ("early", "late", "EARLY", "LATE")                               # writes NeMo's enums


# ------------------------------------------------------------------------------------------------- decoding
@dataclass
class GreedyRNNTInferConfig:
    """``decoding.greedy``: NeMo's ``GreedyBatchedRNNTInferConfig`` (the greedy block of ``RNNTDecodingConfig``).

    ``max_symbols`` (NeMo's configs spell it so) wins over ``max_symbols_per_step`` when set; ``compute_timestamps``
    is read when the top-level one is null. Neither is a field of NeMo's dataclass (not in the defaults).
    """

    max_symbols_per_step: Optional[int] = 10
    preserve_alignments: bool = False
    preserve_frame_confidence: bool = False
    tdt_include_token_duration: bool = False
    tdt_include_duration_confidence: bool = False
    confidence_method_cfg: Optional[ConfidenceMethodConfig] = field(default_factory=ConfidenceMethodConfig)
    loop_labels: bool = True
    use_cuda_graph_decoder: bool = True
    ngram_lm_model: Optional[str] = None
    ngram_lm_alpha: float = 0.0
    boosting_tree: BoostingTreeModelConfig = field(default_factory=BoostingTreeModelConfig)
    boosting_tree_alpha: float = 0.0
    enable_per_stream_biasing: bool = False
    max_symbols: Optional[int] = None
    compute_timestamps: Optional[bool] = None


@dataclass
class BeamRNNTInferConfig:
    """``decoding.beam``: NeMo's ``BeamRNNTInferConfig`` as ``RNNTDecodingConfig`` builds it (``beam_size=4``).

    Also the keys NeMo's beam code reads that the dataclass lacks: ``tsd_max_sym_exp`` (its configs' spelling of
    ``tsd_max_sym_exp_per_step``), ``max_symbols`` (malsd), ``compute_timestamps``, ``preserve_frame_confidence``.
    """

    beam_size: int = 4
    search_type: str = "default"
    score_norm: bool = True
    return_best_hypothesis: bool = True
    tsd_max_sym_exp_per_step: Optional[int] = 50
    alsd_max_target_len: float = 1.0
    nsc_max_timesteps_expansion: int = 1
    nsc_prefix_alpha: int = 1
    maes_num_steps: int = 2
    maes_prefix_alpha: int = 1
    maes_expansion_gamma: float = 2.3
    maes_expansion_beta: float = 2
    language_model: Optional[Dict[str, Any]] = None
    softmax_temperature: float = 1.0
    preserve_alignments: bool = False
    ngram_lm_model: Optional[str] = None
    ngram_lm_alpha: Optional[float] = 0.0
    boosting_tree: BoostingTreeModelConfig = field(default_factory=BoostingTreeModelConfig)
    boosting_tree_alpha: Optional[float] = 0.0
    hat_subtract_ilm: bool = False
    hat_ilm_weight: float = 0.0
    max_symbols_per_step: Optional[int] = 10
    blank_lm_score_mode: Optional[str] = option("lm_weighted_full", choices=_BLANK_LM_MODES)
    pruning_mode: Optional[str] = option("late", choices=_PRUNING_MODES)
    allow_cuda_graphs: Optional[bool] = True
    tsd_max_sym_exp: Optional[int] = None
    max_symbols: Optional[int] = None
    compute_timestamps: Optional[bool] = None
    preserve_frame_confidence: Optional[bool] = None


@dataclass
class RNNTDecodingConfig:
    """NeMo 3.0's ``RNNTDecodingConfig`` (fields, nesting and defaults).

    A non-empty ``durations`` list makes NeMo decode with TDT (the model copies it from ``loss.tdt_kwargs``);
    ``big_blank_durations`` with multi-blank RNN-T. ``model_type`` is written by NeMo's configs but not read.
    """

    model_type: str = option("rnnt", choices=("rnnt", "tdt", "multiblank", "multi_blank"))
    strategy: str = option("greedy_batch", choices=TRANSDUCER_STRATEGIES)
    compute_hypothesis_token_set: bool = False
    preserve_alignments: Optional[bool] = None
    tdt_include_token_duration: Optional[bool] = None
    confidence_cfg: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    fused_batch_size: Optional[int] = None
    compute_timestamps: Optional[bool] = None
    compute_langs: bool = False
    word_seperator: str = " "
    segment_seperators: Optional[List[str]] = field(default_factory=lambda: [".", "!", "?"])
    segment_gap_threshold: Optional[int] = None
    rnnt_timestamp_type: str = option("all", choices=("char", "word", "segment", "all"))
    greedy: GreedyRNNTInferConfig = field(default_factory=GreedyRNNTInferConfig)
    beam: BeamRNNTInferConfig = field(default_factory=BeamRNNTInferConfig)
    temperature: float = 1.0
    durations: Optional[List[int]] = field(default_factory=list)
    big_blank_durations: Optional[List[int]] = field(default_factory=list)
    strip_lang_tags: bool = False
    lang_tag_pattern: Optional[str] = None


@dataclass
class RNNTBPEDecodingConfig(RNNTDecodingConfig):
    """NeMo's ``RNNTBPEDecodingConfig``: the same fields."""


#: Keys of the schemas above that NeMo's decoding code reads but its dataclasses do not declare (so they are not
#: part of :data:`TRANSDUCER_DECODING_DEFAULTS`: NeMo's fallback when such a key is absent differs from ``None``).
UNDECLARED_DECODING_KEYS = {
    "greedy": ("max_symbols", "compute_timestamps"),
    "beam": ("tsd_max_sym_exp", "max_symbols", "compute_timestamps", "preserve_frame_confidence"),
}


def _nemo_defaults() -> dict[str, Any]:
    defaults = defaults_of(RNNTDecodingConfig)
    for block, keys in UNDECLARED_DECODING_KEYS.items():
        for key in keys:
            del defaults[block][key]
    return defaults


#: NeMo 3.0's ``RNNTDecodingConfig()`` as plain data (``OmegaConf.structured`` of it, enums as their values).
TRANSDUCER_DECODING_DEFAULTS: dict[str, Any] = _nemo_defaults()


def default_transducer_decoding() -> DictConfig:
    """A fresh ``DictConfig`` of :data:`TRANSDUCER_DECODING_DEFAULTS`."""
    return OmegaConf.create(_nemo_defaults())


def merge_transducer_decoding(decoding_cfg: Any, path: str = "decoding", *, unknown: str = "error",
                              loss: Any = None) -> DictConfig:
    """NeMo's ``change_decoding_strategy`` merge: ``RNNTDecodingConfig()`` defaults, then the user's keys, checked.

    Args:
        decoding_cfg: a partial decoding config (DictConfig, dict or :class:`RNNTDecodingConfig`), or ``None``.
        path: the block's full key, for messages (``model.decoding``).
        unknown: ``"error"``, or ``"warn"`` to drop unknown keys with a warning (restoring foreign checkpoints).
        loss: the model's ``loss`` block, if any: with ``loss_name: tdt`` its ``tdt_kwargs.durations`` replace
            ``durations`` (and ``multiblank_rnnt``'s ``big_blank_durations``), as NeMo does.

    Raises:
        ConfigError: an unknown key (with the closest known one), a wrong type or an invalid value.
    """
    merged = default_transducer_decoding()
    if decoding_cfg is not None:
        found = validate(decoding_cfg, RNNTDecodingConfig, path, unknown=unknown)
        user = resolved_plain(decoding_cfg, path)  # a node of a model config resolves against its root
        if found:
            drop_keys(user, found, path)
        merged = OmegaConf.merge(merged, OmegaConf.create(user))
    loss = resolved_plain(loss, "loss") if loss is not None else {}
    name = loss.get("loss_name", "default")
    kwargs = loss.get(f"{name}_kwargs") or {}
    if name == "tdt":
        merged.durations = kwargs.get("durations")
    elif name == "multiblank_rnnt":
        merged.big_blank_durations = kwargs.get("big_blank_durations")
    return merged


# ----------------------------------------------------------------------------------------------------- loss
_NOT_READ = "NeMo's {} loss does not take it (NeMo logs it as unused)"


@dataclass
class WarpRNNTNumbaKwargs:
    """``loss.warprnnt_numba_kwargs`` (also what ``loss_name: default`` reads)."""

    fastemit_lambda: float = 0.0
    clamp: float = -1.0


@dataclass
class TDTKwargs:
    """``loss.tdt_kwargs``: the durations (ascending, with 0 and 1), ``sigma`` (logit under-normalisation) and
    ``omega`` (the probability of a plain RNN-T loss step)."""

    fastemit_lambda: float = 0.0
    clamp: float = -1.0
    durations: Optional[List[int]] = None
    sigma: float = 0.0
    omega: float = 0.0


@dataclass
class TDTPytorchKwargs:
    """``loss.tdt_pytorch_kwargs``: NeMo's pure-PyTorch TDT loss takes durations and sigma only."""

    durations: Optional[List[int]] = None
    sigma: float = 0.0
    omega: float = ignored(0.0, reason=_NOT_READ.format("tdt_pytorch"))
    fastemit_lambda: float = ignored(0.0, reason=_NOT_READ.format("tdt_pytorch"))
    clamp: float = ignored(-1.0, reason=_NOT_READ.format("tdt_pytorch"))


@dataclass
class MultiblankKwargs:
    """``loss.multiblank_rnnt_kwargs`` (multi-blank RNN-T; nemofn has no such loss)."""

    fastemit_lambda: float = 0.0
    clamp: float = -1.0
    big_blank_durations: Optional[List[int]] = None
    sigma: float = 0.0


@dataclass
class TransducerLossConfig:
    """``loss:``: ``loss_name`` and the ``<loss_name>_kwargs`` block NeMo passes to that loss.

    Blocks of other losses may stand next to the selected one (NeMo ignores them). The kwargs of the losses that
    take none (``warprnnt``, ``pytorch``) and of k2's graph losses are accepted as any mapping.
    """

    loss_name: str = option("default", choices=RNNT_LOSS_NAMES)
    warprnnt_numba_kwargs: Optional[WarpRNNTNumbaKwargs] = None
    tdt_kwargs: Optional[TDTKwargs] = None
    tdt_pytorch_kwargs: Optional[TDTPytorchKwargs] = None
    multiblank_rnnt_kwargs: Optional[MultiblankKwargs] = None
    multiblank_rnnt_pytorch_kwargs: Optional[MultiblankKwargs] = None
    warprnnt_kwargs: Optional[Dict[str, Any]] = None
    pytorch_kwargs: Optional[Dict[str, Any]] = None
    graph_rnnt_kwargs: Optional[Dict[str, Any]] = None
    graph_w_transducer_kwargs: Optional[Dict[str, Any]] = None


# ----------------------------------------------------------------------------------------------- model keys
@dataclass
class TransducerModelDefaults:
    """``model_defaults:``: values other keys interpolate. NeMo copies ``enc_hidden`` / ``pred_hidden`` into
    ``joint.jointnet`` (both required); other keys (ContextNet's ``filters``, ``se``, ...) are allowed."""

    __open__ = True

    enc_hidden: int = positive()
    pred_hidden: int = positive()
    joint_hidden: Optional[int] = positive(None)
    tdt_durations: Optional[List[int]] = non_negative(None)
    num_tdt_durations: Optional[int] = positive(None)


def _hidden_sizes(value: Mapping) -> str | None:
    absent = [key for key in ("enc_hidden", "pred_hidden") if key not in value]
    return (f"{' and '.join(absent)} must be set (NeMo copies enc_hidden and pred_hidden into joint.jointnet)"
            if absent else None)


def _no_noise(value: Any) -> str | None:
    return None if not value else ("gradient noise on the prediction network is not implemented in nemofn; set it "
                                   "to 0")


@dataclass
class VariationalNoiseConfig:
    """``variational_noise:``: NeMo adds Gaussian noise (``std``) to the decoder's gradients from ``start_step``."""

    std: float = option(0.0, check=_no_noise)
    start_step: int = 0


@dataclass
class AuxCTCConfig:
    """``aux_ctc:`` of a hybrid model: the CTC head (``decoder``; ``feat_in`` / ``num_classes`` / ``vocabulary``
    are filled by the model), its loss weight ``w`` in ``(1 - w) * transducer + w * CTC``, and its decoding."""

    ctc_loss_weight: float = 0.5
    use_cer: bool = False
    ctc_reduction: str = option("mean_batch", choices=CTC_REDUCTIONS)
    decoder: Any = option(default_factory=ConvASRDecoderConfig, select=select_module("ConvASRDecoder"))
    decoding: Optional[CTCDecodingConfig] = None


@dataclass
class AuxCTCBPEConfig(AuxCTCConfig):
    """``aux_ctc:`` of a BPE hybrid model (NeMo's ``CTCBPEDecodingConfig`` for ``decoding``)."""

    decoding: Optional[CTCBPEDecodingConfig] = None


_NORM = "NeMo's gradient normalisation of the transducer modules is not implemented"


@dataclass
class _TransducerModelConfig(ModelPTKeys):
    """The keys of every transducer model (``EncDecRNNTModel`` and what it shares with CTC models)."""

    sample_rate: int = 16000
    repeat: int = 1
    dropout: float = 0.0
    separable: bool = False
    model_defaults: TransducerModelDefaults = option(default_factory=TransducerModelDefaults, check=_hidden_sizes)

    train_ds: Optional[ASRDatasetConfig] = field(default_factory=lambda: ASRDatasetConfig(shuffle=True))
    validation_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)
    test_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)

    preprocessor: Any = option(default_factory=AudioToMelSpectrogramPreprocessorConfig,
                               select=select_module("AudioToMelSpectrogramPreprocessor"))
    spec_augment: Optional[Any] = option(default_factory=SpectrogramAugmentationConfig, types=(dict, None),
                                         select=select_module("SpectrogramAugmentation"))
    encoder: Any = option(default_factory=ConformerEncoderConfig,
                          select=select_module("ConformerEncoder", "ConvASREncoder"))
    decoder: Any = option(default_factory=RNNTDecoderConfig, select=select_module("RNNTDecoder"))
    joint: Any = option(default_factory=RNNTJointConfig, select=select_module("RNNTJoint"))
    decoding: RNNTDecodingConfig = field(default_factory=RNNTDecodingConfig)  # required (NeMo injects none)
    loss: Optional[TransducerLossConfig] = field(default_factory=TransducerLossConfig)
    optim: Optional[Any] = option(None, select=select_optim, types=(dict, None))

    rnnt_reduction: Optional[str] = option("mean_batch", choices=RNNT_REDUCTIONS)
    compute_eval_loss: bool = True
    log_prediction: bool = True
    use_cer: bool = False
    variational_noise: Optional[VariationalNoiseConfig] = None
    normalize_joint_txu: bool = default_only(False, reason=_NORM)
    normalize_encoder_norm: bool = default_only(False, reason=_NORM)
    normalize_decoder_norm: bool = default_only(False, reason=_NORM)
    normalize_joint_norm: bool = default_only(False, reason=_NORM)


@dataclass
class EncDecRNNTConfig(_TransducerModelConfig):
    """``model:`` of NeMo's ``EncDecRNNTModel`` (char labels; RNN-T or, with ``loss_name: tdt``, TDT)."""

    labels: Optional[List[str]] = MISSING


@dataclass
class EncDecRNNTBPEConfig(_TransducerModelConfig):
    """``model:`` of NeMo's ``EncDecRNNTBPEModel`` (a SentencePiece tokenizer; parakeet-tdt / -rnnt models).

    ``labels`` is written by NeMo from the tokenizer's vocabulary (every saved ``model_config.yaml`` has it).
    """

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    decoding: RNNTBPEDecodingConfig = field(default_factory=RNNTBPEDecodingConfig)
    labels: Optional[List[str]] = ignored(reason="written by NeMo from the tokenizer's vocabulary")


@dataclass
class EncDecHybridRNNTCTCConfig(EncDecRNNTConfig):
    """``model:`` of NeMo's ``EncDecHybridRNNTCTCModel``: a transducer plus the CTC head of ``aux_ctc``."""

    aux_ctc: AuxCTCConfig = field(default_factory=AuxCTCConfig)


@dataclass
class EncDecHybridRNNTCTCBPEConfig(EncDecRNNTBPEConfig):
    """``model:`` of NeMo's ``EncDecHybridRNNTCTCBPEModel`` (BPE hybrid; e.g. parakeet-tdt_ctc models)."""

    aux_ctc: AuxCTCBPEConfig = field(default_factory=AuxCTCBPEConfig)


def transducer_schema(cfg: Mapping) -> type:
    """The schema of a transducer ``model:`` block: hybrid when it has ``aux_ctc``, BPE when it has a
    ``tokenizer``."""
    bpe = cfg.get("tokenizer") is not None
    if "aux_ctc" in cfg:
        return EncDecHybridRNNTCTCBPEConfig if bpe else EncDecHybridRNNTCTCConfig
    return EncDecRNNTBPEConfig if bpe else EncDecRNNTConfig
