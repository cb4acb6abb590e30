"""Which nemofn module a NeMo ``_target_`` builds.

Configs keep NeMo's real class paths (``nemo.collections.asr.modules.ConvASREncoder``) so that the files we write
load in NeMo. nemofn resolves them by class name here, lazily, so importing this file imports no model code.
``compat.registry`` adds the full-path checks and model-level targets on top.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from nemofn.core.schema import ConfigError
from nemofn.nn.module import Module

__all__ = ["MODULES", "module_class", "build_module"]

#: NeMo class name -> "nemofn.module.path:ClassName".
MODULES: dict[str, str] = {
    "AudioToMelSpectrogramPreprocessor": "nemofn.asr.modules.preprocessor:AudioToMelSpectrogramPreprocessor",
    "SpectrogramAugmentation": "nemofn.asr.modules.spec_augment:SpectrogramAugmentation",
    "ConvASREncoder": "nemofn.asr.modules.conv_asr:ConvASREncoder",
    "ConformerEncoder": "nemofn.asr.modules.conformer:ConformerEncoder",
    "ConvASRDecoder": "nemofn.asr.modules.decoder:ConvASRDecoder",
}


def module_class(target: str) -> type[Module]:
    """``"nemo.collections.asr.modules.ConvASREncoder"`` (or just ``"ConvASREncoder"``) -> the nemofn class."""
    name = target.rsplit(".", 1)[-1]
    if name not in MODULES:
        raise ValueError(f"_target_ {target!r} is not a module nemofn implements; supported: {sorted(MODULES)}")
    module_path, cls_name = MODULES[name].split(":")
    return getattr(importlib.import_module(module_path), cls_name)


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
            "encoder": "ConvASREncoder", "decoder": "ConvASRDecoder"}.get(where.rsplit(".", 1)[-1], "ConvASREncoder")
