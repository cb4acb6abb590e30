"""NeMo's ``nemo.collections.asr``: ``compat.collections.asr.models`` holds the model classes.

Import the subpackage you need (``from compat.collections.asr.models import EncDecCTCModel``); this package
imports nothing itself, so ``import compat.collections.asr`` stays cheap.
"""
