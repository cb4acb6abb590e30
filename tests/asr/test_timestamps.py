"""``nemofn.asr.timestamps`` against NeMo 3.0: the ``Hypothesis.timestamp`` dicts that real NeMo wrote to
``tests/data/nemo3_timestamps.json`` (``scripts/dev/make_timestamp_reference.py``) are rebuilt from the recorded
decoder outputs and must be equal, values and Python types; plus edge cases by hand."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nemofn.asr.timestamps import (TimestampOptions, TimestampVocab, TokenSpan, add_seconds, ctc_timestamps,
                                   ctc_token_offsets, segment_offsets, subword_kind, transducer_timestamps,
                                   transducer_token_offsets, word_offsets)
from nemofn.asr.tokenizers import CharTokenizer, SentencePieceTokenizer

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "nemo3_timestamps.json").read_text())
MODELS = DATA["models"]
SYNTH = DATA["synthetic"]
CHAR_VOCAB = TimestampVocab.from_labels(SYNTH["char_vocabulary"])


def toy_tokens_to_text(pieces):
    """The toy detokeniser of ``make_timestamp_reference.py`` (join, ``▁`` -> space, drop one leading space)."""
    text = "".join(pieces).replace("▁", " ")
    return text[1:] if text.startswith(" ") else text


TOY_VOCAB = TimestampVocab.from_pieces(SYNTH["toy_pieces"], toy_tokens_to_text)


def plain(value):
    """JSON form of a timestamp dict (numpy scalars -> Python numbers), as the reference file stores it."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def type_name(value) -> str:
    if isinstance(value, list):
        inner = sorted({type_name(v) for v in value})
        return f"list[{'|'.join(inner)}]" if inner else "list"
    return type(value).__name__


def assert_types(timestamp: dict, expected: dict) -> None:
    """Keys in NeMo's order and every field of the NeMo type recorded in ``expected``."""
    assert list(timestamp) == expected["keys"]
    assert {type_name(t) for t in timestamp["timestep"]} <= set(expected["timestep"])
    for level in ("char", "word", "segment"):
        for entry in timestamp.get(level, []):
            assert list(entry) == expected[level]["keys"]
            for key, value in entry.items():
                assert type_name(value) in expected[level]["fields"][key], (level, key, value)


@pytest.fixture(scope="module")
def model_vocab(request, tmp_path_factory):
    """``name -> TimestampVocab`` of a reference model; BPE ones through the ``.nemo``'s own tokenizer.model (so
    they need the reference folder, the char one does not)."""
    cache: dict[str, TimestampVocab] = {}

    def get(name: str) -> TimestampVocab:
        if name not in cache:
            info = MODELS[name]
            if info["tokenizer_type"] == "char":
                vocab = TimestampVocab.from_tokenizer(CharTokenizer(info["vocabulary"]))
            else:
                nemo3_dir = request.getfixturevalue("nemo3_dir")
                folder = tmp_path_factory.mktemp(name.replace(":", "_"))
                with tarfile.open(nemo3_dir / f"{name.split(':')[0]}.nemo") as archive:
                    member = next(m for m in archive.getmembers() if m.name.endswith("tokenizer.model"))
                    (folder / "tokenizer.model").write_bytes(archive.extractfile(member).read())
                vocab = TimestampVocab.from_tokenizer(SentencePieceTokenizer(folder / "tokenizer.model"))
            assert list(vocab.pieces) == info["vocabulary"] and vocab.kind == info["tokenizer_type"]
            assert sorted(vocab.punctuation) == info["supported_punctuation"]
            cache[name] = vocab
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------- parity with NeMo


