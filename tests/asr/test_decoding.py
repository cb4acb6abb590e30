"""Greedy CTC decoding and id -> text helpers."""

from __future__ import annotations

import pytest
import torch

from nemofn.asr.decoding import (
    CharDecoder,
    TokenizerDecoder,
    ctc_greedy_decode,
    greedy_scores,
    ids_to_text_chars,
    ids_to_text_tokenizer,
    strip_space_before_punctuation,
    vocabulary_punctuation,
)

BLANK = 3  # vocabulary of 3 labels


def _one_hot_log_probs(frames: list[list[int]], classes: int = 4) -> torch.Tensor:
    """``[B, T, classes]`` log-probs whose arg-max per frame is the given label."""
    x = torch.full((len(frames), len(frames[0]), classes), -5.0)
    for b, row in enumerate(frames):
        for t, c in enumerate(row):
            x[b, t, c] = -0.1
    return x


def test_collapse_repeats_and_blank_separation():
    frames = [[0, 0, 1, 1, 1, 2], [0, BLANK, 0, 0, BLANK, 0]]
    ids = ctc_greedy_decode(_one_hot_log_probs(frames))
    assert ids == [[0, 1, 2], [0, 0, 0]]


def test_all_blanks_and_empty_lengths_give_empty_lists():
    frames = [[BLANK] * 4, [1, 2, 1, 2]]
    ids = ctc_greedy_decode(_one_hot_log_probs(frames), torch.tensor([4, 0]))
    assert ids == [[], []]


def test_lengths_cut_frames_and_frame_labels_are_returned():
    frames = [[1, BLANK, 2, 2], [2, 2, 0, 1]]
    ids, labels = ctc_greedy_decode(_one_hot_log_probs(frames), torch.tensor([3, 2]), return_frame_labels=True)
    assert ids == [[1, 2], [2]]
    assert labels.tolist() == frames


def test_integer_frame_labels_need_blank_id():
    labels = torch.tensor([[5, 5, 0, 5, 1, 1]])
    assert ctc_greedy_decode(labels, blank_id=5) == [[0, 1]]
    with pytest.raises(ValueError, match="blank_id"):
        ctc_greedy_decode(labels)
    with pytest.raises(TypeError, match="integer"):
        ctc_greedy_decode(labels.float(), blank_id=5)
    with pytest.raises(ValueError, match="shape"):
        ctc_greedy_decode(torch.zeros(2))


def test_matches_reference_python_loop_on_random_batches():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(6, 30, 5, generator=g).log_softmax(-1)
    lengths = torch.tensor([30, 17, 1, 0, 29, 5])
    ids = ctc_greedy_decode(log_probs, lengths)
    for b in range(6):
        expected, previous = [], 4
        for p in log_probs[b, : lengths[b]].argmax(-1).tolist():  # NeMo's fold loop
            if (p != previous or previous == 4) and p != 4:
                expected.append(p)
            previous = p
        assert ids[b] == expected


def test_greedy_scores_sum_non_blank_frames():
    lp = _one_hot_log_probs([[0, 0, BLANK, 1]])
    assert greedy_scores(lp, torch.tensor([4])).item() == pytest.approx(-0.3)
    assert greedy_scores(lp, torch.tensor([1])).item() == pytest.approx(-0.1)


def test_char_text_and_punctuation_spacing():
    labels = [" ", "a", "b", "'"]
    assert vocabulary_punctuation(labels) == {"'"}
    assert ids_to_text_chars([1, 0, 2, 4, 1], labels) == "a ba"  # 4 is the blank
    assert ids_to_text_chars([1, 0, 3, 2], labels) == "a'b"  # NeMo drops one space before punctuation
    assert ids_to_text_chars([1, 0, 3, 2], labels, strip_punctuation=False) == "a 'b"
    with pytest.raises(IndexError, match="outside"):
        ids_to_text_chars([7], labels)
    decoder = CharDecoder(labels)
    assert decoder.blank_id == 4
    lp = _one_hot_log_probs([[1, 1, 0, 4, 3, 2, 0, 0, 4, 0, 3]], classes=5)
    assert decoder.decode(lp, torch.tensor([11])) == ["a'b '"]  # only one of two spaces goes


def test_special_tokens_do_not_count_as_punctuation():
    assert vocabulary_punctuation(["<unk>", "[pad]", "##x", "▁.", "a", "b!"]) == {"!"}
    assert strip_space_before_punctuation("hi !  !", {"!"}) == "hi! !"
    assert strip_space_before_punctuation("hi !", set()) == "hi !"


class _Tokenizer:
    """A stand-in with NeMo's tokenizer surface: ``ids_to_text``, ``vocab``, ``vocab_size``."""

    vocab = ["▁he", "llo", "▁world", ","]
    vocab_size = 4

    def ids_to_text(self, ids):
        return "".join(self.vocab[i] for i in ids).replace("▁", " ").strip()


def test_tokenizer_text_and_decoder():
    tok = _Tokenizer()
    assert ids_to_text_tokenizer([0, 1, 3, 2], tok) == "hello, world"
    decoder = TokenizerDecoder(tok)
    assert decoder.blank_id == 4
    lp = _one_hot_log_probs([[0, 0, 4, 1, 2, 2]], classes=5)
    assert decoder.decode(lp) == ["hello world"]
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerDecoder(object())
