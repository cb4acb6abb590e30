"""``scripts/asr/demo.py`` end to end as a user runs it: corpus, Fabric training, test WER, a `.nemo` that restores."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_runs_end_to_end(tmp_path):
    pytest.importorskip("espeakng_loader", reason="the demo corpus needs `pip install espeakng-loader`")
    work = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/asr/demo.py"), "--work-dir", str(work), "--num-train", "12",
         "--num-eval", "4", "--vocab-size", "40", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
         "trainer.val_check_interval=3", "model.train_ds.batch_size=4", "model.train_ds.num_workers=0",
         "model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.subsampling_conv_channels=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert re.search(r"trained 6 steps in [\d.]+ min; test WER [\d.]+% on 4 utterances", run.stdout), run.stdout
    assert "REF:" in run.stdout and "HYP:" in run.stdout
    from compat.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(work / "model.nemo"))
    assert type(model).__name__ == "EncDecCTCModelBPE"
    hyps = model.transcribe(sorted((work / "corpus" / "wavs" / "test").glob("*.wav"))[:2], verbose=False)
    assert len(hyps) == 2


def test_demo_script_rejects_a_misspelt_trainer_key_before_building_the_corpus(tmp_path):
    work = tmp_path / "demo"
    run = subprocess.run([sys.executable, str(ROOT / "scripts/asr/demo.py"), "--work-dir", str(work),
                          "trainer.max_step=5"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "unsupported key(s) ['max_step']" in run.stderr and "'max_steps'" in run.stderr, run.stderr[-2000:]
    assert not work.exists()  # failed in seconds, before synthesising anything
