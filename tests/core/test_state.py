"""ModelState / TrainState: flat views, NeMo-named state dicts, the consumed-state guard, checkpoint round trips."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from nemofn.core.rng import RngKey
from nemofn.core.state import STATE_FORMAT, ConsumedStateError, DataPosition, ModelState, TrainState
from nemofn.optim.adam import adamw
from nemofn.optim.sgd import sgd


def _trees():
    params = {"encoder": {"layers": {"0": {"weight": torch.randn(3, 2), "bias": torch.zeros(3)}}},
              "decoder": {"weight": torch.randn(1, 3)}}
    buffers = {"encoder": {"norm": {"running_mean": torch.zeros(3), "num_batches_tracked": torch.tensor(0)}}}
    return params, buffers


def test_model_state_create_makes_parameters_that_share_storage():
    params, buffers = _trees()
    w = params["decoder"]["weight"]
    ms = ModelState.create(params, buffers)
    assert ms.param_names == ("encoder.layers.0.weight", "encoder.layers.0.bias", "decoder.weight")
    assert ms.buffer_names == ("encoder.norm.running_mean", "encoder.norm.num_batches_tracked")
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in ms.param_list)
    assert ms.params["decoder"]["weight"] is ms.param_list[2]
    assert ms.param_list[2].data_ptr() == w.data_ptr()  # no copy
    assert ms.buffers["encoder"]["norm"]["running_mean"] is buffers["encoder"]["norm"]["running_mean"]
    again = ModelState.create(ms.params, ms.buffers)  # Parameters are kept as they are
    assert all(a is b for a, b in zip(again.param_list, ms.param_list))
    assert ms.num_params() == 6 + 3 + 3


def test_model_state_dict_uses_dotted_names_and_loads_in_place():
    ms = ModelState.create(*_trees())
    sd = ms.state_dict()
    assert list(sd) == list(ms.param_names) + list(ms.buffer_names)
    other = ModelState.create(*_trees())
    before = other.param_list[0]
    other.load_state_dict(sd)
    assert other.param_list[0] is before
    assert all(torch.equal(a, b) for a, b in zip(other.param_list, ms.param_list))


def test_model_state_load_errors_name_the_keys():
    ms = ModelState.create(*_trees())
    sd = ms.state_dict()
    sd.pop("decoder.weight")
    sd["decoder.wieght"] = torch.zeros(1, 3)
    with pytest.raises(KeyError, match=r"missing \['decoder.weight'\].*unexpected \['decoder.wieght'\]"):
        ms.load_state_dict(sd)
    bad = ms.state_dict()
    bad["decoder.weight"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"'decoder.weight': checkpoint shape \(2, 3\) != model shape \(1, 3\)"):
        ms.load_state_dict(bad)


def test_model_state_rejects_a_name_used_as_param_and_buffer():
    with pytest.raises(KeyError, match="both as a param and as a buffer"):
        ModelState({"w": torch.zeros(1)}, {"w": torch.zeros(1)})


def test_data_position_advance_rolls_over():
    pos = DataPosition(epoch=2, batch=3, seed=7)
    assert pos.advance(2, batches_per_epoch=10) == DataPosition(2, 5, 7)
    assert pos.advance(7, batches_per_epoch=10) == DataPosition(3, 0, 7)
    assert pos.advance(100) == DataPosition(2, 103, 7)


def _state(optimizer=None) -> TrainState:
    ms = ModelState.create(*_trees())
    return TrainState.create(ms, optimizer or adamw(), rng=RngKey(5), data_seed=3)


def test_replace_consumes_and_the_error_says_what_to_do():
    s = _state()
    s2 = s.replace(step=4)
    assert s.consumed and not s2.consumed and s2.step == 4
    with pytest.raises(ConsumedStateError, match="consumed by TrainState.replace at step 0; use the state it returned"):
        s.state_dict()
    with pytest.raises(ConsumedStateError):
        s.replace(step=5)


def test_step_key_folds_step_and_rank():
    s = _state().replace(step=9)
    assert s.step_key(1) == RngKey(5).fold_in(9).fold_in(1)
    assert s.step_key(0).to_int() != s.step_key(1).to_int()


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("make_opt", [adamw, lambda: sgd(momentum=0.9)], ids=["adamw", "sgd-momentum"])
def test_state_dict_round_trip_restores_everything_in_place(make_opt):
    opt = make_opt()
    src = _state(opt)
    grads = [torch.randn_like(p) for p in src.model.param_list]
    opt_state = opt.update(src.model.param_list, grads, src.opt_state, lr=0.1)
    src = src.replace(opt_state=opt_state, step=3, data=DataPosition(1, 2, 3), rng=RngKey(11, ("a",)))
    sd = _roundtrip(src.state_dict())
    assert sd["format"] == STATE_FORMAT and set(sd["params"]) == set(src.model.param_names)

    dst = _state(opt)  # fresh: sgd momentum buffers are still None placeholders here
    param_objects = list(dst.model.param_list)
    torch.manual_seed(123)
    dst.load_state_dict(sd)
    assert dst.step == 3 and dst.data == DataPosition(1, 2, 3) and dst.rng == RngKey(11, ("a",))
    assert all(a is b for a, b in zip(dst.model.param_list, param_objects))
    assert all(torch.equal(a, b) for a, b in zip(dst.model.param_list, src.model.param_list))
    assert all(torch.equal(a, b) for a, b in zip(dst.model.buffer_list, src.model.buffer_list))
    for key, values in src.opt_state.items():
        assert all(torch.equal(a, b) for a, b in zip(values, dst.opt_state[key])), key
    assert torch.equal(torch.get_rng_state(), sd["torch_rng_state"])  # the global generator state is restored


def test_load_state_dict_rejects_other_formats_and_other_optimizers():
    s = _state(adamw())
    with pytest.raises(ValueError, match="not a TrainState checkpoint"):
        s.load_state_dict({"format": "something-else"})
    sd = _state(sgd(momentum=0.9)).state_dict()
    with pytest.raises(KeyError, match="another optimizer"):
        s.load_state_dict(sd)


def test_create_checks_its_inputs():
    with pytest.raises(TypeError, match="ModelState.create"):
        TrainState.create({"w": torch.zeros(1)}, adamw(), rng=0)
    with pytest.raises(TypeError, match="RngKey"):
        TrainState.create(ModelState.create({"w": torch.zeros(1)}), adamw(), rng=None)
