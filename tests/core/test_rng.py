"""RngKey: deterministic derivation, independence of derived keys, generators and global seeding."""

from __future__ import annotations

import pytest
import torch

from nemofn.core.rng import RngKey, as_key


def test_fold_in_is_deterministic():
    a = RngKey(0).fold_in("encoder").fold_in(3)
    b = RngKey(0).fold_in("encoder").fold_in(3)
    assert a == b and hash(a) == hash(b)
    assert a.to_int() == b.to_int()
    assert RngKey(0).fold_in(3) == RngKey(0).fold_in("3")  # data is keyed by its string form


def test_derived_keys_are_distinct():
    root = RngKey(0)
    ints = {
        root.to_int(),
        root.fold_in("a").to_int(),
        root.fold_in("b").to_int(),
        root.fold_in("a").fold_in("b").to_int(),
        root.fold_in("b").fold_in("a").to_int(),
        RngKey(1).fold_in("a").to_int(),
        *(k.to_int() for k in root.split(4)),
    }
    assert len(ints) == 10
    assert all(0 <= i < 2**63 for i in ints)


def test_fold_in_does_not_change_the_parent():
    root = RngKey(5)
    root.fold_in("x")
    assert root.path == ()


def test_split():
    keys = RngKey(2).split(3)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert keys == RngKey(2).split(3)


def test_generators_are_independent_and_reproducible():
    k1, k2 = RngKey(0).fold_in("w1"), RngKey(0).fold_in("w2")
    a = torch.randn(1000, generator=k1.generator())
    assert torch.equal(a, torch.randn(1000, generator=k1.generator()))
    b = torch.randn(1000, generator=k2.generator())
    assert not torch.equal(a, b)
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.15


def test_generator_does_not_touch_global_state():
    state = torch.get_rng_state()
    RngKey(3).generator()
    torch.randn(5, generator=RngKey(3).generator())
    assert torch.equal(state, torch.get_rng_state())


def test_seed_global():
    key = RngKey(9).fold_in(17)
    key.seed_global()
    a = torch.rand(8)
    key.seed_global()
    assert torch.equal(a, torch.rand(8))
    assert torch.equal(a, torch.rand(8, generator=key.generator()))
    RngKey(9).fold_in(18).seed_global()
    assert not torch.equal(a, torch.rand(8))


def test_as_key():
    key = RngKey(1)
    assert as_key(key) is key
    assert as_key(4) == RngKey(4)
    for bad in (None, 1.5, True, "0"):
        with pytest.raises(TypeError, match="RngKey"):
            as_key(bad)
