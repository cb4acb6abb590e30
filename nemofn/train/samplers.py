"""Resumable, epoch-deterministic batch samplers: the one batching order of nemofn's training loop.

Samplers yield lists of dataset indices, one list per batch, for a DataLoader's ``batch_sampler``. The order of
epoch ``e`` is a pure function of ``(seed, e)`` (numpy ``default_rng([seed, e])``), never of the global RNGs, so a
resumed run sees exactly the batches the uninterrupted run would have: :meth:`EpochBatchSampler.set_position`
starts epoch ``e`` at its ``k``-th batch without loading the skipped ones.

With ``num_replicas > 1`` (DDP) each rank gets an equal number of batches: the sample order is padded by repeating
samples (as ``DistributedSampler``) and rank ``r`` takes every ``num_replicas``-th sample from position ``r``. Give
every rank the same seed.

- :class:`RandomBatchSampler`: a fresh permutation per epoch (``shuffle=True``, NeMo's default for training) or the
  dataset order (``shuffle=False``).
- :class:`SemiSortedBatchSampler`: NeMo's semi-sorted batching (``use_semi_sorted_batching``): samples sorted by
  duration plus uniform noise of width ``(max - min) * randomization_factor``, cut into batches of similar length,
  the batch order shuffled per epoch. Much less padding than random batches.

The protocol the training loop relies on (``nemofn.train.data.make_loader``): ``seed``, ``epoch``,
``batch_size``, ``num_replicas``, ``rank``, ``batches_per_epoch``, ``set_position(epoch, start_batch)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["EpochBatchSampler", "RandomBatchSampler", "SemiSortedBatchSampler", "is_resumable_sampler"]


def is_resumable_sampler(sampler: object) -> bool:
    """Whether ``sampler`` follows the resumable protocol above (so the loop can reuse it as it is)."""
    return all(hasattr(sampler, name) for name in ("seed", "epoch", "batch_size", "num_replicas", "rank",
                                                   "batches_per_epoch", "set_position"))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Base of the batch samplers: epoch and resume handling, DDP sharding, batch cutting.

    Subclasses implement :meth:`sample_order`, the global order of sample indices for an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if num_samples < 1:
            raise ValueError("the dataset is empty (for ASR data: check the manifest and its min_duration / max_duration "
                             "filters)")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0

    def sample_order(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's order of all sample indices, ``[num_samples]`` (before DDP padding)."""
        raise NotImplementedError

    def arrange_batches(self, batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        """The epoch's order of this rank's batches (identity by default)."""
        return batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch to iterate, and the batch to start at (to resume mid-epoch)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """The training loop's name for :meth:`set_epoch` (``nemofn.train.data`` sampler protocol)."""
        self.set_epoch(epoch, start_batch)

    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches each rank gets per epoch."""
        n = self.samples_per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch``, in order; a pure function of ``(seed, epoch)``."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self._pad(self.sample_order(rng), rng)
        local = order[self.rank :: self.num_replicas].tolist()
        batches = [local[i : i + self.batch_size] for i in range(0, len(local), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return self.arrange_batches(batches, np.random.default_rng([self.seed, epoch, 1]))

    def _pad(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        total = self.samples_per_rank() * self.num_replicas
        return np.resize(order, total) if total != len(order) else order

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.set_epoch(state["epoch"], state["start_batch"])


class RandomBatchSampler(EpochBatchSampler):
    """Batches of a fresh random permutation each epoch (``shuffle=True``) or of the manifest order.

    Args:
        num_samples: dataset size.
        batch_size: samples per batch.
        shuffle: permute the samples each epoch.
        seed: the shuffling seed (the same on every rank).
        drop_last: drop each rank's last, incomplete batch.
        num_replicas, rank: DDP world size and this process's rank.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        super().__init__(num_samples, batch_size, seed=seed, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
        self.shuffle = shuffle

    def sample_order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)


class SemiSortedBatchSampler(EpochBatchSampler):
    """NeMo's semi-sorted batching, made deterministic per ``(seed, epoch)``.

    Args:
        durations: seconds per sample, ``[N]``.
        batch_size: samples per batch.
        shuffle: shuffle the order of the batches each epoch (the samples inside a batch stay length-sorted).
        randomization_factor: noise width as a fraction of ``max - min`` duration (NeMo's default 0.1; 0 sorts
            strictly).
        seed, drop_last, num_replicas, rank: as :class:`RandomBatchSampler`.
    """

    def __init__(self, durations: Sequence[float] | np.ndarray, batch_size: int, *, shuffle: bool = True,
                 randomization_factor: float = 0.1, seed: int = 0, drop_last: bool = False, num_replicas: int = 1,
                 rank: int = 0):
        durations = np.asarray(durations, dtype=np.float64)
        super().__init__(len(durations), batch_size, seed=seed, drop_last=drop_last, num_replicas=num_replicas,
                         rank=rank)
        if randomization_factor < 0:
            raise ValueError(f"randomization_factor must be non-negative, got {randomization_factor}")
        self.durations = durations
        self.shuffle = shuffle
        self.randomization_factor = float(randomization_factor)
        self._noisy: np.ndarray | None = None

    def sample_order(self, rng: np.random.Generator) -> np.ndarray:
        half_width = (self.durations.max() - self.durations.min()) * self.randomization_factor / 2
        self._noisy = self.durations + rng.uniform(-half_width, half_width, size=len(self.durations))
        return np.argsort(self._noisy, kind="stable")

    def _pad(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        missing = self.samples_per_rank() * self.num_replicas - len(order)
        if not missing:
            return order
        # Repeat random samples, placed beside their originals so that batches stay length-sorted.
        padded = np.concatenate([order, order[rng.choice(len(order), size=missing, replace=missing > len(order))]])
        return padded[np.argsort(self._noisy[padded], kind="stable")]

    def arrange_batches(self, batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        if not self.shuffle:
            return batches
        return [batches[i] for i in rng.permutation(len(batches))]
