"""``compat.core.classes.ModelPT``: construction, data setup, optimization, steps, weights, modes, artifacts,
``from_pretrained`` and partial initialisation, on a tiny char CTC model and on a non-ASR model."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from compat import Trainer
from compat.collections.asr.models import ASRModel, EncDecCTCModel
from compat.core.classes import ModelPT
from compat.core.classes.modelpt import StateDictMismatchError
from compat.pretrained import PretrainedModelNotFoundError
from nemofn.asr.modules.conv_asr import ConvASREncoder
from nemofn.core.state import ModelState
from nemofn.nn.linear import Linear
from nemofn.optim.schedules import Constant, CosineAnnealing
from nemofn.train.step import StepConfig, train_step

_SPEC = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).with_name("tiny_asr.py"))
_tiny = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_tiny)
LABELS, TEXTS, write_corpus, tiny_cfg = _tiny.LABELS, _tiny.TEXTS, _tiny.write_corpus, _tiny.tiny_cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    return {"train": write_corpus(root, "train"), "val": write_corpus(root, "val", 4),
            "val2": write_corpus(root, "dev-other", 3)}


# ----------------------------------------------------------------------------------------------- construction


def test_construction_injects_nemo_keys_and_fills_decoder():
    model = EncDecCTCModel(tiny_cfg())
    cfg = model.cfg
    assert cfg.target == "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
    assert cfg.nemo_version == "3.0.0"
    assert cfg.decoding.strategy == "greedy_batch" and cfg.decoding.greedy.allow_cuda_graphs is True
    assert cfg.decoder.feat_in == 24 and cfg.decoder.num_classes == len(LABELS)
    assert OmegaConf.is_struct(cfg) and model.training is True and model.trainer is None
    assert model.train_dataloader() is None and model.val_dataloader() == []  # no manifests: no loaders
    assert set(model.state_dict()) >= {"preprocessor.featurizer.window", "preprocessor.featurizer.fb",
                                       "decoder.decoder_layers.0.weight"}


def test_config_errors():
    with pytest.raises(ValueError, match="top-level `model` key"):
        EncDecCTCModel({"model": tiny_cfg()})
    bad = tiny_cfg()
    del bad["labels"], bad["decoder"]["vocabulary"]
    with pytest.raises(ValueError, match="labels"):
        EncDecCTCModel(bad)


def test_from_config_dict_picks_the_target_class():
    cfg = OmegaConf.create(tiny_cfg(target="nemo.collections.asr.models.EncDecCTCModel"))
    assert type(ModelPT.from_config_dict(cfg)) is EncDecCTCModel
    assert type(ASRModel.from_config_dict(cfg)) is EncDecCTCModel
    assert isinstance(ModelPT.from_config_dict(cfg.encoder), ConvASREncoder)


# ------------------------------------------------------------------------------------------------- data setup


def test_data_setup_from_the_constructor_without_a_trainer(corpus):
    model = EncDecCTCModel(tiny_cfg(corpus["train"], corpus["val"], corpus["val"]))
    assert model.trainer is None
    assert model.cfg.train_ds.shuffle is True and model.cfg.test_ds.shuffle is False
    signal, signal_len, tokens, tokens_len = next(iter(model.train_dataloader()))
    assert signal.shape[0] == 2 and tokens.dtype == torch.int64
    assert len(model.val_dataloader().dataset) == 4 and len(model.test_dataloader().dataset) == 4
    assert model.get_validation_dataloader_prefix() == ""


def test_deferred_and_multiple_validation_loaders(corpus):
    cfg = tiny_cfg(corpus["train"], [corpus["val"], corpus["val2"]])
    cfg["train_ds"]["defer_setup"] = True
    model = EncDecCTCModel(cfg)
    assert model.train_dataloader() is None
    assert isinstance(model.val_dataloader(), list) and len(model.val_dataloader()) == 2
    assert model._validation_names == ["val_", "dev_other_"]  # NeMo's parse_dataset_as_name
    for idx, loader in enumerate(model.val_dataloader()):
        model.validation_step(next(iter(loader)), 0, dataloader_idx=idx)
    assert [len(chunk) for chunk in model.validation_step_outputs] == [1, 1]
    logs = model.on_validation_epoch_end()
    assert set(logs) == {"val_val_loss", "val_val_wer", "dev_other_val_loss", "dev_other_val_wer", "val_loss",
                         "val_wer"}  # NeMo's prefixes; the val_dl_idx loader is also logged unprefixed
    assert logs["val_loss"] == logs["val_val_loss"]
    model.setup("fit")
    assert len(model.train_dataloader().dataset) == 6
    model.setup_training_data({"manifest_filepath": None})  # NeMo: a null manifest gives no loader
    assert model.train_dataloader() is None


# ------------------------------------------------------------------------------------------------ optimization


def test_setup_optimization_without_trainer_uses_sched_max_steps():
    model = EncDecCTCModel(tiny_cfg())
    optim = OmegaConf.to_container(model.cfg.optim)
    optim["sched"]["max_steps"] = 100
    optimizer, schedule = model.setup_optimization(optim)
    assert optimizer.name == "adamw" and isinstance(schedule, CosineAnnealing)
    assert schedule(0) < schedule(2) == pytest.approx(0.01) and schedule(99) < 1e-3
    assert model.cfg.optim.sched.max_steps == 100
    assert model.configure_optimizers()[1].hparams["max_steps"] == 100  # what compat.Trainer.fit calls


def test_setup_optimization_without_max_steps_is_a_clear_error():
    model = EncDecCTCModel(tiny_cfg())
    with pytest.raises(ValueError, match="needs max_steps.*no trainer is attached"):
        model.setup_optimization()
    optim = OmegaConf.to_container(model.cfg.optim)
    optim["sched"]["max_steps"] = -1  # NeMo: no schedule
    with pytest.warns(UserWarning, match="-1"):
        _, schedule = model.setup_optimization(optim)
    assert isinstance(schedule, Constant) and schedule(10) == pytest.approx(0.01)
    del optim["sched"]
    optimizer, schedule = model.setup_optimization(optim, optim_kwargs={"weight_decay": 0.25})
    assert isinstance(schedule, Constant) and optimizer.hparams["weight_decay"] == 0.25
    assert "weight_decay" not in model.cfg.optim  # optim_kwargs are not written into the config (NeMo)


def test_setup_optimization_with_a_duck_typed_trainer(corpus):
    trainer = types.SimpleNamespace(max_steps=-1, max_epochs=3, accumulate_grad_batches=2, limit_train_batches=1.0,
                                    num_devices=1, num_nodes=1, gradient_clip_val=0.5)
    model = EncDecCTCModel(tiny_cfg(corpus["train"]), trainer=trainer)
    _, schedule = model.setup_optimization()
    # NeMo's compute_max_steps: ceil(ceil(6 / 1) / batch 2) = 3 batches, ceil(3 / 2) = 2 steps per epoch, x 3
    assert schedule.hparams["max_steps"] == math.ceil(3 / 2) * 3
    model.set_trainer(types.SimpleNamespace(max_steps=40, accumulate_grad_batches=1, num_devices=1, num_nodes=1))
    assert model.setup_optimization()[1].hparams["max_steps"] == 40
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        model.set_trainer(types.SimpleNamespace(max_steps=5, accumulate_grad_batches=None))
        model.setup_optimization()


# ------------------------------------------------------------------------------------------------------- steps


def test_training_validation_and_test_steps(corpus):
    """Lightning's contract: training_step computes the loss with the model's own tensors and updates nothing (the
    trainer does the backward pass and the update); validation / test steps record NeMo's metrics."""
    torch.manual_seed(0)
    model = EncDecCTCModel(tiny_cfg(corpus["train"], corpus["val"], corpus["val"]))
    batch = next(iter(model.train_dataloader()))
    before = model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"].clone()
    out = model.training_step(batch, 0)
    assert set(out) == {"loss", "log"} and out["loss"].ndim == 0 and out["loss"].requires_grad
    assert {"train_loss", "learning_rate", "global_step", "training_batch_wer"} <= set(out["log"])
    assert torch.equal(before, model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"])
    out["loss"].backward()
    weight = model.encoder.get_parameter("encoder.0.mconv.0.conv.weight")
    assert weight is model.fn_state.params["encoder"]["encoder"]["0"]["mconv"]["0"]["conv"]["weight"]
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # gradients reach the functional state

    model.eval()
    for i, val_batch in enumerate(model.val_dataloader()):
        metrics = model.validation_step(val_batch, i)
    assert set(metrics) == {"val_loss", "val_wer_num", "val_wer_denom", "val_wer"}
    assert metrics["val_wer"] == pytest.approx(metrics["val_wer_num"].item() / metrics["val_wer_denom"].item())
    logs = model.on_validation_epoch_end()
    assert set(logs) == {"val_loss", "val_wer"} and model.validation_step_outputs == []
    assert set(model.pop_logged()) == {"val_loss", "val_wer"}  # on_validation_epoch_end log_dicts its values
    assert set(model.test_step(val_batch)) == {"test_loss", "test_wer_num", "test_wer_denom", "test_wer"}


def test_validation_step_before_optimization_and_the_way_out(corpus):
    model = EncDecCTCModel(tiny_cfg(corpus["train"]))
    batch = next(iter(model.train_dataloader()))
    assert set(model.validation_step(batch)) == {"val_loss", "val_wer_num", "val_wer_denom", "val_wer"}
    fn, state = model.functional  # a custom loop on the functional model updates the compat model in place
    optimizer, schedule, _ = fn.optimization({"name": "sgd", "lr": 0.1})
    from nemofn.core.state import TrainState

    train_state = TrainState.create(state, optimizer, rng=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_state, metrics = train_step(train_state, batch, StepConfig(fn.network.objective, optimizer, schedule))
    after = model.state_dict()
    assert not torch.equal(before["decoder.decoder_layers.0.weight"], after["decoder.decoder_layers.0.weight"])
    assert torch.equal(before["preprocessor.featurizer.fb"], after["preprocessor.featurizer.fb"])


# ----------------------------------------------------------------------------------------------------- weights


def test_load_state_dict_errors_and_subsets():
    model = EncDecCTCModel(tiny_cfg())
    sd = model.state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
    with pytest.raises(StateDictMismatchError, match="Missing key.*decoder.decoder_layers.0.weight"):
        model.load_state_dict(partial)
    with pytest.raises(RuntimeError, match="Unexpected key.*extra.weight"):
        model.load_state_dict({**sd, "extra.weight": torch.zeros(1)})
    zero = {k: torch.zeros_like(v) for k, v in partial.items() if k.startswith("encoder.")}
    result = model.load_state_dict(zero, strict=False)
    assert "decoder.decoder_layers.0.weight" in result.missing_keys
    assert all(torch.equal(model.state_dict()[k], v) for k, v in zero.items())
    wrong = {"decoder.decoder_layers.0.weight": torch.zeros(3, 3, 1), "encoder.encoder.0.mconv.0.conv.weight":
             torch.ones_like(sd["encoder.encoder.0.mconv.0.conv.weight"])}
    with pytest.raises(StateDictMismatchError, match="size mismatch for decoder.decoder_layers.0.weight"):
        model.load_state_dict(wrong, strict=False)
    assert model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"].abs().sum() == 0  # nothing was copied


def test_modes_freeze_to_and_summary():
    model = EncDecCTCModel(tiny_cfg())
    total = sum(p.numel() for p in model.parameters())
    assert model.num_weights == total > 0
    model.freeze()
    assert model.num_weights == 0 and model.training is False
    model.unfreeze()
    assert model.num_weights == total and model.training is True
    assert model.eval() is model and model.training is False and model.train().training is True
    assert model.to("cpu") is model
    state = model.fn_state
    model.to(dtype=torch.float64)
    assert model.fn_state is not state and model.state_dict()["decoder.decoder_layers.0.weight"].dtype == torch.float64
    assert model.state_dict()["preprocessor.featurizer.fb"].dtype == torch.float64
    summary = model.summarize()
    names = [row[0] for row in summary.rows]
    assert names == ["encoder", "decoder", "preprocessor"] and summary.total_parameters == total
    assert summary.rows[2][1:] == ("AudioToMelSpectrogramPreprocessor", 0, 0)
    assert "ConvASREncoder" in str(summary) and "Total" in str(summary)


def test_register_artifact(tmp_path):
    model = EncDecCTCModel(tiny_cfg())
    extra = tmp_path / "lexicon.txt"
    extra.write_text("a\n")
    assert model.register_artifact("extra_file", str(extra)) == str(extra)
    assert model.artifacts["extra_file"].path == str(extra) and model.cfg.extra_file == str(extra)
    assert model.register_artifact("x", "") == "" and model.register_artifact("x", None) is None
    with pytest.raises(ValueError, match="nested .nemo"):
        model.register_artifact("x", "other.nemo")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        model.register_artifact("x", str(tmp_path / "missing.txt"))


# -------------------------------------------------------------------------------- pretrained and partial init


def test_from_pretrained_resolves_local_caches_only(tmp_path, monkeypatch):
    model = EncDecCTCModel(tiny_cfg())
    nemofn_cache, nemo_cache = tmp_path / "fn_cache", tmp_path / "nemo_cache"
    model.save_to(str(nemofn_cache / "tiny_char.nemo"))
    model.save_to(str(nemo_cache / "stt_tiny" / "0123abcd" / "stt_tiny.nemo"))  # NeMo's NGC cache layout
    monkeypatch.setenv("NEMOFN_CACHE", str(nemofn_cache))
    monkeypatch.setenv("NEMO_CACHE_DIR", str(nemo_cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    restored = ASRModel.from_pretrained("tiny_char", map_location="cpu")
    assert type(restored) is EncDecCTCModel
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.state_dict().items())
    assert EncDecCTCModel.from_pretrained("stt_tiny", return_model_file=True).endswith("0123abcd/stt_tiny.nemo")
    assert ModelPT.from_pretrained(str(nemofn_cache / "tiny_char.nemo"), return_config=True).target.endswith(
        "EncDecCTCModel")
    assert {"tiny_char", "stt_tiny"} <= set(EncDecCTCModel.get_available_model_names())
    with pytest.raises(PretrainedModelNotFoundError, match="nemofn never downloads") as err:
        EncDecCTCModel.from_pretrained("nvidia/stt_en_conformer_ctc_small")
    assert str(nemofn_cache / "stt_en_conformer_ctc_small.nemo") in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_maybe_init_from_pretrained_checkpoint(tmp_path):
    source = EncDecCTCModel(tiny_cfg())
    path = str(tmp_path / "source.nemo")
    source.save_to(path)
    src = source.state_dict()

    model = EncDecCTCModel(tiny_cfg())
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"name": "no init keys"}))
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_nemo_model": path}))
    assert all(torch.equal(v, src[k]) for k, v in model.state_dict().items())

    model = EncDecCTCModel(tiny_cfg())
    mine = model.state_dict()["decoder.decoder_layers.0.weight"].clone()
    cfg = {"init_from_nemo_model": {"m0": {"path": path, "include": ["encoder"], "exclude": ["mconv.1"]}}}
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create(cfg))
    now = model.state_dict()
    assert torch.equal(now["encoder.encoder.0.mconv.0.conv.weight"], src["encoder.encoder.0.mconv.0.conv.weight"])
    assert not torch.equal(now["encoder.encoder.0.mconv.1.conv.weight"], src["encoder.encoder.0.mconv.1.conv.weight"])
    assert torch.equal(now["decoder.decoder_layers.0.weight"], mine)

    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {k: v for k, v in src.items() if k.startswith("decoder.")}, "epoch": 3}, ckpt)
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_ptl_ckpt": str(ckpt)}))
    assert torch.equal(model.state_dict()["decoder.decoder_layers.0.weight"], src["decoder.decoder_layers.0.weight"])
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": types.SimpleNamespace(a=1)}, unsafe)
    with pytest.raises(ValueError, match="weights_only=True"):
        model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_ptl_ckpt": str(unsafe)}))
    with pytest.raises(ValueError, match="more than one"):
        model.maybe_init_from_pretrained_checkpoint(
            OmegaConf.create({"init_from_nemo_model": path, "init_from_ptl_ckpt": str(ckpt)}))


