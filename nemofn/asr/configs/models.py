"""Schemas of a CTC model's ``model:`` block: :class:`EncDecCTCConfig` (char) and :class:`EncDecCTCBPEConfig`.

Every top-level key NeMo's CTC and ASR model classes (and ``ModelPT``) read is a field, so a misspelt one
(``model.optimm``, ``model.spec_augmnt``) is an unknown key with the closest known key named, instead of being
silently ignored. Sections are checked with their own schemas: modules by ``_target_``
(:mod:`nemofn.asr.configs.modules`), datasets (:mod:`~nemofn.asr.configs.data`), ``optim`` by optimizer and schedule
name (:mod:`~nemofn.asr.configs.optim`) and ``decoding`` (:mod:`~nemofn.asr.configs.decoding`).

Features NeMo has and nemofn does not (InterCTC, adapters, ...) are accepted only at their default, so a config
that turns one on fails naming it. ``skip_nan_grad`` takes either value: nemofn always skips non-finite steps.
:class:`FinetuneModelConfig` is the ``model:`` block of a fine-tuning script (``speech_to_text_finetune.yaml``).
:func:`validate_model_config` checks a whole ``model:`` block (a DictConfig, dict or one of these dataclasses)
before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nemofn.asr.configs.data import ASRDatasetConfig
from nemofn.asr.configs.decoding import CTCBPEDecodingConfig, CTCDecodingConfig
from nemofn.asr.configs.modules import (
    AudioToMelSpectrogramPreprocessorConfig,
    ConvASRDecoderConfig,
    ConvASREncoderConfig,
    SpectrogramAugmentationConfig,
    select_module,
)
from nemofn.asr.configs.optim import select_optim
from nemofn.core.schema import MISSING, ConfigError, default_only, ignored, option, to_plain, validate

__all__ = ["TokenizerConfig", "InterCTCConfig", "FreezeUpdatesConfig", "ModelPTKeys", "EncDecCTCConfig", "EncDecCTCBPEConfig",
           "CharLabelsConfig", "FinetuneTokenizerConfig", "FinetuneModelConfig", "model_schema",
           "validate_model_config", "CTC_REDUCTIONS", "is_transducer_config"]

#: NeMo's ``ctc_reduction`` values: ``nemofn.asr.ctc.CTC_REDUCTIONS`` (repeated so that this file needs no torch;
#: a test keeps the two equal).
CTC_REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum", "none")

_PROFILING = "a profiling hook of NeMo's ModelPT (nsys / memory / chakra); use torch.profiler around the loop"
_OTHER_MODELS = "NeMo's CTC models do not read it (only its RNN-T / TDT models do)"


@dataclass
class TokenizerConfig:
    """``tokenizer:`` of a BPE model: ``dir`` (holding ``tokenizer.model``) and ``type``.

    ``model_path`` / ``vocab_path`` / ``spe_tokenizer_vocab`` are written by NeMo into ``.nemo`` configs (artifact
    paths) and take precedence over ``dir``.
    """

    dir: Optional[str] = MISSING
    type: str = option(MISSING, choices=("bpe", "wpe", "agg"), supported=("bpe",),
                       reason="only SentencePiece (type: bpe) tokenizers are implemented")
    model_path: Optional[str] = None
    vocab_path: Optional[str] = None
    spe_tokenizer_vocab: Optional[str] = None
    hf_kwargs: Optional[Dict[str, Any]] = ignored(reason="HuggingFace (wpe) tokenizer options")
    special_tokens: Optional[Any] = default_only(None, types=(dict, list, None),
                                                 reason="extra special tokens are not supported")
    custom_tokenizer: Optional[Any] = default_only(None, types=(dict, None),
                                                   reason="custom tokenizer classes are not supported")
    langs: Optional[Dict[str, Any]] = default_only(None, reason="aggregate (multilingual) tokenizers are not "
                                                                "supported")


@dataclass
class InterCTCConfig:
    """``interctc:``: intermediate CTC losses (NeMo's ``InterCTCMixin``); nemofn implements none."""

    loss_weights: List[float] = default_only([], reason="InterCTC (intermediate-layer CTC losses) is not "
                                                        "implemented")
    apply_at_layers: List[int] = default_only([], reason="InterCTC (intermediate-layer CTC losses) is not "
                                                         "implemented")


@dataclass
class FreezeUpdatesConfig:
    """``freeze_updates:``: NeMo's frozen modules by step range (``{module: -1 | N | [start, end]}``)."""

    enabled: bool = False
    modules: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelPTKeys:
    """The keys every NeMo ASR model reads beyond its architecture: ``ModelPT``'s (``target``, ``init_from_*``,
    profiling hooks) and the training features of NeMo's ASR base classes (InterCTC, frozen modules, adapters)."""

    interctc: Optional[InterCTCConfig] = None
    # Either value: nemofn always leaves out a step whose loss or gradient norm is NaN/Inf (StepConfig.skip_nonfinite,
    # on by default), so ``false`` does not turn skipping off. The key is accepted for NeMo compatibility.
    skip_nan_grad: bool = False
    freeze_updates: Optional[FreezeUpdatesConfig] = None
    optim_param_groups: Optional[Dict[str, Any]] = default_only(None, reason="per-module optimizer parameter "
                                                                             "groups are not implemented")
    adapters: Optional[Dict[str, Any]] = default_only(None, reason="adapters are not implemented")
    child_model: Optional[Any] = default_only(None, types=(dict, None), reason="nested child models are not "
                                                                               "supported")

    # ModelPT
    target: Optional[str] = None
    nemo_version: Optional[str] = None
    init_from_nemo_model: Optional[Any] = option(None, types=(str, dict, None))
    init_from_pretrained_model: Optional[Any] = option(None, types=(str, dict, None))
    init_from_ptl_ckpt: Optional[Any] = option(None, types=(str, dict, None))
    init_strict: bool = True
    nsys_profile: Optional[Dict[str, Any]] = ignored(reason=_PROFILING)
    memory_profile: Optional[Dict[str, Any]] = ignored(reason=_PROFILING)
    chakra_profile: Optional[Dict[str, Any]] = ignored(reason=_PROFILING)
    dump_debug_info: bool = ignored(False, reason="NeMo's debug hooks (tensor statistics dumps)")
    dump_debug_info_to_file: bool = ignored(False, reason="NeMo's debug hooks (tensor statistics dumps)")


@dataclass
class _CTCModelConfig(ModelPTKeys):
    """The keys shared by the char and BPE CTC models."""

    sample_rate: int = 16000
    # values other keys interpolate (NeMo's "model global arguments")
    repeat: int = 1
    dropout: float = 0.0
    separable: bool = False
    model_defaults: Dict[str, Any] = field(default_factory=dict)

    train_ds: Optional[ASRDatasetConfig] = field(default_factory=lambda: ASRDatasetConfig(shuffle=True))
    validation_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)
    test_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)

    preprocessor: Any = option(default_factory=AudioToMelSpectrogramPreprocessorConfig,
                               select=select_module("AudioToMelSpectrogramPreprocessor"))
    spec_augment: Optional[Any] = option(default_factory=SpectrogramAugmentationConfig, types=(dict, None),
                                         select=select_module("SpectrogramAugmentation"))
    encoder: Any = option(default_factory=ConvASREncoderConfig,
                          select=select_module("ConvASREncoder", "ConformerEncoder"))
    decoder: Any = option(default_factory=ConvASRDecoderConfig, select=select_module("ConvASRDecoder"))
    optim: Optional[Any] = option(None, select=select_optim, types=(dict, None))
    decoding: Optional[CTCDecodingConfig] = field(default_factory=CTCDecodingConfig)

    ctc_reduction: str = option("mean_batch", choices=CTC_REDUCTIONS)
    log_prediction: bool = False
    use_cer: bool = False
    compute_eval_loss: bool = ignored(True, reason=_OTHER_MODELS)
    variational_noise: Optional[Dict[str, Any]] = ignored(reason=_OTHER_MODELS)


