"""The bridge between pure parameter trees and Fabric/DDP, which want an ``nn.Module`` and a ``torch.optim``.

:class:`TreeModule`
    One generic ``nn.Module`` that registers a :class:`~nemofn.core.state.ModelState`'s tensors as its own
    Parameters and buffers (the *same* objects, not copies), nested so that ``state_dict()`` keys are the dotted
    NeMo names. ``forward(fn, *args, **kw)`` returns ``fn(params, buffers, *args, **kw)``. Because the call goes
    through ``forward``, DDP's hooks run and ``.backward()`` averages gradients across ranks; Fabric's autocast
    (``bf16-mixed``, ``16-mixed``) wraps it too.

:class:`FunctionalOptimizerShim`
    A ``torch.optim.Optimizer`` whose ``step()`` runs a functional ``nemofn.optim`` optimizer. Fabric's precision
    plugins need a torch optimizer: ``16-mixed``'s GradScaler unscales ``.grad`` through ``param_groups`` and skips
    ``step()`` on overflow, and ``fabric.clip_gradients`` unscales before clipping.

:func:`setup_fabric`
    Wraps both with Fabric and returns the :class:`TrainState` (optimizer state created on the device) and a
    :class:`FabricRuntime` that ``train_step`` / ``eval_step`` take as ``runtime=``.

Distributed notes
    * DDP: gradients are averaged by the backward hooks; buffers (BatchNorm running statistics) follow DDP's
      ``broadcast_buffers=True``: before each training forward rank 0's buffers are broadcast to every rank, so
      the running statistics are those rank 0 computes from its own batches. With ``sync_batchnorm``
      (``StepConfig.sync_batchnorm``) the batch statistics of every training forward are all-reduced over the
      ranks instead, as ``nn.SyncBatchNorm`` computes them (``nemofn.nn.sync_batchnorm``).
    * FSDP (root module only): ``fit(strategy="fsdp2")`` runs; Fabric's FSDP1 ``FSDPStrategy`` is blocked on
      CPU. The details are in :data:`FSDP_STATUS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from nemofn.core.state import ModelState, TrainState
from nemofn.core.tree import Tree, tree_map
from nemofn.optim.masked import masked_update

__all__ = ["TreeModule", "FunctionalOptimizerShim", "FabricRuntime", "setup_fabric", "collect_grads",
           "trainable_indices", "is_sharded", "register_tree", "read_tree",
           "fsdp2_strategy", "FSDP_STATUS"]

FSDP_STATUS = """FSDP support, as checked with torch 2.13 and lightning-fabric 2.6 on CPU (gloo, 2 processes).

* ``strategy="fsdp2"`` in ``fit`` (:func:`fsdp2_strategy`): Fabric's ``ModelParallelStrategy`` with a
  ``parallelize_fn`` that applies FSDP2's ``fully_shard`` to the root :class:`TreeModule` (one parameter group;
  data-parallel size = world size). Runs on CPU (tested; CUDA is untested here). Parameters, gradients and the
  optimizer state become ``DTensor`` shards; the adapter reads the trees from the module on every forward
  (``live=True``) because FSDP swaps the unsharded parameters in and out of ``_parameters`` around forward and
  backward. Tested (``tests/train/test_fsdp2.py``, slow): 2 ranks with batch B end equal to one process with batch
  2B (measured 3e-8). Not implemented: checkpointing (each rank holds shards; ``save_checkpoint`` raises).
* Fabric's ``FSDPStrategy`` (FSDP1, ``strategy="fsdp"``): blocked on CPU. Fabric refuses it ("FSDP is only
  available on GPU"), and torch's FSDP1 on CPU needs ``device_id=torch.device("cpu")``, which Fabric does not
  pass. Plain torch FSDP1 (``use_orig_params=True``) on the root TreeModule ran forward, backward and a
  functional AdamW step on CPU with ``live=True`` (an empty shard gets no ``.grad``; :func:`collect_grads`
  substitutes an empty zero gradient). On GPU it is expected to work the same way but is untested here.
* Sharding only the root module all-gathers the whole model for each forward and backward: the savings are the
  parameters at rest, the gradients and the optimizer state, not the peak during the step. Per-block sharding
  would need the model's blocks to be submodules, which the functional design does not have.
"""


class _Node(nn.Module):
    """A plain container: one level of the tree."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - containers are never called
        raise RuntimeError("a TreeModule node is a container; call the root TreeModule")


def _check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"tree key {name!r} under {where or '<root>'!r} must be a non-empty str without '.'")


