"""NeMo class paths (``target`` / ``_target_`` config values): the registry, with NeMo's model classes and safety checks.

There is one registry, :mod:`nemofn.core.registry` (re-exported here): nemofn's ASR modules register there
(:mod:`nemofn.asr.modules.targets`) and this file adds NeMo's model classes (``compat.collections.asr.models``).
Builders are import-path strings ``"package.module:QualName"`` imported only on first use, so
``import compat.registry`` costs nothing beyond the standard library. Module builders (preprocessor, encoder,
decoder, ...) have a ``from_config(cfg)`` classmethod that ignores ``_target_``; model classes have NeMo's
``from_config_dict(cfg, trainer=None)``.

Every NeMo path that names the same class (``nemo.collections.asr.modules.ConvASREncoder`` and
``nemo.collections.asr.modules.conv_asr.ConvASREncoder``) resolves to one *canonical* target: the spelling NeMo
itself writes (the short ``modules.X`` form for modules, ``<module>.<Class>`` for models, as ``ModelPT`` injects
it). :func:`nemo_target_for` gives that spelling back for one of our classes, for writing a ``.nemo``.

The writer's safety check (:func:`check_config_targets`) uses NeMo 3.0's allow-list of class-path prefixes, so a
``.nemo`` we write is never refused by real NeMo with ``UnsafeTargetError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import nemofn.asr.modules.targets  # noqa: F401  (registers nemofn's ASR modules)
from compat.errors import UnsafeTargetError
from nemofn.core.registry import (
    UnknownTargetError,
    _path_of,
    builder_path,
    canonical_target,
    nemo_target_for,
    register_target,
    resolve_target,
    supported_targets,
)

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "register_target",
    "register_model_target",
    "canonical_target",
    "builder_path",
    "resolve_target",
    "build_module",
    "nemo_target_for",
    "supported_targets",
    "is_allowed_target",
    "check_config_targets",
]

# NeMo 3.0's `nemo.core.classes.common.ALLOWED_TARGET_PREFIXES`.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "nemo.collections.",
    "nemo.core.",
    "nemo.utils.",
    "nemo.lightning.",
    "tests.collections.",
    "torch.nn.",
    "torch.optim.",
    "torch.utils.data.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.strategies.",
    "lightning.pytorch.accelerators.",
    "omegaconf.",
    "megatron.",
)

def register_model_target(
    nemo_target: str, model_cls: str | type, *, aliases: Iterable[str] = (), overwrite: bool = False
) -> None:
    """Registers a model class (``ModelPT`` subclass) for a config's top-level ``target``.

    Use it for your own models: ``register_model_target("nemo.collections.asr.models.MyModel", MyModel)``.
    The target must start with one of :data:`ALLOWED_TARGET_PREFIXES` for real NeMo to restore the ``.nemo``.
    """
    register_target(nemo_target, model_cls, aliases=aliases, kind="model", overwrite=overwrite)



def build_module(cfg: Mapping[str, Any]) -> Any:
    """Builds the nemofn module a ``_target_`` config names: ``Builder.from_config(cfg)``.

    Args:
        cfg: a ``DictConfig`` or dict with a ``_target_`` key (e.g. a model config's ``encoder`` section).
    """
    if "_target_" not in cfg:
        raise UnknownTargetError(
            None, supported_targets("module"), f"the config has no '_target_' key (keys: {list(cfg.keys())})."
        )
    builder = resolve_target(cfg["_target_"], kind="module")
    if not hasattr(builder, "from_config"):
        raise TypeError(f"{_path_of(builder)} (for {cfg['_target_']!r}) has no from_config(cfg) classmethod")
    return builder.from_config(cfg)



def is_allowed_target(value: Any, extra_prefixes: Iterable[str] = ()) -> bool:
    """True when ``value`` is a str starting with one of NeMo 3.0's allowed prefixes (or ``extra_prefixes``)."""
    return isinstance(value, str) and value.startswith((*ALLOWED_TARGET_PREFIXES, *extra_prefixes))


def check_config_targets(cfg: Any, extra_prefixes: Iterable[str] = ()) -> None:
    """Raises :class:`UnsafeTargetError` naming the first ``target`` / ``_target_`` NeMo 3.0 would refuse.

    Checked: the root ``target`` (the model class), every ``_target_`` at any depth (lists included), and Hydra
    0.x ``cls`` keys that sit beside ``params``. A nested key merely called ``target`` is an ordinary
    hyperparameter and is not checked.

    Args:
        cfg: a plain container (``dict`` / ``list``) or an OmegaConf config.
        extra_prefixes: more prefixes to accept (for archives that only nemofn will read).
    """
    extra = tuple(extra_prefixes)
    if isinstance(cfg, Mapping) and "target" in cfg and not is_allowed_target(cfg["target"], extra):
        raise UnsafeTargetError("target", cfg["target"], (*ALLOWED_TARGET_PREFIXES, *extra))
    _check_nested(cfg, "", extra)


def _check_nested(node: Any, prefix: str, extra: tuple[str, ...]) -> None:
    if isinstance(node, Mapping):
        keys = ["_target_"] + (["cls"] if "params" in node else [])
        for key in keys:
            if key in node and not is_allowed_target(node[key], extra):
                raise UnsafeTargetError(f"{prefix}{key}", node[key], (*ALLOWED_TARGET_PREFIXES, *extra))
        pairs: Iterable[tuple[Any, Any]] = node.items()
    elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
        pairs = enumerate(node)
    else:
        return
    for key, value in pairs:
        _check_nested(value, f"{prefix}{key}.", extra)


_ASR_MODELS = "nemo.collections.asr.models"

for _name, _file in (("EncDecCTCModel", "ctc_models"), ("EncDecCTCModelBPE", "ctc_bpe_models"),
                     ("EncDecRNNTModel", "rnnt_models"), ("EncDecRNNTBPEModel", "rnnt_bpe_models"),
                     ("EncDecHybridRNNTCTCModel", "hybrid_rnnt_ctc_models"),
                     ("EncDecHybridRNNTCTCBPEModel", "hybrid_rnnt_ctc_bpe_models")):
    # NeMo writes `<module>.<Class>` into `target` (ModelPT.__init__), so the long form is canonical.
    register_model_target(
        f"{_ASR_MODELS}.{_file}.{_name}", f"compat.collections.asr.models:{_name}", aliases=[f"{_ASR_MODELS}.{_name}"]
    )
