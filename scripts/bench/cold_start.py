"""Cold start: a fresh Python process that imports compat, restores a `.nemo` and transcribes one file.

    python scripts/bench/cold_start.py                                  # the Conformer reference in ../shared
    python scripts/bench/cold_start.py --nemo demo_run/model.nemo --audio some.wav --runs 5

Each run is a new interpreter (nothing cached in the process; the OS file cache is warm after the first run, as on
a user's machine). Prints the median wall time from process start to exit, and the median of each phase measured
inside the child: `import compat.collections.asr.models`, `ASRModel.restore_from`, the first `transcribe`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "nemo3"

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from compat.collections.asr.models import ASRModel
t1 = time.perf_counter()
model = ASRModel.restore_from(sys.argv[1], map_location="cpu")
t2 = time.perf_counter()
hyps = model.transcribe([sys.argv[2]], verbose=False)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "restore_s": t2 - t1, "transcribe_s": t3 - t2, "text": hyps[0].text}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nemo", default=str(REFERENCE / "conformer_bpe.nemo"))
    ap.add_argument("--audio", default=str(REFERENCE / "audio" / "test_00000.wav"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for path in (args.nemo, args.audio):
        if not Path(path).is_file():
            sys.exit(f"no such file: {path} (pass --nemo / --audio)")

    walls, phases = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", _CHILD, args.nemo, args.audio], capture_output=True, text=True,
                             cwd=ROOT)
        walls.append(time.perf_counter() - start)
        if run.returncode != 0:
            sys.exit(f"the child process failed:\n{run.stderr[-3000:]}")
        phases.append(json.loads(run.stdout.strip().splitlines()[-1]))
    median = {key: statistics.median(p[key] for p in phases) for key in ("import_s", "restore_s", "transcribe_s")}
    print(f"cold start, median of {args.runs} runs: {statistics.median(walls):.2f} s wall to the first transcript "
          f"(import {median['import_s']:.2f} s, restore {median['restore_s']:.2f} s, transcribe "
          f"{median['transcribe_s']:.2f} s); text: {phases[-1]['text']!r}")


if __name__ == "__main__":
    main()
