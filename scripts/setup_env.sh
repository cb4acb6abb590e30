#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs nemofn with its test and demo extras. Sourced by demo.sh and test.sh.
# torch is pinned to 2.13.0 in pyproject.toml, which takes the CPU wheel (an unpinned torch pulls a CUDA build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
source "$ROOT/.venv/bin/activate"
stamp="$ROOT/.venv/.nemofn-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
