"""Shared fixtures. Reference outputs written by real NeMo 3.0 live in ``../shared/reference/nemo3``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NEMO3_DIR = REPO_ROOT.parent / "shared" / "reference" / "nemo3"
REFERENCE_NAMES = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe")


@pytest.fixture(scope="session")
def nemo3_dir() -> Path:
    """Path of the NeMo 3.0 reference folder; skips the test when it is absent (as on a user's machine)."""
    if not (NEMO3_DIR / "README.md").is_file():
        pytest.skip(f"NeMo 3.0 reference outputs not found at {NEMO3_DIR}; parity tests need ../shared/reference/nemo3")
    return NEMO3_DIR
