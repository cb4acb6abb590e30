#!/usr/bin/env bash
# The main job: sets up ./.venv on a fresh machine, then builds the demo corpus, trains a small CTC model on the
# CPU and transcribes the test split. Extra arguments go to scripts/asr/demo.py (e.g. trainer.max_steps=300).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python scripts/asr/demo.py "$@"
