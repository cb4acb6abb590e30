"""``scripts/examples/custom_loop.py`` runs as a user would run it, and its loss goes down."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "custom_loop.py"


def test_custom_loop_example_trains(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--steps", "100"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"step\s+(\d+)\s+loss ([\d.]+)\s+val_loss ([\d.]+)", run.stdout)
    assert [int(r[0]) for r in rows] == [1, 50, 100], run.stdout
    first, last = float(rows[0][2]), float(rows[-1][2])
    assert last < 0.5 * first, run.stdout
