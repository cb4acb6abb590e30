"""NeMo's ``nemo.utils.callbacks`` (and Lightning's ``EarlyStopping``) for ``compat.Trainer``."""

from compat.utils.callbacks.early_stopping import EarlyStopping
from compat.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint, format_checkpoint_name

__all__ = ["NeMoModelCheckpoint", "EarlyStopping", "format_checkpoint_name"]
