"""Greedy CTC decoding, and turning token ids into text as NeMo's ``CTCDecoding`` / ``CTCBPEDecoding`` do.

Greedy CTC (NeMo's ``greedy`` and ``greedy_batch`` strategies give the same ids): take the arg-max class of
every frame, keep the frames inside each utterance's length, fold runs of the same id into one, and drop the
blank (by default the last class). The tensor work is batched; only the final split into Python lists syncs.

Text:

* char models: the labels of the ids joined with ``""`` (:func:`ids_to_text_chars`, :class:`CharDecoder`);
* subword models: a tokenizer object's ``ids_to_text(ids)`` (duck-typed; e.g. SentencePiece)
  (:func:`ids_to_text_tokenizer`, :class:`TokenizerDecoder`).

Both then remove one whitespace before any punctuation mark the vocabulary contains (NeMo's
``supported_punctuation``; for the usual English char labels that is the apostrophe).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch

__all__ = [
    "greedy_frame_labels",
    "ctc_collapse_mask",
    "ctc_greedy_decode",
    "greedy_scores",
    "vocabulary_punctuation",
    "strip_space_before_punctuation",
    "ids_to_text_chars",
    "ids_to_text_tokenizer",
    "CharDecoder",
    "TokenizerDecoder",
]


def greedy_frame_labels(log_probs: torch.Tensor) -> torch.Tensor:
    """``[B, T, C]`` log-probs -> ``[B, T]`` int64 arg-max class per frame (ties go to the lowest id)."""
    return log_probs.argmax(dim=-1)


def _time_mask(batch: int, max_time: int, lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``[B, T]`` bool, true on frames inside each length (all true when ``lengths`` is None)."""
    steps = torch.arange(max_time, device=device).unsqueeze(0).expand(batch, max_time)
    if lengths is None:
        return torch.ones(batch, max_time, dtype=torch.bool, device=device)
    return steps < lengths.to(device).unsqueeze(1)


def ctc_collapse_mask(labels: torch.Tensor, lengths: torch.Tensor | None, blank_id: int) -> torch.Tensor:
    """``[B, T]`` bool: the frames whose label is emitted by the CTC collapse.

    A frame is kept when it is inside the length, is not blank, and differs from the previous frame's label
    (a blank between two equal labels separates them, so both are kept).
    """
    batch, max_time = labels.shape
    previous = torch.cat([torch.full_like(labels[:, :1], blank_id), labels[:, :-1]], dim=1)
    keep = (labels != blank_id) & (labels != previous)
    return keep & _time_mask(batch, max_time, lengths, labels.device)


def ctc_greedy_decode(
    predictions: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    blank_id: int | None = None,
    return_frame_labels: bool = False,
) -> list[list[int]] | tuple[list[list[int]], torch.Tensor]:
    """Batched greedy CTC decoding.

    Args:
        predictions: ``[B, T, C]`` log-probs (or logits), or ``[B, T]`` integer frame labels already chosen.
        lengths: ``[B]`` valid frames per utterance; ``None`` uses all ``T`` frames.
        blank_id: the blank class. Defaults to the last class ``C - 1``; it is required for ``[B, T]`` labels.
        return_frame_labels: also return the ``[B, T]`` per-frame labels (NeMo's ``greedy_predictions``).

    Returns:
        One list of collapsed token ids per utterance (and the frame labels if asked).
    """
    if predictions.ndim == 3:
        labels = greedy_frame_labels(predictions)
        if blank_id is None:
            blank_id = predictions.shape[-1] - 1
    elif predictions.ndim == 2:
        if predictions.is_floating_point():
            raise TypeError("ctc_greedy_decode: a 2-D `predictions` must hold integer frame labels [B, T]; "
                            "pass log-probs as [B, T, C]")
        if blank_id is None:
            raise ValueError("ctc_greedy_decode: pass blank_id= with [B, T] frame labels (it is the vocabulary "
                             "size, i.e. the last class of the decoder)")
        labels = predictions.long()
    else:
        raise ValueError(f"ctc_greedy_decode: expected [B, T, C] log-probs or [B, T] labels, "
                         f"got shape {tuple(predictions.shape)}")
    keep = ctc_collapse_mask(labels, lengths, blank_id)
    counts = keep.sum(dim=1).tolist()
    flat = labels[keep].tolist()
    ids: list[list[int]] = []
    start = 0
    for n in counts:
        ids.append(flat[start:start + n])
        start += n
    if return_frame_labels:
        return ids, labels
    return ids


def greedy_scores(log_probs: torch.Tensor, lengths: torch.Tensor | None = None,
                  blank_id: int | None = None) -> torch.Tensor:
    """NeMo's greedy ``Hypothesis.score``: ``[B]`` sum of the frame-max log-prob over non-blank frames in length
    (repeats are not folded)."""
    if blank_id is None:
        blank_id = log_probs.shape[-1] - 1
    best, labels = log_probs.max(dim=-1)
    batch, max_time = labels.shape
    mask = (labels != blank_id) & _time_mask(batch, max_time, lengths, labels.device)
    return torch.where(mask, best, torch.zeros_like(best)).sum(dim=1)


_SPECIAL_TOKEN_PATTERNS = (
    re.compile(r"^\[.*\]$"),
    re.compile(r"^<.*>$"),
    re.compile(r"^##"),
    re.compile(r"^▁"),
    re.compile(r"^\s*$"),
)


