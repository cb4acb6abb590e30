"""The "your own model" example (``scripts/examples/own_model.py``) end to end: train a few steps through the
compat API, ``save_to``, ``restore_from`` (by ``target``), and get the same weights and outputs back."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from compat import Trainer
from compat.archive import load_config
from compat.core.classes import ModelPT

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "own_model.py"
TEXTS = ["a cab", "bad", "dab a cab", "be"]


@pytest.fixture(scope="module")
def own():
    spec = importlib.util.spec_from_file_location("own_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(7)
    lines = []
    for i, text in enumerate(TEXTS):
        n = 16000 * (i + 2) // 4
        wave = 0.3 * np.sin(2 * np.pi * 220 * (i + 1) * np.arange(n) / 16000) + 0.02 * rng.standard_normal(n)
        sf.write(root / f"w{i}.wav", wave.astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(root / f"w{i}.wav"), "duration": n / 16000, "text": text}))
    (root / "train.json").write_text("\n".join(lines) + "\n")
    return str(root / "train.json")


def test_own_model_trains_saves_and_restores(own, manifest: str, tmp_path: Path):
    torch.manual_seed(0)
    labels = [" ", "a", "b", "c", "d", "e"]
    cfg = {"sample_rate": 16000, "labels": labels, "preprocessor": {"features": 24, "dither": 1e-5},
           "encoder": {"d_model": 32}, "optim": {"name": "adamw", "lr": 1e-2},
           "train_ds": {"manifest_filepath": manifest, "batch_size": 2, "shuffle": True}}
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, log_every_n_steps=1,
                      enable_progress_bar=False, enable_model_summary=False)
    model = own.TinyCTCModel(cfg, trainer=trainer)
    assert model.cfg.target == "nemo.collections.asr.models.TinyCTCModel"
    before = model.state_dict()["encoder.proj.weight"].clone()
    trainer.fit(model)
    assert model.global_step == 6 and np.isfinite(trainer.logged_metrics["train_loss"])
    assert not torch.equal(before, model.state_dict()["encoder.proj.weight"])

    path = tmp_path / "tiny.nemo"
    model.save_to(str(path))
    with tarfile.open(path) as tar:
        assert tar.getnames() == [".", "./model_config.yaml", "./model_weights.ckpt"]
    assert load_config(path).target == "nemo.collections.asr.models.TinyCTCModel"

    restored = ModelPT.restore_from(str(path), map_location="cpu")
    assert type(restored) is own.TinyCTCModel
    assert restored.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())
    ours = model.transcribe(manifest, return_hypotheses=True, verbose=False)
    theirs = restored.transcribe(manifest, return_hypotheses=True, verbose=False)
    assert len(ours) == len(TEXTS)
    for a, b in zip(ours, theirs):
        assert a.text == b.text and torch.equal(a.y_sequence, b.y_sequence)
    signal = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 6000])
    torch.testing.assert_close(model.eval()(input_signal=signal, input_signal_length=lengths)[0],
                               restored.eval()(input_signal=signal, input_signal_length=lengths)[0], rtol=0, atol=0)


def test_example_main_runs(own, manifest: str, tmp_path: Path, capsys):
    out = tmp_path / "main.nemo"
    own.main(manifest, out=str(out), steps=3)
    printed = capsys.readouterr().out
    assert "loss after 3 steps" in printed and "TinyCTCModel" in printed and out.is_file()
