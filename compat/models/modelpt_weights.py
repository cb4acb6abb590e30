"""Weights, devices and modes of :class:`~compat.core.classes.ModelPT`: what a torch module would provide.

``state_dict()`` / ``load_state_dict()`` use NeMo's flat keys (the :class:`~nemofn.core.state.ModelState` names);
loading copies into the model's own tensors, so optimizer state and any ``model.functional`` reference stay valid.
``to()`` moves the state (a new ``ModelState``; an optimizer state moves with it). ``train()`` / ``eval()`` set the
``training`` flag the forward-style calls read; ``freeze()`` / ``unfreeze()`` toggle ``requires_grad`` as
Lightning's do (the functional ``train_step`` then refuses frozen parameters, naming them: it updates every
parameter of the state). ``summarize()`` is a small per-module parameter table.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import torch

__all__ = ["WeightsMixin", "StateDictMismatchError", "IncompatibleKeys", "ModelSummary"]


class StateDictMismatchError(RuntimeError):
    """A state dict does not fit the model (missing / unexpected keys with ``strict``, or a shape mismatch)."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns (torch's ``_IncompatibleKeys`` fields)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


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


class WeightsMixin:
    """``state_dict`` / ``load_state_dict``, ``parameters``, ``to``, modes, ``freeze`` and ``summarize``."""

    training: bool

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{NeMo key: tensor}`` (params then buffers, incl. ``num_batches_tracked`` and featurizer buffers)."""
        return collections.OrderedDict(self._fn_state.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> IncompatibleKeys:
        """Copies ``state_dict`` into the model's tensors, in place.

        Raises:
            StateDictMismatchError: with ``strict``, on missing or unexpected keys; always, on a shape mismatch
                (nothing is copied then).
        """
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

    def parameters(self) -> Iterator[torch.Tensor]:
        """The parameter tensors (an iterator, as torch's: ``next(model.parameters()).device`` works)."""
        return iter(self._fn_state.param_list)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return zip(self._fn_state.param_names, self._fn_state.param_list)

    @property
    def num_weights(self) -> int:
        """Number of trainable parameter elements (``requires_grad``)."""
        return sum(p.numel() for p in self._fn_state.param_list if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return self._fn_state.device

    def to(self, device: Any = None, dtype: Any = None) -> WeightsMixin:
        """Moves (and with ``dtype`` casts the floating) params and buffers; an optimizer state moves along.

        A no-op when everything is already there. Otherwise the model gets a new :class:`ModelState` (new tensor
        objects): take ``model.functional`` again after moving.
        """
        from nemofn.core.state import ModelState, TrainState
        from nemofn.core.tree import tree_map

        old = self._fn_state
        target = None if device is None else torch.empty(0, device=device).device
        tensors = old.param_list + old.buffer_list
        if all((target is None or t.device == target) and (dtype is None or not t.is_floating_point()
                                                           or t.dtype == dtype) for t in tensors):
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.detach().to(device=target, dtype=cast)

        new = ModelState.create(tree_map(move, old.params), tree_map(move, old.buffers))
        for p_old, p_new in zip(old.param_list, new.param_list):
            p_new.requires_grad_(p_old.requires_grad)
        train_state = self._train_state
        self._fn_state = new
        if train_state is not None:
            opt_state = _move_tree(train_state.opt_state, target)
            train_state.consume("ModelPT.to")
            self._train_state = TrainState(new, opt_state, rng=train_state.rng, step=train_state.step,
                                           data=train_state.data)
        return self

    def cpu(self) -> WeightsMixin:
        return self.to("cpu")

    def cuda(self, device: Any = None) -> WeightsMixin:
        return self.to(torch.device("cuda") if device is None else torch.device("cuda", device))

    # -- modes --------------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> WeightsMixin:
        """Training mode: dropout, SpecAugment and dither active in :meth:`forward`-style calls."""
        self.training = bool(mode)
        return self

    def eval(self) -> WeightsMixin:
        return self.train(False)

    def freeze(self) -> None:
        """``requires_grad=False`` on every parameter, then eval mode (NeMo's / Lightning's ``freeze``)."""
        for p in self._fn_state.param_list:
            p.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        """``requires_grad=True`` on every floating parameter, then training mode."""
        for p in self._fn_state.param_list:
            p.requires_grad_(p.is_floating_point() or p.is_complex())
        self.train()

    def summarize(self, max_depth: int = 1) -> ModelSummary:
        """Parameter counts per module, grouping state names to ``max_depth`` dotted parts (``encoder``, ...).

        Modules with parameters come first, in state order, then modules holding only buffers (0 parameters).
        """
        depth = max(int(max_depth), 1)
        groups: dict[str, list[int]] = {}
        for name, p in zip(self._fn_state.param_names, self._fn_state.param_list):
            key = ".".join(name.split(".")[:depth])
            counts = groups.setdefault(key, [0, 0])
            counts[0] += p.numel()
            counts[1] += p.numel() if p.requires_grad else 0
        for name in self._fn_state.buffer_names:  # modules with buffers only (the preprocessor) show 0 params
            groups.setdefault(".".join(name.split(".")[:depth]), [0, 0])
        network = getattr(self._fn_model, "network", self._fn_model)
        rows = []
        for key, (total, trainable) in groups.items():
            node: Any = network
            for part in key.split("."):
                node = getattr(node, part, None) if node is not None and not part.isdigit() else None
            rows.append((key, type(node).__name__ if node is not None else "", total, trainable))
        return ModelSummary(tuple(rows))


def _move_tree(node: Any, device: Any) -> Any:
    if isinstance(node, torch.Tensor):
        return node if device is None else node.to(device)
    if isinstance(node, dict):
        return {k: _move_tree(v, device) for k, v in node.items()}
    if isinstance(node, list):
        return [_move_tree(v, device) for v in node]
    if isinstance(node, tuple):
        return tuple(_move_tree(v, device) for v in node)
    return node
