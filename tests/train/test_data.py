"""make_loader: one resumable sampler for datasets and loaders, exact skipping on resume, reuse of resumable
loaders, and what cannot resume is refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from nemofn.train.data import limited_batches, make_loader
from nemofn.train.samplers import RandomBatchSampler, SemiSortedBatchSampler


def test_ranks_split_each_global_batch_of_the_single_process_order():
    single = RandomBatchSampler(32, 8, seed=1)
    ranks = [RandomBatchSampler(32, 4, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for b_single, b0, b1 in zip(single, *ranks):
        assert sorted(b_single) == sorted(b0 + b1)


def test_set_position_skips_consumed_batches():
    s = RandomBatchSampler(10, 3, seed=0)
    s.set_position(2)
    full = list(s)
    assert len(full) == s.batches_per_epoch == 4 and len(full[-1]) == 1
    s.set_position(2, start_batch=3)
    assert list(s) == full[3:] and len(s) == 1
    with pytest.raises(ValueError, match="start_batch"):
        s.set_position(0, start_batch=5)
    dropping = RandomBatchSampler(10, 3, drop_last=True)
    assert dropping.batches_per_epoch == 3 and all(len(b) == 3 for b in dropping)


def test_a_dataset_and_a_plain_loader_give_the_same_order_for_one_seed():
    ds = TensorDataset(torch.arange(20.0))
    a = make_loader(ds, batch_size=4, seed=7)
    b = make_loader(DataLoader(ds, batch_size=4, shuffle=True), seed=7)
    assert [x[0].tolist() for x in a] == [x[0].tolist() for x in b]
    assert isinstance(a.batch_sampler, RandomBatchSampler)


def test_make_loader_rebuilds_a_dataloader_and_rejects_what_cannot_resume():
    ds = TensorDataset(torch.arange(10.0))
    loader = make_loader(DataLoader(ds, batch_size=4, shuffle=False), seed=3)
    assert [b[0].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = make_loader(DataLoader(ds, batch_size=4, shuffle=True), seed=3)
    assert shuffled.batch_sampler.shuffle and shuffled.batch_sampler.batch_size == 4

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="map-style dataset"):
        make_loader(Stream(), batch_size=2)
    with pytest.raises(TypeError, match="custom sampler"):
        make_loader(DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=1, rank=0)))
    with pytest.raises(ValueError, match="batch_size is required"):
        make_loader(ds)


def test_a_loader_with_a_resumable_sampler_is_reused_for_its_rank_only():
    ds = TensorDataset(torch.arange(12.0))
    sampler = SemiSortedBatchSampler(torch.arange(12.0).numpy(), 3, seed=5, num_replicas=2, rank=1)
    given = DataLoader(ds, batch_sampler=sampler)
    loader = make_loader(given, num_replicas=2, rank=1)
    assert loader.batch_sampler is sampler
    assert [b[0].tolist() for b in loader] == [b[0].tolist() for b in given]
    with pytest.raises(ValueError, match="rank 1 of 2"):
        make_loader(given, num_replicas=1, rank=0)


def test_worker_seed_generator_is_reseeded_per_epoch():
    loader = make_loader(TensorDataset(torch.arange(6.0)), batch_size=2, seed=4)
    loader.batch_sampler.set_position(1)
    iter(loader)
    first = loader.generator.get_state()
    iter(loader)
    assert torch.equal(first, loader.generator.get_state())
    loader.batch_sampler.set_position(2)
    iter(loader)
    assert not torch.equal(first, loader.generator.get_state())


@pytest.mark.parametrize("limit,expected", [(None, 10), (3, 3), (30, 10), (0.25, 2), (0.01, 1), (0.0, 0), (1.0, 10)])
def test_limited_batches_follows_lightning(limit, expected):
    assert limited_batches(10, limit, "limit_train_batches") == expected


def test_limited_batches_rejects_bad_limits():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit_val_batches"):
            limited_batches(10, bad, "limit_val_batches")
