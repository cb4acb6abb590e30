"""ResumableBatchSampler: DistributedSampler's order, exact skipping on resume; make_loader's checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from nemofn.train.data import ResumableBatchSampler, make_loader


@pytest.mark.parametrize("n,world,shuffle", [(23, 1, True), (23, 2, True), (23, 3, False), (7, 4, True)])
def test_rank_order_equals_distributed_sampler(n, world, shuffle):
    data = list(range(n))
    for rank in range(world):
        ours = ResumableBatchSampler(n, 4, shuffle=shuffle, seed=5, num_replicas=world, rank=rank)
        ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
        for epoch in (0, 3):
            ref.set_epoch(epoch)
            ours.set_position(epoch)
            assert [i for batch in ours for i in batch] == list(ref)


def test_ranks_split_each_global_batch_of_the_single_process_order():
    single = ResumableBatchSampler(32, 8, seed=1)
    ranks = [ResumableBatchSampler(32, 4, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for b_single, b0, b1 in zip(single, *ranks):
        assert sorted(b_single) == sorted(b0 + b1)


def test_set_position_skips_consumed_batches():
    s = ResumableBatchSampler(10, 3, seed=0)
    s.set_position(2)
    full = list(s)
    assert len(full) == s.batches_per_epoch == 4 and len(full[-1]) == 1
    s.set_position(2, start_batch=3)
    assert list(s) == full[3:] and len(s) == 1
    with pytest.raises(ValueError, match="another batch size"):
        s.set_position(0, start_batch=5)
    dropping = ResumableBatchSampler(10, 3, drop_last=True)
    assert dropping.batches_per_epoch == 3 and all(len(b) == 3 for b in dropping)


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
