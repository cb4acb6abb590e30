"""Leaving a non-finite step out exactly, without stalling an accelerator: host branch on CPU, select on GPU.

A step whose loss or gradient norm is NaN or Inf must leave every parameter, buffer and optimizer-state tensor
bitwise as it was. The caller computes a 0-dim bool ``finite`` where the gradients are (:func:`all_finite`); how it
is used depends on where that is:

* **CPU**: operations run synchronously, so reading ``finite`` costs nothing. :class:`UpdateGuard` reads it and the
  caller simply does not run the update (``guard.run_update`` is false): no copies, no extra passes.
* **GPU** (any non-CPU device): reading it would make the host wait for the backward pass every step. Instead the
  tensors the update may write are copied first (:class:`Snapshot`), the update runs as usual, and each tensor then
  keeps either its new value or its copy, on the device (:func:`select_`). The select is exact for every value,
  NaN and Inf included: the tensors are viewed as integers of their width and combined as
  ``t * k + copy * (1 - k)`` with ``k`` in ``{0, 1}`` (one term is always 0: nothing overflows or rounds), three
  foreach kernels per device and dtype. Cost: one transient copy of the trainable parameters and their optimizer
  state (3x the parameters for Adam) and about five passes over them.

Host-resident state with device parameters (step counters a torch optimizer state dict put on the CPU; nemofn's
``adam``/``adamw`` keep them on the accelerator by default): those counters need ``finite`` on the host.
:class:`UpdateGuard` copies it asynchronously into pinned memory before the update is queued and waits for that
copy after: the host waits until the gradient norm is known, not for the update, which the device runs meanwhile.

An update that *creates* state (a ``None`` placeholder filled on a parameter's first update, e.g. SGD's momentum
buffers on step 0; an entry the optimizer adds) is undone by putting ``None`` back, which needs ``finite`` on the
host (a read, on such steps only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["all_finite", "Snapshot", "UpdateGuard", "select_"]

#: Use the device path (copies and select, no host read) on the CPU too. For tests, which have no GPU to run it on.
SELECT_ON_CPU = False


def _host_decides(finite: torch.Tensor) -> bool:
    return finite.device.type == "cpu" and not SELECT_ON_CPU


_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
             torch.bfloat16: torch.int16, torch.bool: torch.uint8}


def all_finite(*values: torch.Tensor | None) -> torch.Tensor:
    """0-dim bool tensor: every element of every given tensor is finite (``None`` entries are ignored).

    Stays on the device (no sync). A DTensor (a gradient norm under FSDP2) is first made whole with
    ``full_tensor()``, a collective: every rank must call this at the same point, as ``train_step`` does.
    """
    flags = []
    for v in values:
        if v is None:
            continue
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        flags.append(torch.isfinite(v.detach()).all())
    if not flags:
        raise ValueError("all_finite needs at least one tensor")
    out = flags[0]
    for f in flags[1:]:
        out = out & f.to(out.device)
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its storage); other tensors as they are."""
    return t.to_local() if hasattr(t, "to_local") else t


def _as_int(t: torch.Tensor) -> torch.Tensor:
    """``t``'s storage viewed as integers of the same width (exact for every float value, NaN included)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.view(_INT_VIEW[t.dtype]) if t.dtype in _INT_VIEW else t


@torch.no_grad()
def select_(finite: torch.Tensor, tensors: Sequence[torch.Tensor], copies: Sequence[torch.Tensor]) -> None:
    """In place, on the tensors' devices: ``tensors[i] = copies[i]`` where ``finite`` is false; exact.

    ``copies`` are overwritten (scratch afterwards). ``finite`` is moved to each tensor's device (free towards a
    GPU; towards the CPU a host read: :class:`UpdateGuard` keeps host-resident tensors away from here).
    """
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for t, c in zip(tensors, copies, strict=True):
        ti, ci = _as_int(_local(t)), _as_int(c)
        dst, src = groups.setdefault((ti.device, ti.dtype), ([], []))
        dst.append(ti)
        src.append(ci)
    moved: dict[torch.device, torch.Tensor] = {}
    for (device, dtype), (dst, src) in groups.items():
        if device not in moved:
            moved[device] = finite.to(device, non_blocking=True)
        keep = moved[device].to(dtype)
        torch._foreach_mul_(dst, keep)           # t * k
        torch._foreach_mul_(src, 1 - keep)       # copy * (1 - k)
        torch._foreach_add_(dst, src)            # one of the two is 0: exact, no overflow


@torch.no_grad()
def _restore(tensors: Sequence[torch.Tensor], copies: Sequence[torch.Tensor]) -> None:
    if tensors:
        torch._foreach_copy_([_local(t) for t in tensors], list(copies))


class _HostFlag:
    """``finite`` on the host: copied asynchronously (pinned memory + event) from a GPU when created, read later."""

    def __init__(self, finite: torch.Tensor) -> None:
        self.finite = finite
        self.event = None
        if finite.is_cuda:
            self.value = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.value.copy_(finite, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        elif finite.device.type == "cpu":
            self.value = finite
        else:
            self.value = None  # other accelerators: read when needed (a sync)

    def get(self) -> bool:
        if self.event is not None:
            self.event.synchronize()  # waits for the copy, queued before the update: not for the update
        return bool(self.value if self.value is not None else self.finite)


class Snapshot:
    """Copies of ``tensors`` (one foreach clone); :meth:`restore_unless` puts them back unless ``finite``.

    Args:
        tensors: tensors about to be written in place (DTensors: their local shards are copied).
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.copies = torch._foreach_clone([_local(t).detach() for t in self.tensors]) if self.tensors else []

    def restore_unless(self, finite: torch.Tensor | None) -> None:
        """``t = copy`` where ``finite`` is false (a host branch on the CPU, a device select elsewhere); the copies
        are consumed. ``None``: nothing to do."""
        if finite is not None and self.tensors:
            if _host_decides(finite):
                if not bool(finite):
                    _restore(self.tensors, self.copies)
            else:
                select_(finite, self.tensors, self.copies)
        self.tensors, self.copies = [], []


