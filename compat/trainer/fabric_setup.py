"""Lightning ``Trainer`` arguments -> ``lightning_fabric.Fabric`` arguments (accelerator, devices, strategy, precision).

What maps, and how:

* ``accelerator``: ``cpu``, ``gpu`` / ``cuda``, ``mps``, ``auto`` (Fabric's names).
* ``devices``: an int, a list of device indices, ``"auto"``, or ``-1`` (all devices; on the CPU, one process: a
  CPU is one device, and Lightning itself refuses ``-1`` there).
* ``strategy``: ``auto`` / ``ddp`` (and Lightning's ``ddp_find_unused_parameters_true`` style names), or NeMo's
  mapping ``{_target_: lightning.pytorch.strategies.DDPStrategy, **kwargs}``, built as Fabric's ``DDPStrategy`` with
  the same keyword arguments. On a single device it is dropped: one process needs no process group. ``ddp_spawn`` and sharded strategies (FSDP, DeepSpeed) are refused by name:
  ``compat.Trainer`` launches its processes when it is created, as Lightning's script launcher does.
* ``precision``: ``32`` / ``"32-true"``, ``16`` / ``"16-mixed"`` (CUDA), ``"bf16"`` / ``"bf16-mixed"``; the
  ``*-true`` half precisions are refused by name (``nemofn.train`` trains in fp32 or mixed precision).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["fabric_arguments", "PRECISION_ALIASES"]

log = logging.getLogger("compat.trainer")

PRECISION_ALIASES = {
    "32": "32-true", "32-true": "32-true", "16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}
_REFUSED_PRECISION = {"bf16-true", "16-true", "fp16-true", "64", "64-true", "transformer-engine", "fp16-flash",
                      "bf16-flash"}
_DDP_NAMES = {"ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false"}


def _precision(value: Any) -> str:
    text = str(value).lower()
    if text in PRECISION_ALIASES:
        return PRECISION_ALIASES[text]
    if text in _REFUSED_PRECISION:
        raise NotImplementedError(f"trainer.precision={value!r} is not supported: nemofn trains in fp32 ('32-true') "
                                  "or mixed precision ('bf16-mixed'; '16-mixed' on CUDA)")
    raise ValueError(f"trainer.precision={value!r} is not a precision; use 32, '32-true', 'bf16-mixed' or '16-mixed'")


def _strategy(value: Any) -> Any:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, Mapping):
        target = str(value.get("_target_", ""))
        kwargs = {k: v for k, v in value.items() if k != "_target_"}
        if target.rsplit(".", 1)[-1] == "DDPStrategy":
            from lightning_fabric.strategies import DDPStrategy

            return DDPStrategy(**kwargs)
        raise NotImplementedError(f"trainer.strategy._target_={target!r} is not supported; use 'ddp' or "
                                  "{_target_: lightning.pytorch.strategies.DDPStrategy, ...}")
    if isinstance(value, str):
        if value in _DDP_NAMES:
            if value == "ddp_find_unused_parameters_true":
                from lightning_fabric.strategies import DDPStrategy

                return DDPStrategy(find_unused_parameters=True)
            return "ddp"
        if value == "ddp_spawn" or value.startswith("ddp_spawn"):
            raise NotImplementedError("trainer.strategy='ddp_spawn' is not supported by compat.Trainer: it launches "
                                      "its processes when it is created (use 'ddp', which re-runs the script per rank, "
                                      "as Lightning does); nemofn.train.fit supports ddp_spawn")
        raise NotImplementedError(f"trainer.strategy={value!r} is not supported; use 'auto' or 'ddp'")
    return value  # a strategy object: Fabric decides


def _devices(value: Any, accelerator: str) -> Any:
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and (value == -1 or value == "-1" or value == "auto"):
        if value != "auto":
            log.info("trainer.devices=-1 on the CPU runs one process (a CPU is one device)")
        return 1
    return value


def fabric_arguments(accelerator: Any, devices: Any, num_nodes: int, strategy: Any, precision: Any) -> dict[str, Any]:
    """Keyword arguments for ``Fabric(...)`` from the Lightning-style settings (see the module doc)."""
    accelerator = "auto" if accelerator is None else str(accelerator)
    if accelerator == "gpu":
        accelerator = "cuda"
    devices = _devices(devices, accelerator)
    strategy = _strategy(strategy)
    if devices in (1, "1", [0]) and int(num_nodes) == 1 and strategy != "auto":
        log.info("one device: trainer.strategy=%r is not needed, training runs in this process", strategy)
        strategy = "auto"  # no process group for a single process (NeMo's configs say ddp for any device count)
    return {"accelerator": accelerator, "devices": devices, "num_nodes": int(num_nodes), "strategy": strategy,
            "precision": _precision(precision)}
