"""Explicit state objects: :class:`ModelState` (params, buffers) and :class:`TrainState` (all a resume needs).

Both are frozen ``attrs`` classes: their fields are never reassigned. The *tensors* inside them are updated in
place for speed (the optimizer writes the parameters, the step copies new batch statistics into the buffers), so
a :class:`TrainState` is a linear value: every operation that returns a new state (``train_step``,
:meth:`TrainState.replace`) *consumes* the old one, and using a consumed state raises::

    RuntimeError: this TrainState was consumed by train_step at step 3; use the state it returned

Checkpointing follows Fabric's ``_Stateful`` protocol (``state_dict()`` / ``load_state_dict()``), so
``fabric.save(path, {"train_state": state})`` and ``fabric.load(path, {"train_state": state})`` work as they do
for modules. ``load_state_dict`` is the one method that changes a state in place: it copies the saved tensors into
the existing ones (which keeps any ``nn.Module`` or optimizer that registered them valid) and restores the
scalar fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from nemofn.core.rng import RngKey, as_key
from nemofn.core.tree import Tree, flatten, items, unflatten

__all__ = ["ModelState", "TrainState", "DataPosition", "ConsumedStateError", "STATE_FORMAT"]

STATE_FORMAT = "nemofn.TrainState/1"


class ConsumedStateError(RuntimeError):
    """A :class:`TrainState` was used after an operation consumed it."""


# --------------------------------------------------------------------------------------------------- ModelState


def _as_parameter(name: str, value: Any) -> nn.Parameter:
    if isinstance(value, nn.Parameter):
        return value
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"param {name!r} is a {type(value).__name__}, not a tensor")
    # Shares storage with ``value`` (no copy); only floating/complex tensors can take gradients.
    return nn.Parameter(value.detach(), requires_grad=value.is_floating_point() or value.is_complex())


@attrs.frozen(eq=False)
class ModelState:
    """A model's parameters and buffers as nested dicts whose dotted names are NeMo's state-dict keys.

    ``param_names`` / ``param_list`` (and the buffer equivalents) are flat views computed once at construction,
    so the hot path never walks the trees. Build one with :meth:`create`, which turns the parameter leaves into
    ``nn.Parameter`` objects (sharing storage with the given tensors) so they can receive ``.grad``.

    Attributes:
        params: nested dict of parameter tensors.
        buffers: nested dict of buffer tensors (running statistics, constants).
    """

    params: Tree
    buffers: Tree = attrs.field(factory=dict)
    param_names: tuple[str, ...] = attrs.field(init=False, repr=False)
    param_list: list[torch.Tensor] = attrs.field(init=False, repr=False)
    buffer_names: tuple[str, ...] = attrs.field(init=False, repr=False)
    buffer_list: list[torch.Tensor] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        flat_p = flatten(self.params)
        flat_b = flatten(self.buffers)
        clash = flat_p.keys() & flat_b.keys()
        if clash:
            raise KeyError(f"names used both as a param and as a buffer: {sorted(clash)[:5]}")
        object.__setattr__(self, "param_names", tuple(flat_p))
        object.__setattr__(self, "param_list", list(flat_p.values()))
        object.__setattr__(self, "buffer_names", tuple(flat_b))
        object.__setattr__(self, "buffer_list", list(flat_b.values()))

    @classmethod
    def create(cls, params: Mapping[str, Any], buffers: Mapping[str, Any] | None = None) -> ModelState:
        """A state whose parameter leaves are ``nn.Parameter`` s (existing Parameters are kept as they are).

        The new Parameters share storage with the given tensors: training then updates those tensors too.
        """
        p = {name: _as_parameter(name, v) for name, v in items(params)}
        b = flatten(buffers or {})
        return cls(unflatten(p), unflatten(b))

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a state without parameters)."""
        return self.param_list[0].device if self.param_list else torch.device("cpu")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.param_list)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{dotted_name: tensor}`` of params then buffers (detached; the same storage), NeMo's layout."""
        out = {n: p.detach() for n, p in zip(self.param_names, self.param_list)}
        out.update({n: b.detach() for n, b in zip(self.buffer_names, self.buffer_list)})
        return out

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
        """Copies a flat state dict into the existing tensors, in place.

        Raises:
            KeyError: with ``strict``, if keys are missing or unexpected (both lists are named).
            ValueError: if a tensor's shape differs (the key and both shapes are named).
            TypeError: an integer, bool or complex tensor for a floating one (named).
        """
        own = dict(zip(self.param_names, self.param_list))
        own.update(zip(self.buffer_names, self.buffer_list))
        if strict:
            missing = sorted(own.keys() - state_dict.keys())
            unexpected = sorted(state_dict.keys() - own.keys())
            if missing or unexpected:
                raise KeyError(f"state dict does not match the model: missing {missing[:10]}"
                               f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                               f"{' ...' if len(unexpected) > 10 else ''}; pass strict=False to load a subset")
        for name, value in state_dict.items():
            if name not in own:
                continue
            dst = own[name]
            if tuple(dst.shape) != tuple(value.shape):
                raise ValueError(f"{name!r}: checkpoint shape {tuple(value.shape)} != model shape {tuple(dst.shape)}")
            if dst.is_floating_point() and not value.is_floating_point():
                raise TypeError(f"{name!r}: the checkpoint holds a {value.dtype} tensor where the model has a "
                                f"{dst.dtype} one; only floating tensors load into floating parameters (float64, "
                                f"float16 and bfloat16 are cast)")
            dst.copy_(value)


