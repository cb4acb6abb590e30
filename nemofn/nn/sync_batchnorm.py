"""Synchronised batch statistics for :class:`~nemofn.nn.norm.BatchNorm1d` / ``BatchNorm2d`` under data parallelism.

NeMo configs set ``trainer.sync_batchnorm: true``; Lightning honours it by swapping every ``nn.BatchNorm*``
submodule for ``nn.SyncBatchNorm``. nemofn's batch norm is a pure function with no submodule to swap, so syncing
is a setting of the training loop instead (like precision)::

    with sync_batchnorm():                       # or sync_batchnorm(process_group=group, enabled=cfg.flag)
        loss, new_buffers = objective(params, buffers, batch, train=True)
    fabric.backward(loss)

Inside the context every ``BatchNorm*.apply(..., train=True)`` normalises with the statistics of the *global*
batch, the union of all ranks' samples, exactly as ``nn.SyncBatchNorm`` does:

* Forward: each rank computes its per-channel mean, biased variance and element count (in float32 for
  half/bfloat16 inputs, as torch does), one ``all_gather`` exchanges them, and every rank merges them with the
  parallel-variance formula (Chan et al.), so ranks with different batch sizes are weighted by their counts and
  no sum-of-squares cancellation occurs. The output is ``(x - mean) / sqrt(var + eps) * weight + bias`` with the
  global biased variance, in the input's dtype.
* Running statistics: ``running = (1 - m) * running + m * batch`` with the global mean and the global *unbiased*
  variance (``var * N / (N - 1)``, ``N`` the global count per channel); ``m`` is ``momentum``, or
  ``1 / num_batches_tracked`` (after the increment) when ``momentum is None``, as in ``nn.SyncBatchNorm``. All
  ranks compute bit-identical buffers.
* Backward: the per-channel sums of ``dy`` and ``dy * x_hat`` are all-reduced (one ``all_reduce``), so each
  rank's input gradient is the gradient of the *sum of all ranks' losses*; the weight/bias gradients stay local
  and the DDP/Fabric gradient averaging adds them up, as with ``nn.SyncBatchNorm``. Consequently, with DDP's
  averaging (which divides by the world size ``W``), the objective the ranks jointly minimise is
  ``(1 / W) * sum_r loss_r``: a per-rank mean loss gives the single-process gradient when all ranks hold equal
  batch sizes.

The collectives are plain ``torch.distributed`` calls inside one ``torch.autograd.Function`` (torch's own CPU
build has no kernels for ``torch.batch_norm_stats`` / ``batch_norm_gather_stats_with_counts``, and
``torch.distributed.nn.functional.all_reduce`` is deprecated and refuses ``torch.compile``), so it runs on gloo
(CPU or CUDA tensors) and NCCL alike, and it saves only the input for backward, like the native kernel.

The context is a no-op (bit-identical to plain batch norm) when ``torch.distributed`` is not initialised, when the
group has one process, or with ``enabled=False``; it is resolved once, on entry. It has no effect in evaluation
(``train=False``). The setting is a process-wide flag read at each call, so a ``torch.compile``d step specialises
on it (a recompile when it changes); with sync on, the synced call runs eagerly as a graph break
(``torch.compiler.disable``), the rest of the step stays compiled. Nested contexts restore the outer setting.
Each synced call is a collective: every rank must make the same batch-norm calls in the same order (as with
``nn.SyncBatchNorm``), and only the forward needs the context: the backward finds the group in the autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["sync_batchnorm", "active_sync", "SyncSpec", "sync_batch_norm"]


@attrs.frozen
class SyncSpec:
    """Where batch statistics are synchronised: the process ``group`` and its ``world_size`` (> 1)."""

    group: Any
    world_size: int


_ACTIVE: SyncSpec | None = None


def active_sync() -> SyncSpec | None:
    """The :class:`SyncSpec` of the innermost active :func:`sync_batchnorm` context, or ``None`` (no sync)."""
    return _ACTIVE


def _resolve(process_group: Any) -> SyncSpec | None:
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("sync_batchnorm(process_group=...) was given a group but torch.distributed is not "
                               "initialised; call torch.distributed.init_process_group (Fabric does it at launch)")
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    world_size = dist.get_world_size(group)
    if world_size < 2:
        return None
    _eager_entry()  # built here, outside any compiled region (it imports torch._dynamo)
    return SyncSpec(group, world_size)


@contextlib.contextmanager
def sync_batchnorm(process_group: Any = None, *, enabled: bool = True) -> Iterator[bool]:
    """Within the ``with`` block, training-mode batch norm uses statistics synchronised over ``process_group``.

    Args:
        process_group: the ``torch.distributed`` group to synchronise over (default: the whole world).
        enabled: ``False`` makes the block a no-op (and switches off an enclosing context), so a loop can write
            ``with sync_batchnorm(enabled=config.sync_batchnorm):``.

    Yields:
        whether statistics are really synchronised (``False`` on one process or without ``torch.distributed``).
    """
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = _resolve(process_group) if enabled else None
    try:
        yield _ACTIVE is not None
    finally:
        _ACTIVE = previous


def _view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[C]`` -> ``[1, C, 1, ...]`` for broadcasting against an ``ndim``-D ``[B, C, ...]`` tensor."""
    return t.view(1, -1, *([1] * (ndim - 2)))


