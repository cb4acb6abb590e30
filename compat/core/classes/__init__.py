"""NeMo's ``nemo.core.classes``: ``ModelPT`` (over a functional model unit) and ``PretrainedModelInfo``."""

from compat.core.classes.modelpt import ModelPT
from compat.pretrained import PretrainedModelInfo

__all__ = ["ModelPT", "PretrainedModelInfo"]