# ------------------------------------------------------------------------------------------------- DataPosition


@attrs.frozen
class DataPosition:
    """Where the data stream stands: the epoch, the batches of it already consumed (per rank), the shuffle seed.

    The training order is a pure function of ``(seed, epoch)`` (see ``nemofn.train.data``), so a resumed run
    skips ``batch`` batches of epoch ``epoch`` and then sees exactly what the uninterrupted run saw.
    """

    epoch: int = 0
    batch: int = 0
    seed: int = 0

    def advance(self, batches: int, *, batches_per_epoch: int | None = None) -> DataPosition:
        """``batches`` more consumed; rolls over to the next epoch when ``batches_per_epoch`` is reached."""
        b = self.batch + batches
        if batches_per_epoch is not None and b >= batches_per_epoch:
            return DataPosition(self.epoch + 1, 0, self.seed)
        return DataPosition(self.epoch, b, self.seed)


# --------------------------------------------------------------------------------------------------- TrainState


class _Life:
    """Mutable marker shared by nothing but one TrainState: set when an operation consumes the state."""

    __slots__ = ("consumed_by", "at_step")

    def __init__(self) -> None:
        self.consumed_by: str | None = None
        self.at_step = -1


@attrs.frozen(eq=False)
class TrainState:
    """Everything a training run needs to continue exactly: model, optimizer state, step, RNG key, data position.

    Attributes:
        model: the :class:`ModelState` (parameters are ``nn.Parameter`` s that receive ``.grad``).
        opt_state: the functional optimizer's state (``nemofn.optim``), aligned with ``model.param_list``.
        rng: the run's base :class:`RngKey`. Step ``s`` on rank ``r`` seeds torch's global generator with
            ``rng.fold_in(s).fold_in(r)`` (:meth:`step_key`); ``apply`` receives the base key unchanged.
        step: number of optimizer steps taken.
        data: the :class:`DataPosition` of the training stream.
    """

    model: ModelState
    opt_state: dict
    rng: RngKey = attrs.field(converter=as_key)
    step: int = 0
    data: DataPosition = DataPosition()
    _life: _Life = attrs.field(init=False, factory=_Life, repr=False)

    @classmethod
    def create(cls, model: ModelState, optimizer: Any, *, rng: RngKey | int, data_seed: int = 0) -> TrainState:
        """A fresh state at step 0: ``optimizer.init(model.param_list)`` (a ``nemofn.optim.Optimizer``).

        Frozen parameters (``requires_grad=False``) get placeholders instead of optimizer state; the state is
        created when such a parameter is first updated (``nemofn.optim.masked``).
        """
        if not isinstance(model, ModelState):
            raise TypeError(f"expected a ModelState, got {type(model).__name__}; build one with ModelState.create"
                            "(params, buffers)")
        from nemofn.optim.masked import init_masked

        flags = [p.requires_grad for p in model.param_list]
        active = None if all(flags) else [i for i, flag in enumerate(flags) if flag]
        return cls(model, init_masked(optimizer, model.param_list, active), rng=rng, data=DataPosition(seed=data_seed))

    # -- linearity ------------------------------------------------------------------------------------------

    @property
    def consumed(self) -> bool:
        return self._life.consumed_by is not None

    def check_live(self) -> None:
        """Raises :class:`ConsumedStateError` if an operation already consumed this state."""
        life = self._life
        if life.consumed_by is not None:
            raise ConsumedStateError(
                f"this TrainState was consumed by {life.consumed_by} at step {life.at_step}; use the state it "
                "returned (its tensors are updated in place, so this one no longer describes them)")

    def consume(self, by: str) -> None:
        """Marks this state consumed by the operation ``by`` (checks it was live first)."""
        self.check_live()
        self._life.consumed_by = by
        self._life.at_step = self.step

    def replace(self, **changes: Any) -> TrainState:
        """A new state with some fields changed (``attrs.evolve``); this one is consumed."""
        self.consume("TrainState.replace")
        return attrs.evolve(self, **changes)

    def step_key(self, rank: int = 0) -> RngKey:
        """The key that seeds torch's global generator for this step on ``rank``."""
        return self.rng.fold_in(self.step).fold_in(rank)

    # -- checkpointing (Fabric's _Stateful protocol) --------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """All of the state as plain containers of tensors and scalars (safe for ``torch.load(weights_only=True)``).

        Also records torch's global CPU (and CUDA) generator states, restored by :meth:`load_state_dict`.
        """
        self.check_live()
        sd: dict[str, Any] = {
            "format": STATE_FORMAT,
            "step": self.step,
            "rng": {"seed": self.rng.seed, "path": list(self.rng.path)},
            "data": attrs.asdict(self.data),
            "params": {n: p.detach() for n, p in zip(self.model.param_names, self.model.param_list)},
            "buffers": {n: b.detach() for n, b in zip(self.model.buffer_names, self.model.buffer_list)},
            "opt_state": self.opt_state,
            "torch_rng_state": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            sd["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict` in place: tensors are copied into the existing ones, scalars replaced.

        Raises:
            ValueError: on a different format, or a tensor whose shape differs (named by its key).
            KeyError: if the parameter / buffer / optimizer-state names differ from this state's.
        """
        self.check_live()
        fmt = state_dict.get("format")
        if fmt != STATE_FORMAT:
            raise ValueError(f"not a TrainState checkpoint: format {fmt!r}, expected {STATE_FORMAT!r}")
        flat = dict(state_dict["params"])
        flat.update(state_dict["buffers"])
        self.model.load_state_dict(flat, strict=True)
        new_opt = _restore_into(self.opt_state, state_dict["opt_state"], "opt_state", self.model.device)
        if new_opt is not self.opt_state:  # pragma: no cover - the top level is always a dict, restored in place
            raise RuntimeError("opt_state must be a dict")
        rng = state_dict["rng"]
        object.__setattr__(self, "rng", RngKey(int(rng["seed"]), tuple(rng["path"])))
        object.__setattr__(self, "step", int(state_dict["step"]))
        object.__setattr__(self, "data", DataPosition(**state_dict["data"]))
        torch.set_rng_state(state_dict["torch_rng_state"].cpu())
        cuda_states = state_dict.get("cuda_rng_states")
        if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _restore_into(dst: Any, src: Any, where: str, device: torch.device) -> Any:
    """Copies ``src`` into ``dst`` (dicts and lists in place, tensors with ``copy_``); returns the restored value.

    A ``None`` placeholder (optimizer state not yet created) takes the saved tensor, moved to ``device``.
    """
    if isinstance(dst, dict):
        if not isinstance(src, Mapping) or dst.keys() != src.keys():
            got = sorted(src.keys()) if isinstance(src, Mapping) else type(src).__name__
            raise KeyError(f"{where}: checkpoint has {got}, this state has {sorted(dst.keys())}; was the checkpoint "
                           "written with another optimizer?")
        for k in dst:
            dst[k] = _restore_into(dst[k], src[k], f"{where}[{k!r}]", device)
        return dst
    if isinstance(dst, list):
        if not isinstance(src, (list, tuple)) or len(src) != len(dst):
            n = len(src) if isinstance(src, (list, tuple)) else type(src).__name__
            raise KeyError(f"{where}: checkpoint has {n} entries, this state has {len(dst)}")
        for i in range(len(dst)):
            dst[i] = _restore_into(dst[i], src[i], f"{where}[{i}]", device)
        return dst
    if isinstance(dst, torch.Tensor):
        if not isinstance(src, torch.Tensor):
            if src is None:
                return None
            raise ValueError(f"{where}: checkpoint holds {type(src).__name__}, this state a tensor")
        if dst.shape != src.shape:
            raise ValueError(f"{where}: checkpoint shape {tuple(src.shape)} != state shape {tuple(dst.shape)}")
        dst.copy_(src)
        return dst
    if dst is None and isinstance(src, torch.Tensor):
        return src.to(device).clone()
    return src
