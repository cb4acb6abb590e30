"""The eSpeak NG demo corpus (``scripts/data/demo_corpus.py``): manifests, disjoint voices, durations, determinism
and reuse."""

from __future__ import annotations

import json
import os
import string
import sys

import pytest
import soundfile as sf

from pathlib import Path

from nemofn.asr.data.manifest import load_manifests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "data"))

from demo_corpus import VOCABULARY, CorpusSpec, ESpeakProgram, make_demo_corpus, open_espeak, plan_corpus, \
    render  # noqa: E402

SPEC = CorpusSpec(num_train=6, num_val=3, num_test=3, seed=11)
LABELS = set(string.ascii_lowercase + " '")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    lines = []
    manifests = make_demo_corpus(out, SPEC, num_workers=2, progress=lines.append)
    assert any("Wrote 12 utterances" in line for line in lines)
    return out, manifests


def test_manifests_parse_and_durations_match_the_files(corpus):
    out, manifests = corpus
    assert {split: path.name for split, path in manifests.items()} == {
        "train": "train_manifest.json", "validation": "validation_manifest.json", "test": "test_manifest.json"}
    for split, size in SPEC.sizes().items():
        entries = load_manifests(str(manifests[split]))
        assert len(entries) == size
        for entry in entries:
            info = sf.info(entry.audio_filepath)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert abs(info.frames / 16000 - entry.duration) < 1e-5
            assert 0.3 < entry.duration < 8.0
            assert set(entry.text) <= LABELS and 3 <= len(entry.text.split()) <= 10
            assert entry.text == entry.text.strip() and "  " not in entry.text


def test_splits_have_disjoint_voices(corpus):
    out, manifests = corpus
    voices = {split: {json.loads(line)["voice"] for line in path.read_text().splitlines()}
              for split, path in manifests.items()}
    assert not voices["train"] & voices["validation"]
    assert not voices["train"] & voices["test"]
    assert not voices["validation"] & voices["test"]
    saved = json.loads((out / "corpus.json").read_text())["voices"]
    for split in voices:
        assert voices[split] <= set(saved[split])


def test_same_seed_gives_identical_bytes_and_reuse(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    make_demo_corpus(again, SPEC, num_workers=1, progress=None)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name

    wav = again / "wavs" / "train" / "train_00000.wav"
    stamp = wav.stat().st_mtime_ns
    lines = []
    make_demo_corpus(again, SPEC, num_workers=1, progress=lines.append)
    assert lines == [f"Reusing the demo corpus in {again} (same parameters in corpus.json)"]
    assert wav.stat().st_mtime_ns == stamp


def test_plan_depends_on_the_seed_only():
    assert plan_corpus(SPEC) == plan_corpus(CorpusSpec(num_train=6, num_val=3, num_test=3, seed=11))
    assert plan_corpus(SPEC)["train"] != plan_corpus(CorpusSpec(num_train=6, num_val=3, num_test=3, seed=12))["train"]
    assert len(VOCABULARY) >= 300 and all(set(w) <= LABELS for w in VOCABULARY)


FAKE_ESPEAK = """#!{python}
import sys
import numpy as np
# espeak-ng --stdout: a 44-byte header whose sizes are placeholders, then 16-bit mono samples
header = bytes([82, 73, 70, 70, 0x24, 0xf0, 0xff, 0x7f, 87, 65, 86, 69, 102, 109, 116, 32,
                0x10, 0, 0, 0, 1, 0, 1, 0]) + (22050).to_bytes(4, "little") + (44100).to_bytes(4, "little") \
         + bytes([2, 0, 0x10, 0, 100, 97, 116, 97, 0x00, 0xf0, 0xff, 0x7f])
t = np.arange(11025) / 22050
sys.stdout.buffer.write(header + (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes())
"""


def test_program_fallback_and_missing_engine(tmp_path, monkeypatch):
    program = tmp_path / "espeak-ng"
    program.write_text(FAKE_ESPEAK.format(python=sys.executable))
    program.chmod(0o755)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the package were not installed
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = open_espeak()
    assert isinstance(engine, ESpeakProgram)
    samples = render(plan_corpus(SPEC)["train"][0], engine)
    assert engine.sample_rate == 22050 and samples.dtype.name == "int16" and abs(len(samples) - 8000) <= 1
    monkeypatch.setenv("PATH", os.fspath(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        open_espeak()
