"""Duration-sorted batches in the training loop: ``make_loader`` with a ``SemiSortedBatchSampler`` factory."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from nemofn.asr.data.batching import SemiSortedBatchSampler
from nemofn.train.data import make_loader


class _Durations(torch.utils.data.Dataset):
    def __init__(self, durations):
        self.durations = np.asarray(durations)

    def __len__(self):
        return len(self.durations)

    def __getitem__(self, i):
        return i


def _loader(ds, rank=0, world=1):
    factory = partial(SemiSortedBatchSampler, ds.durations, 4, shuffle=True, randomization_factor=0.1)
    return make_loader(ds, batch_size=4, seed=5, num_replicas=world, rank=rank, batch_sampler=factory,
                       collate_fn=lambda items: list(items))


def test_fit_loader_uses_sorted_batches_and_resumes_mid_epoch():
    ds = _Durations(np.random.default_rng(0).uniform(0.5, 5.0, size=37))
    loader = _loader(ds)
    sampler = loader.batch_sampler
    assert isinstance(sampler, SemiSortedBatchSampler) and sampler.batches_per_epoch == 10
    sampler.set_position(2, 0)
    full = list(loader)
    assert sorted(i for batch in full for i in batch) == list(range(37))
    spread = np.mean([np.ptp(ds.durations[b]) for b in full if len(b) > 1])
    assert spread < 0.5 * np.ptp(ds.durations)  # batches hold similar durations: little padding
    sampler.set_position(2, 6)
    assert list(loader) == full[6:]
    sampler.set_position(3, 0)
    assert list(loader) != full


def test_fit_loader_ranks_split_each_epoch():
    ds = _Durations(np.linspace(0.5, 5.0, 40))
    seen = []
    for rank in (0, 1):
        loader = _loader(ds, rank=rank, world=2)
        loader.batch_sampler.set_position(1, 0)
        seen.extend(i for batch in loader for i in batch)
    assert sorted(seen) == list(range(40))
