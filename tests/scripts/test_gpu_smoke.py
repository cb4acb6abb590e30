"""``scripts/bench/gpu_smoke.py``: its CPU dry run goes through the whole sequence (corpus, tokenizer, bf16-mixed
training through ``compat.Trainer``, validation, ``save_to`` / ``restore_from``, transcription, the figures), and
without a GPU the default run stops at once with status 2 and one clear line. The GPU run itself needs a card."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench" / "gpu_smoke.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_runs_the_whole_sequence(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "2", "--num-train", "8", "--num-val", "4",
         "--num-test", "4", "--vocab-size", "30", "--peak-tflops", "1.0", "--work-dir", str(tmp_path),
         "model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.subsampling_conv_channels=16",
         "model.train_ds.batch_size=4", "model.validation_ds.batch_size=4"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "gpu_smoke: CPU" in out and "precision bf16-mixed, 2 steps" in out
    assert re.search(r"^train: 2 steps in [\d.]+ s .*steps 2-2: 4 utterances in [\d.]+ s = [\d.]+ utt/s$", out, re.M)
    assert re.search(r"^validate: during fit val_loss=[\d.]+, val_wer=[\d.]+; trainer.validate val_loss=[\d.]+, "
                     r"val_wer=[\d.]+$", out, re.M), out
    assert re.search(r"^transcribe: 4 utterances, [\d.]+ s of audio in [\d.]+ s = RTFx \d+$", out, re.M), out
    assert re.search(r"^save_to / restore_from: [\d.]+ MB; transcripts equal for 4/4$", out, re.M), out
    assert re.search(r"^MFU: one step of the first batch = [\d.]+ GFLOP; [\d.e-]+ TFLOP/s achieved .* / 1 TFLOP/s "
                     r"dense bf16 peak = [\d.]+%$", out, re.M), out
    assert (tmp_path / "smoke.nemo").is_file() and (tmp_path / "corpus" / "test_manifest.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed where there is no GPU")
def test_without_a_gpu_it_exits_with_status_2_and_says_why(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--work-dir", str(tmp_path / "work")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device cpu" in lines[0], run.stderr
    assert not (tmp_path / "work").exists()  # stopped before building anything


def test_peak_table_and_step_timer():
    smoke = _load()
    assert smoke.peak_tflops("NVIDIA H200") == 989.0
    assert smoke.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert smoke.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert smoke.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert smoke.peak_tflops("NVIDIA L4") == 121.0 and smoke.peak_tflops("NVIDIA L40S") == 362.0
    assert smoke.peak_tflops("NVIDIA A10") == 125.0 and smoke.peak_tflops("NVIDIA A10G") is None
    assert smoke.peak_tflops("Tesla T4") is None

    timer = smoke.StepTimer(warmup=1, device=torch.device("cpu"))
    trainer = type("T", (), {"global_step": 0, "max_steps": 3})()
    batch = (torch.zeros(2, 100), torch.tensor([100, 50]))
    for step in range(3):
        trainer.global_step = step
        timer.on_train_batch_start(trainer, None, batch, step)
        trainer.global_step = step + 1
        timer.on_train_batch_end(trainer, None, {}, batch, step)
    assert (timer.steps, timer.utterances, timer.padded_samples) == (2, 4, 400) and timer.seconds >= 0
