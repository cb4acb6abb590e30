"""``maybe_init_from_pretrained_checkpoint`` and ``load_part_of_state_dict`` of :class:`~compat.core.classes.ModelPT`.

The script-level config (the one holding ``model:``) may name *one* of:

* ``init_from_nemo_model``: a ``.nemo`` path, or ``{key: {path, include: [...], exclude: [...]}}``;
* ``init_from_pretrained_model``: a name for :meth:`from_pretrained` (resolved locally), or
  ``{key: {name, include, exclude}}``;
* ``init_from_ptl_ckpt``: a checkpoint path, or ``{key: {path, include, exclude}}``. Read are Lightning
  ``.ckpt`` files whose pickle ``torch.load(weights_only=True)`` accepts (key ``state_dict``) and nemofn training
  checkpoints (``nemofn.train.save_checkpoint``). A Lightning checkpoint that pickles other objects (NeMo's store
  the config in ``hyper_parameters``) is refused with an error that says how to extract its weights: compat never
  unpickles arbitrary objects.

Weights are copied with ``strict=False``: only keys the model has are loaded (shapes must still match).
``include`` / ``exclude`` are substrings of the state-dict keys; ``init_strict`` (default true) is the
``strict`` of the restore itself.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

__all__ = ["InitFromCheckpointMixin", "read_checkpoint_state_dict"]

log = logging.getLogger("compat.models")

_INIT_KEYS = ("init_from_nemo_model", "init_from_pretrained_model", "init_from_ptl_ckpt")


def read_checkpoint_state_dict(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The flat model state dict of a Lightning ``.ckpt`` (``state_dict``) or a nemofn training checkpoint.

    Raises:
        ValueError: the file needs unpickling arbitrary objects, or holds no model weights.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: this checkpoint pickles objects other than tensors ({first}), and compat only reads "
            "checkpoints with torch.load(weights_only=True). If you trust the file, extract its weights once: "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt'), then use "
            "init_from_ptl_ckpt: weights.pt"
        ) from exc
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        return dict(ckpt["state_dict"])
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("train_state"), Mapping):
        train_state = ckpt["train_state"]
        return {**train_state["params"], **train_state["buffers"]}
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt)
    keys = list(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise ValueError(f"{path}: no model weights found (expected a 'state_dict' or 'train_state' entry, or a flat dict "
                     f"of tensors; got {keys})")


def _entries(value: Any, what: str, field: str) -> list[tuple[Any, list[str], list[str]]]:
    """``[(path_or_name, include, exclude)]`` from a str or a ``{key: {field, include, exclude}}`` mapping."""
    if isinstance(value, str):
        return [(value, [""], [])]
    if isinstance(value, (Mapping, DictConfig)):
        out = []
        for key, item in value.items():
            if field not in item:
                raise ValueError(f"{what}.{key} has no {field!r}; expected {{{field}: ..., include: [...], "
                                 f"exclude: [...]}}")
            out.append((item[field], list(item.get("include", [""]) or [""]), list(item.get("exclude", []) or [])))
        return out
    raise TypeError(f"Invalid type: {what} is not a string or a dict (got {type(value).__name__})")


class InitFromCheckpointMixin:
    """Partial weight loading from other checkpoints (NeMo's fine-tuning entry points)."""

    def load_part_of_state_dict(self, state_dict: Mapping[str, Any], include: Sequence[str], exclude: Sequence[str],
                                load_from_string: str | None = None) -> None:
        """Loads the keys containing any ``include`` substring and no ``exclude`` substring (``strict=False``)."""
        chosen, excluded = {}, []
        for key, value in state_dict.items():
            if not any(p in key for p in include):
                continue
            if any(e in key for e in exclude):
                excluded.append(key)
                continue
            chosen[key] = value
        self.load_state_dict(chosen, strict=False)
        source = f" from {load_from_string}" if load_from_string else ""
        log.info("loaded %d tensors%s; excluded %d: %s", len(chosen), source, len(excluded), excluded[:20])

    def maybe_init_from_pretrained_checkpoint(self, cfg: Any, map_location: Any = "cpu") -> None:
        """Initialises weights from the checkpoint the script-level ``cfg`` names (see the module doc).

        Does nothing when ``cfg`` names none; raises ``ValueError`` when it names more than one.
        """
        present = [k for k in _INIT_KEYS if k in cfg and cfg[k] is not None]
        if not present:
            return
        if len(present) > 1:
            raise ValueError(f"Cannot pass more than one model initialization arguments to config! Found: {present}")
        key = present[0]
        strict = bool(cfg.get("init_strict", True))
        if key == "init_from_nemo_model":
            for path, include, exclude in _entries(cfg[key], key, "path"):
                restored = type(self).restore_from(path, map_location=map_location, strict=strict)
                self.load_part_of_state_dict(restored.state_dict(), include, exclude, f".nemo file {path}")
        elif key == "init_from_pretrained_model":
            for name, include, exclude in _entries(cfg[key], key, "name"):
                restored = type(self).from_pretrained(name, map_location=map_location, strict=strict)
                self.load_part_of_state_dict(restored.state_dict(), include, exclude, f"pretrained model {name}")
        else:
            for path, include, exclude in _entries(cfg[key], key, "path"):
                state = read_checkpoint_state_dict(path, map_location)
                self.load_part_of_state_dict(state, include, exclude, f"checkpoint {path}")
