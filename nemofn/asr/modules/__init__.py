"""ASR building blocks as stateless modules: audio preprocessing, spectrogram augmentation, encoders, decoders.

Each file holds one topic (``preprocessor.py``, ``spec_augment.py``, ...); import from the file itself, e.g.
``from nemofn.asr.modules.preprocessor import AudioToMelSpectrogramPreprocessor``.
"""
