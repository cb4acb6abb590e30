"""NeMo's ``nemo.core.config``: ``hydra_runner`` and the structured config schemas of the training scripts.

``hydra_runner`` is imported eagerly, as NeMo does (its module has the same name, so a lazy export would be shadowed
by the submodule); the schemas load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from compat.core.config.hydra_runner import hydra_runner

_LAZY = {
    "TrainerConfig": "compat.core.config.schemas",
    "ExpManagerConfig": "compat.core.config.schemas",
    "CallbackParams": "compat.core.config.schemas",
    "ExperimentConfig": "compat.core.config.schemas",
    "validate_experiment_config": "compat.core.config.schemas",
}

__all__ = ["hydra_runner", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'compat.core.config' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
