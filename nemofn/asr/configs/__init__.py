"""Schemas (dataclasses) of NeMo-layout ASR configs, checked by :mod:`nemofn.core.schema`.

One small file per area: :mod:`~nemofn.asr.configs.modules` (preprocessor, SpecAugment, encoders, decoder),
:mod:`~nemofn.asr.configs.data` (dataset blocks), :mod:`~nemofn.asr.configs.optim` (``optim`` and ``sched``),
:mod:`~nemofn.asr.configs.decoding` (CTC decoding), :mod:`~nemofn.asr.configs.models` (the ``model:`` block of CTC
models) and :mod:`~nemofn.asr.configs.transducer` (RNN-T / TDT and hybrid transducer-CTC models, with their decoding
and loss blocks).
``validate_model_config(cfg.model)`` checks a whole model config before anything is built.
"""

from nemofn.asr.configs.data import ASRDatasetConfig, DatasetConfigError
from nemofn.asr.configs.decoding import CTC_DECODING_DEFAULTS, CTCBPEDecodingConfig, CTCDecodingConfig, merge_decoding
from nemofn.asr.configs.models import (
    EncDecCTCBPEConfig,
    EncDecCTCConfig,
    FinetuneModelConfig,
    InterCTCConfig,
    TokenizerConfig,
    model_schema,
    validate_model_config,
)
from nemofn.asr.configs.modules import (
    AudioToMelSpectrogramPreprocessorConfig,
    ConformerEncoderConfig,
    ConvASRDecoderConfig,
    ConvASREncoderConfig,
    JasperEncoderConfig,
    RNNTDecoderConfig,
    RNNTJointConfig,
    SpectrogramAugmentationConfig,
)
from nemofn.asr.configs.optim import OptimConfig, SchedConfig
from nemofn.asr.configs.transducer import (
    TRANSDUCER_DECODING_DEFAULTS,
    EncDecHybridRNNTCTCBPEConfig,
    EncDecHybridRNNTCTCConfig,
    EncDecRNNTBPEConfig,
    EncDecRNNTConfig,
    RNNTBPEDecodingConfig,
    RNNTDecodingConfig,
    merge_transducer_decoding,
)
from nemofn.core.schema import ConfigError

__all__ = [
    "ConfigError", "validate_model_config", "model_schema", "EncDecCTCConfig", "EncDecCTCBPEConfig",
    "FinetuneModelConfig", "TokenizerConfig", "InterCTCConfig", "ASRDatasetConfig", "DatasetConfigError",
    "CTCDecodingConfig", "CTCBPEDecodingConfig", "CTC_DECODING_DEFAULTS", "merge_decoding",
    "AudioToMelSpectrogramPreprocessorConfig", "SpectrogramAugmentationConfig", "JasperEncoderConfig",
    "ConvASREncoderConfig", "ConformerEncoderConfig", "ConvASRDecoderConfig", "OptimConfig", "SchedConfig",
    "EncDecRNNTConfig", "EncDecRNNTBPEConfig", "EncDecHybridRNNTCTCConfig", "EncDecHybridRNNTCTCBPEConfig",
    "RNNTDecoderConfig", "RNNTJointConfig", "RNNTDecodingConfig", "RNNTBPEDecodingConfig",
    "TRANSDUCER_DECODING_DEFAULTS", "merge_transducer_decoding",
]
