"""Tests for nemofn/asr/modules/mel.py: the librosa-compatible mel filterbank."""

from __future__ import annotations

import io
import math
import tarfile

import pytest
import torch

from nemofn.asr.modules.mel import fft_frequencies, hz_to_mel, mel_filterbank, mel_frequencies, mel_to_hz


def _checkpoint_fb(nemo_path) -> torch.Tensor:
    with tarfile.open(nemo_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "model_weights.ckpt")
        state = torch.load(io.BytesIO(tar.extractfile(member).read()), weights_only=True)
    return state["preprocessor.featurizer.fb"]


@pytest.mark.parametrize(("name", "n_mels"), [("quartznet_char", 64), ("citrinet_bpe", 80)])
def test_matches_librosa_filterbank_stored_by_nemo(nemo3_dir, name, n_mels):
    """NeMo stored librosa.filters.mel(sr=16000, n_fft=512, n_mels, norm='slaney') in its checkpoints."""
    expected = _checkpoint_fb(nemo3_dir / f"{name}.nemo")[0]
    ours = mel_filterbank(16000, 512, n_mels, fmin=0.0, fmax=8000.0)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape == (n_mels, 257)
    assert (ours - expected).abs().max().item() <= 1e-7


def test_slaney_scale_anchor_points():
    # Linear below 1 kHz (15 mels at 1 kHz), then 27 mels per factor 6.4.
    mels = hz_to_mel(torch.tensor([0.0, 500.0, 1000.0, 6400.0]))
    torch.testing.assert_close(mels, torch.tensor([0.0, 7.5, 15.0, 42.0], dtype=torch.float64))
    hz = torch.tensor([0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)


def test_htk_scale():
    assert hz_to_mel(torch.tensor(700.0), htk=True).item() == pytest.approx(2595.0 * math.log10(2.0))
    hz = torch.tensor([0.0, 440.0, 7000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz, htk=True), htk=True), hz)


def test_frequency_grids():
    assert fft_frequencies(16000, 512).shape == (257,)
    assert fft_frequencies(16000, 512)[-1].item() == 8000.0
    centres = mel_frequencies(10, 0.0, 8000.0)
    assert centres[0].item() == 0.0 and centres[-1].item() == pytest.approx(8000.0)
    assert torch.all(centres[1:] > centres[:-1])


def test_slaney_norm_gives_equal_area_triangles():
    fb = mel_filterbank(16000, 4096, 40).double()
    edges = mel_frequencies(42, 0.0, 8000.0)
    bin_hz = 16000 / 4096
    # Each triangle has peak 2 / (f[i+2] - f[i]) and base f[i+2] - f[i], so area 1 (in Hz units).
    areas = fb.sum(dim=1) * bin_hz
    torch.testing.assert_close(areas, torch.ones(40, dtype=torch.float64), atol=0.02, rtol=0)
    assert torch.all(fb >= 0)
    assert torch.all(fb.amax(dim=1) <= 2.0 / (edges[2:] - edges[:-2]) + 1e-6)


def test_other_norms_and_band_limits():
    peak = mel_filterbank(16000, 512, 20, norm=None)
    assert peak.max().item() <= 1.0 and peak.amax(dim=1).min().item() > 0.5
    unit2 = mel_filterbank(16000, 512, 20, norm=2)
    torch.testing.assert_close(unit2.norm(dim=1), torch.ones(20))
    unit_inf = mel_filterbank(16000, 512, 20, norm=math.inf)
    torch.testing.assert_close(unit_inf.amax(dim=1), torch.ones(20))
    banded = mel_filterbank(16000, 512, 20, fmin=300.0, fmax=3400.0)
    freqs = fft_frequencies(16000, 512)
    outside = (freqs < 300.0) | (freqs > 3400.0)
    assert banded[:, outside].abs().max().item() == 0.0
    with pytest.raises(ValueError, match="mel norm"):
        mel_filterbank(16000, 512, 20, norm="area")