def test_reference_covers_every_model():
    assert sorted(MODELS) == sorted(["quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe",
                                     "fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe",
                                     "fastconformer_hybrid_bpe:ctc"])
    assert all(len(info["files"]) == 8 for info in MODELS.values())
    assert {info["kind"] for info in MODELS.values()} == {"ctc", "rnnt", "tdt"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_model_timestamps_match_nemo(name, model_vocab):
    info = MODELS[name]
    vocab = model_vocab(name)
    options = TimestampOptions(word_separator=info["word_separator"], segment_separators=info["segment_separators"],
                               segment_gap_threshold=info["segment_gap_threshold"])
    common = dict(blank_id=info["blank_id"], window_stride=info["window_stride"],
                  subsampling_factor=info["subsampling_factor"], options=options)
    words = 0
    for record in info["files"]:
        if info["kind"] == "ctc":
            got = ctc_timestamps(torch.tensor(record["frame_labels"]), vocab, **common)
        else:
            got = transducer_timestamps(torch.tensor(record["y_sequence"]), torch.tensor(record["frames"]),
                                        record.get("durations"), vocab, **common)
        assert plain(got) == record["timestamp"], record["file"]
        assert_types(got, info["types"])
        assert [w["word"] for w in got["word"]] == record["text"].split()
        words += len(got["word"])
    assert words > 8


@pytest.mark.parametrize("group", ["ctc_char", "ctc_char_gap3", "ctc_bpe", "rnnt_bpe", "tdt_bpe", "rnnt_char",
                                   "tdt_char"])
def test_synthetic_cases_match_nemo(group):
    cases = SYNTH[group]
    vocab = CHAR_VOCAB if group.endswith(("char", "gap3")) else TOY_VOCAB
    assert sorted(vocab.punctuation) == cases["punctuation"]
    options = TimestampOptions(segment_gap_threshold=cases["segment_gap_threshold"])
    common = dict(window_stride=SYNTH["window_stride"], subsampling_factor=SYNTH["subsampling_factor"],
                  options=options)
    for case in cases["cases"]:
        if group.startswith("ctc"):
            got = ctc_timestamps(case["frame_labels"], vocab, **common)
        else:
            got = transducer_timestamps(case["y_sequence"], case["frames"], case.get("durations"), vocab,
                                        blank_id=cases["blank_id"] if group.endswith("char") else None, **common)
        assert plain(got) == case["timestamp"], case
        assert_types(got, cases["types"])


def test_synthetic_cases_exercise_the_rules():
    """The NeMo-made cases contain what the rules are about (so the parity above is not vacuous)."""
    ctc = SYNTH["ctc_char"]["cases"]
    assert any(len(c["timestamp"]["segment"]) >= 3 for c in ctc)
    assert any(c["timestamp"]["char"] == [] for c in ctc)
    gap = SYNTH["ctc_char_gap3"]["cases"]
    assert any(len(g["timestamp"]["segment"]) != len(c["timestamp"]["segment"]) for g, c in zip(gap, ctc))
    tdt = SYNTH["tdt_bpe"]["cases"]
    assert any(0 in c["durations"] for c in tdt)
    assert any(e["start_offset"] == e["end_offset"] for c in tdt for e in c["timestamp"]["char"])


# ----------------------------------------------------------------------------------------------- token offsets


def test_ctc_token_offsets_follow_emission_frames():
    blank = 9
    ids, timestep, starts, ends = ctc_token_offsets([blank, 1, 1, blank, 1, 2, blank, blank, 3], blank)
    assert ids == [1, 1, 2, 3]  # a blank between equal labels separates them
    assert timestep == [1, 2, 4, 5, 8]
    assert ends.tolist() == [1, 4, 5, 8] and starts.tolist() == [0, 1, 4, 5]
    assert starts.dtype == np.int64 and ends.dtype == np.int64
    ids, timestep, starts, ends = ctc_token_offsets([blank, blank, blank, 4, 4], blank)
    assert ids == [4] and starts.tolist() == [2] and ends.tolist() == [3]


@pytest.mark.parametrize("labels", [[], [7, 7, 7]])
def test_empty_ctc_hypothesis(labels):
    vocab = TimestampVocab.from_labels(list("abcdefg"))
    got = ctc_timestamps(labels, vocab, window_stride=0.01, subsampling_factor=4)
    assert got == {"timestep": [], "char": [], "word": [], "segment": []}


def test_empty_transducer_hypothesis():
    got = transducer_timestamps(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                                torch.tensor([], dtype=torch.long), TOY_VOCAB, window_stride=0.01,
                                subsampling_factor=8)
    assert got == {"timestep": [], "char": [], "word": [], "segment": []}


def test_repeated_chars_become_separate_tokens():
    vocab = TimestampVocab.from_labels([" ", "l", "o"])
    got = ctc_timestamps([1, 1, 3, 1, 2, 0, 2], vocab, window_stride=0.01, subsampling_factor=2)
    assert [c["char"] for c in got["char"]] == ["l", "l", "o", " ", "o"]
    assert [(c["start_offset"], c["end_offset"]) for c in got["char"]] == [(0, 0), (0, 3), (3, 4), (4, 5), (5, 6)]
    assert [w["word"] for w in got["word"]] == ["llo", "o"]


def test_transducer_offsets_rnnt_and_tdt():
    assert transducer_token_offsets([3, 4, 5], [0, 2, 2]) == ([3, 4, 5], [0, 2, 2], [1, 3, 3])
    assert transducer_token_offsets([3, 4, 5], [0, 2, 2], [2, 0, 3]) == ([3, 4, 5], [0, 2, 2], [2, 2, 5])
    assert transducer_token_offsets([3, 9, 5], [0, 1, 2], blank_id=9) == ([3, 5], [0, 2], [1, 3])
    with pytest.raises(ValueError, match="durations=None for RNNT"):
        transducer_token_offsets([3, 4], [0, 1], [])
    with pytest.raises(ValueError, match="2 token ids but 1 frames"):
        transducer_token_offsets([3, 4], [0])


def test_tdt_duration_zero_tokens_and_punctuation():
    ids = [1, 2, 3, 5]  # "▁the ▁c at ." ; "at" has duration 0, "." comes after a silence
    got = transducer_timestamps(ids, [0, 2, 4, 9], [2, 2, 0, 1], TOY_VOCAB, window_stride=0.01,
                                subsampling_factor=8)
    assert [(c["start_offset"], c["end_offset"]) for c in got["char"]] == [(0, 2), (2, 4), (4, 4), (4, 4)]
    assert got["char"][3]["char"] == ["."] and got["timestep"] == [0, 2, 4, 9]
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in got["word"]] == [("the", 0, 2), ("cat.", 2, 4)]
    rnnt = transducer_timestamps(ids, [0, 2, 4, 9], None, TOY_VOCAB, window_stride=0.01, subsampling_factor=8)
    assert rnnt["char"][3]["start_offset"] == 9 and rnnt["char"][3]["end_offset"] == 10  # no refinement for RNNT
    assert rnnt["segment"] == [{"segment": "the cat.", "start_offset": 0, "end_offset": 10, "start": 0.0,
                                "end": 0.8}]


