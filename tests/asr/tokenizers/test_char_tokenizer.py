"""CharTokenizer and the English text cleaning (NeMo's CharParser / ENCharParser)."""

from __future__ import annotations

import string

import pytest

from nemofn.asr.tokenizers import CharTokenizer, Tokenizer
from nemofn.asr.tokenizers.text_normalization import clean_text, number_to_words, punctuation_table

LABELS = [" ", *string.ascii_lowercase, "'"]


def test_round_trip_of_clean_text():
    tok = CharTokenizer(LABELS)
    text = "the cat's out of the bag"
    ids = tok.encode(text)
    assert ids[:4] == [20, 8, 5, 0]
    assert tok.decode(ids) == text
    assert tok.vocab_size == 28 and tok.vocabulary == LABELS
    assert isinstance(tok, Tokenizer)


def test_en_normalisation_lowercases_and_strips_punctuation():
    tok = CharTokenizer(LABELS)
    assert tok.decode(tok.encode("  Hello,   World! It's 5 o'clock.")) == "hello world it's five o'clock"
    assert tok.decode(tok.encode("Rock & Roll: 100% (fun)")) == "rock and roll one hundred percent fun"


def test_unknown_characters_are_dropped():
    tok = CharTokenizer(LABELS, normalize=False)
    # NeMo's default for dataset configs (normalize_transcripts: false): no lower-casing, unknown chars dropped
    assert tok.decode(tok.encode("Hello World!")) == "ello orld"
    assert tok.encode("a  b") == [1, 0, 0, 2]


def test_base_parser_only_strips_and_lowercases():
    tok = CharTokenizer(LABELS, parser="base")
    assert tok.decode(tok.encode("  Hi, Bob 2 ")) == "hi bob "


def test_multi_character_labels_match_whole_words():
    tok = CharTokenizer([" ", "a", "b", "<unk>"], normalize=False)
    assert tok.encode("ab <unk> a") == [1, 2, 0, 3, 0, 1]


def test_decode_skips_blank_and_out_of_range_ids():
    tok = CharTokenizer(LABELS)
    assert tok.decode([8, 28, 9, -1, 100]) == "hi"


def test_labels_must_be_unique():
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer(["a", "b", "a"])


@pytest.mark.parametrize("digits, words", [
    ("0", "zero"), ("7", "seven"), ("13", "thirteen"), ("42", "forty-two"), ("100", "one hundred"),
    ("101", "one hundred and one"), ("1001", "one thousand and one"), ("1100", "one thousand, one hundred"),
    ("1234", "one thousand, two hundred and thirty-four"), ("2000005", "two million and five"),
    ("3.05", "three point zero five"), ("21st", "twenty-first"), ("12th", "twelfth"), ("30th", "thirtieth"),
    ("-7", "minus seven"), ("1,000", "one thousand"),
])
def test_number_to_words_follows_inflect(digits, words):
    assert number_to_words(digits) == words


def test_clean_text_numbers_times_money_abbreviations():
    table = punctuation_table(LABELS)
    assert clean_text("Dr. Who paid $5.50 at 10:30pm", table) == \
        "doctor who paid five dollars and fifty cents at ten thirty pm"
    assert clean_text("On the 2nd of May, 1,000 people came.", table) == \
        "on the second of may one thousand people came"
    assert clean_text("Café naïve — déjà vu", table) == "cafe naive deja vu"
