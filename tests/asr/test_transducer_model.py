"""The transducer model unit (``TransducerModel`` / ``TransducerNetwork``) and the char classes of compat: the
fused joint equals the unfused one, the hybrid loss is ``(1 - w) * transducer + w * ctc``, config mistakes fail
naming the key, and ``EncDecRNNTModel`` / ``EncDecHybridRNNTCTCModel`` (char labels) train, decode, change their
decoding and vocabulary, and round-trip through ``.nemo``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from nemofn.asr.ctc import ctc_loss
from nemofn.asr.models.transducer_model import TransducerModel
from nemofn.core.rng import RngKey

LABELS = [" ", "a", "b", "c", "d", "e"]


def tiny_transducer(*, tdt: bool = False, hybrid: bool = False, fused: int | None = None) -> dict:
    durations = [0, 1, 2]
    cfg = {
        "labels": LABELS,
        "model_defaults": {"enc_hidden": 16, "pred_hidden": 12, "joint_hidden": 10},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "features": 16, "dither": 0.0, "pad_to": 0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 16, "n_layers": 1,
                    "d_model": 16, "n_heads": 2, "subsampling": "dw_striding", "subsampling_factor": 4,
                    "subsampling_conv_channels": 8},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "blank_as_pad": True,
                    "prednet": {"pred_hidden": 12, "pred_rnn_layers": 1, "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "fuse_loss_wer": fused is not None,
                  "fused_batch_size": fused, "num_extra_outputs": len(durations) if tdt else 0,
                  "jointnet": {"joint_hidden": 10, "activation": "relu", "dropout": 0.0}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 5}},
        "loss": ({"loss_name": "tdt", "tdt_kwargs": {"durations": durations, "sigma": 0.05, "omega": 0.0}}
                 if tdt else {"loss_name": "default"}),
        "rnnt_reduction": "mean_volume",
        "optim": {"name": "adamw", "lr": 0.01},
    }
    if tdt:
        cfg["decoding"]["model_type"] = "tdt"
    if hybrid:
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None, "num_classes": -1,
            "vocabulary": []}}
    return cfg


def batch(n: int = 3):
    torch.manual_seed(0)
    signal = torch.randn(n, 8000) * 0.1
    signal_len = torch.tensor([8000, 6000, 4000][:n])
    tokens = torch.tensor([[1, 2, 3, 0], [2, 3, 0, 0], [4, 5, 1, 2]][:n])
    tokens_len = torch.tensor([3, 2, 4][:n])
    return signal, signal_len, tokens, tokens_len


@pytest.mark.parametrize("tdt", [False, True])
def test_fused_joint_equals_unfused(tdt):
    plain = TransducerModel.from_config(tiny_transducer(tdt=tdt))
    fused = TransducerModel.from_config(tiny_transducer(tdt=tdt, fused=2))
    state = plain.init_state(3)
    values = []
    for unit in (plain, fused):
        loss, _, _ = unit.network.objective(state.params, state.buffers, batch(), train=False)
        grads = torch.autograd.grad(loss, [state.params["joint"]["enc"]["weight"]])
        values.append((loss.detach(), grads[0]))
    assert fused.cfg.joint.fuse_loss_wer and not plain.cfg.joint.fuse_loss_wer
    assert torch.allclose(values[0][0], values[1][0], rtol=1e-6)
    assert torch.allclose(values[0][1], values[1][1], atol=1e-6)


def test_hybrid_loss_combines_transducer_and_ctc():
    unit = TransducerModel.from_config(tiny_transducer(hybrid=True))
    state = unit.init_state(1)
    net = unit.network
    values, encoded, encoded_len, _ = net.losses(state.params, state.buffers, batch(), train=False)
    ctc = ctc_loss(net.ctc_log_probs(state.params, encoded), batch()[2], encoded_len, batch()[3], blank=6,
                   reduction="mean_batch", zero_infinity=True)
    assert torch.allclose(values["ctc_loss"], ctc)
    assert torch.allclose(values["loss"], 0.7 * values["rnnt_loss"] + 0.3 * ctc)
    assert unit.cfg.aux_ctc.decoder.feat_in == 16 and list(unit.cfg.aux_ctc.decoder.vocabulary) == LABELS
    assert {"encoder", "decoder", "joint", "ctc_decoder"} <= set(state.params)


def test_filled_config_and_decoding():
    unit = TransducerModel.from_config(tiny_transducer(tdt=True))
    assert unit.cfg.decoder.vocab_size == 6 and unit.cfg.joint.num_classes == 6
    assert unit.cfg.joint.jointnet.encoder_hidden == 16 and list(unit.cfg.decoding.durations) == [0, 1, 2]
    assert unit.decoding.durations == (0, 1, 2) and unit.decoding.max_symbols == 5
    state = unit.init_state(0)
    texts, hyps = unit.transcribe(state, [torch.randn(8000) * 0.1, torch.randn(5000) * 0.1], return_hypotheses=True)
    assert len(texts) == 2 and len(hyps.tokens) == 2 and len(hyps.durations[0]) == len(hyps.tokens[0])


@pytest.mark.parametrize("change,message", [
    (lambda c: c["model_defaults"].update(enc_hidden=32), "enc_hidden"),
    (lambda c: c["joint"].update(num_extra_outputs=2), "num_extra_outputs"),
    (lambda c: c["loss"].update(loss_name="multiblank_rnnt"), "multiblank_rnnt"),
    (lambda c: c["decoding"].update(strategy="beam"), "beam"),
    (lambda c: c["joint"]["jointnet"].update(activaton="relu"), "model.joint.jointnet.activaton"),
])
def test_config_mistakes_name_the_key(change, message):
    cfg = copy.deepcopy(tiny_transducer())
    change(cfg)
    with pytest.raises(Exception, match=message):
        TransducerModel.from_config(cfg)


def test_char_classes_train_decode_change_and_round_trip(tmp_path: Path):
    from compat.collections.asr.models import ASRModel, EncDecHybridRNNTCTCModel, EncDecRNNTModel

    model = EncDecRNNTModel(tiny_transducer(tdt=True))
    assert model.cfg.target == "nemo.collections.asr.models.rnnt_models.EncDecRNNTModel"
    model.train()
    out = model.training_step(batch(), 0)
    out["loss"].backward()
    assert any(p.grad is not None for p in model.parameters())
    model.eval()
    values = model.validation_pass(batch())
    assert {"val_loss", "val_wer_num", "val_wer_denom", "val_wer"} <= set(values)
    model.change_decoding_strategy({"strategy": "greedy", "greedy": {"max_symbols": 2}}, verbose=False)
    assert model.fn_model.decoding.max_symbols == 2 and model.cfg.decoding.strategy == "greedy"
    assert list(model.cfg.decoding.durations) == [0, 1, 2]
    with pytest.raises(NotImplementedError, match="beam"):
        model.change_decoding_strategy({"strategy": "beam"}, verbose=False)
    encoder_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.")}
    model.change_vocabulary([" ", "x", "y"])
    assert model.cfg.joint.num_classes == 3 and model.state_dict()["joint.joint_net.1.weight"].shape[0] == 3 + 1 + 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder_before.items())
    path = tmp_path / "char_tdt.nemo"
    model.save_to(str(path))
    again = ASRModel.restore_from(str(path))
    assert type(again) is EncDecRNNTModel and list(again.cfg.labels) == [" ", "x", "y"]
    signal = torch.randn(6000) * 0.1
    assert again.transcribe([signal], verbose=False)[0].text == model.transcribe([signal], verbose=False)[0].text

    hybrid = EncDecHybridRNNTCTCModel(tiny_transducer(hybrid=True))
    hybrid.train()
    logs = hybrid.training_step(batch(), 0)["log"]
    assert {"train_rnnt_loss", "train_ctc_loss", "training_batch_wer", "training_batch_wer_ctc"} <= set(logs)
    hybrid.eval()
    values = hybrid.validation_pass(batch())
    assert {"val_ctc_loss", "val_rnnt_loss", "val_wer_ctc"} <= set(values)
    epoch = hybrid._epoch_end_metrics([values, values], "val")["log"]
    assert {"val_loss", "val_ctc_loss", "val_rnnt_loss", "val_wer", "val_wer_ctc"} <= set(epoch)
    hybrid.change_decoding_strategy(decoder_type="ctc", verbose=False)
    hyp = hybrid.transcribe([signal], return_hypotheses=True, verbose=False)[0]
    assert hyp.y_sequence.shape[-1] == len(LABELS) + 1  # CTC log-probs, as NeMo
    with pytest.raises(ValueError, match="decoder_type"):
        hybrid.change_decoding_strategy(decoder_type="tdt")


def test_objective_draws_from_the_rng_key_deterministically():
    cfg = tiny_transducer(tdt=True)
    cfg["loss"]["tdt_kwargs"]["omega"] = 0.5
    unit = TransducerModel.from_config(cfg)
    state = unit.init_state(0)
    losses = []
    for _ in range(2):
        RngKey(5).seed_global()
        losses.append(unit.network.objective(state.params, state.buffers, batch(), train=True, rng=RngKey(5))[0])
    assert torch.equal(losses[0], losses[1])
