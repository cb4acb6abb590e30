"""The up-front data check: bad audio and manifest lines found when the dataset is built, all at once, as
``path:line: reason``; ``skip_bad_samples``; the header cache; non-UTF-8 manifests; silent-drop warnings."""

from __future__ import annotations

import json
import logging
import string
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from nemofn.asr.configs.data import DatasetConfigError
from nemofn.asr.data import dataset as dataset_module
from nemofn.asr.data import manifest_check
from nemofn.asr.data.errors import BadManifestError, ManifestError
from nemofn.asr.data.dataset import build_dataloader, build_dataset
from nemofn.asr.data.manifest import load_manifests, read_manifest
from nemofn.asr.data.manifest_check import BadLine, check_manifest_audio
from nemofn.asr.data.transcript_check import ctc_required_frames
from nemofn.asr.tokenizers import CharTokenizer

LABELS = [" ", *string.ascii_lowercase, "'"]
RATE = 16000


def _wav(path, seconds=1.0, channels=1, rate=RATE):
    samples = np.random.default_rng(0).uniform(-0.3, 0.3, size=(int(seconds * rate), channels)).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def _wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """A 44-byte PCM-16 WAV header written by hand (libsndfile refuses to write a rate of 0)."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


def _manifest(path, lines):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


# line number -> the kind the check must report (1-based; the manifest below)
EXPECTED_ERRORS = {2: "unreadable", 3: "no_samples", 4: "bad_sample_rate", 5: "offset_past_end", 7: "missing",
                   8: "bad_line", 10: "empty_range"}
EXPECTED_REASONS = {2: "libsndfile cannot read the audio header", 3: "holds no audio samples (a header only)",
                    4: "sample rate 0", 5: "offset 2.0 s is at or past the end", 7: "'wavs/missing.wav' not found",
                    8: "not valid JSON", 10: "shorter than one sample"}


@pytest.fixture
def bad_corpus(tmp_path):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    _wav(wavs / "good.wav", 1.0)
    _wav(wavs / "other.wav", 0.5)
    (wavs / "corrupt.wav").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (wavs / "header_only.wav").write_bytes(_wav_header(RATE, 1, 0))
    (wavs / "rate0.wav").write_bytes(_wav_header(0, 1, 3200) + bytes(3200))
    lines = [
        {"audio_filepath": "wavs/good.wav", "duration": 1.0, "text": "good one"},                 # 1 fine
        {"audio_filepath": "wavs/corrupt.wav", "duration": 1.0, "text": "corrupt"},               # 2
        {"audio_filepath": "wavs/header_only.wav", "duration": 1.0, "text": "header"},            # 3
        {"audio_filepath": "wavs/rate0.wav", "duration": 0.1, "text": "rate zero"},               # 4
        {"audio_filepath": "wavs/good.wav", "duration": 0.5, "offset": 2.0, "text": "offset"},    # 5
        {"audio_filepath": "wavs/good.wav", "duration": 1.5, "text": "too long duration"},        # 6 warning
        {"audio_filepath": "wavs/missing.wav", "duration": 1.0, "text": "missing"},               # 7
        '{"audio_filepath": "wavs/good.wav", "duration": 1.0',                                    # 8
        {"audio_filepath": "wavs/other.wav", "duration": 0.52, "text": "rounded duration"},       # 9 fine
        {"audio_filepath": "wavs/good.wav", "duration": 1e-6, "text": "tiny"},                    # 10
        {"audio_filepath": "wavs/good.wav", "duration": 0.5, "offset": 0.25, "text": "segment"},  # 11 fine
    ]
    return _manifest(tmp_path / "train.json", lines)


def _cfg(manifest, **overrides):
    cfg = {"manifest_filepath": str(manifest), "sample_rate": RATE, "batch_size": 2, "labels": LABELS}
    cfg.update(overrides)
    return cfg


def _report(manifest, **kwargs):
    errors = []
    entries = load_manifests(str(manifest), check_audio_exists=False, errors=errors)
    return check_manifest_audio(entries, line_errors=errors, **kwargs)


def test_every_bad_line_is_found_with_its_kind(bad_corpus):
    report = _report(bad_corpus)
    assert {b.line: b.kind for b in report.errors} == EXPECTED_ERRORS
    assert [(b.line, b.kind) for b in report.warnings] == [(6, "duration_overshoot")]
    for bad in report.errors:
        assert bad.manifest == str(bad_corpus)
        assert str(bad) == f"{bad_corpus}:{bad.line}: {bad.reason}"
        assert EXPECTED_REASONS[bad.line] in bad.reason
    assert [e.line for e in report.good_entries()] == [1, 6, 9, 11]
    assert report.counts() == {kind: 1 for kind in EXPECTED_ERRORS.values()}
    # The audio file is named too, not only the manifest line.
    assert "corrupt.wav" in next(b.reason for b in report.errors if b.line == 2)
    # Readable seconds: cut at the end of the file (line 6 asks 1.5 s of a 1 s file; line 11 is a segment).
    by_line = {e.line: e for e in report.entries}
    assert report.readable_seconds(by_line[6]) == pytest.approx(1.0)
    assert report.readable_seconds(by_line[11]) == pytest.approx(0.5)


def test_build_dataloader_raises_one_error_listing_every_bad_line_before_any_read(bad_corpus, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("audio was read before the bad lines were reported")

    monkeypatch.setattr(dataset_module, "load_audio", no_reading)
    with pytest.raises(BadManifestError) as info:
        build_dataloader(_cfg(bad_corpus), path="model.train_ds")
    error = info.value
    message = str(error)
    assert isinstance(error, ManifestError) and isinstance(error, ValueError)
    assert message.startswith(f"model.train_ds: {len(EXPECTED_ERRORS)} bad manifest line(s) found before training")
    assert "model.train_ds.skip_bad_samples=true" in message
    for line, reason in EXPECTED_REASONS.items():
        assert f"\n  {bad_corpus}:{line}: " in message
        listed = next(m for m in message.splitlines() if m.startswith(f"  {bad_corpus}:{line}: "))
        assert reason in listed
    assert f"{bad_corpus}:6:" not in message  # a warning, not an error
    assert {b.line for b in error.bad_lines} == set(EXPECTED_ERRORS)
    assert error.counts == {kind: 1 for kind in EXPECTED_ERRORS.values()}
    assert error.path == str(bad_corpus)


def test_skip_bad_samples_drops_them_with_counts_per_kind(bad_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="nemofn.asr.data.manifest_check"):
        loader = build_dataloader(_cfg(bad_corpus, skip_bad_samples=True), path="model.train_ds")
    assert [e.line for e in loader.dataset.entries] == [1, 6, 9, 11]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    dropped = next(m for m in warnings if "dropped them (skip_bad_samples)" in m)
    for label in ("malformed manifest line: 1", "audio file not found: 1", "unreadable audio header: 1",
                  "sample rate 0: 1", "no samples (header only): 1", "offset past the end: 1",
                  "duration under one sample: 1"):
        assert label in dropped
    assert "7 bad manifest line(s)" in dropped and "4 entries left" in dropped
    overshoot = [m for m in warnings if "past the end of their file" in m]
    assert len(overshoot) == 1 and "1 manifest line(s)" in overshoot[0] and f"{bad_corpus}:6:" in overshoot[0]
    batches = list(loader)  # every kept line loads
    assert sum(len(b[1]) for b in batches) == 4
    # 1: 1 s; 6: 1.5 s asked of a 1 s file, cut at its end; 9: 0.52 s of a 0.5 s file; 11: a 0.5 s segment.
    assert sorted(int(n) for b in batches for n in b[1]) == [8000, 8000, 16000, 16000]


def test_check_audio_false_turns_the_check_off(bad_corpus, tmp_path):
    # Without the check, only a missing file is caught up front (the first one, as before).
    with pytest.raises(ManifestError, match="line 7: audio file 'wavs/missing.wav' not found") as info:
        build_dataset(_cfg(bad_corpus, check_audio=False))
    assert not isinstance(info.value, BadManifestError)
    lines = bad_corpus.read_text().splitlines()
    only_corrupt = _manifest(tmp_path / "corrupt_only.json", [lines[0], lines[1]])
    assert len(build_dataset(_cfg(only_corrupt, check_audio=False))) == 2  # the corrupt file fails only when read
    with pytest.raises(DatasetConfigError, match="skip_bad_samples=true needs dataset.check_audio=true"):
        build_dataset(_cfg(bad_corpus, check_audio=False, skip_bad_samples=True))
    with pytest.raises(DatasetConfigError, match="skip_bad_samples: wrong type"):
        build_dataset(_cfg(bad_corpus, skip_bad_samples="yes"))


def test_channel_selector_naming_a_missing_channel(tmp_path):
    _wav(tmp_path / "mono.wav", 0.5)
    _wav(tmp_path / "stereo.wav", 0.5, channels=2)
    m = _manifest(tmp_path / "m.json", [{"audio_filepath": "mono.wav", "duration": 0.5, "text": "a"},
                                        {"audio_filepath": "stereo.wav", "duration": 0.5, "text": "b"}])
    assert _report(m).errors == () and _report(m, channel_selector=1).counts() == {"bad_channels": 1}
    (bad,) = _report(m, channel_selector=[0, 1]).errors
    assert bad.line == 1 and "channel_selector=[0, 1] names channel(s) [1] but the file has 1 channel(s)" in bad.reason
    assert len(build_dataset(_cfg(m))) == 2  # multi-channel files are mixed down: fine by default


def test_headers_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEMOFN_CACHE_DIR", str(cache))
    (tmp_path / "wavs").mkdir()
    lines = []
    for i in range(80):  # enough for the thread pool
        _wav(tmp_path / "wavs" / f"{i}.wav", 0.1)
        lines.append({"audio_filepath": f"wavs/{i}.wav", "duration": 0.1, "text": "x"})
    lines.append({"audio_filepath": "wavs/0.wav", "duration": 0.05, "offset": 0.05, "text": "same file again"})
    m = _manifest(tmp_path / "m.json", lines)

    reads = []
    real = manifest_check.read_audio_header
    monkeypatch.setattr(manifest_check, "read_audio_header", lambda path: reads.append(path) or real(path))
    first = _report(m, workers=4)
    assert len(reads) == 80 and first.num_files == 80 and first.num_cached == 0 and first.errors == ()
    (cache_file,) = (cache / "audio_headers").iterdir()
    assert not cache_file.name.startswith(".tmp-")  # written to a temporary file, then renamed
    reads.clear()
    second = _report(m, workers=4)
    assert reads == [] and second.num_cached == 80 and second.headers == first.headers
    # A file that changed is read again; a file that became corrupt is then reported.
    (tmp_path / "wavs" / "7.wav").write_bytes(b"not audio at all" * 10)
    third = _report(m, workers=4)
    assert reads == [str(tmp_path / "wavs" / "7.wav")] and third.num_cached == 79
    assert [(b.line, b.kind) for b in third.errors] == [(8, "unreadable")]
    reads.clear()
    assert _report(m, cache=False).num_cached == 0 and len(reads) == 80
    # An unreadable cache file is ignored, not fatal.
    cache_file.write_text("{not json")
    reads.clear()
    assert _report(m).num_cached == 0 and len(reads) == 80


def test_non_utf8_manifest_names_line_and_byte_offset(tmp_path):
    _wav(tmp_path / "a.wav", 0.2)
    good = json.dumps({"audio_filepath": "a.wav", "duration": 0.2, "text": "ok"}, ensure_ascii=False) + "\n"
    latin = json.dumps({"audio_filepath": "a.wav", "duration": 0.2, "text": "café"}, ensure_ascii=False) + "\n"
    m = tmp_path / "latin1.json"
    m.write_bytes(good.encode("latin-1") + b"\n" + latin.encode("latin-1"))
    offset = len(good) + 1 + latin.index("é")
    builds = (lambda: read_manifest(m), lambda: build_dataset(_cfg(m)),
              lambda: build_dataset(_cfg(m, check_audio=False)))
    for build in builds:
        with pytest.raises(ManifestError) as info:
            build()
        assert info.value.line == 3 and info.value.path == str(m)
        message = str(info.value)
        assert message.startswith(f"{m}, line 3: not UTF-8: byte 0xe9 at byte offset {offset} of the file")
        assert "Re-encode the file as UTF-8" in message and "iconv -f latin1 -t utf-8" in message
    # The same manifest in UTF-8, even with a byte-order mark, reads fine.
    m.write_bytes(b"\xef\xbb\xbf" + (good + latin).encode("utf-8"))
    assert [e.text for e in read_manifest(m)] == ["ok", "café"]


def test_tokenizer_builder_reports_non_utf8_manifests(tmp_path):
    from nemofn.asr.tokenizers.builder import build_document_from_manifests

    m = tmp_path / "m.json"
    m.write_bytes(json.dumps({"text": "naïve"}, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(ManifestError, match=r"line 1: not UTF-8: byte 0xef at byte offset 12 "):
        build_document_from_manifests(str(m), tmp_path / "out")


def test_bad_manifest_error_caps_the_listing():
    lines = [BadLine("m.json", i, "missing", f"audio file {i}.wav not found") for i in range(1, 61)]
    error = BadManifestError(lines, {"missing": 60}, summary="dataset: 60 bad", fix="fix them")
    text = str(error).splitlines()
    assert text[0] == "dataset: 60 bad; fix them:"
    assert text[1] == "  m.json:1: audio file 1.wav not found"
    assert text[50] == "  m.json:50: audio file 50.wav not found"
    assert text[51] == "  ... and 10 more" and len(text) == 52 and len(error.bad_lines) == 60


# --- silent-drop warnings ----------------------------------------------------------------------------------------

@pytest.fixture
def text_corpus(tmp_path):
    _wav(tmp_path / "short.wav", 0.3)
    _wav(tmp_path / "long.wav", 2.0)
    texts = [("long.wav", 2.0, "hello world"),          # 1: 'h' fine; nothing wrong (lower case)
             ("long.wav", 2.0, "Hello Wörld"),          # 2: 'H', 'ö' dropped
             ("long.wav", 2.0, "123"),                  # 3: tokenizes to nothing (digits dropped)
             ("long.wav", 2.0, ""),                     # 4: empty in the manifest
             ("short.wav", 0.3, "a long transcript for a short clip"),  # 5: too long for CTC
             ("short.wav", 0.3, "aaaaaaa")]             # 6: 7 tokens + 6 repeats = 13 frames needed
    return _manifest(tmp_path / "m.json", [{"audio_filepath": a, "duration": d, "text": t} for a, d, t in texts])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "nemofn.asr.data.transcript_check"]


def test_transcript_warnings_with_counts(text_corpus, caplog):
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(_cfg(text_corpus), ctc_output_frames=100 / 8, path="model.train_ds")  # 12.5 frames/s
    assert len(ds) == 6  # nothing is dropped
    empty, unknown, ctc = _warnings(caplog)
    assert empty.startswith("model.train_ds: 2 of 6 transcripts tokenize to no tokens (1 of them empty in the "
                            "manifest)")
    assert f"{text_corpus}:3, {text_corpus}:4" in empty
    assert unknown.startswith("model.train_ds: 2 of 6 transcripts have characters outside the tokenizer's "
                              "vocabulary, which silently are dropped; most frequent: ")
    for char in "HWö123":
        assert f"{char!r} x1" in unknown
    assert f"{text_corpus}:2, {text_corpus}:3" in unknown
    # 0.3 s at 12.5 frames/s = 3.75, 4 frames: both short clips are too long; the 2 s ones (25 frames) are fine.
    assert ctc.startswith("model.train_ds: 2 of 6 utterances have more target tokens")
    assert "34 > 4" in ctc and f"{text_corpus}:5, {text_corpus}:6" in ctc and "zero_infinity" in ctc


def test_ctc_frames_from_a_function_and_the_repeat_rule(text_corpus, caplog):
    assert ctc_required_frames(np.array([1, 1, 2])) == 4
    assert ctc_required_frames(np.array([1, 2, 1])) == 3
    assert ctc_required_frames(np.array([], dtype=np.int64)) == 0
    seen = []

    def frames(samples):  # 10 ms hop, 4x subsampling, as a model would compute it
        seen.append(samples.copy())
        return torch.as_tensor(samples) // 160 // 4 + 1

    with caplog.at_level(logging.WARNING):
        build_dataset(_cfg(text_corpus), ctc_output_frames=frames)
    np.testing.assert_array_equal(seen[0], [32000, 32000, 32000, 32000, 4800, 4800])
    (ctc,) = [m for m in _warnings(caplog) if "utterances" in m]
    # 4800 samples -> 8 frames: "aaaaaaa" needs 13 frames (7 labels, 6 blanks between repeats) and 34 > 8.
    assert ctc.startswith("dataset: 2 of 6 utterances") and "34 > 8" in ctc
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_dataset(_cfg(text_corpus), ctc_output_frames=lambda n: n // 160 // 2 + 1)  # 15 frames: only line 5
    (ctc,) = [m for m in _warnings(caplog) if "utterances" in m]
    assert ctc.startswith("dataset: 1 of 6 utterances") and f"{text_corpus}:5" in ctc and f"{text_corpus}:6" not in ctc


def test_ctc_check_uses_the_audio_the_file_really_has(tmp_path, caplog):
    _wav(tmp_path / "short.wav", 0.3)
    m = _manifest(tmp_path / "m.json", [{"audio_filepath": "short.wav", "duration": 3.0, "text": "hello there"}])
    with caplog.at_level(logging.WARNING):
        build_dataset(_cfg(m), ctc_output_frames=12.5)  # 3 s would give 38 frames; the file has 0.3 s: 4 frames
    # 11 labels and one blank between the two l's: 12 frames needed.
    assert any("1 of 1 utterances" in msg and "12 > 4" in msg for msg in _warnings(caplog))


def test_no_warnings_for_clean_transcripts(tmp_path, caplog):
    _wav(tmp_path / "a.wav", 1.0)
    m = _manifest(tmp_path / "m.json", [{"audio_filepath": "a.wav", "duration": 1.0, "text": "clean text"}])
    with caplog.at_level(logging.WARNING):
        build_dataset(_cfg(m), ctc_output_frames=12.5)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_char_tokenizer_reports_what_it_drops():
    tok = CharTokenizer(LABELS, normalize=False)
    assert tok.encode_with_unknown("Hello wörld") == (tok.encode("Hello wörld"), "Hö")
    assert CharTokenizer(["a", "b"], normalize=False).encode_with_unknown("ab a") == ([0, 1, 0], " ")
    assert CharTokenizer(["a", "<x>"], normalize=False).encode_with_unknown("a <x> c") == ([0, 1], "c  ")
    normalized = CharTokenizer(LABELS, normalize=True)
    assert normalized.encode_with_unknown("Hello 2!") == (normalized.encode("Hello 2!"), "")


def test_bpe_unknown_pieces_are_reported(tmp_path, caplog):
    from nemofn.asr.tokenizers import SentencePieceTokenizer
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    _wav(tmp_path / "a.wav", 1.0)
    train = _manifest(tmp_path / "train.json", [{"audio_filepath": "a.wav", "duration": 1.0, "text": t}
                                                for t in ("hello world", "a cat sat", "the dog ran", "blue sky")])
    out = process_asr_text_tokenizer(manifest=str(train), data_root=tmp_path / "tok", vocab_size=24)
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    ids, unknown = tok.encode_with_unknown("hello zürich")
    assert ids == tok.encode("hello zürich") and tok.unk_id in ids and "ü" in unknown and "h" not in unknown
    m = _manifest(tmp_path / "m.json", [{"audio_filepath": "a.wav", "duration": 1.0, "text": "hello zürich"}])
    with caplog.at_level(logging.WARNING):
        build_dataset(_cfg(m, labels=None), tok)
    (message,) = _warnings(caplog)
    assert "1 of 1 transcripts have characters outside" in message and "become <unk>" in message and "'ü'" in message


def test_a_ctc_model_passes_its_frame_rate_and_accepts_the_new_keys(text_corpus, caplog):
    from pathlib import Path

    from omegaconf import OmegaConf

    from nemofn.asr.models.ctc_model import CTCModel

    config = Path(__file__).resolve().parents[3] / "configs" / "asr" / "quartznet_15x5.yaml"
    model = CTCModel.from_config(OmegaConf.load(config).model)
    assert model.ctc_output_frames == 50.0  # 16 kHz, 10 ms hop, 2x subsampling
    with caplog.at_level(logging.WARNING):
        model.dataloader({**_cfg(text_corpus), "skip_bad_samples": True, "check_audio": True},
                         path="model.train_ds")
    (ctc,) = [m for m in _warnings(caplog) if "utterances" in m]
    # 0.3 s at 50 frames/s = 15 frames: line 5 (34 tokens) is too long, line 6 (13 frames needed) fits.
    assert ctc.startswith("model.train_ds: 1 of 6 utterances") and f"{text_corpus}:5" in ctc
