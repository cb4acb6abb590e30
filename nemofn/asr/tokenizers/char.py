"""Character tokenizer for char-based CTC models (NeMo's ``CharParser`` / ``ENCharParser``).

Token ids are positions in ``labels`` (e.g. QuartzNet's 28 labels: space, ``a``-``z``, apostrophe); the CTC blank
is ``len(labels)`` and is never produced here.

Encoding, as NeMo:

- with ``normalize=True`` (NeMo's ``ENCharParser``): the text is cleaned first
  (:func:`~nemofn.asr.tokenizers.text_normalization.clean_text`: lower-case, numbers spelled out, punctuation that
  is not a label turned into spaces, whitespace collapsed);
- the text is split on single spaces; the space label goes between words; a word equal to a multi-character label
  becomes that label; every other character becomes its label's id;
- characters that are not labels are dropped (NeMo's ``unk_index == blank_index == -1``).

NeMo's dataset configs leave ``normalize_transcripts`` false by default, so a char model built from a config gets
no cleaning at all: ``"Hello"`` loses its ``H``. :func:`nemofn.asr.data.dataset.build_dataloader` follows that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from nemofn.asr.tokenizers.text_normalization import clean_text, punctuation_table

__all__ = ["CharTokenizer"]


class CharTokenizer:
    """Maps text to label ids and back.

    Args:
        labels: the vocabulary, one string per id (usually single characters).
        normalize: clean the text before tokenising (NeMo's ``do_normalize`` / ``normalize_transcripts``); when
            false there is no cleaning and no lower-casing.
        parser: NeMo's parser name: ``"en"`` (``ENCharParser``: full English cleaning) or ``"base"``
            (``CharParser``: cleaning is only strip and lower-case).
    """

    def __init__(self, labels: Sequence[str], *, normalize: bool = True, parser: str = "en"):
        if parser not in ("en", "base"):
            raise ValueError(f"CharTokenizer parser must be 'en' or 'base', got {parser!r}")
        labels = list(labels)
        if not labels:
            raise ValueError("CharTokenizer needs a non-empty list of labels")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"CharTokenizer labels must be unique; repeated: {duplicates}")
        self.labels: list[str] = labels
        self.normalize = normalize
        self.parser = parser
        self._ids = {label: i for i, label in enumerate(labels)}
        self._multi_char = {label for label in labels if len(label) > 1}
        # Characters encode() keeps: single-character labels, and the space when it is one.
        self._chars = {label for label in labels if len(label) == 1}
        self._table = punctuation_table(labels) if normalize and parser == "en" else None

    @property
    def vocab_size(self) -> int:
        """Number of labels (the CTC blank, ``vocab_size``, is not one of them)."""
        return len(self.labels)

    @property
    def vocabulary(self) -> list[str]:
        """The labels, as NeMo's ``decoder.vocabulary``."""
        return list(self.labels)

    pad_id = 0
    bos_id = -1
    eos_id = -1

    def normalize_text(self, text: str) -> str:
        """The text as it is tokenised (cleaned when ``normalize`` is set)."""
        if not self.normalize:
            return text
        return clean_text(text, self._table) if self.parser == "en" else text.strip().lower()

    def encode(self, text: str) -> list[int]:
        """Label ids of ``text``; characters that are not labels are dropped."""
        return self._encode_normalized(self.normalize_text(text))

    def encode_with_unknown(self, text: str) -> tuple[list[int], str]:
        """:meth:`encode`, and the characters it dropped because they are not labels.

        The text is normalised once for both. When ``" "`` is not a label, the dropped spaces come last.
        """
        text = self.normalize_text(text)
        return self._encode_normalized(text), self._dropped(text)

    def _encode_normalized(self, text: str) -> list[int]:
        space = self._ids.get(" ")
        ids: list[int] = []
        for position, word in enumerate(text.split(" ")):
            if position and space is not None:
                ids.append(space)
            if word in self._multi_char:
                ids.append(self._ids[word])
                continue
            ids.extend(self._ids[c] for c in word if c in self._ids)
        return ids

    def _dropped(self, text: str) -> str:
        if not (set(text) - self._chars):  # the common case, at C speed
            return ""
        dropped = [c for word in text.split(" ") if word not in self._multi_char for c in word if c not in self._ids]
        if " " not in self._ids:
            dropped.extend(" " * text.count(" "))
        return "".join(dropped)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Joins the labels of ``ids``; ids outside the labels (e.g. the blank) are skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        n = len(self.labels)
        return "".join(self.labels[i] for i in ids if 0 <= i < n)

    # NeMo's tokenizer method names.
    text_to_ids = encode
    ids_to_text = decode

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.labels)} labels, normalize={self.normalize}, parser={self.parser!r})"
