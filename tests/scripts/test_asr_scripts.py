"""NeMo's ASR scripts as a user runs them: train with Hydra overrides, get killed and resume bitwise exactly with
``exp_manager.resume_if_exists``, fine-tune the ``.nemo`` with a frozen encoder, transcribe, score; and typos at
every level fail in seconds, naming the key and the closest one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compat.archive import open_nemo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "data"))

from demo_corpus import CorpusSpec, make_demo_corpus  # noqa: E402

TINY = ["model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.subsampling_conv_channels=16",
        "model.train_ds.batch_size=4", "trainer.log_every_n_steps=1", "++trainer.enable_progress_bar=false"]


def script(name: str) -> str:
    return str(ROOT / "scripts" / "asr" / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    root = tmp_path_factory.mktemp("scripts")
    manifests = make_demo_corpus(root / "corpus", CorpusSpec(num_train=12, num_val=4, num_test=4, seed=5),
                                 progress=None)
    tokenizer = process_asr_text_tokenizer(data_root=root / "tok", manifest=str(manifests["train"]), vocab_size=40)
    overrides = [f"model.train_ds.manifest_filepath={manifests['train']}",
                 f"model.validation_ds.manifest_filepath={manifests['validation']}",
                 f"model.tokenizer.dir={tokenizer}"]
    return {"root": root, "manifests": manifests, "overrides": overrides}


def train_cmd(data, exp_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, script("speech_to_text_ctc_bpe.py"), "--config-name=conformer_demo_bpe",
            *data["overrides"], *TINY, f"exp_manager.exp_dir={exp_dir}", "exp_manager.resume_if_exists=true",
            "exp_manager.resume_ignore_no_checkpoint=true", "trainer.max_steps=24", "trainer.val_check_interval=4",
            "++exp_manager.checkpoint_callback_params.every_n_train_steps=2", *extra]


def weights(nemo: Path) -> dict[str, torch.Tensor]:
    with open_nemo(nemo) as archive:
        return archive.state_dict()


def nemo_of(exp_dir: Path) -> Path:
    [path] = exp_dir.glob("ConformerDemoBPE/checkpoints/ConformerDemoBPE.nemo")
    return path


def test_train_killed_resume_finetune_transcribe_and_score(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # Lightning's seed: the same initial weights in every run
    monkeypatch.delenv("NEMO_EXPM_VERSION", raising=False)  # each run is a new job
    # 1. the uninterrupted run
    full = subprocess.run(train_cmd(data, tmp_path / "full"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    # 2. the same command, killed after its first checkpoints, then run again: it resumes and ends identical
    exp = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, exp), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(exp.glob("*/checkpoints/*-last.ckpt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    again = subprocess.run(train_cmd(data, exp), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "-last.ckpt" in again.stderr
    ours, theirs = weights(nemo_of(exp)), weights(nemo_of(tmp_path / "full"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]

    # 3. fine-tune the .nemo with the encoder frozen: only the rest changes
    source = nemo_of(tmp_path / "full")
    m = data["manifests"]
    tune = subprocess.run(
        [sys.executable, script("speech_to_text_finetune.py"), f"init_from_nemo_model={source}",
         f"model.train_ds.manifest_filepath={m['train']}", f"model.validation_ds.manifest_filepath={m['validation']}",
         "model.train_ds.batch_size=4", "model.freeze_updates.enabled=true", "trainer.max_steps=3",
         "trainer.devices=1", "trainer.accelerator=cpu", "trainer.strategy=auto", "trainer.enable_progress_bar=false",
         "model.optim.sched.warmup_steps=1", f"exp_manager.exp_dir={tmp_path / 'tune'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert tune.returncode == 0, tune.stderr[-3000:]
    [tuned_path] = (tmp_path / "tune").glob("*/*/checkpoints/*.nemo")
    tuned, before = weights(tuned_path), weights(source)
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    encoder = [k for k in tuned if k.startswith("encoder.") and not k.endswith(statistics)]
    assert encoder and all(torch.equal(tuned[k], before[k]) for k in encoder)
    # as in NeMo, a module frozen by freeze_updates stays in training mode: its BatchNorm statistics still update
    assert any(not torch.equal(tuned[k], before[k]) for k in tuned if k.startswith("encoder.") and k.endswith(
        statistics))
    assert not torch.equal(tuned["decoder.decoder_layers.0.weight"], before["decoder.decoder_layers.0.weight"])

    # 4. transcribe the test split from the fine-tuned .nemo; 5. score the predictions
    out = tmp_path / "predictions.json"
    tr = subprocess.run([sys.executable, script("transcribe_speech.py"), f"model_path={tuned_path}",
                         f"dataset_manifest={m['test']}", f"output_filename={out}", "batch_size=3"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert tr.returncode == 0, tr.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all({"audio_filepath", "text", "pred_text"} <= set(r) for r in rows)
    assert "WER" in tr.stdout
    ev = subprocess.run([sys.executable, script("speech_to_text_eval.py"), f"dataset_manifest={out}",
                         "only_score_manifest=true", "use_cer=true"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0 and "Dataset CER:" in ev.stdout, ev.stderr[-2000:]
    assert not any((tmp_path / name).exists() for name in ("outputs", "multirun", ".hydra"))


@pytest.mark.parametrize("override,message", [
    ("+trainer.max_stepz=3", "unknown key trainer.max_stepz; did you mean trainer.max_steps?"),
    ("+model.optim.lrr=0.1", "unknown key model.optim.lrr; did you mean model.optim.lr?"),
    ("+model.encoder.d_modle=64", "unknown key model.encoder.d_modle; did you mean model.encoder.d_model?"),
    ("+model.optimm.lr=0.1", "unknown key model.optimm; did you mean model.optim?"),
    ("+model.spec_augmnt.freq_masks=0", "unknown key model.spec_augmnt; did you mean model.spec_augment?"),
    ("model.preprocessor.features=sixtyfour", "model.preprocessor.features: wrong type: got 'sixtyfour'"),
    ("trainer.max_stepz=3", "Key 'max_stepz' is not in struct"),
])
def test_typos_fail_within_seconds_naming_the_key(data, tmp_path, override, message):
    start = time.perf_counter()
    run = subprocess.run(train_cmd(data, tmp_path / "exp", override), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and message in run.stderr, run.stderr[-3000:]
    assert time.perf_counter() - start < 30
    assert not list((tmp_path / "exp").glob("*/checkpoints/*.ckpt"))  # nothing was trained
