"""Deterministic, resumable, distributed batching for the training loop.

:class:`ResumableBatchSampler` yields one rank's batches of an epoch whose order is a pure function of
``(seed, epoch)``: the same permutation, padding and rank split as ``torch.utils.data.DistributedSampler``
(``randperm`` from a generator seeded with ``seed + epoch``; padded by repeating the head so every rank gets as
many samples; rank ``r`` takes every ``world``-th index from ``r``). :meth:`set_position` starts an epoch after
the batches a checkpoint already consumed, so a resumed run sees exactly the batches the uninterrupted run saw,
without loading the skipped ones.

:func:`make_loader` builds a ``DataLoader`` on that sampler from a map-style dataset, or rebuilds a given
``DataLoader`` (keeping its dataset, batch size, collate function, workers, pinning and ``drop_last``; its shuffle
flag comes from its sampler). The loader's ``generator``, which seeds worker processes, is reseeded from
``(seed, epoch)`` too. Randomness inside a dataset's ``__getitem__`` is only reproduced on resume if it depends on
the index alone; put training-time randomness (dither, SpecAugment, dropout) in the objective, which the step
seeds per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Sampler, SequentialSampler

__all__ = ["ResumableBatchSampler", "make_loader"]


class ResumableBatchSampler(Sampler[list[int]]):
    """One rank's batches of a deterministic epoch order, starting at any batch.

    Args:
        num_samples: the dataset's length.
        batch_size: samples per batch (per rank).
        shuffle: permute each epoch (``randperm`` seeded with ``seed + epoch``); else dataset order.
        seed: the shuffle seed.
        num_replicas: world size; ``rank``: this process's rank.
        drop_last: drop the last batch of the rank's share if it is smaller than ``batch_size``.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        if num_samples <= 0:
            raise ValueError(f"ResumableBatchSampler: the dataset is empty (num_samples={num_samples})")
        if batch_size <= 0:
            raise ValueError(f"ResumableBatchSampler: batch_size must be > 0, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableBatchSampler: rank {rank} is not in [0, {num_replicas})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.per_rank = math.ceil(num_samples / num_replicas)
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches one rank gets in a full epoch."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its batch ``start_batch`` on."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside epoch of {self.batches_per_epoch} batches; was "
                             "the checkpoint written with another batch size, dataset or number of devices?")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for ``epoch``, in order (equal to ``DistributedSampler``'s)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            indices = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            indices = list(range(self.num_samples))
        total = self.per_rank * self.num_replicas
        if total > len(indices):
            indices += (indices * math.ceil((total - len(indices)) / len(indices)))[: total - len(indices)]
        return indices[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.epoch_indices(self.epoch)
        bs = self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield indices[b * bs:(b + 1) * bs]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) & ((1 << 63) - 1)


class _EpochSeededLoader(DataLoader):
    """A ``DataLoader`` whose ``generator`` (worker seeds) is reseeded from ``(seed, epoch)`` at each ``iter``."""

    def __iter__(self):  # type: ignore[override]
        sampler = self.batch_sampler
        if hasattr(sampler, "seed") and hasattr(sampler, "epoch") and self.generator is not None:
            self.generator.manual_seed(_epoch_seed(sampler.seed, sampler.epoch))
        return super().__iter__()


def make_loader(data: Dataset | DataLoader, *, batch_size: int | None = None, shuffle: bool | None = None,
                seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool | None = None,
                collate_fn: Callable | None = None, num_workers: int | None = None,
                pin_memory: bool | None = None, batch_sampler: Callable[..., Any] | None = None) -> DataLoader:
    """A ``DataLoader`` over a :class:`ResumableBatchSampler`.

    Args:
        data: a map-style dataset, or a ``DataLoader`` to rebuild (explicit arguments override its settings).
        batch_size: per-rank batch size (required for a dataset).
        shuffle: default ``True`` for a dataset; for a loader, whether its sampler was a ``RandomSampler``.
        seed: shuffle seed. ``num_replicas``/``rank``: the data-parallel world.
        drop_last, collate_fn, num_workers, pin_memory: as ``DataLoader`` (defaults: the loader's, or torch's).
        batch_sampler: a factory ``(seed=, num_replicas=, rank=) -> sampler`` used instead of
            :class:`ResumableBatchSampler`, e.g. duration-bucketed batching. The sampler must be resumable: a pure
            function of ``(seed, epoch)`` with ``set_position(epoch, start_batch)``, ``batches_per_epoch`` and
            ``batch_size`` (``nemofn.asr.data.batching.SemiSortedBatchSampler`` is one).

    Raises:
        TypeError: for an iterable-style dataset, or a loader with a custom sampler (neither can resume exactly).
    """
    if isinstance(data, DataLoader):
        loader = data
        if isinstance(loader.dataset, IterableDataset):
            raise TypeError("the training loop needs a map-style dataset (len + __getitem__) to shuffle and resume "
                            "deterministically; got an IterableDataset")
        inner = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
        if not isinstance(inner, (RandomSampler, SequentialSampler)) and shuffle is None:
            raise TypeError(f"the DataLoader uses a custom sampler ({type(inner).__name__}), which cannot resume "
                            "exactly; pass the dataset instead (with batch_size= and shuffle=)")
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
        if isinstance(dataset, IterableDataset):
            raise TypeError("the training loop needs a map-style dataset (len + __getitem__) to shuffle and resume "
                            "deterministically; got an IterableDataset")
    if batch_size is None:
        raise ValueError("make_loader: batch_size is required")
    if batch_sampler is not None:
        sampler = batch_sampler(seed=seed, num_replicas=num_replicas, rank=rank)
    else:
        sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=True if shuffle is None else shuffle,
                                        seed=seed, num_replicas=num_replicas, rank=rank, drop_last=bool(drop_last))
    kwargs: dict[str, Any] = {"num_workers": num_workers or 0, "pin_memory": bool(pin_memory)}
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return _EpochSeededLoader(dataset, batch_sampler=sampler, generator=torch.Generator(), **kwargs)
