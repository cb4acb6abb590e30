"""``sync_batchnorm``: a no-op on one process; on 2 gloo ranks it equals one process on the whole batch.

The 2-rank check runs ``tests/nn/nemofn_sync_bn_worker.py`` under real DDP: rank ``r`` scales its loss to
``W * sum_{i in r} l_i / N`` so that DDP's averaged gradients are those of the single-process mean loss, and
reports its input gradient divided by ``W`` (the synced backward gives each rank the gradient of the sum of all
ranks' losses); see ``_train_steps`` there.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from nemofn.core.tree import tree_clone
from nemofn.nn import sync_batchnorm as sync_module
from nemofn.nn.norm import BatchNorm2d
from nemofn.nn.sync_batchnorm import active_sync, sync_batchnorm

ATOL = 1e-5


@pytest.fixture(scope="module")
def worker():
    """The rank worker module, imported by name from a folder the spawned children also have on ``sys.path``."""
    folder = str(Path(__file__).parent)
    with pytest.MonkeyPatch.context() as mp_patch:
        mp_patch.syspath_prepend(folder)
        yield importlib.import_module("nemofn_sync_bn_worker")


def _train_outputs(worker, x, target):
    params, buffers = worker.init_state()
    params = tree_clone(params)
    leaves = [p for module in params.values() for p in module.values()]
    for leaf in leaves:
        leaf.requires_grad_()
    x = x.clone().requires_grad_()
    y, new_buffers = worker.forward(params, buffers, x)
    worker.per_sample_loss(y, target).mean().backward()
    return y.detach(), new_buffers, [x.grad] + [leaf.grad for leaf in leaves]


def test_context_is_a_no_op_on_one_process(worker):
    x, target = worker.batches(4)[0]
    plain = _train_outputs(worker, x, target)
    with sync_batchnorm() as synced:
        assert not synced and active_sync() is None  # torch.distributed is not initialised here
        inside = _train_outputs(worker, x, target)
    assert torch.equal(plain[0], inside[0])
    for name in ("bn1", "bn2"):
        for key, value in plain[1][name].items():
            assert torch.equal(value, inside[1][name][key]), (name, key)
    for a, b in zip(plain[2], inside[2]):
        assert torch.equal(a, b)


def test_context_nests_restores_and_checks_its_group():
    sentinel = sync_module.SyncSpec(group=object(), world_size=2)
    sync_module._ACTIVE = sentinel  # as if an outer context had found 2 ranks
    try:
        with sync_batchnorm(enabled=False) as synced:
            assert not synced and active_sync() is None
        assert active_sync() is sentinel
        with pytest.raises(ValueError), sync_batchnorm(enabled=False):
            raise ValueError("boom")
        assert active_sync() is sentinel
    finally:
        sync_module._ACTIVE = None
    with pytest.raises(RuntimeError, match="init_process_group"), sync_batchnorm(process_group=object()):
        pass


def test_compiles_without_graph_breaks_when_not_synced():
    torch._dynamo.reset()
    module = BatchNorm2d(3, momentum=None)
    params, buffers = module.init(0)
    x = torch.randn(4, 3, 5, 2) * 2 + 1

    def step(p, b, inp):
        return module.apply(p, b, inp, train=True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with sync_batchnorm():
        y, new = compiled(params, buffers, x)
    y_ref, new_ref = step(params, buffers, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(new["running_var"], new_ref["running_var"])
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def two_rank_results(worker, tmp_path_factory):
    """Spawns 2 gloo ranks once; they run every scenario of the worker and save their results."""
    out = tmp_path_factory.mktemp("sync_bn")
    mp.start_processes(worker.run_rank, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return out


@pytest.mark.parametrize("scenario", ["unequal", "empty_rank"])
def test_two_gloo_ranks_equal_one_process_on_the_whole_batch(worker, two_rank_results, scenario):
    sizes = worker.SCENARIOS[scenario]
    ranks = [torch.load(two_rank_results / f"{scenario}_rank{r}.pt") for r in range(2)]
    params, buffers = worker.init_state()
    params = tree_clone(params)
    names = [f"{m}.{k}" for m, p in params.items() for k in p]
    leaves = [p for m in params.values() for p in m.values()]
    for leaf in leaves:
        leaf.requires_grad_()
    for step, (x, target) in enumerate(worker.batches(sum(sizes))):
        x = x.clone().requires_grad_()
        y, buffers = worker.forward(params, buffers, x)  # plain batch norm over the whole batch
        worker.per_sample_loss(y, target).mean().backward()
        start = 0
        for rank, n in enumerate(sizes):
            got = ranks[rank]
            torch.testing.assert_close(got["y"][step], y.detach()[start:start + n], rtol=0, atol=ATOL)
            torch.testing.assert_close(got["x_grad"][step], x.grad[start:start + n], rtol=0, atol=ATOL)
            for name, leaf in zip(names, leaves):
                torch.testing.assert_close(got["grads"][step][name], leaf.grad, rtol=0, atol=ATOL, msg=name)
            for key, value in got["buffers"][step].items():
                module, buf = key.split(".")
                torch.testing.assert_close(value, buffers[module][buf], rtol=0, atol=ATOL, msg=key)
            start += n
        # Every rank derives its running statistics from the same gathered numbers: bit-identical buffers.
        for key, value in ranks[0]["buffers"][step].items():
            assert torch.equal(value, ranks[1]["buffers"][step][key]), key
        assert int(ranks[0]["buffers"][step]["bn2.num_batches_tracked"]) == step + 1
        for leaf in leaves:
            leaf.grad = None
