"""``Sequential``: a chain of modules whose children are named ``"0"``, ``"1"``, ... like ``nn.Sequential``."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from nemofn.nn.module import Module, Scope, init_children

__all__ = ["Sequential"]


def _as_layers(value: Iterable[Module]) -> tuple[Module, ...]:
    layers = tuple(value)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential layer {i} is a {type(layer).__name__}, not a nemofn Module")
    return layers


@attrs.frozen
class Sequential(Module):
    """Applies ``layers`` in order, each to the previous output.

    State is nested under the layer index, so ``Sequential((Linear(4, 8), Activation("relu"), Linear(8, 2)))``
    has params ``0.weight, 0.bias, 2.weight, 2.bias``: a layer without state leaves a gap, as in NeMo's state
    dicts. Each layer receives ``train`` and ``rng`` unchanged (see :class:`~nemofn.nn.module.Scope`).
    """

    layers: tuple[Module, ...] = attrs.field(converter=_as_layers)

    def init(self, rng):
        return init_children(rng, {str(i): layer for i, layer in enumerate(self.layers)})

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: the first layer's input -> the last layer's output."""
        s = Scope(params, buffers, train=train, rng=rng)
        for i, layer in enumerate(self.layers):
            x = s(layer, str(i), x)
        return x, s.new_buffers

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]
