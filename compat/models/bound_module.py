"""``model.preprocessor(...)``-style calls: a functional submodule bound to a model's state.

NeMo code calls submodules directly with keyword arguments, e.g. ``model.preprocessor(input_signal=x, length=n)``
or ``model.encoder(audio_signal=f, length=n)``. :class:`BoundModule` gives the same call on top of a stateless
nemofn module: it reads the model's params / buffers under the submodule's name, runs ``apply`` in the model's
mode (training: with an RNG key, and new buffers such as BatchNorm statistics are written back, as a torch module
would update them), and returns the outputs only.
"""

from __future__ import annotations

from typing import Any

from nemofn.core.rng import RngKey
from nemofn.core.tree import tree_copy_
from nemofn.nn.module import EMPTY

__all__ = ["BoundModule"]


class BoundModule:
    """A nemofn module bound to the state of a :class:`~compat.core.classes.ModelPT`.

    Args:
        model: the owning model (its ``fn_state`` and ``training`` flag are read at call time).
        name: the submodule's key in the params / buffers trees (``"preprocessor"``, ``"encoder"``, ...).
        module: the stateless nemofn module.
        arg_names: NeMo's keyword names of the positional inputs of ``module.apply``, in order.
    """

    def __init__(self, model: Any, name: str, module: Any, arg_names: tuple[str, ...]) -> None:
        self._model = model
        self.name = name
        self.module = module
        self.arg_names = arg_names

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and kwargs:
            raise TypeError(f"{self.name}(...): pass inputs either positionally or by NeMo's keywords "
                            f"{self.arg_names}, not both")
        if kwargs:
            unknown = sorted(set(kwargs) - set(self.arg_names))
            if unknown:
                raise TypeError(f"{self.name}(...): unknown argument(s) {unknown}; expected {self.arg_names}")
            args = tuple(kwargs[n] for n in self.arg_names if n in kwargs)
        state = self._model.fn_state
        params = state.params.get(self.name, EMPTY)
        buffers = state.buffers.get(self.name, EMPTY)
        training = self._model.training
        rng = RngKey(self._model._draw_seed()) if training else None
        outputs, new_buffers = self.module.apply(params, buffers, *args, train=training, rng=rng)
        if training and buffers:
            tree_copy_(buffers, new_buffers)
        return outputs

    def __getattr__(self, item: str) -> Any:
        return getattr(self.module, item)

    def __repr__(self) -> str:
        return f"BoundModule({self.name!r}, {type(self.module).__name__})"
