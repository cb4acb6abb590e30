"""Normalisation layers: ``BatchNorm1d`` / ``BatchNorm2d`` (with running statistics), ``LayerNorm``, ``GroupNorm``.

Params and buffers carry torch's names (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so NeMo's state-dict keys load unchanged. NeMo's Jasper blocks build
``BatchNorm1d(C, eps=1e-3, momentum=0.1)``; Conformer's conv module uses the default ``eps=1e-5``.

Synchronised batch norm (``trainer.sync_batchnorm``, ``nn.SyncBatchNorm``) is a setting of the training loop, not
of the module: inside ``with nemofn.nn.sync_batchnorm.sync_batchnorm():`` every ``BatchNorm*.apply(train=True)``
normalises with the statistics of all ranks' samples and updates the running statistics from them (see
:mod:`nemofn.nn.sync_batchnorm`). Outside the context, or on one process, batch norm is the plain per-rank one.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nemofn.nn.module import Module
from nemofn.nn.sync_batchnorm import SyncSpec, active_sync, sync_batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm"]


class _BatchNorm(Module):
    """Shared body of :class:`BatchNorm1d` / :class:`BatchNorm2d` (subclasses set ``_NDIMS``)."""

    _NDIMS: tuple[int, ...] = ()

    def init(self, rng):
        c = self.num_features
        params = {"weight": torch.ones(c), "bias": torch.zeros(c)} if self.affine else {}
        buffers = {
            "running_mean": torch.zeros(c),
            "running_var": torch.ones(c),
            "num_batches_tracked": torch.tensor(0, dtype=torch.long),
        }
        return params, buffers

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in self._NDIMS:
            raise ValueError(f"{type(self).__name__} expects a {' or '.join(f'{n}-D' for n in self._NDIMS)} "
                             f"input [B, C, ...], got shape {tuple(x.shape)}")

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[B, C]`` / ``[B, C, T]`` (1d) or ``[B, C, H, W]`` (2d) -> same shape.

        ``train=True`` normalises with the batch statistics and returns updated running statistics (torch's
        update: ``(1 - m) * running + m * batch`` with the unbiased batch variance, or the cumulative average
        when ``momentum is None``) and ``num_batches_tracked + 1``. The input buffers are not modified.
        ``train=False`` normalises with the running statistics and returns ``buffers`` unchanged.
        Inside an active :func:`~nemofn.nn.sync_batchnorm.sync_batchnorm` context, ``train=True`` uses the
        statistics of all ranks' batches (``nn.SyncBatchNorm``).
        """
        self._check_input(x)
        weight, bias = params.get("weight"), params.get("bias")
        if not train:
            y = F.batch_norm(x, buffers["running_mean"], buffers["running_var"], weight, bias, False, 0.0, self.eps)
            return y, buffers
        spec = active_sync()
        if spec is not None:
            return self._apply_synced(weight, bias, buffers, x, spec)
        count = buffers["num_batches_tracked"] + 1
        if self.momentum is not None:
            # F.batch_norm updates the running statistics in place, so hand it fresh copies.
            running_mean = buffers["running_mean"].clone()
            running_var = buffers["running_var"].clone()
            y = F.batch_norm(x, running_mean, running_var, weight, bias, True, self.momentum, self.eps)
        else:
            y = F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
            running_mean, running_var = self._cumulative_update(x, buffers, count)
        new_buffers = dict(buffers)
        new_buffers.update(running_mean=running_mean, running_var=running_var, num_batches_tracked=count)
        return y, new_buffers

    def _apply_synced(self, weight, bias, buffers, x: torch.Tensor, spec: SyncSpec):
        """Training forward with statistics over all ranks of ``spec.group``; running statistics follow
        ``nn.SyncBatchNorm``: global mean and unbiased global variance, factor ``momentum`` or ``1 / count``."""
        y, mean, var, total = sync_batch_norm(x, weight, bias, self.eps, spec)
        count = buffers["num_batches_tracked"] + 1
        with torch.no_grad():
            rm, rv = buffers["running_mean"], buffers["running_var"]
            factor = self.momentum if self.momentum is not None else 1.0 / count.to(mean.dtype)
            unbiased = var * (total / (total - 1))
            running_mean = (factor * mean + (1 - factor) * rm.to(mean.dtype)).to(rm.dtype)
            running_var = (factor * unbiased + (1 - factor) * rv.to(var.dtype)).to(rv.dtype)
        new_buffers = dict(buffers)
        new_buffers.update(running_mean=running_mean, running_var=running_var, num_batches_tracked=count)
        return y, new_buffers

    @staticmethod
    def _cumulative_update(x: torch.Tensor, buffers, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's ``momentum=None`` update: factor ``1 / num_batches_tracked`` (after the increment),
        computed as a tensor so no host sync happens."""
        with torch.no_grad():
            dims = [0, *range(2, x.dim())]
            xs = x.detach()
            mean = xs.mean(dim=dims)
            var = xs.var(dim=dims, correction=1)
            rm, rv = buffers["running_mean"], buffers["running_var"]
            factor = 1.0 / count.to(rm.dtype)
            new_mean = rm + (mean.to(rm.dtype) - rm) * factor
            new_var = rv + (var.to(rv.dtype) - rv) * factor
        return new_mean, new_var


@attrs.frozen
class BatchNorm1d(_BatchNorm):
    """Batch norm over ``[B, C]`` or ``[B, C, T]`` (``torch.nn.BatchNorm1d``).

    Params: ``weight [C]`` (ones), ``bias [C]`` (zeros) when ``affine``. Buffers: ``running_mean [C]`` (zeros),
    ``running_var [C]`` (ones), ``num_batches_tracked`` (int64 scalar, 0).
    """

    _NDIMS = (2, 3)

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True


@attrs.frozen
class BatchNorm2d(_BatchNorm):
    """Batch norm over ``[B, C, H, W]`` (``torch.nn.BatchNorm2d``); same state as :class:`BatchNorm1d`."""

    _NDIMS = (4,)

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True


def _shape_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"LayerNorm.normalized_shape must be an int or a sequence of ints, got {value!r}")


@attrs.frozen
class LayerNorm(Module):
    """Layer norm over the trailing ``normalized_shape`` dims (``torch.nn.LayerNorm``).

    Params: ``weight`` (ones), ``bias`` (zeros), both of ``normalized_shape``; no ``bias`` when ``bias=False``;
    none when ``elementwise_affine=False``.
    """

    normalized_shape: Any = attrs.field(converter=_shape_tuple)
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def init(self, rng):
        if not self.elementwise_affine:
            return {}, {}
        params = {"weight": torch.ones(self.normalized_shape)}
        if self.bias:
            params["bias"] = torch.zeros(self.normalized_shape)
        return params, {}

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[..., *normalized_shape]`` -> same shape."""
        return F.layer_norm(x, self.normalized_shape, params.get("weight"), params.get("bias"), self.eps), buffers


@attrs.frozen
class GroupNorm(Module):
    """Group norm over ``[B, C, *]`` with ``num_groups`` groups of channels (``torch.nn.GroupNorm``).

    NeMo's Jasper ``normalization="layer"`` is ``GroupNorm(1, C)`` and ``"instance"`` is ``GroupNorm(C, C)``.
    Params: ``weight [C]`` (ones), ``bias [C]`` (zeros) when ``affine``.
    """

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True

    def __attrs_post_init__(self) -> None:
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({self.num_channels}) must be divisible by num_groups "
                             f"({self.num_groups})")

    def init(self, rng):
        if not self.affine:
            return {}, {}
        return {"weight": torch.ones(self.num_channels), "bias": torch.zeros(self.num_channels)}, {}

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[B, C, *]`` -> same shape."""
        return F.group_norm(x, self.num_groups, params.get("weight"), params.get("bias"), self.eps), buffers
