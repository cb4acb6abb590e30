"""NeMo-shaped core: ``compat.core.connectors`` (``.nemo`` save / restore); ``ModelPT`` and config helpers follow.

Subpackages are imported on demand, so ``import compat.core`` stays cheap.
"""
