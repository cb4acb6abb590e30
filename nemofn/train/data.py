"""Deterministic, resumable, distributed data loading for the training loop.

:func:`make_loader` gives a ``DataLoader`` whose ``batch_sampler`` follows the resumable protocol of
:mod:`nemofn.train.samplers` (one implementation for the whole project): the order of an epoch is a pure function
of ``(seed, epoch)`` and ``set_position(epoch, start_batch)`` starts an epoch after the batches a checkpoint already
consumed, so a resumed run sees exactly the batches the uninterrupted run saw, without loading the skipped ones.

Accepted inputs: a map-style dataset (batched with a :class:`~nemofn.train.samplers.RandomBatchSampler`, or the
sampler a ``batch_sampler`` factory builds); a ``DataLoader`` that already has a resumable batch sampler for this
rank (kept as it is: e.g. the loaders nemofn's ASR data configs build); or a plain ``DataLoader`` with a random or
sequential sampler (rebuilt on a :class:`RandomBatchSampler`, keeping its dataset, batch size, collate function,
workers, pinning and ``drop_last``). The loader's ``generator``, which seeds worker processes, is reseeded from
``(seed, epoch)`` too. Randomness inside a dataset's ``__getitem__`` is only reproduced on resume if it depends on
the index alone; put training-time randomness (dither, SpecAugment, dropout) in the objective, which the step
seeds per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

from nemofn.train.samplers import RandomBatchSampler, is_resumable_sampler

__all__ = ["make_loader", "limited_batches", "to_device"]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) & ((1 << 63) - 1)


class _EpochSeededLoader(DataLoader):
    """A ``DataLoader`` whose ``generator`` (worker seeds) is reseeded from ``(seed, epoch)`` at each ``iter``."""

    def __iter__(self):  # type: ignore[override]
        sampler = self.batch_sampler
        if hasattr(sampler, "seed") and hasattr(sampler, "epoch") and self.generator is not None:
            self.generator.manual_seed(_epoch_seed(sampler.seed, sampler.epoch))
        return super().__iter__()


def _check_map_style(dataset: Any) -> None:
    if isinstance(dataset, IterableDataset):
        raise TypeError("the training loop needs a map-style dataset (len + __getitem__) to shuffle and resume "
                        "deterministically; got an IterableDataset")


def _reuse(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """A loader whose batch sampler is already resumable: checked against this rank, then wrapped so worker seeds
    follow ``(seed, epoch)`` as well."""
    sampler = loader.batch_sampler
    if (sampler.num_replicas, sampler.rank) != (num_replicas, rank):
        raise ValueError(f"the data loader was built for rank {sampler.rank} of {sampler.num_replicas}, but this "
                         f"process is rank {rank} of {num_replicas}; build the loader after the trainer knows the "
                         "world size (NeMo models do so when the trainer is passed to the constructor)")
    if isinstance(loader, _EpochSeededLoader):
        return loader
    return _EpochSeededLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn,
                              num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                              worker_init_fn=loader.worker_init_fn, generator=torch.Generator(),
                              persistent_workers=loader.persistent_workers if loader.num_workers else False)


def make_loader(data: Dataset | DataLoader, *, batch_size: int | None = None, shuffle: bool | None = None,
                seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool | None = None,
                collate_fn: Callable | None = None, num_workers: int | None = None,
                pin_memory: bool | None = None, batch_sampler: Callable[..., Any] | None = None) -> DataLoader:
    """A ``DataLoader`` over a resumable batch sampler (see the module doc).

    Args:
        data: a map-style dataset, or a ``DataLoader`` (reused when its batch sampler is resumable; otherwise
            rebuilt, and explicit arguments override its settings).
        batch_size: per-rank batch size (required for a dataset).
        shuffle: default ``True`` for a dataset; for a loader, whether its sampler was a ``RandomSampler``.
        seed: shuffle seed. ``num_replicas``/``rank``: the data-parallel world.
        drop_last, collate_fn, num_workers, pin_memory: as ``DataLoader`` (defaults: the loader's, or torch's).
        batch_sampler: a factory ``(seed=, num_replicas=, rank=) -> sampler`` used instead of
            :class:`RandomBatchSampler`, e.g. duration-bucketed batching; the sampler must follow the resumable
            protocol of :mod:`nemofn.train.samplers`.

    Raises:
        TypeError: for an iterable-style dataset, or a loader with a custom sampler (neither can resume exactly).
        ValueError: a reused loader built for another rank / world size; no batch size.
    """
    if isinstance(data, DataLoader):
        loader = data
        _check_map_style(loader.dataset)
        if loader.batch_sampler is not None and is_resumable_sampler(loader.batch_sampler) and batch_sampler is None:
            return _reuse(loader, num_replicas, rank)
        inner = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
        if not isinstance(inner, (RandomSampler, SequentialSampler)) and shuffle is None:
            raise TypeError(f"the DataLoader uses a custom sampler ({type(inner).__name__}), which cannot resume "
                            "exactly; pass the dataset instead (with batch_size= and shuffle=), or give the loader a "
                            "resumable batch sampler (nemofn.train.samplers)")
        dataset = loader.dataset
        batch_size = batch_size if batch_size is not None else loader.batch_size
        if batch_size is None and loader.batch_sampler is not None:
            batch_size = getattr(loader.batch_sampler, "batch_size", None)
        shuffle = shuffle if shuffle is not None else isinstance(inner, RandomSampler)
        drop_last = drop_last if drop_last is not None else loader.drop_last
        collate_fn = collate_fn if collate_fn is not None else loader.collate_fn
        num_workers = num_workers if num_workers is not None else loader.num_workers
        pin_memory = pin_memory if pin_memory is not None else loader.pin_memory
    else:
        dataset = data
        _check_map_style(dataset)
    if batch_sampler is not None:
        sampler = batch_sampler(seed=seed, num_replicas=num_replicas, rank=rank)
    else:
        if batch_size is None:
            raise ValueError("make_loader: batch_size is required")
        sampler = RandomBatchSampler(len(dataset), batch_size, shuffle=True if shuffle is None else shuffle,
                                     seed=seed, num_replicas=num_replicas, rank=rank, drop_last=bool(drop_last))
    kwargs: dict[str, Any] = {"num_workers": num_workers or 0, "pin_memory": bool(pin_memory)}
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return _EpochSeededLoader(dataset, batch_sampler=sampler, generator=torch.Generator(), **kwargs)


def limited_batches(available: int, limit: int | float | None, what: str) -> int:
    """Lightning's ``limit_*_batches``: an int caps the batches, a float in ``[0, 1]`` takes that fraction
    (``int(available * limit)``, at least 1 when ``limit > 0``); ``None`` means all of them.

    Raises:
        ValueError: a negative limit or a float above 1 (naming ``what``, e.g. ``limit_train_batches``).
    """
    if limit is None:
        return available
    if isinstance(limit, bool) or limit < 0 or (isinstance(limit, float) and limit > 1.0):
        raise ValueError(f"{what}={limit!r}: use an int number of batches or a float fraction in [0.0, 1.0]")
    if isinstance(limit, float):
        if limit == 1.0:
            return available
        return 0 if limit == 0.0 else max(1, int(available * limit))
    return min(available, int(limit))


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor (inside tuples, named tuples, lists and dicts) on ``device``; other leaves pass
    through, and tensors already there are returned as they are.

    Host-to-CUDA copies are non-blocking: asynchronous from pinned memory (``pin_memory: true`` in a data config),
    staged and still correct from pageable memory.
    """
    device = torch.device(device)
    non_blocking = device.type == "cuda"

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x if x.device == device else x.to(device, non_blocking=non_blocking)
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*(move(v) for v in x))
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        if isinstance(x, dict):
            return type(x)((k, move(v)) for k, v in x.items())
        return x

    return move(batch)
