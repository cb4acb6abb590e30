"""Reading and writing `.nemo` archives, the format real NeMo (2.x and 3.0) saves and restores.

A ``.nemo`` is a tar (gzip tar before NeMo 1.7) holding ``model_config.yaml`` (the model-level config),
``model_weights.ckpt`` (``torch.save`` of a flat ``{state-dict key: Tensor}`` dict) and artifacts stored flat as
``<uuid4 hex>_<basename>`` (NEMO_FACTS 1). Reading::

    with open_nemo("model.nemo") as archive:
        cfg = archive.load_config()                      # DictConfig
        state = archive.state_dict()                     # {"encoder.encoder.0.mconv.0.conv.weight": Tensor, ...}
        tok = archive.resolve_artifact(cfg.tokenizer.model_path)   # "nemo:<hex>_tokenizer.model" -> local path

Writing (:func:`save_nemo`) produces exactly NeMo's layout: an uncompressed tar built with ``arcname="."``
(members ``.``, then ``./<hex>_<name>`` artifacts, ``./model_config.yaml``, ``./model_weights.ckpt``, sorted),
written to a temporary file beside the destination and renamed into place.

Safety: extraction refuses (with :class:`~compat.errors.UnsafeArchiveError`, never silently) absolute member
names, ``..`` components, links, devices, FIFOs, sparse files and names too long for the file system, and never
writes outside its folder. Sizes are limited (:class:`ExtractionLimits`: 8 GiB per member, 16 GiB in all, or
``NEMOFN_MAX_MEMBER_BYTES`` / ``NEMOFN_MAX_TOTAL_BYTES``, or ``max_member_bytes`` / ``max_total_bytes``), from the
tar headers before writing and again while copying (:class:`~compat.errors.ArchiveTooLargeError`). Weights are only
ever loaded with ``torch.load(weights_only=True)`` and must be plain dense tensors; their shapes can be read
without loading them (:meth:`NemoArchive.weight_headers`) and checked against a planned model
(:meth:`NemoArchive.check_planned_state`). ``torch`` is imported on first use, so reading a config does not need it.

The package is split by job: :mod:`compat.archive.tar` (opening, safe extraction, packing a folder),
:mod:`compat.archive.reader` (:func:`open_nemo`, :class:`NemoArchive`, config loading), :mod:`compat.archive.weights`
(loading and checking weights) and
:mod:`compat.archive.writer` (:func:`save_nemo`, :func:`write_nemo_folder`); every public name is re-exported here.
"""

from __future__ import annotations

# DEFAULT_NEMO_VERSION stays out of __all__, as before, but compat.core.classes.modelpt imports it from here.
from compat.archive._common import DEFAULT_NEMO_VERSION, MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT
from compat.archive.reader import (
    NemoArchive,
    apply_override,
    extract_state_dict,
    load_config,
    load_state_dict,
    maybe_update_config_version,
    open_nemo,
)
from compat.archive.tar import ExtractionLimits, open_tar, pack_folder, parse_size, unpack
from compat.archive.weights import load_weights_file
from compat.archive.writer import save_nemo, write_nemo_folder

__all__ = [
    "MODEL_CONFIG_YAML",
    "MODEL_WEIGHTS_CKPT",
    "NemoArchive",
    "ExtractionLimits",
    "parse_size",
    "open_nemo",
    "open_tar",
    "unpack",
    "load_config",
    "load_state_dict",
    "load_weights_file",
    "apply_override",
    "maybe_update_config_version",
    "extract_state_dict",
    "save_nemo",
    "write_nemo_folder",
    "pack_folder",
]
