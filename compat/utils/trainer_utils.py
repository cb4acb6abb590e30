"""NeMo's ``nemo.utils.trainer_utils.resolve_trainer_cfg``: a ``trainer:`` config -> ``Trainer(**kwargs)``.

As NeMo's: the config becomes a plain resolved dict and ``callbacks`` given as ``_target_`` mappings are
instantiated (with Hydra). ``strategy`` mappings are kept as mappings: ``compat.Trainer`` builds Fabric's strategy
from them. Half-precision ``*-true`` values are passed on, and ``compat.Trainer`` says that they are not supported.

Unlike NeMo's, the block is checked against :class:`~compat.core.config.schemas.TrainerConfig` first, before
anything is resolved or instantiated: an unknown key, a wrong type (``trainer.max_steps: wrong type: got 'abc'
(str), expected int``) or a value Lightning refuses is a ``ConfigError`` naming ``trainer.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["resolve_trainer_cfg"]


def resolve_trainer_cfg(trainer_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer:`` block as ``Trainer`` keyword arguments (see the module doc).

    Raises:
        nemofn.core.schema.ConfigError: an unknown key, a wrong type or an invalid value, named by full key.
    """
    from compat.core.config.schemas import TrainerConfig
    from nemofn.core.schema import validate

    if not isinstance(trainer_cfg, (DictConfig, Mapping)):
        raise TypeError(f"resolve_trainer_cfg takes the trainer: block (a mapping), got {type(trainer_cfg).__name__}")
    validate(trainer_cfg, TrainerConfig, "trainer")
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) \
        else dict(trainer_cfg)
    validate(cfg, TrainerConfig, "trainer")  # what the interpolations gave
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, Sequence) and not isinstance(callbacks, str):
        from hydra.utils import instantiate

        cfg["callbacks"] = [instantiate(cb) if isinstance(cb, Mapping) and "_target_" in cb else cb
                            for cb in callbacks]
    return cfg
