"""TreeModule registers the state's own tensors with NeMo names; the optimizer shim steps the functional optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.nn.activation import Activation
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim.adam import adamw
from nemofn.train.adapter import FunctionalOptimizerShim, TreeModule, collect_grads, trainable_indices


def _model() -> tuple[Sequential, ModelState]:
    net = Sequential([Linear(3, 5), BatchNorm1d(5), Activation("relu"), Linear(5, 2)])
    return net, ModelState.create(*net.init(RngKey(0)))


def test_state_dict_keys_are_the_dotted_names_and_tensors_are_the_same_objects():
    net, ms = _model()
    module = TreeModule(ms)
    keys = list(module.state_dict())
    assert keys == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                    "1.num_batches_tracked", "3.weight", "3.bias"]
    params = dict(module.named_parameters())
    assert list(params) == list(ms.param_names)
    assert all(params[n] is p for n, p in zip(ms.param_names, ms.param_list))
    buffers = dict(module.named_buffers())
    assert all(buffers[n] is b for n, b in zip(ms.buffer_names, ms.buffer_list))


def test_forward_calls_the_function_on_the_trees():
    net, ms = _model()
    module = TreeModule(ms)
    x = torch.randn(4, 3)
    out, _ = module(net.apply, x, train=False)
    ref, _ = net.apply(ms.params, ms.buffers, x, train=False)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert all(p.grad is not None for p in ms.param_list[:2])


def test_dtype_moves_are_seen_by_forward_and_model_state():
    net, ms = _model()
    module = TreeModule(ms).double()
    state = module.model_state()
    assert all(a is b for a, b in zip(state.param_list, ms.param_list))  # params keep their identity
    assert state.buffers["1"]["running_mean"].dtype == torch.float64  # buffers are new objects
    out, _ = module(net.apply, torch.randn(4, 3, dtype=torch.float64), train=False)
    assert out.dtype == torch.float64


def test_keys_that_shadow_module_attributes_and_non_persistent_buffers():
    ms = ModelState.create({"train": {"weight": torch.ones(2)}, "type": torch.ones(1)},
                           {"pe": torch.zeros(3), "train": {"count": torch.tensor(1)}})
    module = TreeModule(ms, non_persistent=["pe"])
    assert list(module.state_dict()) == ["type", "train.weight", "train.count"]
    assert module(lambda p, b: p["train"]["weight"].sum() + b["pe"].sum()).item() == 2.0
    assert module.live is False and TreeModule(ms, live=True)(lambda p, b: p["type"]).item() == 1.0


def test_leaves_must_be_parameters():
    with pytest.raises(TypeError, match="param 'w' is not an nn.Parameter; build the state with ModelState.create"):
        TreeModule(ModelState({"w": torch.zeros(1)}))
    with pytest.raises(TypeError, match="TreeModule takes a ModelState"):
        TreeModule({"w": torch.zeros(1)})


def test_collect_grads_names_missing_ones_and_fills_empty_shards():
    a, b, empty = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(0))
    a.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match=r"no gradient for 1 trainable parameter\(s\): \['enc.b'\]"):
        collect_grads([a, b, empty], ("enc.a", "enc.b", "enc.empty"))
    b.grad = torch.ones(2)
    grads = collect_grads([a, b, empty], ("enc.a", "enc.b", "enc.empty"))
    assert grads[0] is a.grad and grads[2].shape == (0,)


def test_frozen_parameters_are_skipped():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    b.requires_grad_(False)
    a.grad = torch.ones(2)
    assert trainable_indices([a, b]) == [0] and trainable_indices([a]) is None
    assert collect_grads([a, b], ("a", "b"), [0]) == [a.grad]


def test_shim_step_equals_the_functional_update():
    _, ms = _model()
    _, ref = _model()
    opt = adamw()
    shim = FunctionalOptimizerShim(ms.param_list, opt, ms.param_names)
    assert shim.param_groups[0]["params"][0] is ms.param_list[0]
    with pytest.raises(RuntimeError, match="no opt_state set"):
        shim.step()
    grads = [torch.randn_like(p) for p in ms.param_list]
    for p, g in zip(ms.param_list, grads):
        p.grad = g.clone()
    shim.opt_state = opt.init(ms.param_list)
    shim.param_groups[0]["lr"] = 0.05
    shim.step()
    ref_state = opt.update(ref.param_list, grads, opt.init(ref.param_list), lr=0.05)
    assert all(torch.equal(a, b) for a, b in zip(ms.param_list, ref.param_list))
    assert all(torch.equal(a, b) for a, b in zip(shim.opt_state["exp_avg"], ref_state["exp_avg"]))


def _fabric(precision: str = "32-true"):
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    fabric.launch()
    return fabric


def test_setup_fabric_train_step_matches_the_no_fabric_step():
    import torch.nn.functional as F

    from nemofn.core.state import TrainState
    from nemofn.train.adapter import setup_fabric
    from nemofn.train.step import MicroBatches, StepConfig, SupervisedObjective, train_step

    net, ms = _model()
    _, ms_ref = _model()
    cfg = StepConfig(SupervisedObjective(net, F.mse_loss), adamw(), 1e-2, clip_grad_norm=1.0)
    state, runtime = setup_fabric(_fabric(), ms, cfg.optimizer, rng=RngKey(1))
    assert isinstance(runtime.shim, FunctionalOptimizerShim) and runtime.rank == 0
    assert runtime.module.state_dict().keys() == ms.state_dict().keys()  # Fabric's wrapper keeps NeMo keys
    ref = TrainState.create(ms_ref, cfg.optimizer, rng=RngKey(1))
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        x = torch.randn(16, 3, generator=g)
        y = torch.randn(16, 2, generator=g)
        batch = (x, y) if i % 2 else MicroBatches([(x[:8], y[:8]), (x[8:], y[8:])])
        state, m = train_step(state, batch, cfg, runtime=runtime)
        ref, m_ref = train_step(ref, batch, cfg)
        assert torch.allclose(m["loss"], m_ref["loss"], atol=1e-6)
        assert torch.allclose(m["grad_norm"], m_ref["grad_norm"], atol=1e-6)
    for a, b in zip(state.model.param_list + state.model.buffer_list, ref.model.param_list + ref.model.buffer_list):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_setup_fabric_continues_a_train_state_and_bf16_mixed_autocasts_the_objective():
    from nemofn.core.state import TrainState
    from nemofn.train.adapter import setup_fabric
    from nemofn.train.step import StepConfig, train_step

    seen = []

    def objective(params, buffers, batch, *, train, rng):
        out = batch @ params["w"]
        seen.append(out.dtype)
        return out.float().pow(2).mean(), {"out_mean": out.float().mean()}, buffers

    cfg = StepConfig(objective, adamw(), 1e-2)
    previous = TrainState.create(ModelState.create({"w": torch.randn(4, 2)}), cfg.optimizer, rng=7)
    previous, _ = train_step(previous, torch.randn(8, 4), cfg)
    state, runtime = setup_fabric(_fabric("bf16-mixed"), previous, cfg.optimizer)
    assert previous.consumed and state.step == 1 and state.rng == RngKey(7)
    assert torch.equal(state.opt_state["exp_avg"][0], previous.opt_state["exp_avg"][0])
    state, m = train_step(state, torch.randn(8, 4), cfg, runtime=runtime)
    assert seen == [torch.float32, torch.bfloat16]  # without, then with Fabric's autocast
    assert m["loss"].dtype == torch.float32 and "out_mean" in m and state.step == 2


def test_fp16_grad_scaler_unscales_skips_overflow_and_is_checkpointed(tmp_path):
    """The 16-mixed path (GradScaler through the optimizer shim), run on the CPU with Fabric's MixedPrecision
    plugin and a CPU GradScaler (``fit`` refuses 16-mixed on CPU; this only exercises the mechanics)."""
    from lightning_fabric import Fabric
    from lightning_fabric.plugins import MixedPrecision

    from nemofn.train.adapter import setup_fabric
    from nemofn.train.checkpoint import load_checkpoint, save_checkpoint
    from nemofn.train.step import StepConfig, train_step

    def objective(params, buffers, batch, *, train, rng):
        out = batch @ params["w"]
        assert out.dtype == torch.float16
        return out.float().pow(2).mean(), {}, buffers

    def make():
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        fabric = Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
        fabric.launch()
        return fabric, scaler

    fabric, scaler = make()
    cfg = StepConfig(objective, adamw(), 1e-2, clip_grad_norm=100.0)
    w = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    state, runtime = setup_fabric(fabric, ModelState.create({"w": w.clone()}), cfg.optimizer)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    state, m = train_step(state, x, cfg, runtime=runtime)
    true_norm = torch.linalg.vector_norm(torch.func.grad(lambda v: (x @ v).pow(2).mean())(w))
    assert torch.allclose(m["grad_norm"], true_norm, rtol=1e-2)  # unscaled before clipping / reporting
    assert int(state.opt_state["step"][0]) == 1 and scaler.get_scale() == 4.0

    before = state.model.params["w"].detach().clone()
    state, m = train_step(state, torch.full((8, 4), 6e4), cfg, runtime=runtime)  # fp16 overflow
    assert not torch.isfinite(m["grad_norm"])
    assert torch.equal(state.model.params["w"], before) and int(state.opt_state["step"][0]) == 1  # skipped
    assert scaler.get_scale() == 2.0 and state.step == 2

    save_checkpoint(tmp_path / "amp.ckpt", state, fabric=fabric)
    fabric2, scaler2 = make()
    restored, _ = setup_fabric(fabric2, ModelState.create({"w": w.clone()}), cfg.optimizer)
    load_checkpoint(tmp_path / "amp.ckpt", restored, fabric=fabric2)
    assert scaler2.get_scale() == 2.0 and restored.step == 2
