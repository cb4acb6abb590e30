"""Names shared by the reader and the writer: the ``.nemo`` member names, the default ``nemo_version``, and
the Hydra 0.x -> 1.x config key upgrade both apply."""

from __future__ import annotations

from collections.abc import Mapping

MODEL_CONFIG_YAML = "model_config.yaml"
MODEL_WEIGHTS_CKPT = "model_weights.ckpt"
DEFAULT_NEMO_VERSION = "3.0.0"


def _upgrade_hydra0(node: dict) -> None:
    if "cls" in node and "_target_" not in node:
        node["_target_"] = node.pop("cls")
    if isinstance(node.get("params"), Mapping):
        node.update(node.pop("params"))
    for value in node.values():
        if isinstance(value, dict):
            _upgrade_hydra0(value)
