"""The code behind compat's NeMo-shaped model classes.

Public import paths mirror NeMo's: ``compat.core.classes.ModelPT`` and ``compat.collections.asr.models``
(``ASRModel``, ``EncDecCTCModel``, ``EncDecCTCModelBPE``). This package holds their implementation:

* ``modelpt_module``: the ``nn.Module`` face (NeMo's submodules over the functional state, freezing, ``to``);
* ``modelpt_data`` / ``modelpt_optim`` / ``modelpt_steps`` / ``modelpt_init``: data setup, optimization, the
  LightningModule hooks ``compat.Trainer`` calls, and partial initialisation;
* ``asr_model``, ``ctc_models``, ``ctc_bpe_models``: the ASR classes; ``ctc_decoding``: decoding configs;
  ``transcribe``: ``transcribe()`` input handling.

Submodules are imported on demand; import the classes from their NeMo-style paths.
"""
