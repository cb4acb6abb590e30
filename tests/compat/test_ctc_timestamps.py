"""``EncDecCTCModel(BPE).transcribe(..., timestamps=True)`` against NeMo 3.0: the reference CTC ``.nemo`` files,
restored through compat, give the ``Hypothesis.timestamp`` dicts that real NeMo wrote to
``tests/data/nemo3_timestamps.json`` (offsets identical, seconds within 1e-6, NeMo's keys and types)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compat.collections.asr.models import ASRModel
from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "nemo3_timestamps.json").read_text())
CTC_NAMES = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe")
SECONDS_ATOL = 1e-6


@pytest.fixture(scope="module", params=CTC_NAMES)
def restored(request, nemo3_dir: Path):
    name = request.param
    model = ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu")
    files = [str(nemo3_dir / record["file"]) for record in DATA["models"][name]["files"]]
    assert files == sorted(files)
    return name, model.eval(), files


def _compare(ours: dict, nemo: dict, where: str) -> None:
    assert list(ours) == list(nemo), where
    assert ours["timestep"] == nemo["timestep"] and all(type(t) is int for t in ours["timestep"]), where
    for level in ("char", "word", "segment"):
        assert len(ours[level]) == len(nemo[level]), (where, level)
        for mine, theirs in zip(ours[level], nemo[level]):
            assert list(mine) == list(theirs), (where, level)
            assert mine[level] == theirs[level], (where, level)
            for key in ("start_offset", "end_offset"):
                assert type(mine[key]) is np.int64 and mine[key] == theirs[key], (where, level, key)
            for key in ("start", "end"):
                assert type(mine[key]) is np.float64, (where, level, key)
                assert abs(mine[key] - theirs[key]) <= SECONDS_ATOL, (where, level, key)


def test_transcribe_timestamps_match_nemo(restored):
    name, model, files = restored
    records = DATA["models"][name]["files"]
    hyps = model.transcribe(files, batch_size=4, timestamps=True, verbose=False)
    assert len(hyps) == len(records) and all(isinstance(h, Hypothesis) for h in hyps)
    vocab_size = len(DATA["models"][name]["vocabulary"]) + 1
    for hyp, record in zip(hyps, records):
        assert hyp.text == record["text"], record["file"]
        # NeMo's timestamps=True forces return_hypotheses: y_sequence holds the [T, V+1] log-probs
        assert hyp.y_sequence.shape == (len(record["frame_labels"]), vocab_size) and hyp.alignments is hyp.y_sequence
        assert hyp.y_sequence.argmax(-1).tolist() == record["frame_labels"], record["file"]
        _compare(hyp.timestamp, record["timestamp"], f"{name} {record['file']}")


def test_without_timestamps_the_hypotheses_are_unchanged(restored):
    name, model, files = restored
    plain = model.transcribe(files[:2], batch_size=4, verbose=False)
    stamped = model.transcribe(files[:2], batch_size=4, timestamps=True, verbose=False)
    for p, s in zip(plain, stamped):
        assert p.timestamp == [] and isinstance(s.timestamp, dict)
        assert p.text == s.text and p.score == s.score
        assert torch.equal(p.y_sequence, s.y_sequence.argmax(-1))
    again = model.transcribe(files[:1], batch_size=4, timestamps=False, verbose=False)[0]
    assert again.timestamp == [] and again.y_sequence.dtype == torch.int64


def test_decoding_config_sets_type_and_separators(nemo3_dir: Path):
    model = ASRModel.restore_from(str(nemo3_dir / "quartznet_char.nemo"), map_location="cpu").eval()
    record = DATA["models"]["quartznet_char"]["files"][1]
    model.change_decoding_strategy({"ctc_timestamp_type": "word", "segment_seperators": ["."]}, verbose=False)
    hyp = model.transcribe([str(nemo3_dir / record["file"])], timestamps=True, verbose=False)[0]
    assert list(hyp.timestamp) == ["timestep", "word"]
    assert [w["word"] for w in hyp.timestamp["word"]] == [w["word"] for w in record["timestamp"]["word"]]
    assert [w["end"] for w in hyp.timestamp["word"]] == pytest.approx(
        [w["end"] for w in record["timestamp"]["word"]], abs=SECONDS_ATOL)
