"""``compat.Trainer``: Lightning's Trainer face over ``nemofn.train.fit`` (see :mod:`compat.trainer.trainer`)."""

from compat.trainer.trainer import Trainer

__all__ = ["Trainer"]
