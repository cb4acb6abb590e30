"""transcribe() groups inputs by length (longest first) and reads audio ahead; outputs keep the input order and do not
depend on which clips share a batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compat.collections.asr.models import ASRModel


@pytest.fixture(scope="module", params=["conformer_bpe", "quartznet_char", "fastconformer_rnnt_bpe"])
def model(request, nemo3_dir: Path):
    return ASRModel.restore_from(str(nemo3_dir / f"{request.param}.nemo"), map_location="cpu")


def test_batched_outputs_equal_one_at_a_time_in_input_order(model, nemo3_dir: Path):
    files = sorted(str(p) for p in (nemo3_dir / "audio").glob("*.wav"))
    files = files + files[::-1][:3]  # repeats, so equal lengths occur in the batch
    batched = model.transcribe(files, batch_size=3, return_hypotheses=True, verbose=False, num_workers=2)
    single = [model.transcribe([f], batch_size=1, return_hypotheses=True, verbose=False)[0] for f in files]
    assert [h.text for h in batched] == [h.text for h in single]
    for b, s in zip(batched, single):
        if b.y_sequence.is_floating_point():  # CTC log-probs
            torch.testing.assert_close(b.y_sequence, s.y_sequence, atol=1e-4, rtol=0)  # the parity tolerance
        else:
            assert torch.equal(torch.as_tensor(b.y_sequence), torch.as_tensor(s.y_sequence))


def test_num_workers_is_checked(model, nemo3_dir: Path):
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        model.transcribe([str(nemo3_dir / "audio" / "test_00000.wav")], num_workers=-1, verbose=False)