def register_tree(node: nn.Module, params: Mapping, buffers: Mapping, non_persistent: set[str] = frozenset(),
                  prefix: str = "") -> None:
    """Registers the leaves of ``params``/``buffers`` on ``node`` and recurses into sub-dicts, one child per key.

    Leaves are written into ``_parameters`` / ``_buffers`` directly, so tree keys that shadow ``nn.Module``
    attributes (``train``, ``type``, ...) still work and ``state_dict()`` keys equal the dotted tree names.
    """
    for key in list(params) + [k for k in buffers if k not in params]:
        _check_name(key, prefix)
        p, b = params.get(key), buffers.get(key)
        name = prefix + key
        if isinstance(p, Mapping) or isinstance(b, Mapping):
            if (p is not None and not isinstance(p, Mapping)) or (b is not None and not isinstance(b, Mapping)):
                raise KeyError(f"{name!r} is a leaf in one tree and a sub-tree in the other")
            child = node._modules.get(key)
            if child is None:
                child = node._modules[key] = _Node()
            register_tree(child, p or {}, b or {}, non_persistent, name + ".")
        elif p is not None:
            if not isinstance(p, nn.Parameter):
                raise TypeError(f"param {name!r} is not an nn.Parameter; build the state with ModelState.create")
            node._parameters[key] = p
        else:
            if not isinstance(b, torch.Tensor):
                raise TypeError(f"buffer {name!r} is a {type(b).__name__}, not a tensor")
            node._buffers[key] = b
            if name in non_persistent:
                node._non_persistent_buffers_set.add(key)


def read_tree(node: nn.Module, template: Mapping, kind: str) -> Tree:
    """Rebuilds a tree of ``template``'s shape from the tensors now registered on ``node``."""
    out: Tree = {}
    for key, value in template.items():
        if isinstance(value, Mapping):
            out[key] = read_tree(node._modules[key], value, kind)
        else:
            out[key] = (node._parameters if kind == "param" else node._buffers)[key]
    return out


class TreeModule(nn.Module):
    """Registers a model state's tensors as this module's own; ``forward(fn, ...)`` calls ``fn`` on the trees.

    Args:
        model: the :class:`ModelState` (its parameter leaves must be ``nn.Parameter`` s).
        non_persistent: dotted buffer names left out of ``state_dict()`` (like ``persistent=False``).
        live: read the trees from the registered tensors at every ``forward`` (needed under FSDP, which swaps
            parameters in and out of the module; costs one tree walk per call). Otherwise the trees are cached
            and refreshed after ``.to()``/``.cuda()``.

    Example:
        >>> m = TreeModule(ModelState.create({"w": torch.ones(2)}))
        >>> m(lambda p, b, x: (p["w"] * x).sum(), torch.ones(2))
        tensor(2., grad_fn=<SumBackward0>)
    """

    def __init__(self, model: ModelState, *, non_persistent: Iterable[str] = (), live: bool = False) -> None:
        super().__init__()
        self.live = live
        if not isinstance(model, ModelState):
            raise TypeError(f"TreeModule takes a ModelState, got {type(model).__name__}")
        register_tree(self, model.params, model.buffers, set(non_persistent), "")
        # Structure only (leaves None), so that the module holds no stale tensors after .to() replaced them.
        self._param_template = tree_map(lambda _: None, model.params)
        self._buffer_template = tree_map(lambda _: None, model.buffers)
        self._params_tree = model.params
        self._buffers_tree = model.buffers

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Returns ``fn(params, buffers, *args, **kwargs)`` with this module's registered tensors."""
        if self.live:
            return fn(read_tree(self, self._param_template, "param"), read_tree(self, self._buffer_template, "buffer"),
                      *args, **kwargs)
        return fn(self._params_tree, self._buffers_tree, *args, **kwargs)

    def model_state(self) -> ModelState:
        """The trees of the tensors registered now (after ``.to(device)`` or sharding replaced some of them)."""
        return ModelState(read_tree(self, self._param_template, "param"), read_tree(self, self._buffer_template, "buffer"))

    def _apply(self, fn: Callable, recurse: bool = True) -> TreeModule:
        # ``.to()``/``.cuda()``/``.float()`` replace buffer objects (and parameters too under
        # torch.__future__.set_overwrite_module_params_on_conversion): re-read the trees afterwards.
        out = super()._apply(fn, recurse)
        self._params_tree = read_tree(self, self._param_template, "param")
        self._buffers_tree = read_tree(self, self._buffer_template, "buffer")
        return out


