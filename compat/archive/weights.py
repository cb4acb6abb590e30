"""The weights of a ``.nemo`` (``model_weights.ckpt``): loaded only with ``torch.load(weights_only=True)``, checked.

Entries must be plain dense tensors (meta, sparse, quantised and nested ones are :class:`UnsupportedTensorError`)
holding finite values (:func:`check_finite`; ``NEMOFN_ALLOW_NON_FINITE_WEIGHTS=1`` or ``allow_non_finite=True`` to
inspect a diverged checkpoint). :func:`weight_headers` reads shapes and dtypes through a memory map, so a restore can
compare them with the model its config describes (:func:`check_planned_state`) before allocating anything.
``torch`` is imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compat.errors import (
    ArchiveTooLargeError,
    CorruptArchiveError,
    MissingWeightsError,
    NonFiniteWeightsError,
    UnsupportedTensorError,
    WeightDtypeError,
    WeightKeysError,
    WeightShapeError,
)

if TYPE_CHECKING:
    import torch

__all__ = ["load_weights", "load_weights_file", "weight_headers", "check_finite", "check_planned_state",
           "allow_non_finite", "ALLOW_NON_FINITE_ENV"]

ALLOW_NON_FINITE_ENV = "NEMOFN_ALLOW_NON_FINITE_WEIGHTS"


def load_weights(file: str, source: str, name: str, map_location: Any, *, mmap: bool = False
                 ) -> dict[str, torch.Tensor]:
    """``file`` (the member ``name`` of archive ``source``) as a flat ``{key: Tensor}`` dict of plain tensors."""
    import pickle
    import zipfile

    import torch

    mmap = mmap and zipfile.is_zipfile(file)  # legacy (pre-1.6) torch files cannot be memory-mapped
    try:
        loaded = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = f"{name} holds objects other than tensors, which torch.load(weights_only=True) refuses: " \
                 f"{_unpickling_reason(exc)}"
        raise CorruptArchiveError(source, detail) from exc
    except (RuntimeError, EOFError, OSError, ValueError, NotImplementedError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptArchiveError(source, f"{name} could not be read: {first_line}") from exc
    if not isinstance(loaded, Mapping):
        raise MissingWeightsError(source, name, f"it holds a {type(loaded).__name__}, not a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            hint = " (it looks like a Lightning checkpoint, not .nemo weights)" if key == "state_dict" else ""
            detail = f"entry {key!r} is a {type(value).__name__}, not a tensor{hint}"
            raise MissingWeightsError(source, name, detail)
        kind = unsupported_kind(value)
        if kind is not None:
            raise UnsupportedTensorError(source, name, key, kind)
        state[key] = value
    return state


def _unpickling_reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that says what was refused (``Unsupported global: GLOBAL ...``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "GLOBAL" in line or "WeightsUnpickler error" in line:
            return line.split(". Please use")[0]  # not torch's advice to allow-list it: this file is untrusted
    return lines[0] if lines else type(exc).__name__


def unsupported_kind(tensor: torch.Tensor) -> str | None:
    """What makes ``tensor`` unusable as a weight (meta, sparse, quantised, nested), or ``None``."""
    import torch

    if tensor.is_nested:
        return "a nested tensor"
    if tensor.layout != torch.strided:
        return f"a sparse tensor (layout {tensor.layout})"
    if tensor.is_quantized:
        return f"a quantised tensor ({tensor.dtype})"
    if tensor.is_meta:
        return "a meta tensor (a shape without data)"
    return None


def allow_non_finite(allow: bool | None) -> bool:
    """``allow``, or the environment's ``NEMOFN_ALLOW_NON_FINITE_WEIGHTS`` when it is ``None``."""
    if allow is None:
        return os.environ.get(ALLOW_NON_FINITE_ENV, "0") not in ("", "0")
    return bool(allow)


def check_finite(state: Mapping[str, torch.Tensor], source: str, member: str) -> None:
    """Raises :class:`NonFiniteWeightsError` naming the first floating tensor holding NaN or Inf (fp16 weights that
    overflowed on export, a run that diverged before it was saved)."""
    import torch

    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise NonFiniteWeightsError(source, member, key, bad, tensor.numel())


def load_weights_file(file: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """A ``model_weights.ckpt`` on disk as a flat ``{key: Tensor}`` dict (``torch.load(weights_only=True)``)."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise MissingWeightsError(file, os.path.basename(file), "no such file")
    return load_weights(file, file, os.path.basename(file), map_location)


def weight_headers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{key: meta tensor}`` of the same shapes and dtypes (of a memory-mapped state: nothing is read)."""
    import torch

    return {key: torch.empty(value.shape, dtype=value.dtype, device="meta") for key, value in state.items()}


def check_planned_state(planned: Mapping[str, torch.Tensor], headers: Mapping[str, torch.Tensor], *, strict: bool,
                        source: str, member: str, max_total_bytes: int) -> None:
    """Checks the tensors a model *would* allocate (``meta`` tensors: shapes, dtypes) against the weights' headers.

    Args:
        planned: ``{state-dict key: tensor}`` of the model to build (any device; ``meta`` costs nothing).
        headers: the weights' shapes and dtypes as the model will see them (:func:`weight_headers`, after the
            connector's key renames).
        strict: also refuse keys present on one side only (as ``load_state_dict(strict=True)`` would).
        source, member: the archive and the weights member, for the errors.
        max_total_bytes: the bound on planned tensors the weights do not cover.

    Raises:
        WeightShapeError: a shape differs (the key and both shapes are named).
        WeightDtypeError: an integer / bool / complex weight for a floating tensor.
        WeightKeysError: with ``strict``, missing or unexpected keys.
        ArchiveTooLargeError: the planned tensors the weights do not cover take more than ``max_total_bytes``
            (those they cover are bounded by the archive itself).
    """
    for key, tensor in planned.items():
        stored = headers.get(key)
        if stored is None:
            continue
        if tuple(stored.shape) != tuple(tensor.shape):
            raise WeightShapeError(source, member, key, tuple(stored.shape), tuple(tensor.shape))
        if tensor.is_floating_point() and not stored.is_floating_point():
            raise WeightDtypeError(source, member, key, stored.dtype, tensor.dtype)
    if strict:
        missing = [key for key in planned if key not in headers]
        unexpected = [key for key in headers if key not in planned]
        if missing or unexpected:
            raise WeightKeysError(source, member, missing, unexpected)
    # Tensors the weights cover have their shapes, so the archive's own size bounds them; the others are
    # allocated from the config alone (with strict=False), and those are held to the archive's total limit.
    uncovered = sum(t.numel() * t.element_size() for key, t in planned.items() if key not in headers)
    if uncovered > max_total_bytes:
        raise ArchiveTooLargeError(source, None, f"the tensors its config describes beyond those in {member} would take",
                                   uncovered, max_total_bytes, "max_total_bytes= or NEMOFN_MAX_TOTAL_BYTES")