def vocabulary_punctuation(vocabulary: Iterable[str]) -> frozenset[str]:
    """Punctuation characters (Unicode category ``P*``) found in ordinary tokens of a vocabulary.

    Special-looking tokens (``[x]``, ``<x>``, ``##x``, ``▁x``, whitespace) are skipped, as in NeMo.
    """
    found: set[str] = set()
    for token in vocabulary:
        if any(p.match(token) for p in _SPECIAL_TOKEN_PATTERNS):
            continue
        found.update(ch for ch in token if unicodedata.category(ch).startswith("P"))
    return frozenset(found)


def _punctuation_pattern(punctuation: Iterable[str]) -> re.Pattern | None:
    marks = sorted(punctuation)
    if not marks:
        return None
    return re.compile(r"(\s)(" + "|".join(re.escape(p) for p in marks) + ")")


def strip_space_before_punctuation(text: str, punctuation: Iterable[str]) -> str:
    """Removes one whitespace before each punctuation mark of ``punctuation`` (``"it 's"`` -> ``"it's"``)."""
    pattern = _punctuation_pattern(punctuation)
    return text if pattern is None else pattern.sub(r"\2", text)


def ids_to_text_chars(ids: Sequence[int], labels: Sequence[str], *, strip_punctuation: bool = True) -> str:
    """Char-model text: the labels of ``ids`` joined with ``""``; ids equal to ``len(labels)`` (blank) are dropped.

    Raises:
        IndexError: an id is neither a label index nor the blank.
    """
    blank = len(labels)
    pieces = []
    for i in ids:
        if i == blank:
            continue
        if not 0 <= i < blank:
            raise IndexError(f"token id {i} is outside the {blank} labels (blank id {blank})")
        pieces.append(labels[i])
    text = "".join(pieces)
    if strip_punctuation:
        text = strip_space_before_punctuation(text, vocabulary_punctuation(labels))
    return text


class _TextTokenizer(Protocol):
    def ids_to_text(self, ids: list[int]) -> str: ...


def _tokenizer_punctuation(tokenizer: Any) -> frozenset[str]:
    explicit = getattr(tokenizer, "supported_punctuation", None)
    if explicit is not None:
        return frozenset(explicit)
    vocab = getattr(tokenizer, "vocab", None)
    return vocabulary_punctuation(vocab) if vocab is not None else frozenset()


def ids_to_text_tokenizer(ids: Sequence[int], tokenizer: _TextTokenizer, *, strip_punctuation: bool = True) -> str:
    """Subword-model text via ``tokenizer.ids_to_text(list(ids))``.

    The punctuation set is ``tokenizer.supported_punctuation`` if present, else read from ``tokenizer.vocab``
    (a list of pieces), else empty.
    """
    text = tokenizer.ids_to_text(list(ids))
    if strip_punctuation:
        text = strip_space_before_punctuation(text, _tokenizer_punctuation(tokenizer))
    return text


class CharDecoder:
    """Greedy CTC to text for a char vocabulary (NeMo's ``CTCDecoding`` with a greedy strategy).

    Args:
        labels: the vocabulary without the blank; the blank id is ``len(labels)``.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.blank_id = len(self.labels)
        self._pattern = _punctuation_pattern(vocabulary_punctuation(self.labels))

    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Token ids (already collapsed; blanks are dropped) -> text."""
        text = ids_to_text_chars(ids, self.labels, strip_punctuation=False)
        return text if self._pattern is None else self._pattern.sub(r"\2", text)

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """``[B, T, V+1]`` log-probs (or ``[B, T]`` frame labels) and ``[B]`` lengths -> one text per utterance."""
        ids = ctc_greedy_decode(log_probs, lengths, blank_id=self.blank_id)
        return [self.ids_to_text(x) for x in ids]


class TokenizerDecoder:
    """Greedy CTC to text for a subword model (NeMo's ``CTCBPEDecoding`` with a greedy strategy).

    Args:
        tokenizer: any object with ``ids_to_text(list[int]) -> str``.
        vocab_size: the tokenizer's vocabulary size (the blank id). Defaults to ``tokenizer.vocab_size``.
    """

    def __init__(self, tokenizer: _TextTokenizer, vocab_size: int | None = None) -> None:
        if vocab_size is None:
            vocab_size = getattr(tokenizer, "vocab_size", None)
            if callable(vocab_size):  # sentencepiece.SentencePieceProcessor.vocab_size()
                vocab_size = vocab_size()
            if vocab_size is None:
                raise ValueError("TokenizerDecoder: the tokenizer has no `vocab_size`; pass vocab_size= "
                                 "(the number of tokens, which is the CTC blank id)")
        self.tokenizer = tokenizer
        self.blank_id = int(vocab_size)
        self._pattern = _punctuation_pattern(_tokenizer_punctuation(tokenizer))

    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Token ids (already collapsed) -> text."""
        text = self.tokenizer.ids_to_text([i for i in ids if i != self.blank_id])
        return text if self._pattern is None else self._pattern.sub(r"\2", text)

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """``[B, T, V+1]`` log-probs (or ``[B, T]`` frame labels) and ``[B]`` lengths -> one text per utterance."""
        ids = ctc_greedy_decode(log_probs, lengths, blank_id=self.blank_id)
        return [self.ids_to_text(x) for x in ids]