def test_extract_state_dict_from(tmp_path):
    model = EncDecCTCModel(tiny_cfg())
    model.save_to(str(tmp_path / "m.nemo"))
    state = ModelPT.extract_state_dict_from(str(tmp_path / "m.nemo"), str(tmp_path / "out"), split_by_module=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["decoder.ckpt", "encoder.ckpt", "preprocessor.ckpt"]
    encoder = torch.load(tmp_path / "out" / "encoder.ckpt", weights_only=True)
    assert torch.equal(encoder["encoder.0.mconv.0.conv.weight"], state["encoder.encoder.0.mconv.0.conv.weight"])


# ------------------------------------------------------------------------------- a ModelPT that is not ASR


@attrs.frozen
class Regressor:
    """A functional model unit: ``init_state``, ``objective``, ``dataloader``."""

    cfg: object

    @property
    def network(self) -> Linear:
        return Linear(int(self.cfg.in_features), 1)

    def init_state(self, rng) -> ModelState:
        return ModelState.create(*self.network.init(rng))

    def objective(self, params, buffers, batch, *, train, rng):
        x, y = batch
        prediction, new_buffers = self.network.apply(params, buffers, x)
        return F.mse_loss(prediction, y), {}, new_buffers

    def dataloader(self, ds_cfg):
        g = torch.Generator().manual_seed(int(ds_cfg.seed))
        x = torch.randn(int(ds_cfg.size), int(self.cfg.in_features), generator=g)
        data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=int(ds_cfg.batch_size), shuffle=bool(ds_cfg.shuffle))


class RegressorModel(ModelPT, nemo_target="tests.collections.RegressorModel"):
    def build_functional(self, cfg):
        return Regressor(cfg)


def test_a_non_asr_model_gets_the_whole_api(tmp_path):
    cfg = {"in_features": 3, "train_ds": {"manifest_filepath": "synthetic", "size": 32, "seed": 0, "batch_size": 8},
           "optim": {"name": "sgd", "lr": 0.1}}
    model = RegressorModel(cfg)
    assert model.cfg.target == "tests.collections.RegressorModel" and model.cfg.train_ds.shuffle is True
    first = float(model.validation_step(next(iter(model.train_dataloader())))["val_loss"])
    trainer = Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model)
    assert trainer.global_step == 20 and model.train_state.step == 20
    assert float(model.validation_step(next(iter(model.train_dataloader())))["val_loss"]) < 0.5 * first
    x = torch.randn(4, 3)
    model.save_to(str(tmp_path / "reg.nemo"))
    restored = ModelPT.restore_from(str(tmp_path / "reg.nemo"))
    assert type(restored) is RegressorModel
    assert torch.equal(restored.eval()(x), model.eval()(x))
    assert set(restored.validation_step((x, x.sum(dim=1, keepdim=True)))) == {"val_loss"}
