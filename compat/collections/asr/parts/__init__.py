"""NeMo's ``nemo.collections.asr.parts`` (the pieces compat provides live in ``parts.utils``)."""