# ----------------------------------------------------------------------------------------------- words, segments


def spans(*items):
    return [TokenSpan(piece, toy_tokens_to_text([piece]), s, e) for piece, s, e in items]


def test_word_split_over_many_pieces():
    tokens = spans(("▁m", 0, 1), ("a", 1, 2), ("ve", 2, 4), ("r", 4, 5), ("y", 5, 7), ("▁dog", 8, 9))
    assert word_offsets(tokens, TOY_VOCAB) == [{"word": "mavery", "start_offset": 0, "end_offset": 7},
                                               {"word": "dog", "start_offset": 8, "end_offset": 9}]


def test_punctuation_glues_to_the_previous_word():
    tokens = spans(("▁dog", 0, 2), (",", 3, 3), ("▁c", 4, 5), ("at", 5, 6), ("'", 6, 6), ("s", 6, 7))
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in word_offsets(tokens, TOY_VOCAB)] == [
        ("dog,", 0, 3), ("cat's", 4, 7)]
    # chars: a space followed by punctuation does not end the word; the "," replaces it
    chars = [TokenSpan(c, c, i, i + 1) for i, c in enumerate("hi , yo")]
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in word_offsets(chars, CHAR_VOCAB)] == [
        ("hi,", 0, 4), ("yo", 5, 7)]


