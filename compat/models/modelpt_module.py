"""The ``nn.Module`` face of a compat model: NeMo's submodules over the functional state, with no copies.

NeMo users treat a model as an ``nn.Module``: ``model.to(device)``, ``.eval()``, ``.parameters()``,
``.state_dict()``, ``model.encoder.freeze()``, ``requires_grad_(False)`` on a submodule. A compat model registers the
tensors of its :class:`~nemofn.core.state.ModelState` (the very same ``nn.Parameter`` and buffer objects) as its own,
nested so that the dotted names are NeMo's state-dict keys. The functional unit stays the source of truth:

* each NeMo submodule (``preprocessor``, ``encoder``, ``decoder``, ...) is a :class:`SubModule`, an ``nn.Module``
  that holds its part of the tensors and whose call runs the stateless nemofn module's ``apply`` in the
  submodule's own train / eval mode (training mode writes new BatchNorm statistics back in place, as a torch module
  updates its buffers);
* ``.to()`` / ``.cuda()`` / ``.float()`` go through ``nn.Module._apply`` and the model then re-reads its
  :class:`ModelState` from the registered tensors, so ``model.fn_state`` always holds what the module holds;
* freezing only flips ``requires_grad`` on those shared Parameters: the training step skips frozen parameters
  (no gradient, no optimizer update; ``nemofn.optim.masked``).

Randomness: training-mode calls draw from torch's global generator (the training step seeds it from the run's key
at every step; outside a training loop ``torch.manual_seed`` governs it), as NeMo's modules do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.core.tree import tree_copy_, tree_map
from nemofn.nn.module import EMPTY
from nemofn.train.adapter import read_tree, register_tree

__all__ = ["SubModule", "SubModuleSpec", "ModuleFace", "ModelSummary", "IncompatibleKeys", "StateDictMismatchError"]

_TRAINING_KEY = RngKey(0)  # the key only marks a training call: layers draw from torch's global generator


class StateDictMismatchError(RuntimeError):
    """A state dict does not fit the model (missing / unexpected keys with ``strict``, or a shape mismatch)."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns (torch's ``_IncompatibleKeys`` fields)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@attrs.frozen
class SubModuleSpec:
    """A NeMo submodule of a model: its attribute name (= its state-dict prefix), the stateless module, and NeMo's
    keyword names of the module's positional inputs (``model.encoder(audio_signal=..., length=...)``)."""

    name: str
    module: Any
    arg_names: tuple[str, ...]


class SubModule(nn.Module):
    """A stateless nemofn module bound to its tensors inside a model (NeMo's ``NeuralModule`` face).

    ``sub(*inputs)`` or ``sub(**NeMo keywords)`` returns the outputs of ``module.apply`` on this submodule's
    registered tensors, in this submodule's mode (``sub.training``). ``freeze()`` / ``unfreeze(partial)`` /
    ``as_frozen()`` behave as NeMo's ``NeuralModule``.
    """

    def __init__(self, spec: SubModuleSpec, owner: nn.Module) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner  # not registered: the owner is this module's parent, not its child
        self.__dict__["spec"] = spec
        self._frozen_grad_map: dict[str, bool] | None = None

    @property
    def module(self) -> Any:
        """The stateless nemofn module (e.g. ``nemofn.asr.modules.conformer.ConformerEncoder``)."""
        return self.spec.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        spec = self.spec
        if args and kwargs:
            raise TypeError(f"{spec.name}(...): pass inputs either positionally or by NeMo's keywords "
                            f"{spec.arg_names}, not both")
        if kwargs:
            unknown = sorted(set(kwargs) - set(spec.arg_names))
            if unknown:
                raise TypeError(f"{spec.name}(...): unknown argument(s) {unknown}; expected {spec.arg_names}")
            args = tuple(kwargs[n] for n in spec.arg_names if n in kwargs)
        state = self._owner.fn_state
        params = state.params.get(spec.name, EMPTY)
        buffers = state.buffers.get(spec.name, EMPTY)
        training = self.training
        outputs, new_buffers = spec.module.apply(params, buffers, *args, train=training,
                                                 rng=_TRAINING_KEY if training else None)
        if training and buffers:
            with torch.no_grad():
                tree_copy_(buffers, new_buffers)
        return outputs

    def freeze(self) -> None:
        """``requires_grad=False`` on this submodule's parameters (the previous flags are recorded), then eval."""
        self._frozen_grad_map = {name: p.requires_grad for name, p in self.named_parameters()}
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def unfreeze(self, partial: bool = False) -> None:
        """Trainable again, then training mode. ``partial``: restore the flags recorded by :meth:`freeze`."""
        recorded = self._frozen_grad_map if partial else None
        for name, p in self.named_parameters():
            p.requires_grad_(recorded.get(name, True) if recorded is not None else True)
        self._frozen_grad_map = None
        self.train()

    @contextlib.contextmanager
    def as_frozen(self) -> Iterator[SubModule]:
        """Frozen (and in eval mode) inside the block; flags and mode restored afterwards."""
        training = self.training
        self.freeze()
        try:
            yield self
        finally:
            self.unfreeze(partial=True)
            self.train(training)

    def __getattr__(self, item: str) -> Any:
        try:
            return super().__getattr__(item)
        except AttributeError:
            spec = self.__dict__.get("spec")
            if spec is not None and not item.startswith("_"):
                return getattr(spec.module, item)  # hyperparameters: model.encoder.d_model, .feat_out, ...
            raise

    def extra_repr(self) -> str:
        return type(self.spec.module).__name__


