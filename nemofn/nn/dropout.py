"""Dropout as a stateless module."""

from __future__ import annotations

import attrs
import torch.nn.functional as F

from nemofn.nn.module import Module

__all__ = ["Dropout"]


def _check_p(instance, attribute, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Dropout.p must be in [0, 1], got {value!r}")


@attrs.frozen
class Dropout(Module):
    """Zeroes elements with probability ``p`` while training and scales the rest by ``1 / (1 - p)``.

    Identity when ``train`` is false or ``p == 0``. While training with ``p > 0`` it needs ``rng`` (an
    :class:`~nemofn.core.rng.RngKey`): the mask comes from torch's global generator, which the step function
    seeds from the key (see ``nemofn.core.rng``), and requiring the key keeps that explicit at every call site.
    No params or buffers.
    """

    p: float = attrs.field(default=0.5, converter=float, validator=_check_p)

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: any shape -> same shape."""
        if not train or self.p == 0.0:
            return x, buffers
        if rng is None:
            raise ValueError(
                f"Dropout(p={self.p}) in training needs a random key: pass rng=RngKey(...) to apply "
                f"(or train=False for inference)"
            )
        return F.dropout(x, self.p, training=True), buffers
