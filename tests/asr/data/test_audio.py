"""Audio reading: offset/duration, channel mixing and selection, resampling, int_values, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from nemofn.asr.data.audio import load_audio
from nemofn.asr.data.errors import AudioError


def _ramp_wav(path, seconds=1.0, sample_rate=16000, channels=1, subtype="FLOAT"):
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    data = np.stack([t * 0.5 * (c + 1) for c in range(channels)], axis=1) if channels > 1 else t * 0.5
    sf.write(path, data, sample_rate, subtype=subtype)
    return data


def test_full_read_mono(tmp_path):
    data = _ramp_wav(tmp_path / "a.wav")
    out = load_audio(tmp_path / "a.wav", sample_rate=16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    np.testing.assert_array_equal(out, data)


def test_offset_and_duration_read_only_that_range(tmp_path):
    data = _ramp_wav(tmp_path / "a.wav")
    out = load_audio(tmp_path / "a.wav", sample_rate=16000, offset=0.25, duration=0.5)
    assert out.shape == (8000,)
    np.testing.assert_array_equal(out, data[4000:12000])
    # a duration running past the end stops at the end; None and 0 read to the end (NeMo)
    assert load_audio(tmp_path / "a.wav", sample_rate=16000, offset=0.75, duration=10.0).shape == (4000,)
    assert load_audio(tmp_path / "a.wav", sample_rate=16000, offset=0.5, duration=0).shape == (8000,)


def test_stereo_is_averaged_by_default(tmp_path):
    data = _ramp_wav(tmp_path / "s.wav", channels=2)
    for selector in (None, "average"):
        out = load_audio(tmp_path / "s.wav", sample_rate=16000, channel_selector=selector)
        np.testing.assert_allclose(out, data.mean(axis=1), atol=1e-7)


def test_channel_selector_picks_channels(tmp_path):
    data = _ramp_wav(tmp_path / "s.wav", channels=3)
    np.testing.assert_array_equal(load_audio(tmp_path / "s.wav", sample_rate=16000, channel_selector=1), data[:, 1])
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav", sample_rate=16000, channel_selector=[0, 2]),
                               data[:, [0, 2]].mean(axis=1), atol=1e-7)
    with pytest.raises(AudioError, match="channel_selector=3 but the file has 3 channel"):
        load_audio(tmp_path / "s.wav", sample_rate=16000, channel_selector=3)


def test_resampling_keeps_the_frequency(tmp_path):
    rate, freq = 22050, 440.0
    t = np.arange(rate) / rate
    sf.write(tmp_path / "sine.wav", 0.5 * np.sin(2 * np.pi * freq * t), rate, subtype="PCM_16")
    out = load_audio(tmp_path / "sine.wav", sample_rate=16000)
    assert abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert abs(peak_hz - freq) < 2.0
    # an ideal 440 Hz sine at 16 kHz: HQ resampling leaves little error away from the edges
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(out)) / 16000)
    assert np.max(np.abs(out[500:-500] - expected[500:-500])) < 2e-3


def test_offset_uses_the_file_rate_before_resampling(tmp_path):
    _ramp_wav(tmp_path / "a.wav", sample_rate=8000)
    out = load_audio(tmp_path / "a.wav", sample_rate=16000, offset=0.5, duration=0.25)
    assert abs(len(out) - 4000) <= 1


def test_int_values_gives_the_same_scale(tmp_path):
    _ramp_wav(tmp_path / "i.wav", subtype="PCM_16")
    as_float = load_audio(tmp_path / "i.wav", sample_rate=16000)
    as_int = load_audio(tmp_path / "i.wav", sample_rate=16000, int_values=True)
    assert as_int.dtype == np.float32
    np.testing.assert_allclose(as_int, as_float, atol=1e-6)


def test_flac(tmp_path):
    data = _ramp_wav(tmp_path / "a.flac", subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac", sample_rate=16000), data, atol=1 / 32768)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(tmp_path / "nope.wav", sample_rate=16000)


def test_corrupt_file_names_file_and_cause(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError) as info:
        load_audio(tmp_path / "bad.wav", sample_rate=16000)
    assert str(tmp_path / "bad.wav") in str(info.value) and "cannot be decoded" in str(info.value)


def test_truncated_file(tmp_path):
    _ramp_wav(tmp_path / "a.wav", subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "a.wav").read_bytes()[:20])
    with pytest.raises(AudioError, match="cut.wav"):
        load_audio(tmp_path / "cut.wav", sample_rate=16000)


def test_empty_file_and_empty_range(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="holds no audio samples"):
        load_audio(tmp_path / "empty.wav", sample_rate=16000)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav"):
        load_audio(tmp_path / "zero.wav", sample_rate=16000)
    _ramp_wav(tmp_path / "a.wav")
    with pytest.raises(AudioError, match="past the end"):
        load_audio(tmp_path / "a.wav", sample_rate=16000, offset=2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_audio_error_naming_the_file_and_the_sample(tmp_path, bad):
    data = np.zeros(16000, dtype=np.float32)
    data[12345] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"bad\.wav: holds NaN or Inf samples \(the first at sample 12345, 0\.772 s\)"):
        load_audio(path, sample_rate=16000)
    # a range that avoids the bad sample reads fine; one that contains it names its position in the file
    assert load_audio(path, sample_rate=16000, duration=0.5).shape == (8000,)
    with pytest.raises(AudioError, match="the first at sample 12345"):
        load_audio(path, sample_rate=16000, offset=0.5)