def test_segment_delimiters():
    words = [{"word": w, "start_offset": i, "end_offset": i + 1} for i, w in enumerate(
        ["hi.", "how", "are", "you?", "!", "fine"])]
    got = segment_offsets(words)
    assert [(s["segment"], s["start_offset"], s["end_offset"]) for s in got] == [
        ("hi.", 0, 1), ("how are you?", 1, 4), ("!", 4, 5), ("fine", 5, 6)]
    assert [s["segment"] for s in segment_offsets(words, separators=("?",))] == ["hi. how are you?", "! fine"]
    assert segment_offsets([]) == []


def test_segment_gap_threshold():
    def words(*items):
        return [{"word": w, "start_offset": s, "end_offset": e} for w, s, e in items]

    gapped = words(("p", 0, 1), ("q", 10, 11), ("r", 11, 12))
    assert [s["segment"] for s in segment_offsets(gapped)] == ["p q r"]
    assert [(s["segment"], s["start_offset"], s["end_offset"]) for s in segment_offsets(gapped, gap_threshold=5)] \
        == [("p", 0, 1), ("q r", 10, 12)]
    # NeMo: with a threshold, a separator closes a segment only when it ends the segment's first word
    joined = words(("x", 0, 1), ("y.", 1, 2), ("z", 2, 3))
    assert [s["segment"] for s in segment_offsets(joined)] == ["x y.", "z"]
    assert [s["segment"] for s in segment_offsets(joined, gap_threshold=5)] == ["x y. z"]
    assert [s["segment"] for s in segment_offsets(words(("a.", 0, 1), ("b", 1, 2)), gap_threshold=5)] == ["a.", "b"]


def test_seconds_are_offset_times_stride_times_factor_in_that_order():
    entries = add_seconds([{"start_offset": 5, "end_offset": 7}], 0.01, 3)
    assert entries[0]["start"] == 5 * 0.01 * 3 == 0.15000000000000002 != 5 * (0.01 * 3)
    assert entries[0]["end"] == 0.21000000000000002
    got = ctc_timestamps([0], TimestampVocab.from_labels(["a"]), window_stride=None, subsampling_factor=4)
    assert got["char"] == [{"char": "a", "start_offset": 0, "end_offset": 0}]


def test_timestamp_types_select_the_levels():
    labels = [1, 0, 2]
    vocab = TimestampVocab.from_labels([" ", "a", "b"])
    keys = {t: list(ctc_timestamps(labels, vocab, window_stride=0.01, subsampling_factor=1,
                                   options=TimestampOptions(timestamp_type=t))) for t in ("char", "word", "segment")}
    assert keys == {"char": ["timestep", "char"], "word": ["timestep", "word"], "segment": ["timestep", "segment"]}
    with pytest.raises(ValueError, match="timestamp type"):
        TimestampOptions(timestamp_type="token")


def test_options_from_nemo_decoding_config():
    cfg = {"word_seperator": "|", "segment_seperators": ["."], "segment_gap_threshold": 4,
           "ctc_timestamp_type": "word", "rnnt_timestamp_type": "char"}
    assert TimestampOptions.from_decoding_config(cfg) == TimestampOptions("word", "|", (".",), 4)
    assert TimestampOptions.from_decoding_config(cfg, model="rnnt").timestamp_type == "char"
    assert TimestampOptions.from_decoding_config(None) == TimestampOptions()
    vocab = TimestampVocab.from_labels(["|", "a", "b"])
    got = ctc_timestamps([1, 0, 2, 2, 3, 2], vocab, window_stride=None, subsampling_factor=1,
                         options=TimestampOptions.from_decoding_config(cfg))
    assert [w["word"] for w in got["word"]] == ["a", "bb"]


def test_vocab_builders():
    assert subword_kind(["▁a", "b"]) == "bpe" and subword_kind(["a", "##b"]) == "wpe"
    chars = TimestampVocab.from_tokenizer(CharTokenizer([" ", "a", "'"]))
    assert chars.kind == "char" and chars.punctuation == {"'"} and chars.text(1) == "a"
    assert TOY_VOCAB.kind == "bpe" and TOY_VOCAB.text(1) == "the"
    with pytest.raises(TypeError, match="from_labels/from_pieces"):
        TimestampVocab.from_tokenizer(object())
    with pytest.raises(ValueError, match="kind"):
        TimestampVocab(("a",), "word", "".join, ())