class UpdateGuard:
    """Makes one optimizer update a no-op, exactly, when ``finite`` is false (see the module doc).

    Usage::

        guard = UpdateGuard(finite, params, opt_state, active)
        if guard.run_update:                     # false only when the host already knows the step is bad (CPU)
            opt_state = masked_update(optimizer, params, grads, opt_state, active, lr=lr)
        opt_state = guard.settle(opt_state)

    Args:
        finite: 0-dim bool tensor where the gradients are (``None``: no guarding; the update always runs).
        params: all parameters, in the state's order.
        opt_state: the optimizer state dict of all parameters (updated in place by the update).
        active: indices of the parameters the update touches (``None``: all of them).
    """

    def __init__(self, finite: torch.Tensor | None, params: Sequence[torch.Tensor], opt_state: dict[str, Any],
                 active: Sequence[int] | None) -> None:
        self.finite = finite
        self.on_device = finite is not None and not _host_decides(finite)
        self.run_update = True if finite is None or self.on_device else bool(finite)
        self.opt_state = opt_state
        if not self.on_device:
            return
        n = len(params)
        indices = range(n) if active is None else active
        self.entries = dict(opt_state)  # the objects under each key before the update
        # (list, index, the object there before) for the per-parameter lists of the updated parameters.
        self.slots: list[tuple[list, int, Any]] = []
        tensors = [params[i] for i in indices]
        for value in opt_state.values():
            if isinstance(value, list):
                for i in (indices if len(value) == n else range(len(value))):
                    self.slots.append((value, i, value[i]))
                    if isinstance(value[i], torch.Tensor):
                        tensors.append(value[i])
            elif isinstance(value, torch.Tensor):
                tensors.append(value)
        on_host = [finite.device.type != "cpu" and _local(t).device.type == "cpu" for t in tensors]
        self.snapshot = Snapshot([t for t, host in zip(tensors, on_host) if not host])
        self.host_snapshot = Snapshot([t for t, host in zip(tensors, on_host) if host])
        self._host_flag = _HostFlag(finite) if self.host_snapshot.tensors else None

    def _keep_on_host(self) -> bool:
        if self._host_flag is None:
            self._host_flag = _HostFlag(self.finite)
        return self._host_flag.get()

    def settle(self, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keeps the update when ``finite`` is true, otherwise restores everything it changed; returns the state.

        Args:
            result: the state dict the update returned (``None``: the one given, updated in place).
        """
        opt_state = self.opt_state
        result = opt_state if result is None else result
        if not self.on_device:
            return result
        if result is not opt_state and self._keep_on_host():
            return result  # an optimizer that returned a new dict, and the step is kept
        replaced: list[tuple[torch.Tensor, torch.Tensor]] = []

        def settle_slot(now: Any, old: Any) -> Any:
            """The object a slot should hold: ``now`` if the step is kept, else ``old``."""
            if now is old:
                return now
            if isinstance(old, torch.Tensor) and isinstance(now, torch.Tensor) and now.shape == old.shape:
                replaced.append((now, old))  # an out-of-place update: the new tensor makes the same choice
                return now
            return now if self._keep_on_host() else old  # e.g. a filled None placeholder goes back to None

        for container, i, old in self.slots:
            container[i] = settle_slot(container[i], old)
        for key in list(opt_state):
            if key not in self.entries:
                if not self._keep_on_host():
                    del opt_state[key]  # an entry the update added
            elif opt_state[key] is not self.entries[key]:
                opt_state[key] = settle_slot(opt_state[key], self.entries[key])
        self.snapshot.restore_unless(self.finite)
        if self.host_snapshot.tensors and not self._keep_on_host():
            _restore(self.host_snapshot.tensors, self.host_snapshot.copies)
        if replaced:
            news = [now for now, _ in replaced]
            copies = torch._foreach_clone([_local(old).detach() for _, old in replaced])
            if self.finite.device.type != "cpu" and any(_local(t).device.type == "cpu" for t in news):
                if not self._keep_on_host():
                    _restore(news, copies)
            else:
                select_(self.finite, news, copies)
        return opt_state
