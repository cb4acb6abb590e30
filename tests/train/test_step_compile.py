"""``StepConfig(compile=True)``: same losses as eager, no graph breaks, no recompiles from step to step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState, TrainState
from nemofn.nn.activation import Activation
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.train.step import StepConfig, SupervisedObjective, eval_step, train_step

# No bias before BatchNorm: its true gradient is 0, and Adam would turn rounding noise there into full-size steps.
NET = Sequential([Linear(4, 16, bias=False), BatchNorm1d(16), Activation("relu"), Linear(16, 2)])
NET_DROPOUT = Sequential([Linear(4, 16), Activation("gelu"), Dropout(0.3), Linear(16, 2)])


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(32, 4, generator=g)
    return x, torch.stack([x.sum(1), x[:, 0] - x[:, 3]], dim=1)


def _run(net, compile: bool, steps: int = 3):
    cfg = StepConfig(SupervisedObjective(net, F.mse_loss), adamw(), 1e-2, clip_grad_norm=1.0, compile=compile)
    state = TrainState.create(ModelState.create(*net.init(RngKey(0))), cfg.optimizer, rng=RngKey(1))
    losses = []
    for i in range(steps):
        state, m = train_step(state, _batch(i), cfg)
        losses.append(m["loss"])
    return state, torch.stack(losses), cfg


def test_compiled_steps_match_eager_and_do_not_recompile():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_state, eager_losses, _ = _run(NET, compile=False)
    compiled_state, compiled_losses, cfg = _run(NET, compile=True, steps=1)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    with torch._dynamo.config.patch(error_on_recompile=True):  # steps 2..n reuse the graph: same key, new lr
        for i in range(1, 3):
            compiled_state, m = train_step(compiled_state, _batch(i), cfg)
            compiled_losses = torch.cat([compiled_losses, m["loss"][None]])
    assert torch.allclose(compiled_losses, eager_losses, rtol=0, atol=1e-5)
    for a, b in zip(eager_state.model.param_list + eager_state.model.buffer_list,
                    compiled_state.model.param_list + compiled_state.model.buffer_list):
        assert torch.allclose(a.float(), b.float(), rtol=0, atol=1e-5)
    eval_eager = eval_step(eager_state, _batch(9), cfg)["loss"]
    assert torch.allclose(eval_step(compiled_state, _batch(9), cfg)["loss"], eval_eager, atol=1e-5)


def test_no_graph_breaks_on_the_hot_path_with_dropout():
    torch._dynamo.reset()
    objective = SupervisedObjective(NET_DROPOUT, F.mse_loss)
    model = ModelState.create(*NET_DROPOUT.init(RngKey(0)))
    report = torch._dynamo.explain(objective)(model.params, model.buffers, _batch(0), train=True, rng=RngKey(1))
    assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons
    # And the compiled train step (fullgraph=True by default) runs dropout for several steps without recompiling.
    _, _, cfg = _run(NET_DROPOUT, compile=True, steps=1)
    assert cfg.compile_options == {"fullgraph": True}
    state = TrainState.create(ModelState.create(*NET_DROPOUT.init(RngKey(0))), cfg.optimizer, rng=RngKey(1))
    state, _ = train_step(state, _batch(0), cfg)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(1, 4):
            state, m = train_step(state, _batch(i), cfg)
    assert torch.isfinite(m["loss"])
