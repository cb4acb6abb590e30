"""Parameter initialisers that build new tensors from an explicit ``torch.Generator``.

Every function takes the ``shape`` of the tensor to create and a ``generator`` (from
:meth:`nemofn.core.rng.RngKey.generator`), and returns a fresh float32 tensor. The fan computations and the
formulas are torch's (``torch.nn.init``), so for the same generator state the values equal what
``torch.nn.init.<name>_(torch.empty(shape), ..., generator=g)`` writes.

:func:`init_by_mode` implements the weight modes of NeMo's ``init_weights`` (``xavier_uniform``,
``xavier_normal``, ``kaiming_uniform``, ``kaiming_normal``, ``tds_uniform``, ``tds_normal``).
:func:`torch_default_weight_and_bias` is the default init of ``nn.Linear`` / ``nn.ConvNd``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "fan_in_and_fan_out",
    "calculate_gain",
    "uniform",
    "normal",
    "zeros",
    "ones",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "tds_uniform",
    "tds_normal",
    "init_by_mode",
    "check_init_mode",
    "torch_default_weight_and_bias",
    "INIT_MODES",
]

Shape = Sequence[int]

#: Weight-init modes accepted by :func:`init_by_mode` ("default" is torch's own layer default).
INIT_MODES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "tds_uniform",
              "tds_normal")


def _empty(shape: Shape, dtype: torch.dtype | None) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype or torch.float32)


def fan_in_and_fan_out(shape: Shape) -> tuple[int, int]:
    """torch's fans: ``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])``.

    Raises:
        ValueError: for shapes with fewer than 2 dimensions (as torch does).
    """
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a shape with at least 2 dims, got {tuple(shape)}")
    receptive_field = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive_field, shape[0] * receptive_field


def _fan(shape: Shape, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return fan_in if mode == "fan_in" else fan_out


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (same table as ``torch.nn.init.calculate_gain``)."""
    return torch.nn.init.calculate_gain(nonlinearity, param)


def uniform(shape: Shape, generator: torch.Generator, low: float = 0.0, high: float = 1.0,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """``U(low, high)`` of the given shape."""
    return _empty(shape, dtype).uniform_(low, high, generator=generator)


def normal(shape: Shape, generator: torch.Generator, mean: float = 0.0, std: float = 1.0,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """``N(mean, std**2)`` of the given shape."""
    return _empty(shape, dtype).normal_(mean, std, generator=generator)


def zeros(shape: Shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.zeros(tuple(shape), dtype=dtype or torch.float32)


def ones(shape: Shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.ones(tuple(shape), dtype=dtype or torch.float32)


def _is_empty(shape: Shape) -> bool:
    return math.prod(shape) == 0


def xavier_uniform(shape: Shape, generator: torch.Generator, gain: float = 1.0,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Glorot uniform: ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    if _is_empty(shape):
        return _empty(shape, dtype)
    fan_in, fan_out = fan_in_and_fan_out(shape)
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform(shape, generator, -bound, bound, dtype)


def xavier_normal(shape: Shape, generator: torch.Generator, gain: float = 1.0,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Glorot normal: ``N(0, std**2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    if _is_empty(shape):
        return _empty(shape, dtype)
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return normal(shape, generator, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), dtype)


def kaiming_uniform(shape: Shape, generator: torch.Generator, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", dtype: torch.dtype | None = None) -> torch.Tensor:
    """He uniform: ``U(-b, b)`` with ``b = gain(nonlinearity, a) * sqrt(3 / fan)``."""
    if _is_empty(shape):
        return _empty(shape, dtype)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    bound = math.sqrt(3.0) * std
    return uniform(shape, generator, -bound, bound, dtype)


def kaiming_normal(shape: Shape, generator: torch.Generator, a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", dtype: torch.dtype | None = None) -> torch.Tensor:
    """He normal: ``N(0, std**2)`` with ``std = gain(nonlinearity, a) / sqrt(fan)``."""
    if _is_empty(shape):
        return _empty(shape, dtype)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return normal(shape, generator, 0.0, std, dtype)


def tds_uniform(shape: Shape, generator: torch.Generator, mode: str = "fan_in",
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """NeMo's TDS uniform init: ``U(-b, b)`` with ``b = 2 / sqrt(fan)``."""
    bound = 2.0 / math.sqrt(_fan(shape, mode))
    return uniform(shape, generator, -bound, bound, dtype)


def tds_normal(shape: Shape, generator: torch.Generator, mode: str = "fan_in",
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """NeMo's TDS normal init: ``N(0, std**2)`` with ``std = 2 / sqrt(fan)``."""
    return normal(shape, generator, 0.0, 2.0 / math.sqrt(_fan(shape, mode)), dtype)


def init_by_mode(mode: str, shape: Shape, generator: torch.Generator,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """A weight for one of NeMo's ``init_weights`` modes (as NeMo calls them: gain 1 for xavier,
    ``nonlinearity="relu"`` and ``fan_in`` for kaiming).

    Raises:
        ValueError: for ``"default"`` or an unknown mode (the message lists the known ones).
    """
    if mode == "xavier_uniform":
        return xavier_uniform(shape, generator, gain=1.0, dtype=dtype)
    if mode == "xavier_normal":
        return xavier_normal(shape, generator, gain=1.0, dtype=dtype)
    if mode == "kaiming_uniform":
        return kaiming_uniform(shape, generator, nonlinearity="relu", dtype=dtype)
    if mode == "kaiming_normal":
        return kaiming_normal(shape, generator, nonlinearity="relu", dtype=dtype)
    if mode == "tds_uniform":
        return tds_uniform(shape, generator, dtype=dtype)
    if mode == "tds_normal":
        return tds_normal(shape, generator, dtype=dtype)
    raise ValueError(f"unknown init mode {mode!r}; known modes: {', '.join(INIT_MODES[1:])}")


def check_init_mode(mode: str) -> None:
    """Raises ``ValueError`` naming the known modes unless ``mode`` is in :data:`INIT_MODES`."""
    if mode not in INIT_MODES:
        raise ValueError(f"unknown init mode {mode!r}; use one of {', '.join(INIT_MODES)}")


def torch_default_weight_and_bias(weight_shape: Shape, generator: torch.Generator, bias: bool,
                                  mode: str = "default") -> dict[str, torch.Tensor]:
    """``{"weight", ("bias")}`` initialised like ``nn.Linear`` / ``nn.ConvNd`` and then, for ``mode !=
    "default"``, the weight re-drawn like NeMo's ``init_weights(m, mode)`` (which leaves the bias as is).

    Draw order (weight, bias, then the re-drawn weight) follows what happens in NeMo: the torch layer's own
    ``reset_parameters`` runs first and ``init_weights`` overwrites the weight afterwards.

    Torch's default: weight ``kaiming_uniform(a=sqrt(5))`` (i.e. ``U(+-1/sqrt(fan_in))``), bias
    ``U(+-1/sqrt(fan_in))`` (0 bound when ``fan_in == 0``).
    """
    check_init_mode(mode)
    out = {"weight": kaiming_uniform(weight_shape, generator, a=math.sqrt(5.0))}
    if bias:
        fan_in, _ = fan_in_and_fan_out(weight_shape)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        out["bias"] = uniform((weight_shape[0],), generator, -bound, bound)
    if mode != "default":
        out["weight"] = init_by_mode(mode, weight_shape, generator)
    return out
