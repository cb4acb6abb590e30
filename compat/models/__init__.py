"""The code behind compat's NeMo-shaped model classes.

Public import paths mirror NeMo's: ``compat.core.classes.ModelPT`` and ``compat.collections.asr.models``
(``ASRModel``, ``EncDecCTCModel``, ``EncDecCTCModelBPE``). This package holds their implementation:

* ``modelpt_data`` / ``modelpt_optim`` / ``modelpt_init``: the data setup, optimization + step methods and partial
  initialisation parts of ``ModelPT``;
* ``asr_model``, ``ctc_models``, ``ctc_bpe_models``: the ASR classes; ``ctc_decoding``: decoding configs;
  ``transcribe``: ``transcribe()`` input handling; ``bound_module``: ``model.encoder(...)``-style calls.

Submodules are imported on demand; import the classes from their NeMo-style paths.
"""
