"""Pointwise activations by name, following NeMo's ``activation_registry``.

NeMo's registry (``nemo.collections.common.parts.utils.activation_registry``) maps ``identity``, ``hardtanh``,
``relu``, ``selu``, ``swish`` and ``silu`` (both ``nn.SiLU``) and ``gelu`` to torch modules built with their
default arguments, so ``"hardtanh"`` from a config is ``nn.Hardtanh()`` = clamp to ``[-1, 1]``. The Jasper block's
own fallback when no activation is given is ``nn.Hardtanh(0, 20)``: build that as
``Activation("hardtanh", hardtanh_min=0.0, hardtanh_max=20.0)``.

Beyond NeMo's registry this module also knows ``tanh``, ``sigmoid`` and ``leaky_relu`` (slope 0.01, torch's
default).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F

from nemofn.nn.module import Module

__all__ = ["Activation", "ACTIVATION_NAMES", "NEMO_ACTIVATION_NAMES"]

#: The names in NeMo's ``activation_registry``.
NEMO_ACTIVATION_NAMES = ("identity", "hardtanh", "relu", "selu", "swish", "silu", "gelu")

_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "identity": lambda x, lo, hi: x,
    "hardtanh": lambda x, lo, hi: F.hardtanh(x, lo, hi),
    "relu": lambda x, lo, hi: F.relu(x),
    "selu": lambda x, lo, hi: F.selu(x),
    "swish": lambda x, lo, hi: F.silu(x),
    "silu": lambda x, lo, hi: F.silu(x),
    "gelu": lambda x, lo, hi: F.gelu(x),
    "tanh": lambda x, lo, hi: torch.tanh(x),
    "sigmoid": lambda x, lo, hi: torch.sigmoid(x),
    "leaky_relu": lambda x, lo, hi: F.leaky_relu(x, 0.01),
}

#: Every name :class:`Activation` accepts.
ACTIVATION_NAMES = tuple(_FUNCTIONS)


def _check_name(instance, attribute, value) -> None:
    if value not in _FUNCTIONS:
        raise ValueError(f"unknown activation {value!r}; known activations: {', '.join(ACTIVATION_NAMES)}")


@attrs.frozen
class Activation(Module):
    """A named pointwise activation (no params). ``hardtanh_min`` / ``hardtanh_max`` only matter for
    ``"hardtanh"`` (defaults ``-1, 1`` as ``nn.Hardtanh()``)."""

    name: str = attrs.field(validator=_check_name)
    hardtanh_min: float = -1.0
    hardtanh_max: float = 1.0

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: any shape -> same shape."""
        return _FUNCTIONS[self.name](x, self.hardtanh_min, self.hardtanh_max), buffers