@attrs.frozen
class ModelSummary:
    """A small table of a model's modules: name, class, parameters, trainable parameters."""

    rows: tuple[tuple[str, str, int, int], ...]

    @property
    def total_parameters(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def trainable_parameters(self) -> int:
        return sum(r[3] for r in self.rows)

    def __str__(self) -> str:
        header = ("", "Name", "Type", "Params", "Trainable")
        body = [(str(i), n, t, f"{p:,}", f"{tr:,}") for i, (n, t, p, tr) in enumerate(self.rows)]
        body.append(("", "Total", "", f"{self.total_parameters:,}", f"{self.trainable_parameters:,}"))
        widths = [max(len(r[c]) for r in [header, *body]) for c in range(5)]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *body]]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


class ModuleFace:
    """The ``nn.Module`` half of :class:`~compat.core.classes.ModelPT` (mixed in before ``nn.Module``).

    Subclasses list their NeMo submodules in :meth:`submodule_specs`; every tensor of the state under another top
    level name is still registered (in plain containers), so ``state_dict()`` always covers the whole state.
    """

    _fn_state: ModelState

    def submodule_specs(self) -> list[SubModuleSpec]:
        """The model's NeMo submodules (default: none; the ASR models list preprocessor, encoder, ...)."""
        return []

    # -- binding -------------------------------------------------------------------------------------------------

    def _bind_state(self, state: ModelState) -> None:
        """Registers ``state``'s tensors on this module (replacing earlier registrations) and adopts it."""
        old_modes = {name: m.training for name, m in self._modules.items()}
        for name in list(self._modules):
            del self._modules[name]
        self._parameters.clear()
        self._buffers.clear()
        for spec in self.submodule_specs():
            self.__dict__.pop(spec.name, None)
            if spec.module is None:
                self.__dict__[spec.name] = None  # NeMo's attribute is None when the config has no such module
                continue
            sub = SubModule(spec, self)
            sub.train(old_modes.get(spec.name, self.training))
            self._modules[spec.name] = sub
        register_tree(self, state.params, state.buffers)
        for name, child in self._modules.items():
            if not isinstance(child, SubModule):
                child.train(old_modes.get(name, self.training))
        self.__dict__["_fn_state"] = state
        self.__dict__["_templates"] = (tree_map(lambda _: None, state.params), tree_map(lambda _: None, state.buffers))

    def _refresh_specs(self) -> None:
        """Points every :class:`SubModule` at the unit's current stateless modules (after a unit rebuild that kept
        the state, e.g. a new decoding temperature)."""
        for spec in self.submodule_specs():
            sub = self._modules.get(spec.name)
            if isinstance(sub, SubModule):
                sub.__dict__["spec"] = spec

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # ``.to()``/``.cuda()``/``.half()`` replace buffer objects (and parameters too under
        # torch.__future__.set_overwrite_module_params_on_conversion): re-read the state from the registry.
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        params_t, buffers_t = self.__dict__["_templates"]
        self.__dict__["_fn_state"] = ModelState(read_tree(self, params_t, "param"), read_tree(self, buffers_t, "buffer"))
        return out

    @property
    def device(self) -> torch.device:
        return self._fn_state.device

    # -- weights -------------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                        assign: bool = False) -> IncompatibleKeys:
        """Copies ``state_dict`` into the model's tensors, in place (NeMo's flat keys).

        Raises:
            StateDictMismatchError: with ``strict``, on missing or unexpected keys; always, on a shape mismatch
                (nothing is copied then).
        """
        if assign:
            raise NotImplementedError("load_state_dict(assign=True) would replace the model's tensors; compat "
                                      "models copy into them (their functional state shares the tensors)")
        own = self._fn_state.state_dict()
        missing = sorted(own.keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - own.keys())
        problems = []
        if strict and missing:
            problems.append(f"Missing key(s) in state_dict: {', '.join(repr(k) for k in missing[:20])}"
                            + (f" ... (+{len(missing) - 20})" if len(missing) > 20 else ""))
        if strict and unexpected:
            problems.append(f"Unexpected key(s) in state_dict: {', '.join(repr(k) for k in unexpected[:20])}"
                            + (f" ... (+{len(unexpected) - 20})" if len(unexpected) > 20 else ""))
        for key, value in state_dict.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                problems.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
                                f"checkpoint, the shape in current model is {tuple(own[key].shape)}")
        if problems:
            raise StateDictMismatchError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                                         + "\n\t".join(problems)
                                         + ("\n(pass strict=False to load a subset)" if strict else ""))
        self._fn_state.load_state_dict(state_dict, strict=False)
        return IncompatibleKeys(missing, unexpected)

    @property
    def num_weights(self) -> int:
        """Number of trainable parameter elements (``requires_grad``), as NeMo's."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)  # type: ignore[attr-defined]

    # -- modes -----------------------------------------------------------------------------------------------------

    def freeze(self) -> None:
        """Lightning's ``freeze``: ``requires_grad=False`` on every parameter, then eval mode."""
        for p in self.parameters():  # type: ignore[attr-defined]
            p.requires_grad_(False)
        self.eval()  # type: ignore[attr-defined]

    def unfreeze(self) -> None:
        """Lightning's ``unfreeze``: every floating parameter trainable, then training mode."""
        for p in self.parameters():  # type: ignore[attr-defined]
            p.requires_grad_(p.is_floating_point() or p.is_complex())
        self.train()  # type: ignore[attr-defined]

    def summarize(self, max_depth: int = 1) -> ModelSummary:
        """Parameter counts per module, grouping state names to ``max_depth`` dotted parts (``encoder``, ...).

        Modules with parameters come first, in state order, then modules holding only buffers (0 parameters).
        """
        depth = max(int(max_depth), 1)
        state = self._fn_state
        groups: dict[str, list[int]] = {}
        for name, p in zip(state.param_names, state.param_list):
            key = ".".join(name.split(".")[:depth])
            counts = groups.setdefault(key, [0, 0])
            counts[0] += p.numel()
            counts[1] += p.numel() if p.requires_grad else 0
        for name in state.buffer_names:  # modules with buffers only (the preprocessor) show 0 params
            groups.setdefault(".".join(name.split(".")[:depth]), [0, 0])
        rows = []
        for key, (total, trainable) in groups.items():
            node: Any = self
            for part in key.split("."):
                node = node._modules.get(part) if isinstance(node, nn.Module) else None
            kind = "" if node is None else (type(node.module).__name__ if isinstance(node, SubModule)
                                            else type(node).__name__)
            rows.append((key, kind, total, trainable))
        return ModelSummary(tuple(rows))
