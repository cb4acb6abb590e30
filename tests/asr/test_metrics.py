"""WER / CER: corpus-level rates, NeMo's conventions, accumulation."""

from __future__ import annotations

import math

import jiwer
import pytest

from nemofn.asr.metrics import WER, edit_distance, error_counts, word_error_rate


def test_word_error_rate_small_examples():
    assert word_error_rate(["the cat sat"], ["the cat sat"]) == 0.0
    assert word_error_rate(["the bat sat"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert word_error_rate(["the cat"], ["the cat sat"]) == pytest.approx(1 / 3)  # deletion
    assert word_error_rate(["a the cat sat"], ["the cat sat"]) == pytest.approx(1 / 3)  # insertion
    assert word_error_rate([""], ["one two"]) == 1.0
    assert word_error_rate(["x y z w"], ["a"]) == 4.0  # WER can exceed 1


def test_corpus_level_not_mean_of_utterances():
    hyps, refs = ["a", "b c d e"], ["x", "b c d e"]
    assert word_error_rate(hyps, refs) == pytest.approx(1 / 5)  # mean of rates would be 0.5


def test_cer_counts_every_character_including_spaces():
    assert word_error_rate(["ab c"], ["abd c"], use_cer=True) == pytest.approx(1 / 5)
    assert word_error_rate(["hello"], ["hello"], use_cer=True) == 0.0


def test_empty_references_and_mismatched_lists():
    assert math.isinf(word_error_rate(["a"], [""]))
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        word_error_rate(["a", "b"], ["a"])


def test_agrees_with_jiwer_on_random_sentences():
    import random

    rng = random.Random(0)
    words = ["red", "green", "blue", "cat", "dog", "a"]
    hyps = [" ".join(rng.choices(words, k=rng.randint(0, 7))) for _ in range(40)]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 7))) for _ in range(40)]
    assert word_error_rate(hyps, refs) == pytest.approx(jiwer.wer(refs, hyps))
    assert word_error_rate(hyps, refs, use_cer=True) == pytest.approx(jiwer.cer(refs, hyps))


def test_edit_distance_on_word_lists():
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance([], ["x", "y"]) == 2
    assert error_counts(["a b"], ["a c d"]) == (2, 3)


def test_wer_object_accumulates_and_resets():
    wer = WER()
    assert wer.update(["a b"], ["a c"]) == (1, 2)
    assert wer.update(["x y z"], ["x y z"]) == (0, 3)
    assert wer.compute() == (pytest.approx(1 / 5), 1, 5)
    wer.reset()
    rate, scores, words = wer.compute()
    assert math.isnan(rate) and scores == 0 and words == 0
    cer = WER(use_cer=True)
    cer.update(["ab"], ["ac"])
    assert cer.compute() == (0.5, 1, 2)
