"""Schemas (dataclasses) of NeMo-layout ASR configs, checked by :mod:`nemofn.core.schema`.

One small file per area: :mod:`~nemofn.asr.configs.modules` (preprocessor, SpecAugment, encoders, decoder),
:mod:`~nemofn.asr.configs.data` (dataset blocks), :mod:`~nemofn.asr.configs.optim` (``optim`` and ``sched``),
:mod:`~nemofn.asr.configs.decoding` (CTC decoding) and :mod:`~nemofn.asr.configs.models` (the ``model:`` block).
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
    SpectrogramAugmentationConfig,
)
from nemofn.asr.configs.optim import OptimConfig, SchedConfig
from nemofn.core.schema import ConfigError

__all__ = [
    "ConfigError", "validate_model_config", "model_schema", "EncDecCTCConfig", "EncDecCTCBPEConfig",
    "FinetuneModelConfig", "TokenizerConfig", "InterCTCConfig", "ASRDatasetConfig", "DatasetConfigError",
    "CTCDecodingConfig", "CTCBPEDecodingConfig", "CTC_DECODING_DEFAULTS", "merge_decoding",
    "AudioToMelSpectrogramPreprocessorConfig", "SpectrogramAugmentationConfig", "JasperEncoderConfig",
    "ConvASREncoderConfig", "ConformerEncoderConfig", "ConvASRDecoderConfig", "OptimConfig", "SchedConfig",
]
