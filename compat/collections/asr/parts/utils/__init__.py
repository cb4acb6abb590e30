"""NeMo's ``nemo.collections.asr.parts.utils``: only ``rnnt_utils`` (``Hypothesis``) is provided."""
