"""Word and character error rates, as NeMo's ``nemo/collections/asr/metrics/wer.py`` computes them.

The rate is corpus-level: the total edit distance over all pairs divided by the total number of reference
words (or characters with ``use_cer``), not the mean of per-utterance rates. Words are ``str.split()`` tokens;
characters are every character, spaces included. Edit distance is rapidfuzz's Levenshtein distance over the
token lists (unit costs for insertion, deletion and substitution).
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

__all__ = ["edit_distance", "error_counts", "word_error_rate", "WER"]


def _tokens(text: str, use_cer: bool) -> list[str]:
    return list(text) if use_cer else text.split()


def edit_distance(hypothesis: Sequence[str], reference: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (lists of words, or strings as characters)."""
    return Levenshtein.distance(hypothesis, reference)


def error_counts(hypotheses: Sequence[str], references: Sequence[str], use_cer: bool = False) -> tuple[int, int]:
    """``(total edits, total reference tokens)`` over paired texts.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"word_error_rate needs as many hypotheses as references, got {len(hypotheses)} "
                         f"hypotheses and {len(references)} references")
    edits = 0
    words = 0
    for hyp, ref in zip(hypotheses, references):
        ref_tokens = _tokens(ref, use_cer)
        words += len(ref_tokens)
        edits += edit_distance(_tokens(hyp, use_cer), ref_tokens)
    return edits, words


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str], use_cer: bool = False) -> float:
    """Corpus WER (or CER): total edits / total reference words. ``inf`` when the references hold no words
    (NeMo's convention)."""
    edits, words = error_counts(hypotheses, references, use_cer)
    return edits / words if words else float("inf")


class WER:
    """Accumulating WER over batches of texts.

    NeMo's ``WER`` metric decodes tensors itself and its ``update`` replaces the state with the latest batch
    (its models sum the per-batch numerators and denominators). This one takes texts and accumulates across
    ``update`` calls until :meth:`reset`; ``update`` also returns the batch's own counts.

    Example::

        wer = WER()
        wer.update(["a b"], ["a c"])
        rate, edits, words = wer.compute()   # (0.5, 1, 2)
    """

    def __init__(self, use_cer: bool = False) -> None:
        self.use_cer = use_cer
        self.scores = 0
        self.words = 0

    def reset(self) -> None:
        self.scores = 0
        self.words = 0

    def update(self, hypotheses: Sequence[str], references: Sequence[str]) -> tuple[int, int]:
        """Adds a batch; returns that batch's ``(edits, reference words)``."""
        edits, words = error_counts(hypotheses, references, self.use_cer)
        self.scores += edits
        self.words += words
        return edits, words

    def compute(self) -> tuple[float, int, int]:
        """``(wer, total edits, total reference words)``. With no reference words the rate follows NeMo's float
        division: ``nan`` for 0/0, ``inf`` for edits/0."""
        if self.words:
            rate = self.scores / self.words
        else:
            rate = float("inf") if self.scores else float("nan")
        return rate, self.scores, self.words