@dataclass
class EncDecCTCConfig(_CTCModelConfig):
    """``model:`` of NeMo's ``EncDecCTCModel`` (char labels).

    ``labels`` is the character vocabulary (``decoder.vocabulary`` usually interpolates it).
    """

    labels: Optional[List[str]] = MISSING


@dataclass
class EncDecCTCBPEConfig(_CTCModelConfig):
    """``model:`` of NeMo's ``EncDecCTCModelBPE`` (a SentencePiece tokenizer from ``tokenizer``)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    decoding: Optional[CTCBPEDecodingConfig] = field(default_factory=CTCBPEDecodingConfig)


@dataclass
class CharLabelsConfig:
    """``model.char_labels`` of a fine-tuning config: a new char vocabulary."""

    update_labels: bool = False
    labels: Optional[List[str]] = None


@dataclass
class FinetuneTokenizerConfig(TokenizerConfig):
    """``model.tokenizer`` of a fine-tuning config: a new BPE vocabulary when ``update_tokenizer``."""

    update_tokenizer: bool = False
    dir: Optional[str] = None
    type: str = option("bpe", choices=("bpe", "wpe", "agg"), supported=("bpe",),
                       reason="only SentencePiece (type: bpe) tokenizers are implemented")


@dataclass
class FinetuneModelConfig:
    """``model:`` of NeMo's ``speech_to_text_finetune.py``: what changes on a restored model (data, optimizer,
    SpecAugment, vocabulary, frozen modules); the architecture comes from the ``.nemo``."""

    sample_rate: int = 16000
    train_ds: Optional[ASRDatasetConfig] = field(default_factory=lambda: ASRDatasetConfig(shuffle=True))
    validation_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)
    test_ds: Optional[ASRDatasetConfig] = field(default_factory=ASRDatasetConfig)
    char_labels: Optional[CharLabelsConfig] = field(default_factory=CharLabelsConfig)
    tokenizer: Optional[FinetuneTokenizerConfig] = field(default_factory=FinetuneTokenizerConfig)
    freeze_updates: Optional[FreezeUpdatesConfig] = None
    spec_augment: Optional[Any] = option(None, types=(dict, None), select=select_module("SpectrogramAugmentation"))
    optim: Optional[Any] = option(None, select=select_optim, types=(dict, None))


def _is_finetune(cfg: Any) -> bool:
    tokenizer = cfg.get("tokenizer")
    return ("char_labels" in cfg or (isinstance(tokenizer, Mapping) and "update_tokenizer" in tokenizer)
            or not any(key in cfg for key in ("preprocessor", "encoder", "decoder")))


def is_transducer_config(cfg: Any) -> bool:
    """Whether a ``model:`` block (mapping) is a transducer's (RNN-T / TDT, or hybrid): it has a ``joint``."""
    return isinstance(cfg, Mapping) and "joint" in cfg