class _SyncBatchNormFn(torch.autograd.Function):
    """``y = BN(x)`` with global statistics; also returns the (non-differentiable) global mean, biased variance
    and element count per channel, for the running-statistics update."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, world_size):  # type: ignore[override]
        channels = x.shape[1]
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        local_count = x.numel() // channels
        if local_count > 0:
            dims = [0, *range(2, x.dim())]
            var_l, mean_l = torch.var_mean(x.to(stat_dtype), dim=dims, correction=0)
        else:  # an empty shard still joins the collectives; its zero count drops it from the merge
            mean_l = var_l = x.new_zeros(channels, dtype=stat_dtype)
        local = torch.cat([mean_l, var_l, mean_l.new_full((1,), float(local_count))])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        table = torch.stack(gathered)  # [W, 2C + 1]: each rank's mean, biased variance, count
        means, variances, counts = table[:, :channels], table[:, channels:-1], table[:, -1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        # The mixed-dtype kernels want float32 parameters with half/bfloat16 inputs.
        w = weight.to(stat_dtype) if weight is not None else None
        b = bias.to(stat_dtype) if bias is not None else None
        y = F.batch_norm(x, mean, var, w, b, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, var, total)
        ctx.eps, ctx.group = eps, group
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_total):  # type: ignore[override]
        x, weight, mean, var, total = ctx.saved_tensors
        channels, ndim, stat_dtype = x.shape[1], x.dim(), mean.dtype
        w = weight.to(stat_dtype) if weight is not None else torch.ones(channels, dtype=stat_dtype, device=x.device)
        if x.numel() > 0:
            # Eval-mode native backward: its weight/bias gradients are this rank's sum(dy * x_hat) and sum(dy).
            _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
                grad_y, x, w, mean, var, None, None, False, ctx.eps, [False, True, True])
        else:
            sum_dy_xhat = sum_dy = torch.zeros(channels, dtype=stat_dtype, device=x.device)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the same on every rank, so the collective stays matched
            sums = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(sums, group=ctx.group)
            invstd = torch.rsqrt(var + ctx.eps)
            scale = w * invstd
            mean_dy = sums[:channels] / total
            mean_dy_xhat = sums[channels:] / total
            centered = x.to(stat_dtype) - _view(mean, ndim)
            grad_x = (grad_y.to(stat_dtype) - _view(mean_dy, ndim)) * _view(scale, ndim)
            grad_x = grad_x - centered * _view(scale * invstd * mean_dy_xhat, ndim)
            grad_x = grad_x.to(x.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sum_dy_xhat.to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = sum_dy.to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def _sync_batch_norm(x, weight, bias, eps, group, world_size):
    return _SyncBatchNormFn.apply(x, weight, bias, eps, group, world_size)


_EAGER_ENTRY: Any = None


def _eager_entry() -> Any:
    """:func:`_sync_batch_norm` wrapped in ``torch.compiler.disable`` (a graph break under ``torch.compile``).

    Built on first use rather than at import: the decorator imports ``torch._dynamo`` (seconds), which a
    single-process inference import of the norm layers should not pay.
    """
    global _EAGER_ENTRY
    if _EAGER_ENTRY is None:
        _EAGER_ENTRY = torch.compiler.disable(_sync_batch_norm)
    return _EAGER_ENTRY


def sync_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                          spec: SyncSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode batch norm over the union of the ranks' batches.

    Args:
        x: ``[B, C, *]`` this rank's input (``B`` may differ between ranks, and may be 0).
        weight, bias: ``[C]`` or ``None``.
        eps: added to the variance.
        spec: the :class:`SyncSpec` (from :func:`active_sync`).

    Returns:
        ``(y, mean, var, count)``: ``y`` like ``x``; the global per-channel ``mean [C]`` and biased ``var [C]``
        (float32 for half/bfloat16 inputs, not differentiable); ``count`` the global number of elements per
        channel (0-D, float).
    """
    return _eager_entry()(x, weight, bias, eps, spec.group, spec.world_size)
