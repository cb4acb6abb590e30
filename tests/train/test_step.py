"""train_step / eval_step without a loop: same maths as a plain torch loop, accumulation, clipping, RNG, guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.state import ConsumedStateError, ModelState, TrainState
from nemofn.nn.activation import Activation
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.optim.sgd import sgd
from nemofn.train.step import MicroBatches, StepConfig, SupervisedObjective, eval_step, train_step

MLP = Sequential([Linear(3, 8), Activation("tanh"), Linear(8, 2)])


def _batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, torch.stack([x.sum(1), x[:, 0] * x[:, 1]], dim=1)


def _state(net=MLP, opt=None, seed=0) -> TrainState:
    return TrainState.create(ModelState.create(*net.init(RngKey(seed))), opt or adamw(), rng=RngKey(1))


def test_matches_a_plain_torch_module_and_torch_optim_loop():
    cfg = StepConfig(SupervisedObjective(MLP, F.mse_loss), adamw(weight_decay=0.1), 3e-2, clip_grad_norm=0.5)
    state = _state(opt=cfg.optimizer)
    ref = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    ref.load_state_dict(state.model.state_dict())
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-2, weight_decay=0.1, foreach=True)
    for i in range(5):
        x, y = _batch(i)
        state, metrics = train_step(state, (x, y), cfg)
        loss = F.mse_loss(ref(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        assert torch.allclose(metrics["loss"], loss.detach(), rtol=0, atol=1e-6)
        assert torch.allclose(metrics["grad_norm"], norm, rtol=1e-6, atol=0)
    assert state.step == 5
    for name, (a, b) in zip(state.model.param_names, zip(state.model.param_list, ref.parameters())):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
    assert all(p.grad is None for p in state.model.param_list)


def test_metrics_are_device_tensors_and_lr_follows_the_schedule():
    cfg = StepConfig(SupervisedObjective(MLP, F.mse_loss), sgd(), lambda step: 0.1 / (step + 1))
    state = _state(opt=cfg.optimizer)
    lrs = []
    for i in range(3):
        state, m = train_step(state, _batch(i), cfg)
        assert isinstance(m["loss"], torch.Tensor) and m["loss"].dim() == 0 and not m["loss"].requires_grad
        assert isinstance(m["grad_norm"], torch.Tensor)
        lrs.append(m["lr"])
    assert lrs == [0.1, 0.05, 0.1 / 3]


def test_reusing_a_consumed_state_raises():
    cfg = StepConfig(SupervisedObjective(MLP, F.mse_loss), sgd(), 0.1)
    s0 = _state(opt=cfg.optimizer)
    s1, _ = train_step(s0, _batch(0), cfg)
    with pytest.raises(ConsumedStateError, match="this TrainState was consumed by train_step at step 0; use the "
                                                 "state it returned"):
        train_step(s0, _batch(1), cfg)
    with pytest.raises(ConsumedStateError):
        eval_step(s0, _batch(1), cfg)
    train_step(s1, _batch(1), cfg)  # the returned state is live


def test_micro_batches_give_the_gradient_of_the_mean_loss():
    cfg = StepConfig(SupervisedObjective(MLP, F.mse_loss), sgd(momentum=0.9), 0.1, clip_grad_norm=10.0)
    whole, split = _state(opt=cfg.optimizer), _state(opt=cfg.optimizer)
    for i in range(3):
        x, y = _batch(i)
        whole, mw = train_step(whole, (x, y), cfg)
        split, ms = train_step(split, MicroBatches([(x[:8], y[:8]), (x[8:], y[8:])]), cfg)
        assert torch.allclose(mw["loss"], ms["loss"], atol=1e-6)
        assert torch.allclose(mw["grad_norm"], ms["grad_norm"], atol=1e-5)
    for a, b in zip(whole.model.param_list, split.model.param_list):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="at least one batch"):
        MicroBatches([])


def test_clipping_bounds_the_update_and_reports_the_norm_before_clipping():
    cfg = StepConfig(SupervisedObjective(MLP, F.mse_loss), sgd(), 1.0, clip_grad_norm=1e-3)
    state = _state(opt=cfg.optimizer)
    before = [p.detach().clone() for p in state.model.param_list]
    state, m = train_step(state, _batch(0), cfg)
    step_norm = torch.linalg.vector_norm(torch.cat([(a.detach() - b).flatten() for a, b in zip(state.model.param_list,
                                                                                       before)]))
    assert m["grad_norm"] > 1e-2
    assert float(step_norm) == pytest.approx(1e-3, rel=1e-3)  # lr 1 * clipped gradient of norm 1e-3
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        StepConfig(SupervisedObjective(MLP, F.mse_loss), sgd(), 1.0, clip_grad_norm=0.0)


def test_buffers_update_in_place_and_eval_step_changes_nothing():
    net = Sequential([Linear(3, 4), BatchNorm1d(4), Linear(4, 2)])
    cfg = StepConfig(SupervisedObjective(net, F.mse_loss), sgd(), 0.1, track_grad_norm=False)
    state = _state(net, cfg.optimizer)
    running_mean = state.model.buffers["1"]["running_mean"]
    state, m = train_step(state, _batch(0), cfg)
    assert "grad_norm" not in m
    assert state.model.buffers["1"]["running_mean"] is running_mean  # same tensor, new values
    assert int(state.model.buffers["1"]["num_batches_tracked"]) == 1 and running_mean.abs().sum() > 0
    snapshot = {k: v.clone() for k, v in state.model.state_dict().items()}
    metrics = eval_step(state, _batch(1), cfg)
    assert set(metrics) == {"loss"} and not state.consumed
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in snapshot.items())


def test_dropout_masks_depend_on_key_and_step_only():
    net = Sequential([Linear(3, 32), Dropout(0.5), Linear(32, 2)])
    cfg = StepConfig(SupervisedObjective(net, F.mse_loss), sgd(), 0.0)  # lr 0: parameters stay put
    losses = []
    for _ in range(2):
        state = _state(net, cfg.optimizer)
        torch.manual_seed(999)  # the global state before the step does not matter: the step reseeds
        run = []
        for _ in range(3):
            state, m = train_step(state, _batch(0), cfg)
            run.append(float(m["loss"]))
        losses.append(run)
    assert losses[0] == losses[1]
    assert len(set(losses[0])) == 3  # a new mask every step


def test_objective_protocol_errors_are_clear():
    cfg = StepConfig(lambda p, b, batch, train, rng: (p["w"].sum(), {}), sgd(), 0.1)
    state = TrainState.create(ModelState.create({"w": torch.ones(2)}), cfg.optimizer, rng=0)
    with pytest.raises(TypeError, match=r"must return \(loss, metrics, new_buffers\), got tuple of length 2"):
        train_step(state, None, cfg)
    unused = StepConfig(lambda p, b, batch, train, rng: (p["w"].sum(), {}, {}), sgd(), 0.1)
    state = TrainState.create(ModelState.create({"w": torch.ones(2), "v": torch.ones(1)}), sgd(), rng=0)
    with pytest.raises(RuntimeError, match=r"no gradient for 1 trainable parameter\(s\): \['v'\]"):
        train_step(state, None, unused)
    with pytest.raises(TypeError, match="nemofn.optim Optimizer"):
        StepConfig(lambda *a, **k: None, torch.optim.SGD, 0.1)
