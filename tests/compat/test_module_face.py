"""A compat model is an ``nn.Module`` over its functional state: the same tensors, NeMo's submodules, freezing,
modes and device moves, with no copies."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from compat import Trainer
from compat.collections.asr.models import EncDecCTCModel
from compat.models.modelpt_module import SubModule

_SPEC = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).with_name("tiny_asr.py"))
helpers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.small_corpus(tmp_path_factory.mktemp("face"))


def _trainer(**kw):
    return Trainer(**{**helpers.QUIET, **kw})


def test_parameters_and_buffers_are_the_functional_states_tensors():
    model = EncDecCTCModel(helpers.tiny_cfg())
    assert isinstance(model, nn.Module)
    assert [n for n, _ in model.named_children()] == ["preprocessor", "spec_augmentation", "encoder", "decoder"]
    state = model.fn_state
    named = dict(model.named_parameters())
    assert set(named) == set(state.param_names)
    assert all(named[n] is p for n, p in zip(state.param_names, state.param_list))
    buffers = dict(model.named_buffers())
    assert all(buffers[n] is b for n, b in zip(state.buffer_names, state.buffer_list))
    assert model.state_dict().keys() == state.state_dict().keys()
    assert isinstance(model.encoder, SubModule) and model.encoder.feat_out == 24  # hyperparameters pass through
    assert dict(model.encoder.named_parameters()).keys() == {n[len("encoder."):] for n in named
                                                             if n.startswith("encoder.")}


def test_modes_are_per_submodule_and_drive_the_forward():
    model = EncDecCTCModel(helpers.tiny_cfg()).eval()
    assert not any(m.training for m in model.modules())
    model.decoder.train()
    assert model.decoder.training and not model.encoder.training and not model.training
    signal, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 6000])
    a = model(input_signal=signal, input_signal_length=lengths)[0]
    b = model(input_signal=signal, input_signal_length=lengths)[0]
    assert torch.equal(a, b)  # SpecAugment and dither follow the model's / preprocessor's own modes


def test_freeze_and_unfreeze_follow_nemo():
    model = EncDecCTCModel(helpers.tiny_cfg())
    model.encoder.freeze()
    assert not model.encoder.training and all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert model.num_weights == sum(p.numel() for p in model.decoder.parameters())
    model.encoder.unfreeze()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())
    first = next(model.encoder.parameters())
    first.requires_grad_(False)
    model.encoder.freeze()
    model.encoder.unfreeze(partial=True)  # restores the flags recorded by freeze()
    assert not first.requires_grad and sum(not p.requires_grad for p in model.encoder.parameters()) == 1
    with model.decoder.as_frozen():
        assert not any(p.requires_grad for p in model.decoder.parameters()) and not model.decoder.training
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.freeze()
    assert model.num_weights == 0 and not model.training
    model.unfreeze()
    assert model.num_weights == sum(p.numel() for p in model.parameters()) and model.training


def test_to_moves_the_state_with_the_module():
    model = EncDecCTCModel(helpers.tiny_cfg())
    moved = model.to(torch.float64)
    assert moved is model
    assert all(p.dtype == torch.float64 for p in model.fn_state.param_list)
    assert all(b.dtype == torch.float64 for b in model.fn_state.buffer_list if b.is_floating_point())
    assert all(dict(model.named_buffers())[n] is b for n, b in zip(model.fn_state.buffer_names,
                                                                    model.fn_state.buffer_list))
    clone = copy.deepcopy(model)
    assert clone.state_dict().keys() == model.state_dict().keys()
    assert next(clone.parameters()) is not next(model.parameters())
    assert next(clone.parameters()) is clone.fn_state.param_list[0]


def test_fine_tuning_with_a_frozen_encoder_trains_only_the_rest(corpus):
    torch.manual_seed(0)
    trainer = _trainer(max_steps=3)
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"]), trainer=trainer)
    model.encoder.freeze()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model)
    after = model.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # eval mode: BN statistics stay too
    assert not torch.equal(before["decoder.decoder_layers.0.weight"], after["decoder.decoder_layers.0.weight"])
    state = model.train_state
    frozen = [i for i, n in enumerate(state.model.param_names) if n.startswith("encoder.")]
    assert all(state.opt_state["exp_avg"][i] is None for i in frozen)  # no optimizer state for frozen parameters


def test_freeze_updates_freezes_a_module_for_a_step_range(corpus):
    torch.manual_seed(0)
    trainer = _trainer(max_steps=4)
    cfg = helpers.tiny_cfg(corpus["train"], freeze_updates={"enabled": True, "modules": {"encoder": [1, 2]}})
    model = EncDecCTCModel(cfg, trainer=trainer)
    seen = []

    class Spy:
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weight = pl_module.fn_state.params["encoder"]["encoder"]["0"]["mconv"]["0"]["conv"]["weight"]
            seen.append((trainer.global_step, weight.detach().clone(), weight.requires_grad))

    trainer.callbacks.append(Spy())
    start = model.fn_state.params["encoder"]["encoder"]["0"]["mconv"]["0"]["conv"]["weight"].detach().clone()
    trainer.fit(model)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert torch.equal(seen[0][1], start) and torch.equal(seen[1][1], start)  # updates 1 and 2: frozen
    assert not torch.equal(seen[2][1], start) and seen[2][2]  # update 3: unfrozen and trained
    assert model.encoder.training  # a frozen module stays in training mode (NeMo): BatchNorm statistics update


def test_freeze_updates_names_an_unknown_module(corpus):
    trainer = _trainer(max_steps=1)
    cfg = helpers.tiny_cfg(corpus["train"], freeze_updates={"enabled": True, "modules": {"encodr": -1}})
    model = EncDecCTCModel(cfg, trainer=trainer)
    with pytest.raises(ValueError, match=r"freeze_updates.modules.encodr.*no submodule 'encodr'"):
        trainer.fit(model)
