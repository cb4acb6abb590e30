"""Manifest parsing: aliases, relative paths, text sources, filtering, combining, and bad-line errors."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from nemofn.asr.data.errors import ManifestError
from nemofn.asr.data.manifest import load_manifests, read_manifest, split_manifest_paths, write_manifest


def _wav(path, seconds=0.5, sample_rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * sample_rate), dtype=np.float32), sample_rate, subtype="PCM_16")
    return path


def _manifest(path, lines):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


@pytest.fixture
def corpus(tmp_path):
    _wav(tmp_path / "wavs" / "a.wav")
    _wav(tmp_path / "wavs" / "b.wav")
    return tmp_path


def test_relative_paths_resolve_beside_the_manifest_from_any_cwd(corpus, tmp_path_factory, monkeypatch):
    m = _manifest(corpus / "m.json", [{"audio_filepath": "wavs/a.wav", "duration": 0.5, "text": "hi"}])
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    (entry,) = read_manifest(m)
    assert entry.audio_filepath == str(corpus / "wavs" / "a.wav")
    assert os.path.isabs(entry.audio_filepath)
    assert (entry.duration, entry.text, entry.offset, entry.line) == (0.5, "hi", None, 1)


def test_path_existing_as_given_is_kept(corpus, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("cwd")
    _wav(other / "wavs" / "a.wav")
    monkeypatch.chdir(other)
    m = _manifest(corpus / "m.json", [{"audio_filepath": "wavs/a.wav", "duration": 0.5}])
    assert read_manifest(m)[0].audio_filepath == "wavs/a.wav"


def test_audio_filename_alias_absolute_path_and_offset(corpus):
    absolute = str(corpus / "wavs" / "b.wav")
    m = _manifest(corpus / "m.json", [{"audio_filename": absolute, "duration": 0.25, "offset": 0.1, "text": "x"}])
    (entry,) = read_manifest(m)
    assert entry.audio_filepath == absolute and entry.offset == 0.1 and entry.duration == 0.25


def test_text_sources_in_nemo_order(corpus):
    (corpus / "t.txt").write_text("from\nfile\n")
    m = _manifest(corpus / "m.json", [
        {"audio_filepath": "wavs/a.wav", "duration": 0.5, "text": "direct", "normalized_text": "ignored"},
        {"audio_filepath": "wavs/a.wav", "duration": 0.5, "text_filepath": "t.txt", "normalized_text": "ignored"},
        {"audio_filepath": "wavs/a.wav", "duration": 0.5, "normalized_text": "normalised"},
        {"audio_filepath": "wavs/a.wav", "duration": 0.5},
    ])
    assert [e.text for e in read_manifest(m)] == ["direct", "fromfile", "normalised", ""]


def test_blank_lines_skipped_and_line_numbers_kept(corpus):
    m = _manifest(corpus / "m.json", ["", {"audio_filepath": "wavs/a.wav", "duration": 0.5}, "   ",
                                      {"audio_filepath": "wavs/b.wav", "duration": 0.5}])
    entries = read_manifest(m)
    assert [e.line for e in entries] == [2, 4]
    assert [e.id for e in entries] == [0, 1]


def test_combining_manifests_list_and_comma_string(corpus):
    m1 = _manifest(corpus / "m1.json", [{"audio_filepath": "wavs/a.wav", "duration": 0.5, "text": "one"}])
    m2 = _manifest(corpus / "m2.json", [{"audio_filepath": "wavs/b.wav", "duration": 0.7, "text": "two"},
                                        {"audio_filepath": "wavs/a.wav", "duration": 0.6, "text": "three"}])
    from_list = load_manifests([str(m1), str(m2)])
    from_string = load_manifests(f"{m1}, {m2}")
    assert [e.text for e in from_list] == ["one", "two", "three"] == [e.text for e in from_string]
    assert [e.id for e in from_list] == [0, 1, 2]
    assert from_list[1].manifest == str(m2) and from_list[1].line == 1


def test_split_manifest_paths():
    assert split_manifest_paths("a.json,b.json") == ["a.json", "b.json"]
    assert split_manifest_paths(["a.json"]) == ["a.json"]
    with pytest.raises(ValueError, match="nested"):
        split_manifest_paths([["a.json", "b.json"]])
    with pytest.raises(ValueError, match="empty"):
        split_manifest_paths("")


def test_duration_filters_and_log_message(corpus, caplog):
    m = _manifest(corpus / "m.json", [{"audio_filepath": "wavs/a.wav", "duration": d, "text": str(d)}
                                      for d in (0.05, 1.0, 2.0, 30.0, 3.0)])
    with caplog.at_level(logging.INFO, logger="nemofn.asr.data.manifest"):
        kept = load_manifests(m, min_duration=0.1, max_duration=20.0)
    assert [e.duration for e in kept] == [1.0, 2.0, 3.0]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "Loaded 3 utterances" in messages
    assert "2 utterances were filtered" in messages
    assert f"{30.05 / 3600:.2f} hours" in messages


def test_max_utts_keeps_the_first_n(corpus):
    m = _manifest(corpus / "m.json", [{"audio_filepath": "wavs/a.wav", "duration": 1.0, "text": str(i)}
                                      for i in range(5)])
    assert [e.text for e in load_manifests(m, max_utts=2)] == ["0", "1"]


def test_write_manifest_round_trip(corpus):
    path = corpus / "w.json"
    write_manifest(path, [{"audio_filepath": "wavs/a.wav", "duration": 0.5, "text": "héllo"}])
    assert read_manifest(path)[0].text == "héllo"


@pytest.mark.parametrize("line, problem", [
    ('{"audio_filepath": "wavs/a.wav", "duration": 0.5', "not valid JSON"),
    ('["wavs/a.wav", 0.5]', "JSON object"),
    ('{"duration": 0.5, "text": "x"}', "no 'audio_filepath' key"),
    ('{"audio_filepath": "wavs/a.wav", "text": "x"}', "no 'duration' key"),
    ('{"audio_filepath": "wavs/missing.wav", "duration": 0.5}', "audio file 'wavs/missing.wav' not found"),
    ('{"audio_filepath": "wavs/a.wav", "duration": "0.5"}', "'duration' must be a finite number"),
    ('{"audio_filepath": "wavs/a.wav", "duration": null}', "'duration' must be a finite number"),
    ('{"audio_filepath": "wavs/a.wav", "duration": -1}', "must not be negative"),
    ('{"audio_filepath": "wavs/a.wav", "duration": 1, "offset": "x"}', "'offset' must be a finite number"),
    ('{"audio_filepath": "wavs/a.wav", "duration": 1, "text_filepath": "nope.txt"}', "text_filepath"),
])
def test_bad_line_names_file_and_line(corpus, line, problem):
    good = json.dumps({"audio_filepath": "wavs/a.wav", "duration": 0.5})
    m = _manifest(corpus / "bad.json", [good, "", line])
    with pytest.raises(ManifestError) as info:
        load_manifests(str(m))
    message = str(info.value)
    assert message.startswith(f"{m}, line 3: ")
    assert problem in message
    assert info.value.line == 3 and info.value.path == str(m)
    assert isinstance(info.value, ValueError)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifests(str(tmp_path / "nope.json"))


def test_missing_audio_allowed_when_not_checked(corpus):
    m = _manifest(corpus / "m.json", [{"audio_filepath": "wavs/missing.wav", "duration": 0.5}])
    assert read_manifest(m, check_audio_exists=False)[0].audio_filepath == "wavs/missing.wav"
