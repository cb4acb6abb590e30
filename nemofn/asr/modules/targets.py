"""NeMo's class paths of the ASR modules nemofn implements, registered in :mod:`nemofn.core.registry`.

Stdlib only: importing this file imports no model code. Each module is registered under NeMo's short path
(``nemo.collections.asr.modules.ConvASREncoder``, the canonical spelling NeMo writes) and its file path
(``nemo.collections.asr.modules.conv_asr.ConvASREncoder``).
"""

from __future__ import annotations

from nemofn.core.registry import register_target

__all__ = ["NEMO_ASR_MODULES", "MODULE_BUILDERS"]

NEMO_ASR_MODULES = "nemo.collections.asr.modules"

#: NeMo class name -> (NeMo's file under ``nemo/collections/asr/modules``, the nemofn builder).
MODULE_BUILDERS: dict[str, tuple[str, str]] = {
    "AudioToMelSpectrogramPreprocessor": ("audio_preprocessing",
                                          "nemofn.asr.modules.preprocessor:AudioToMelSpectrogramPreprocessor"),
    "SpectrogramAugmentation": ("audio_preprocessing", "nemofn.asr.modules.spec_augment:SpectrogramAugmentation"),
    "ConvASREncoder": ("conv_asr", "nemofn.asr.modules.conv_asr:ConvASREncoder"),
    "ConformerEncoder": ("conformer_encoder", "nemofn.asr.modules.conformer:ConformerEncoder"),
    "ConvASRDecoder": ("conv_asr", "nemofn.asr.modules.decoder:ConvASRDecoder"),
    "RNNTDecoder": ("rnnt", "nemofn.asr.modules.rnnt_decoder:RNNTDecoder"),
    "RNNTJoint": ("rnnt", "nemofn.asr.modules.rnnt_joint:RNNTJoint"),
}

for _name, (_file, _builder) in MODULE_BUILDERS.items():
    register_target(f"{NEMO_ASR_MODULES}.{_name}", _builder, aliases=[f"{NEMO_ASR_MODULES}.{_file}.{_name}"],
                    kind="module")
