"""Files written by compat restore in real NeMo (skipped unless ``nemo_toolkit[asr]`` is installed).

NeMo 3.0 must rebuild the same class from ``target``, load our weights strictly (``weights_only=True``), find our
tokenizer artifacts, and compute the same log-probs and transcripts as compat.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

nemo_asr = pytest.importorskip("nemo.collections.asr",
                               reason="real NeMo is not installed (pip install nemo_toolkit[asr])")

from compat.collections.asr.models import ASRModel  # noqa: E402


@pytest.mark.parametrize("name", ["quartznet_char", "citrinet_bpe"])
def test_real_nemo_restores_our_resaved_archive(nemo3_dir: Path, tmp_path: Path, name: str):
    ours = ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu").eval()
    path = tmp_path / f"{name}.nemo"
    ours.save_to(str(path))
    theirs = nemo_asr.models.ASRModel.restore_from(str(path), map_location="cpu", strict=True).eval()
    assert type(theirs).__name__ == type(ours).__name__
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        expected = theirs(input_signal=ref["signal"], input_signal_length=ref["signal_len"])[0]
        got = ours(input_signal=ref["signal"], input_signal_length=ref["signal_len"])[0]
    assert (expected - got).abs().max().item() <= 1e-4
    files = [str(nemo3_dir / "audio" / f"test_0000{i}.wav") for i in range(4)]
    assert [h.text for h in theirs.transcribe(files, verbose=False)] == \
        [h.text for h in ours.transcribe(files, verbose=False)]


@pytest.mark.parametrize("name", ["fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe"])
def test_real_nemo_restores_our_transducers(nemo3_dir: Path, tmp_path: Path, name: str):
    ours = ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu").eval()
    path = tmp_path / f"{name}.nemo"
    ours.save_to(str(path))
    theirs = nemo_asr.models.ASRModel.restore_from(str(path), map_location="cpu", strict=True).eval()
    assert type(theirs).__name__ == type(ours).__name__
    files = [str(nemo3_dir / "audio" / f"test_0000{i}.wav") for i in range(4)]
    assert [h.text for h in theirs.transcribe(files, verbose=False)] == \
        [h.text for h in ours.transcribe(files, verbose=False)]
