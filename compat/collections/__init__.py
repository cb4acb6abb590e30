"""NeMo's ``nemo.collections`` import paths (``compat.collections.asr.models.EncDecCTCModel``, ...)."""
