"""End to end on the functional path: a tiny corpus, a tiny QuartzNet, a few Fabric steps, transcribe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemofn.asr.recipes.ctc_training import train_ctc
from nemofn.train.loop import FitConfig

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts" / "data"))

from demo_corpus import CorpusSpec, make_demo_corpus  # noqa: E402


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return make_demo_corpus(out, CorpusSpec(num_train=8, num_val=4, num_test=4, seed=3), progress=None)


def tiny_config(manifests):
    cfg = OmegaConf.load(ROOT / "configs/asr/quartznet_demo_char.yaml")
    cfg.model.encoder.jasper = [
        {"filters": 32, "repeat": 1, "kernel": [11], "stride": [2], "dilation": [1], "dropout": 0.0,
         "residual": False, "separable": True},
        {"filters": 32, "repeat": 2, "kernel": [11], "stride": [1], "dilation": [1], "dropout": 0.0,
         "residual": True, "separable": True},
        {"filters": 64, "repeat": 1, "kernel": [1], "stride": [1], "dilation": [1], "dropout": 0.0,
         "residual": False},
    ]
    cfg.model.decoder.feat_in = 64
    cfg.model.train_ds.manifest_filepath = str(manifests["train"])
    cfg.model.train_ds.batch_size = 4
    cfg.model.train_ds.num_workers = 0
    cfg.model.validation_ds.manifest_filepath = str(manifests["validation"])
    cfg.model.test_ds.manifest_filepath = str(manifests["test"])
    cfg.model.optim.name = "novograd"  # NeMo's QuartzNet optimizer, fast on this tiny problem
    cfg.model.optim.betas = [0.8, 0.5]
    cfg.model.optim.lr = 0.05
    cfg.model.optim.sched.warmup_steps = 2
    return cfg


def test_tiny_model_trains_and_transcribes(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus)
    fit_cfg = FitConfig(max_steps=24, log_every_n_steps=2, val_check_interval=12, check_val_every_n_epoch=None,
                        log_dir=str(tmp_path / "logs"), progress_bar=False, loggers=("csv",), accelerator="cpu")
    model, result = train_ctc(cfg.model, fit_cfg, clip_grad_norm=1.0)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert result.state.step == 24
    assert len(losses) == 12
    assert min(losses[-3:]) < 0.7 * max(losses[:2]), losses
    val_rows = [row for row in result.history if "val_loss" in row]
    assert val_rows and all(0.0 <= row["val_wer"] for row in val_rows)  # WER of greedy transcripts, as NeMo logs
    wer, hyps, refs = model.evaluate_wer(result.state.model, model.dataloader(cfg.model.test_ds))
    assert len(hyps) == len(refs) == 4 and wer >= 0.0
    manifest = Path(tiny_corpus["test"])
    files = [str(manifest.parent / json.loads(line)["audio_filepath"]) for line in manifest.read_text().splitlines()]
    texts = model.transcribe(result.state.model, files, batch_size=3)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
