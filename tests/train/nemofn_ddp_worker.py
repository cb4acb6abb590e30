"""Worker of ``test_ddp.py`` (a plain module, so ``ddp_spawn`` children can import it by name).

Teardown: every spawned rank destroys its process group before returning (:func:`run_all`). Fabric registers no
teardown for gloo (only NCCL gets an ``atexit`` ``destroy_process_group``), and without one a rank sometimes aborts
at exit with "terminate called without an active exception" (SIGABRT, then ``ProcessExitedException`` in the
parent): gloo's ``pt_gloo_runloop`` thread drops its reference to the last collective's work object a moment after
the caller's ``wait()`` returned; freeing it decrefs the Python-owned tensors, which needs the GIL; if the main
thread has meanwhile reached interpreter finalisation, CPython ends the thread with ``pthread_exit``, whose forced
unwind through that C++ destructor calls ``std::terminate``. ``release_process_group`` destroys the group and collects
what still holds it, joining those threads while the interpreter is still fully alive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.core.tree import tree_clone
from nemofn.nn.activation import Activation
from nemofn.nn.linear import Linear
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.train.adapter import setup_fabric
from nemofn.train.loop import release_process_group
from nemofn.train.step import StepConfig, SupervisedObjective, train_step

NET = Sequential([Linear(3, 16), Activation("tanh"), Linear(16, 2)])


def gradient_worker(fabric) -> float:
    """Each rank backprops its own batch through the DDP-wrapped TreeModule; returns max |DDP grad - mean grad|."""
    step = StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), 1e-2)
    params, buffers = NET.init(RngKey(0))
    local = ModelState.create(tree_clone(params), tree_clone(buffers))
    state, runtime = setup_fabric(fabric, ModelState.create(params, buffers), step.optimizer)
    g = torch.Generator().manual_seed(100 + fabric.global_rank)  # different data on each rank
    x = torch.randn(8, 3, generator=g)
    batch = (x, x.flip(1)[:, :2] * 3)
    loss, _, _ = runtime.module(step.objective, batch, train=True, rng=state.rng)
    fabric.backward(loss)
    local_loss, _, _ = step.objective(local.params, local.buffers, batch, train=True, rng=state.rng)
    local_loss.backward()  # no DDP: this rank's own gradient
    worst = 0.0
    for p_ddp, p_local in zip(state.model.param_list, local.param_list):
        gathered = fabric.all_gather(p_local.grad)
        assert not torch.allclose(gathered[0], gathered[1])  # the ranks really had different gradients
        worst = max(worst, float((p_ddp.grad - gathered.mean(0)).abs().max()))
    return worst


def batchnorm_worker(fabric) -> tuple[float, float]:
    """Two train steps of Linear -> BatchNorm1d with different data per rank.

    Returns ``(a, b)``: ``a`` = max |rank 1's running_mean after step 2 - the update of *rank 0's* statistics after
    step 1 with rank 1's step-2 batch| (0 when DDP broadcast rank 0's buffers before the forward), and ``b`` = max
    |rank 0's - rank 1's running_mean| after step 2 (> 0: each rank updates its copy from its own batch).
    """
    from nemofn.nn.norm import BatchNorm1d

    net = Sequential([Linear(3, 4), BatchNorm1d(4, momentum=0.1)])
    step = StepConfig(SupervisedObjective(net, F.mse_loss), adamw(), 1e-2)
    state, runtime = setup_fabric(fabric, ModelState.create(*net.init(RngKey(0))), step.optimizer)
    g = torch.Generator().manual_seed(7 + fabric.global_rank)
    batches = [(torch.randn(16, 3, generator=g) * (1 + fabric.global_rank), torch.randn(16, 4, generator=g))
               for _ in range(2)]
    state, _ = train_step(state, batches[0], step, runtime=runtime)
    rank0_stats = fabric.broadcast(state.model.buffers["1"]["running_mean"].clone(), src=0)
    w, b = state.model.params["0"]["weight"].detach(), state.model.params["0"]["bias"].detach()
    expected = 0.9 * rank0_stats + 0.1 * (batches[1][0] @ w.T + b).mean(0)
    state, _ = train_step(state, batches[1], step, runtime=runtime)
    mine = state.model.buffers["1"]["running_mean"]
    both = fabric.all_gather(mine)
    return float((mine - expected).abs().max()), float((both[0] - both[1]).abs().max())


def run_all(fabric) -> dict[str, float]:
    """Both checks in one launch (spawning processes is the slow part); tears the process group down after."""
    try:
        grad_error = gradient_worker(fabric)
        from_rank0, ranks_apart = batchnorm_worker(fabric)
        # Rank 0 returns; gather rank 1's view of the broadcast check so the parent sees both.
        errors = fabric.all_gather(torch.tensor([grad_error, from_rank0]))
        return {"grad_error": float(errors[:, 0].max()), "bn_from_rank0": float(errors[:, 1].max()),
                "bn_ranks_apart": ranks_apart}
    finally:
        release_process_group()  # see the module docstring
