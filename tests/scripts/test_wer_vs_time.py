"""``scripts/bench/wer_vs_time.py`` end to end on a tiny corpus: one scored line per checkpoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wer_vs_time_scores_every_checkpoint(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts/bench/wer_vs_time.py"), "--every", "3", "--work-dir",
           str(tmp_path / "run"), "--num-train", "12", "--num-eval", "4", "--vocab-size", "40", "trainer.max_steps=6",
           "model.train_ds.batch_size=4", "model.encoder.n_layers=1", "model.encoder.d_model=32",
           "model.encoder.subsampling_conv_channels=16", "trainer.val_check_interval=3"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = re.findall(r"step\s+(\d+)\s+([\d.]+) min\s+WER\s+([\d.]+)%", run.stdout)
    assert [int(step) for step, _, _ in rows] == [3, 6], run.stdout
    assert float(rows[0][1]) <= float(rows[1][1])
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "already holds checkpoints" in again.stderr  # never mixes two runs
