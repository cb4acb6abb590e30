"""``scripts/asr/demo.py`` end to end as a user runs it: corpus, tokenizer, ``speech_to_text_ctc_bpe.py``,
``transcribe_speech.py``, the test WER, and a ``.nemo`` that restores; a misspelt key fails before any work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_runs_end_to_end(tmp_path):
    work = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/asr/demo.py"), "--work-dir", str(work), "--num-train", "12",
         "--num-eval", "4", "--vocab-size", "40", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
         "trainer.val_check_interval=3", "model.train_ds.batch_size=4", "model.train_ds.num_workers=0",
         "model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.subsampling_conv_channels=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert re.search(r"training took [\d.]+ min .*; test WER [\d.]+% on 4 utterances", run.stdout), run.stdout
    assert "REF:" in run.stdout and "HYP:" in run.stdout
    for step in ("scripts/data/demo_corpus.py", "process_asr_text_tokenizer.py", "speech_to_text_ctc_bpe.py",
                 "transcribe_speech.py"):
        assert f"+ {sys.executable}" in run.stdout and step in run.stdout  # each step is a script a user can run
    from compat.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(work / "model.nemo"))
    assert type(model).__name__ == "EncDecCTCModelBPE"
    hyps = model.transcribe(sorted((work / "corpus" / "wavs" / "test").glob("*.wav"))[:2], verbose=False)
    assert len(hyps) == 2
    assert list((work / "exp" / "ConformerDemoBPE").glob("*/checkpoints/*-last.ckpt"))  # exp_manager's folder


def test_demo_script_rejects_misspelt_keys_before_building_the_corpus(tmp_path):
    work = tmp_path / "demo"
    for override, message in [("trainer.max_step=5", "unknown key trainer.max_step in the override "
                                                      "'trainer.max_step=5'; did you mean trainer.max_steps?"),
                              ("+model.optimm.lr=0.1", "unknown key model.optimm; did you mean model.optim?"),
                              ("+model.spec_augmnt.freq_masks=0",
                               "unknown key model.spec_augmnt; did you mean model.spec_augment?")]:
        run = subprocess.run([sys.executable, str(ROOT / "scripts/asr/demo.py"), "--work-dir", str(work), override],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
    assert not work.exists()  # failed in seconds, before synthesising anything
