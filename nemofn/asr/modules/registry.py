"""Which nemofn module a NeMo ``_target_`` builds.

Configs keep NeMo's real class paths (``nemo.collections.asr.modules.ConvASREncoder``) so that the files we write
load in NeMo. They resolve exactly, through the one registry of targets (:mod:`nemofn.core.registry`, filled by
:mod:`nemofn.asr.modules.targets`; ``compat.registry`` adds NeMo's model classes to it), lazily, so importing
this file imports no model code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemofn.asr.modules.targets import MODULE_BUILDERS, NEMO_ASR_MODULES
from nemofn.core.registry import UnknownTargetError, resolve_target, supported_targets
from nemofn.core.schema import ConfigError
from nemofn.nn.module import Module

__all__ = ["MODULES", "module_class", "build_module"]

#: NeMo class name -> "nemofn.module.path:ClassName".
MODULES: dict[str, str] = {name: builder for name, (_, builder) in MODULE_BUILDERS.items()}


def module_class(target: str) -> type[Module]:
    """A NeMo module path (``nemo.collections.asr.modules.ConvASREncoder``, or the file form
    ``...modules.conv_asr.ConvASREncoder``, or just ``ConvASREncoder``) -> the nemofn class, from the one registry
    (:mod:`nemofn.core.registry`; modules registered there by ``compat.registry.register_target`` build too)."""
    name = str(target)
    if "." not in name:
        name = f"{NEMO_ASR_MODULES}.{name}"
    try:
        return resolve_target(name, kind="module")
    except UnknownTargetError:
        raise ValueError(f"_target_ {target!r} is not a module nemofn implements; supported: "
                         f"{supported_targets('module')}") from None


def build_module(cfg: Mapping[str, Any], *, where: str) -> Module:
    """Builds the module a config block names with ``_target_``. ``where`` is the block's full key (``model.encoder``):
    config errors name ``<where>.<key>``, construction errors say ``in config block `<where>```."""
    target = cfg.get("_target_") if isinstance(cfg, Mapping) else None
    if not target:
        raise ValueError(f"config block `{where}` has no `_target_`; set e.g. "
                         f"`_target_: nemo.collections.asr.modules.{_example(where)}`")
    try:
        return module_class(str(target)).from_config(cfg, path=where)
    except ConfigError:
        raise  # names the full key already
    except (TypeError, ValueError) as err:
        raise type(err)(f"in config block `{where}`: {err}") from err


def _example(where: str) -> str:
    return {"preprocessor": "AudioToMelSpectrogramPreprocessor", "spec_augment": "SpectrogramAugmentation",
            "encoder": "ConvASREncoder", "decoder": "ConvASRDecoder", "joint": "RNNTJoint",
            }.get(where.rsplit(".", 1)[-1], "ConvASREncoder")