def model_schema(cfg: Any, *, finetune: bool | None = None) -> type:
    """The schema of a ``model:`` block (a plain dict or one of the schema dataclasses).

    :class:`FinetuneModelConfig` for a fine-tuning block (``finetune=None``: one with ``char_labels``,
    ``tokenizer.update_tokenizer``, or no preprocessor, encoder and decoder). A block with a ``joint`` is a
    transducer's (:func:`nemofn.asr.configs.transducer.transducer_schema`: hybrid with ``aux_ctc``, BPE with a
    ``tokenizer``). Otherwise :class:`EncDecCTCBPEConfig` when it has a ``tokenizer`` and :class:`EncDecCTCConfig`
    when not.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return type(cfg)
    if finetune or (finetune is None and _is_finetune(cfg)):
        return FinetuneModelConfig
    if is_transducer_config(cfg):
        from nemofn.asr.configs.transducer import transducer_schema  # it imports this module's shared schemas

        return transducer_schema(cfg)
    return EncDecCTCBPEConfig if cfg.get("tokenizer") is not None else EncDecCTCConfig


def validate_model_config(cfg: Any, *, unknown_keys: str = "error", path: str = "model",
                          finetune: bool | None = None) -> list[str]:
    """Checks a whole ``model:`` block (CTC, transducer or hybrid; see :func:`model_schema`), every section
    included, without resolving or building anything.

    Call it on an experiment's ``cfg.model`` before any data is read: a misspelt key anywhere fails in
    milliseconds, naming its full path and the closest known key.

    Args:
        cfg: the ``model:`` block (DictConfig, dict, or one of the schema dataclasses).
        unknown_keys: ``"error"``, or ``"warn"`` (restoring a ``.nemo`` from another NeMo version: unknown keys are
            logged once each and returned, for the caller to drop).
        path: the block's key in messages.
        finetune: ``True`` for the ``model:`` block of a fine-tuning script, ``False`` for a model to build,
            ``None`` to tell from the keys (see :func:`model_schema`).

    Returns:
        The full paths of the unknown keys (empty with ``"error"``).

    Raises:
        ConfigError: an unknown key, a wrong type, an invalid value, or a NeMo feature nemofn does not implement.
    """
    plain = to_plain(cfg)
    if not isinstance(plain, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(cfg).__name__}", key=path)
    if "model" in plain and "preprocessor" not in plain:
        raise ConfigError("pass the `model:` block of the config, not the whole experiment config (use cfg.model)",
                          key=path)
    schema = model_schema(cfg if dataclasses.is_dataclass(cfg) else plain, finetune=finetune)
    return validate(plain, schema, path, unknown=unknown_keys)
