"""A drop-in for ``import lightning.pytorch as pl`` in NeMo scripts: ``import compat.lightning as pl``.

It has what NeMo's ASR scripts use: ``pl.Trainer`` (``compat.Trainer``), ``pl.seed_everything`` and
``pl.Callback`` (a base class whose hooks do nothing; ``compat.Trainer`` calls the ones a subclass defines, with
Lightning's signatures: ``on_train_start(trainer, pl_module)``, ``on_train_batch_end(trainer, pl_module, outputs,
batch, batch_idx)``, ``on_validation_end(trainer, pl_module)``, ``on_train_epoch_end``, ``on_train_end``, ...).
"""

from __future__ import annotations

import os
import random
from typing import Any

__all__ = ["Trainer", "Callback", "seed_everything"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from compat.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'compat.lightning' has no attribute {name!r}")


class Callback:
    """Lightning's ``Callback`` base: override the hooks you need."""


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seeds Python's, NumPy's and torch's generators (Lightning's ``seed_everything``); returns the seed.

    ``compat.Trainer`` derives the run's RNG key from torch's seed, so this also fixes dropout and SpecAugment.
    """
    import numpy as np
    import torch

    seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
