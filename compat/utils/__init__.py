"""NeMo's ``nemo.utils``: ``logging`` (the ``compat`` logger), ``exp_manager``, ``trainer_utils``, ``callbacks``.

``from compat.utils import logging`` gives a ``logging.Logger`` (``logging.info(...)``, as NeMo's scripts call it)
that prints INFO messages to stderr unless the application configured logging itself.
"""

from __future__ import annotations

import logging as _logging

__all__ = ["logging"]


def _compat_logger() -> _logging.Logger:
    logger = _logging.getLogger("compat")
    if not any(isinstance(h, _logging.StreamHandler) and not isinstance(h, _logging.FileHandler)
               for h in logger.handlers) and not _logging.getLogger().handlers:
        handler = _logging.StreamHandler()
        handler.setFormatter(_logging.Formatter("[compat %(levelname).1s %(asctime)s %(module)s] %(message)s",
                                                datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False  # Hydra configures the root logger later; one line per message
    if logger.level == _logging.NOTSET:
        logger.setLevel(_logging.INFO)
    return logger


logging = _compat_logger()
