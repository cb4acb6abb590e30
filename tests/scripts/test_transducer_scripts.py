"""NeMo's transducer scripts as a user runs them: a tiny TDT model (``speech_to_text_rnnt_bpe.py``) and a tiny hybrid
TDT + CTC model (``speech_to_text_hybrid_rnnt_ctc_bpe.py``) train on the CPU, get killed and resume bitwise exactly
with ``exp_manager.resume_if_exists``, and their ``.nemo`` transcribes with ``transcribe_speech.py`` (the hybrid
with both of its decoders)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compat.archive import load_config, open_nemo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "data"))

from demo_corpus import CorpusSpec, make_demo_corpus  # noqa: E402

#: A 1-layer, 32-wide FastConformer with a 32-wide prediction net and joint.
TINY = ["model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.n_heads=4",
        "model.encoder.subsampling_conv_channels=16", "model.model_defaults.pred_hidden=32",
        "model.model_defaults.joint_hidden=32", "model.train_ds.batch_size=4", "model.validation_ds.batch_size=4",
        "trainer.log_every_n_steps=1", "++trainer.enable_progress_bar=false", "trainer.devices=1",
        "trainer.accelerator=cpu", "trainer.strategy=auto", "trainer.max_epochs=100", "trainer.max_steps=16",
        "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0",
        "exp_manager.resume_if_exists=true", "exp_manager.resume_ignore_no_checkpoint=true",
        "++exp_manager.checkpoint_callback_params.every_n_train_steps=2"]

RUNS = {
    "tdt": ("speech_to_text_rnnt_bpe.py", "fastconformer_tdt_demo_bpe", "FastConformerTDTDemoBPE", []),
    "hybrid": ("speech_to_text_hybrid_rnnt_ctc_bpe.py", "fastconformer_hybrid_tdt_ctc_bpe",
               "FastConformer-Hybrid-TDT-CTC-BPE",
               ["model.preprocessor.features=80", "model.optim.sched.warmup_steps=4", "model.optim.lr=0.5"]),
}


def script(name: str) -> str:
    return str(ROOT / "scripts" / "asr" / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    root = tmp_path_factory.mktemp("transducer_scripts")
    manifests = make_demo_corpus(root / "corpus", CorpusSpec(num_train=12, num_val=4, num_test=4, seed=3),
                                 progress=None)
    tokenizer = process_asr_text_tokenizer(data_root=root / "tok", manifest=str(manifests["train"]), vocab_size=40)
    overrides = [f"model.train_ds.manifest_filepath={manifests['train']}",
                 f"model.validation_ds.manifest_filepath={manifests['validation']}",
                 f"model.tokenizer.dir={tokenizer}"]
    return {"manifests": manifests, "overrides": overrides}


def train_cmd(kind: str, data, exp_dir: Path) -> list[str]:
    name, config, _, extra = RUNS[kind]
    return [sys.executable, script(name), f"--config-name={config}", *data["overrides"], *TINY, *extra,
            f"exp_manager.exp_dir={exp_dir}"]


def nemo_of(kind: str, exp_dir: Path) -> Path:
    experiment = RUNS[kind][2]
    [path] = exp_dir.rglob(f"checkpoints/{experiment}.nemo")
    return path


def weights(nemo: Path) -> dict[str, torch.Tensor]:
    with open_nemo(nemo) as archive:
        return archive.state_dict()


def transcribe(model: Path, manifest: str, out: Path, tmp_path: Path, *extra: str) -> list[dict]:
    run = subprocess.run([sys.executable, script("transcribe_speech.py"), f"model_path={model}",
                          f"dataset_manifest={manifest}", f"output_filename={out}", "batch_size=3", *extra],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WER" in run.stdout
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_train_killed_resume_and_transcribe(kind, data, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")  # the same initial weights (and TDT omega coins) in every run
    monkeypatch.delenv("NEMO_EXPM_VERSION", raising=False)
    full = subprocess.run(train_cmd(kind, data, tmp_path / "full"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "val_wer" in full.stderr

    exp = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(kind, data, exp), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list(exp.rglob("checkpoints/*-last.ckpt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    again = subprocess.run(train_cmd(kind, data, exp), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    ours, theirs = weights(nemo_of(kind, exp)), weights(nemo_of(kind, tmp_path / "full"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]

    model = nemo_of(kind, tmp_path / "full")
    saved = load_config(model)
    assert saved.target.endswith("EncDecRNNTBPEModel" if kind == "tdt" else "EncDecHybridRNNTCTCBPEModel")
    assert saved.loss.loss_name == "tdt" and list(saved.decoding.durations) == [0, 1, 2, 3, 4]
    rows = transcribe(model, data["manifests"]["test"], tmp_path / "pred.json", tmp_path)
    assert len(rows) == 4 and all({"audio_filepath", "text", "pred_text"} <= set(r) for r in rows)
    if kind == "hybrid":
        ctc_rows = transcribe(model, data["manifests"]["test"], tmp_path / "pred_ctc.json", tmp_path,
                              "decoder_type=ctc")
        assert len(ctc_rows) == 4 and all("pred_text" in r for r in ctc_rows)
