"""compat: NeMo's public API over nemofn (``.nemo`` archives, ``ModelPT``, ``Trainer``, ``exp_manager``).

NeMo code ports by replacing ``nemo.`` with ``compat.`` in its imports, and ``lightning.pytorch`` with
``compat.lightning`` (or ``pl.Trainer`` with ``compat.Trainer``). Names load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from compat.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'compat' has no attribute {name!r}")
