"""The resumable, epoch-deterministic batch samplers (one implementation for the loop and the ASR loaders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemofn.asr.data import batching
from nemofn.train.samplers import RandomBatchSampler, SemiSortedBatchSampler, is_resumable_sampler


def test_asr_batching_reexports_the_same_classes():
    assert batching.RandomBatchSampler is RandomBatchSampler
    assert batching.SemiSortedBatchSampler is SemiSortedBatchSampler
    assert is_resumable_sampler(RandomBatchSampler(4, 2)) and not is_resumable_sampler(object())


@pytest.mark.parametrize("make", [
    lambda **kw: RandomBatchSampler(103, 8, shuffle=True, **kw),
    lambda **kw: SemiSortedBatchSampler(np.random.default_rng(0).uniform(1, 15, 103), 8, **kw),
])
def test_order_is_a_pure_function_of_seed_and_epoch(make):
    a, b = make(seed=3), make(seed=3)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != make(seed=4).epoch_batches(0)
    # iterating does not depend on the global RNGs
    torch.manual_seed(123)
    np.random.seed(123)
    a.set_epoch(2)
    first = list(a)
    torch.manual_seed(999)
    np.random.seed(999)
    assert list(a) == first == b.epoch_batches(2)
    assert sorted(i for batch in first for i in batch) == list(range(103))
    assert len(a) == len(first) == 13


@pytest.mark.parametrize("make", [
    lambda: RandomBatchSampler(50, 4, seed=1),
    lambda: SemiSortedBatchSampler(np.arange(50) % 11 + 1.0, 4, seed=1),
])
def test_resume_mid_epoch_gives_the_rest_of_the_epoch(make):
    full = make()
    full.set_epoch(5)
    expected = list(full)
    resumed = make()
    resumed.load_state_dict({"seed": 1, "epoch": 5, "start_batch": 4})
    assert list(resumed) == expected[4:]
    assert len(resumed) == len(expected) - 4
    assert resumed.state_dict() == {"seed": 1, "epoch": 5, "start_batch": 4}
    with pytest.raises(ValueError, match="seed"):
        make().load_state_dict({"seed": 2, "epoch": 0, "start_batch": 0})


def test_unshuffled_random_sampler_keeps_manifest_order():
    sampler = RandomBatchSampler(10, 4, shuffle=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(RandomBatchSampler(10, 4, shuffle=False, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("make", [
    lambda rank: RandomBatchSampler(23, 4, seed=0, num_replicas=3, rank=rank),
    lambda rank: SemiSortedBatchSampler(np.linspace(1, 9, 23), 4, seed=0, num_replicas=3, rank=rank),
])
def test_ranks_get_equal_counts_and_cover_every_sample(make):
    per_rank = [make(rank).epoch_batches(0) for rank in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == 24 and set(seen) == set(range(23))


def test_semi_sorted_batches_have_similar_durations():
    durations = np.random.default_rng(1).uniform(1, 20, 400)
    padding = {}
    for name, sampler in [("random", RandomBatchSampler(400, 16, seed=0)),
                          ("semi", SemiSortedBatchSampler(durations, 16, seed=0))]:
        padding[name] = sum(len(b) * durations[b].max() - durations[b].sum() for b in sampler.epoch_batches(0))
    assert padding["semi"] < 0.2 * padding["random"]
    strict = SemiSortedBatchSampler(durations, 16, randomization_factor=0.0, shuffle=False).epoch_batches(0)
    flat = [i for b in strict for i in b]
    assert np.all(np.diff(durations[flat]) >= 0)


def test_semi_sorted_shuffles_batch_order_per_epoch():
    sampler = SemiSortedBatchSampler(np.linspace(1, 10, 64), 8, seed=0, randomization_factor=0.0)
    e0, e1 = sampler.epoch_batches(0), sampler.epoch_batches(1)
    assert sorted(map(sorted, e0)) == sorted(map(sorted, e1)) and e0 != e1


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        RandomBatchSampler(0, 4)
    with pytest.raises(ValueError, match="rank"):
        RandomBatchSampler(10, 4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="randomization_factor"):
        SemiSortedBatchSampler([1.0, 2.0], 1, randomization_factor=-1)
    with pytest.raises(ValueError, match="start_batch"):
        RandomBatchSampler(10, 4).set_epoch(0, start_batch=4)
