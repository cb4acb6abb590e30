"""The stateless-module convention used everywhere in nemofn.

A module is a frozen ``attrs`` class that holds hyperparameters only. It has two methods:

``init(rng) -> (params, buffers)``
    Fresh parameter and buffer trees (nested ``dict[str, Tensor]``). Their flattened dotted names are NeMo's
    state-dict names relative to the module. A module without parameters returns ``({}, {})``.

``apply(params, buffers, *inputs, train=False, rng=None, **kw) -> (outputs, new_buffers)``
    Pure: reads the trees, never mutates them, and returns ``new_buffers`` with the same structure as
    ``buffers`` (unchanged leaves are the very same tensor objects). ``rng`` is an :class:`~nemofn.core.rng.RngKey`
    that stochastic layers require while ``train`` is true. It is passed down unchanged: the step function seeds
    torch's global generator from ``key.fold_in(step)`` before calling ``apply`` (see ``nemofn.core.rng``), so the
    key object inside ``apply`` stays the same from step to step and ``torch.compile`` does not recompile.

Composite modules use :class:`Scope` to call children by name, which looks up the child's sub-trees, derives
the child's key, and collects the child's new buffers::

    def apply(self, params, buffers, x, *, train=False, rng=None):
        s = Scope(params, buffers, train=train, rng=rng)
        x = s(self.linear1, "linear1", x)
        x = s(self.linear2, "linear2", x)
        return x, s.new_buffers
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nemofn.core.rng import RngKey, as_key

__all__ = ["Module", "Scope", "init_children", "EMPTY"]

EMPTY: Mapping[str, Any] = {}


class Module:
    """Base class of stateless modules. Subclasses are ``@attrs.frozen`` and override ``init`` and ``apply``."""

    def init(self, rng: RngKey | int) -> tuple[dict, dict]:
        """Returns fresh ``(params, buffers)``. Default: no state."""
        return {}, {}

    def apply(self, params: Mapping, buffers: Mapping, *inputs: Any, train: bool = False,
              rng: RngKey | None = None, **kwargs: Any) -> tuple[Any, dict]:
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def replace(self, **changes: Any) -> Module:
        """A copy with some hyperparameters changed (``attrs.evolve``)."""
        return attrs.evolve(self, **changes)


def init_children(rng: RngKey | int, children: Mapping[str, Module | None]) -> tuple[dict, dict]:
    """Initialises named children with keys ``rng.fold_in(name)``; children without state leave no key
    (this is how NeMo's index gaps, e.g. ``mconv.3`` for a ReLU, come out)."""
    key = as_key(rng)
    params: dict = {}
    buffers: dict = {}
    for name, child in children.items():
        if child is None:
            continue
        p, b = child.init(key.fold_in(name))
        if p:
            params[name] = p
        if b:
            buffers[name] = b
    return params, buffers


class Scope:
    """Calls children of a composite module inside ``apply`` and gathers their new buffers."""

    __slots__ = ("params", "buffers", "train", "rng", "new_buffers")

    def __init__(self, params: Mapping, buffers: Mapping, *, train: bool, rng: RngKey | None) -> None:
        self.params = params
        self.buffers = buffers
        self.train = train
        self.rng = rng
        self.new_buffers: dict = dict(buffers)

    def __call__(self, child: Module, name: str, *inputs: Any, **kwargs: Any) -> Any:
        child_buffers = self.buffers.get(name, EMPTY)
        out, nb = child.apply(
            self.params.get(name, EMPTY),
            child_buffers,
            *inputs,
            train=self.train,
            rng=self.rng,
            **kwargs,
        )
        if child_buffers:
            self.new_buffers[name] = nb
        return out