class FunctionalOptimizerShim(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that steps a functional optimizer; for Fabric's precision plugins.

    ``param_groups[0]`` holds the parameter list (the state's own Parameters) and the current ``lr``;
    :attr:`opt_state` holds the functional state, which ``train_step`` sets before and reads after each step.
    ``torch.optim``'s own ``state`` dict stays empty: the optimizer state lives in :class:`TrainState`.
    """

    def __init__(self, params: list[torch.Tensor], optimizer: Any, names: Iterable[str] | None = None) -> None:
        super().__init__(list(params), {"lr": 0.0})
        self.functional = optimizer
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(len(params)))
        self.opt_state: dict | None = None

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("FunctionalOptimizerShim.step does not take a closure")
        if self.opt_state is None:
            raise RuntimeError("FunctionalOptimizerShim.step: no opt_state set; train_step sets it before stepping")
        group = self.param_groups[0]
        params = group["params"]
        active = trainable_indices(params)
        grads = collect_grads(params, self.names, active)
        self.opt_state = masked_update(self.functional, params, grads, self.opt_state, active, lr=group["lr"])


def trainable_indices(params: list[torch.Tensor]) -> list[int] | None:
    """Indices of the parameters that take gradients (``requires_grad``); ``None`` when all do (the fast path)."""
    flags = [p.requires_grad for p in params]
    return None if all(flags) else [i for i, flag in enumerate(flags) if flag]


def collect_grads(params: list[torch.Tensor], names: tuple[str, ...],
                  active: list[int] | None = None) -> list[torch.Tensor]:
    """``[p.grad for p in params]`` of the ``active`` parameters (all when ``None``), checked: functional optimizers
    update every parameter they are given, so a trainable parameter without a gradient is an error.

    A parameter with no local elements (an empty FSDP shard) and no gradient gets an empty zero gradient.

    Raises:
        RuntimeError: naming the trainable parameters that got no gradient.
    """
    indices = range(len(params)) if active is None else active
    grads = [params[i].grad for i in indices]
    if any(g is None for g in grads):
        grads = [torch.zeros_like(params[i]) if g is None and params[i].numel() == 0 else g
                 for i, g in zip(indices, grads)]
        missing = [names[i] for i, g in zip(indices, grads) if g is None]
        if missing:
            raise RuntimeError(f"no gradient for {len(missing)} trainable parameter(s): {missing[:8]}; the objective "
                               "must use every trainable parameter (freeze the unused ones with "
                               "requires_grad_(False), or leave them out of the params tree)")
    return grads


@attrs.frozen(eq=False)
class FabricRuntime:
    """What ``train_step`` needs from Fabric: the Fabric object, the wrapped module and the wrapped optimizer."""

    fabric: Any
    module: Any
    optimizer: Any
    shim: FunctionalOptimizerShim

    @property
    def rank(self) -> int:
        return self.fabric.global_rank


def setup_fabric(fabric: Any, model: ModelState | TrainState, optimizer: Any, *, rng: Any = 0,
                 data_seed: int = 0, non_persistent: Iterable[str] = ()) -> tuple[TrainState, FabricRuntime]:
    """Wraps a model state for Fabric and builds the :class:`TrainState` on Fabric's device.

    Args:
        fabric: a launched ``lightning_fabric.Fabric``.
        model: a fresh :class:`ModelState`, or an existing :class:`TrainState` to continue (it is consumed; its
            step, optimizer state, key and data position carry over).
        optimizer: the functional optimizer (``nemofn.optim``); its state is created after the parameters moved.
        rng, data_seed: the base key and shuffle seed of a fresh state (ignored when ``model`` is a TrainState).
        non_persistent: dotted buffer names to leave out of the module's ``state_dict()``.

    Returns:
        ``(state, runtime)``; pass ``runtime=runtime`` to ``train_step`` / ``eval_step``.
    """
    previous: TrainState | None = None
    if isinstance(model, TrainState):
        previous, model = model, model.model
        snapshot = previous.state_dict()
        previous.consume("setup_fabric")
    adapter = TreeModule(model, non_persistent=non_persistent, live=is_sharded(fabric))
    module = fabric.setup_module(adapter)
    model = adapter.model_state()
    shim = FunctionalOptimizerShim(model.param_list, optimizer, model.param_names)
    wrapped_opt = fabric.setup_optimizers(shim)
    state = TrainState.create(model, optimizer, rng=rng, data_seed=data_seed)
    if previous is not None:
        state.load_state_dict(snapshot)
    return state, FabricRuntime(fabric, module, wrapped_opt, shim)


def is_sharded(fabric: Any) -> bool:
    """Whether Fabric's strategy shards parameters (FSDP1 or FSDP2 through ``ModelParallelStrategy``)."""
    return type(fabric.strategy).__name__ in ("FSDPStrategy", "ModelParallelStrategy")


def _shard_root(module: nn.Module, device_mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, mesh=device_mesh["data_parallel"])
    return module


def fsdp2_strategy(world_size: int) -> Any:
    """Fabric's ``ModelParallelStrategy`` that applies FSDP2 ``fully_shard`` to the root TreeModule.

    Args:
        world_size: total processes (devices x nodes); all of them shard data-parallel (no tensor parallelism).
    """
    from lightning_fabric.strategies import ModelParallelStrategy

    return ModelParallelStrategy(_shard_root, data_parallel_size=world_size, tensor_parallel_size=1)
