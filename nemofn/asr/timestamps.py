"""Char / word / segment timestamps of greedy hypotheses, as NeMo 3.0's ``transcribe(..., timestamps=True)``.

NeMo sets ``Hypothesis.timestamp`` to a dict (keys in this order)::

    {"timestep": [frame, ...],                      # CTC: every non-blank frame; transducers: each token's frame
     "char":    [{"char", "start_offset", "end_offset", "start", "end"}, ...],   # one per token
     "word":    [{"word", "start_offset", "end_offset", "start", "end"}, ...],
     "segment": [{"segment", "start_offset", "end_offset", "start", "end"}, ...]}

Offsets count encoder frames; ``start`` / ``end`` are seconds, ``offset * window_stride * subsampling_factor``
(multiplied in that order, so the floats equal NeMo's bit for bit). This module rebuilds that dict from the
decoder's raw output, with NeMo's rules and types:

* **CTC** (:func:`ctc_timestamps`, from the per-frame arg-max labels ``[T]``): the CTC collapse emits a token at
  the first frame ``f_i`` of each run; token ``i`` spans ``[f_{i-1}, f_i]`` (the first token starts at
  ``max(0, f_0 - 1)``). Offsets are numpy ``int64`` and seconds numpy ``float64`` (NeMo builds them with
  ``cumsum``); ``char`` is the token's text. A punctuation token after the first gets ``end = start``.
* **Transducers** (:func:`transducer_timestamps`, from token ids, token frames and, for TDT, token durations):
  token ``i`` spans ``[frame_i, frame_i + 1]`` (RNNT) or ``[frame_i, frame_i + duration_i]`` (TDT; a duration
  may be 0). Offsets are ``int``, seconds ``float``; ``char`` is a one-element list ``[text]``. TDT only: a
  punctuation token after the first is moved to the previous token's end, with zero length.
* **Words** (:func:`word_offsets`): a new word starts at a piece whose text differs from the piece (SentencePiece
  ``▁x``: ``bpe``), at a piece not starting with ``##`` (``wpe``), or at the word separator (chars). Punctuation
  (NeMo's ``supported_punctuation``: category-``P`` characters of the vocabulary) is glued to the word before it.
* **Segments** (:func:`segment_offsets`): words are joined with spaces, and a segment ends after a word whose last
  character (or the whole word) is a separator (``. ? !`` by default), or, with a gap threshold, before a word
  that starts that many frames after the previous one ends.

Pure functions of Python lists (tensors are accepted and turned into lists); nothing here touches a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import numpy as np

from nemofn.asr.decoding import vocabulary_punctuation

__all__ = [
    "TIMESTAMP_TYPES",
    "SubwordKind",
    "TimestampVocab",
    "TimestampOptions",
    "TokenSpan",
    "subword_kind",
    "ctc_token_offsets",
    "transducer_token_offsets",
    "word_offsets",
    "segment_offsets",
    "add_seconds",
    "ctc_timestamps",
    "transducer_timestamps",
]

TIMESTAMP_TYPES = ("char", "word", "segment", "all")
SubwordKind = Literal["char", "bpe", "wpe"]
_SPACE_PIECES = (" ", "_", "▁")


def subword_kind(pieces: Iterable[str]) -> SubwordKind:
    """``"wpe"`` when any piece starts with ``##`` (BERT word pieces), else ``"bpe"`` (NeMo's rule)."""
    return "wpe" if any(p.startswith("##") for p in pieces) else "bpe"


def _join(pieces: Sequence[str]) -> str:
    return "".join(pieces)


@attrs.frozen
class TimestampVocab:
    """What the timestamp rules need to know about the output vocabulary.

    Attributes:
        pieces: the text of every token id, in id order (char labels, or SentencePiece pieces such as ``▁the``);
            the blank (id ``len(pieces)``) is not included.
        kind: ``"char"``, ``"bpe"`` or ``"wpe"``: how word starts are found.
        tokens_to_text: pieces -> text (chars: ``"".join``; SentencePiece: ``decode_pieces``).
        punctuation: NeMo's ``supported_punctuation``.
    """

    pieces: tuple[str, ...] = attrs.field(converter=tuple)
    kind: SubwordKind
    tokens_to_text: Callable[[Sequence[str]], str] = attrs.field(eq=False)
    punctuation: frozenset[str] = attrs.field(converter=frozenset)

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("char", "bpe", "wpe"):
            raise ValueError(f"TimestampVocab.kind must be 'char', 'bpe' or 'wpe', got {self.kind!r}")

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> TimestampVocab:
        """A char vocabulary (NeMo's ``CTCDecoding`` / ``RNNTDecoding``): pieces are labels, joined with ``""``."""
        labels = tuple(labels)
        return cls(labels, "char", _join, vocabulary_punctuation(labels))

    @classmethod
    def from_pieces(cls, pieces: Sequence[str], tokens_to_text: Callable[[Sequence[str]], str],
                    punctuation: Iterable[str] | None = None) -> TimestampVocab:
        """A subword vocabulary (NeMo's ``*BPEDecoding``); ``punctuation`` defaults to the one read from pieces."""
        pieces = tuple(pieces)
        punct = vocabulary_punctuation(pieces) if punctuation is None else punctuation
        return cls(pieces, subword_kind(pieces), tokens_to_text, punct)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TimestampVocab:
        """From a nemofn tokenizer: ``CharTokenizer`` (``labels``) or a subword tokenizer with ``vocab`` (pieces)
        and ``tokens_to_text`` (``SentencePieceTokenizer``); ``supported_punctuation`` is used when present."""
        if hasattr(tokenizer, "tokens_to_text") and hasattr(tokenizer, "vocab"):
            return cls.from_pieces(tokenizer.vocab, tokenizer.tokens_to_text,
                                   getattr(tokenizer, "supported_punctuation", None))
        if hasattr(tokenizer, "labels"):
            return cls.from_labels(tokenizer.labels)
        raise TypeError(f"TimestampVocab.from_tokenizer: {type(tokenizer).__name__} has neither `labels` (char) nor "
                        "`vocab` + `tokens_to_text` (subword); build a TimestampVocab with from_labels/from_pieces")

    def text(self, token_id: int) -> str:
        """The text of one token alone (``▁the`` -> ``the``)."""
        return self.tokens_to_text([self.pieces[token_id]])


@attrs.frozen
class TimestampOptions:
    """NeMo's decoding-config keys for timestamps (``word_seperator``, ``segment_seperators`` keep NeMo's
    spelling in the config; the type key is ``ctc_timestamp_type`` or ``rnnt_timestamp_type``)."""

    timestamp_type: str = "all"
    word_separator: str = " "
    segment_separators: tuple[str, ...] = attrs.field(default=(".", "?", "!"), converter=tuple)
    segment_gap_threshold: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.timestamp_type not in TIMESTAMP_TYPES:
            raise ValueError(f"timestamp type must be one of {TIMESTAMP_TYPES}, got {self.timestamp_type!r}")

    @classmethod
    def from_decoding_config(cls, cfg: Mapping[str, Any] | None, *, model: str = "ctc") -> TimestampOptions:
        """Reads a NeMo ``decoding`` block (``model`` ``"ctc"`` or ``"rnnt"`` picks the type key)."""
        cfg = cfg or {}
        if model not in ("ctc", "rnnt"):
            raise ValueError(f"TimestampOptions.from_decoding_config: model must be 'ctc' or 'rnnt', got {model!r}")
        separators = cfg.get("segment_seperators", (".", "?", "!"))
        return cls(timestamp_type=str(cfg.get(f"{model}_timestamp_type", "all") or "all"),
                   word_separator=str(cfg.get("word_seperator", " ")),
                   segment_separators=tuple(separators) if separators is not None else (),
                   segment_gap_threshold=cfg.get("segment_gap_threshold", None))


@attrs.frozen
class TokenSpan:
    """One emitted token: its piece, its text alone, and its frames (``int`` or numpy ``int64``, kept as given)."""

    piece: str
    text: str
    start_offset: Any
    end_offset: Any


def _as_list(values: Any) -> list:
    if values is None:
        return []
    return values.tolist() if hasattr(values, "tolist") else list(values)


# ------------------------------------------------------------------------------------------------ token offsets


def ctc_token_offsets(frame_labels: Any, blank_id: int) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """CTC collapse of one utterance's frame labels, with each token's frames.

    Args:
        frame_labels: ``[T]`` arg-max label of every valid frame (list or 1-D tensor).
        blank_id: the blank label.

    Returns:
        ``(token_ids [N], timestep [K], start_offsets [N], end_offsets [N])``: the collapsed ids; the indices of
        all non-blank frames; and numpy ``int64`` frame spans (token ``i`` ends on the frame where it is emitted
        and starts where token ``i - 1`` was emitted; token 0 starts one frame before its own, at least 0).
    """
    labels = [int(k) for k in _as_list(frame_labels)]
    timestep = [t for t, k in enumerate(labels) if k != blank_id]
    ids: list[int] = []
    emitted: list[int] = []
    previous = blank_id
    for t, k in enumerate(labels):
        if k != blank_id and (k != previous or previous == blank_id):
            ids.append(k)
            emitted.append(t)
        previous = k
    ends = np.asarray(emitted, dtype=np.int64)
    first = max(0, timestep[0] - 1) if timestep else 0
    starts = np.concatenate((np.asarray([first], dtype=np.int64), ends[:-1])) if len(ends) else ends.copy()
    return ids, timestep, starts, ends


def transducer_token_offsets(token_ids: Any, frames: Any, durations: Any = None, *,
                             blank_id: int | None = None) -> tuple[list[int], list[int], list[int]]:
    """Frame spans of transducer tokens.

    Args:
        token_ids: ``[N]`` emitted token ids (``Hypothesis.y_sequence``).
        frames: ``[N]`` encoder frame of each token (``Hypothesis.timestamp``).
        durations: ``[N]`` TDT predicted duration of each token (frames, may be 0), or ``None`` for RNNT.
        blank_id: tokens with this id are dropped (greedy search never emits it).

    Returns:
        ``(token_ids, start_offsets, end_offsets)`` as ``int`` lists: end = frame + 1 (RNNT) or frame + duration.
    """
    ids, starts = [int(k) for k in _as_list(token_ids)], [int(f) for f in _as_list(frames)]
    if len(ids) != len(starts):
        raise ValueError(f"transducer_token_offsets: {len(ids)} token ids but {len(starts)} frames")
    steps = [1] * len(ids) if durations is None else [int(d) for d in _as_list(durations)]
    if len(steps) != len(ids):
        raise ValueError(f"transducer_token_offsets: {len(ids)} token ids but {len(steps)} durations; pass one "
                         "duration per token for TDT, or durations=None for RNNT")
    keep = [i for i, k in enumerate(ids) if k != blank_id]
    return [ids[i] for i in keep], [starts[i] for i in keep], [starts[i] + steps[i] for i in keep]


# ------------------------------------------------------------------------------------------------ words, segments


def _starts_word(kind: SubwordKind, piece: str, text: str, following: str | None, separator: str,
                 punctuation: frozenset[str]) -> bool:
    """NeMo's word-start test for one token (``following``: the next token text that is not the separator)."""
    lone_separator = text == separator and following not in punctuation
    if kind in ("bpe", "wpe") and separator == " ":
        if kind == "wpe":
            return bool(text and not text.startswith("##")) or lone_separator
        return piece != text or lone_separator
    if separator == " ":
        return lone_separator
    return text == separator


def _word(tokens_to_text: Callable, built: list[str], start: Any, end: Any) -> dict:
    return {"word": tokens_to_text(built), "start_offset": start, "end_offset": end}


def word_offsets(spans: Sequence[TokenSpan], vocab: TimestampVocab, *, word_separator: str = " ") -> list[dict]:
    """Word entries ``{"word", "start_offset", "end_offset"}`` from token spans (NeMo's ``get_words_offsets``).

    Args:
        spans: the tokens in order (after the punctuation refinement of their offsets).
        vocab: gives the word-start rule (``kind``), ``tokens_to_text`` for a word's pieces, and ``punctuation``.
        word_separator: the separator token text (NeMo's ``word_seperator``).
    """
    punctuation, kind = vocab.punctuation, vocab.kind
    words: list[dict] = []
    built: list[str] = []
    first = 0  # index of the first token of the word being built
    for i, span in enumerate(spans):
        text = span.text
        is_punct = bool(punctuation) and text in punctuation and text != word_separator
        following = None
        for later in spans[i + 1:]:
            following = later.text if later.text != word_separator else None
            if following:
                break
        if _starts_word(kind, span.piece, text, following, word_separator, punctuation) and not is_punct:
            if built:
                words.append(_word(vocab.tokens_to_text, built, spans[first].start_offset, spans[i - 1].end_offset))
            built = []
            if text != word_separator:
                built.append(span.piece)
                first = i
        elif is_punct and not built and words:
            last = words[-1]
            last["end_offset"] = span.end_offset
            if last["word"].endswith(" "):
                last["word"] = last["word"][:-1]
            last["word"] += text
        elif is_punct and built:
            if built[-1] in _SPACE_PIECES:
                built.pop()
            built.append(span.piece)
        else:
            if not built:
                first = i
            built.append(span.piece)
    if not words:
        if built:
            words.append(_word(vocab.tokens_to_text, built, spans[0].start_offset, spans[-1].end_offset))
        return words
    words[0]["start_offset"] = spans[0].start_offset
    if built:
        words.append(_word(vocab.tokens_to_text, built, spans[first].start_offset, spans[-1].end_offset))
    return words


def _segment(words: Sequence[dict], first: int, last: int) -> dict:
    return {"segment": " ".join(w["word"] for w in words[first:last + 1]),
            "start_offset": words[first]["start_offset"], "end_offset": words[last]["end_offset"]}


def segment_offsets(words: Sequence[dict], *, separators: Sequence[str] = (".", "?", "!"),
                    gap_threshold: int | None = None) -> list[dict]:
    """Segment entries ``{"segment", "start_offset", "end_offset"}`` from word entries (NeMo's
    ``get_segment_offsets``).

    A segment closes after a word that ends with (or is) a separator. With ``gap_threshold`` (frames), a word
    starting at least that far after the previous word's end opens a new segment, and (as in NeMo) the separator
    test is then skipped for every word that is not the first of its segment.
    """
    separators = tuple(separators)
    segments: list[dict] = []
    first = 0
    count = 0  # words in the open segment
    for i, word in enumerate(words):
        text = word["word"]
        if gap_threshold and count:
            if word["start_offset"] - words[i - 1]["end_offset"] >= gap_threshold:
                segments.append(_segment(words, first, i - 1))
                first, count = i, 1
                continue
        elif text and (text[-1] in separators or text in separators):
            segments.append(_segment(words, first, i))
            first, count = i + 1, 0
            continue
        count += 1
    if count:
        segments.append(_segment(words, first, len(words) - 1))
    return segments


def add_seconds(entries: list[dict], window_stride: float, subsampling_factor: int) -> list[dict]:
    """Adds ``start`` / ``end`` seconds (``offset * window_stride * subsampling_factor``) to entries, in place."""
    for entry in entries:
        entry["start"] = entry["start_offset"] * window_stride * subsampling_factor
        entry["end"] = entry["end_offset"] * window_stride * subsampling_factor
    return entries


# ----------------------------------------------------------------------------------------------- the whole dict


def _assemble(timestep: list[int], chars: list[dict], spans: list[TokenSpan], vocab: TimestampVocab,
              options: TimestampOptions, window_stride: float | None, subsampling_factor: int) -> dict:
    kind = options.timestamp_type
    words = segments = None
    if kind in ("word", "segment", "all"):
        words = word_offsets(spans, vocab, word_separator=options.word_separator)
    if kind in ("segment", "all"):
        segments = segment_offsets(words, separators=options.segment_separators,
                                   gap_threshold=options.segment_gap_threshold)
    out: dict[str, Any] = {"timestep": timestep}
    if kind in ("char", "all"):
        out["char"] = chars
    if kind in ("word", "all"):
        out["word"] = words
    if kind in ("segment", "all"):
        out["segment"] = segments
    if window_stride is not None:
        for level in ("char", "word", "segment"):
            if level in out:
                add_seconds(out[level], window_stride, subsampling_factor)
    return out


def ctc_timestamps(frame_labels: Any, vocab: TimestampVocab, *, blank_id: int | None = None,
                   window_stride: float | None, subsampling_factor: int,
                   options: TimestampOptions = TimestampOptions()) -> dict:
    """NeMo's ``Hypothesis.timestamp`` dict of one greedy CTC hypothesis.

    Args:
        frame_labels: ``[T]`` per-frame arg-max labels of the utterance's valid frames.
        vocab: the output vocabulary (:class:`TimestampVocab`).
        blank_id: the CTC blank; defaults to ``len(vocab.pieces)``.
        window_stride: the preprocessor's hop in seconds; ``None`` leaves out ``start`` / ``end`` (the dict as
            NeMo's decoding returns it, before ``transcribe`` converts frames to seconds).
        subsampling_factor: encoder frames per feature frame (``encoder.subsampling_factor``).
        options: timestamp type, word and segment separators, segment gap threshold.

    Returns:
        ``{"timestep": [K] int, "char": [...], "word": [...], "segment": [...]}`` (the levels that
        ``options.timestamp_type`` asks for), offsets numpy ``int64``, seconds numpy ``float64``.
    """
    blank = len(vocab.pieces) if blank_id is None else blank_id
    ids, timestep, starts, ends = ctc_token_offsets(frame_labels, blank)
    chars, spans = [], []
    for i, (token, start, end) in enumerate(zip(ids, starts, ends)):
        text = vocab.text(token)
        if vocab.punctuation and text and text[0] in vocab.punctuation and i > 0:
            end = start  # NeMo: a punctuation mark gets no duration
        chars.append({"char": text, "start_offset": start, "end_offset": end})
        spans.append(TokenSpan(vocab.pieces[token], text, start, end))
    return _assemble(timestep, chars, spans, vocab, options, window_stride, subsampling_factor)


def transducer_timestamps(token_ids: Any, frames: Any, durations: Any, vocab: TimestampVocab, *,
                          blank_id: int | None = None, window_stride: float | None, subsampling_factor: int,
                          options: TimestampOptions = TimestampOptions()) -> dict:
    """NeMo's ``Hypothesis.timestamp`` dict of one greedy RNNT or TDT hypothesis.

    Args:
        token_ids: ``[N]`` emitted token ids (``y_sequence``).
        frames: ``[N]`` encoder frame of each token (the hypothesis' ``timestamp`` before it becomes a dict).
        durations: ``[N]`` TDT durations of each token (``token_duration``, frames), or ``None`` for RNNT.
        vocab: the output vocabulary (:class:`TimestampVocab`).
        blank_id: ids to drop (default ``len(vocab.pieces)``).
        window_stride, subsampling_factor, options: as in :func:`ctc_timestamps`.

    Returns:
        ``{"timestep": [N] int, "char": [...], "word": [...], "segment": [...]}`` with ``int`` offsets,
        ``float`` seconds and ``char`` values that are one-element lists ``[text]`` (NeMo's transducer layout).
    """
    blank = len(vocab.pieces) if blank_id is None else blank_id
    timestep = [int(f) for f in _as_list(frames)]
    ids, starts, ends = transducer_token_offsets(token_ids, timestep, durations, blank_id=blank)
    chars, spans = [], []
    for i, (token, start, end) in enumerate(zip(ids, starts, ends)):
        text = vocab.text(token)
        if durations is not None and vocab.punctuation and text in vocab.punctuation and i > 0:
            start = end = spans[-1].end_offset  # TDT: punctuation sits at the previous token's end
        chars.append({"char": [text], "start_offset": start, "end_offset": end})
        spans.append(TokenSpan(vocab.pieces[token], text, start, end))
    return _assemble(timestep, chars, spans, vocab, options, window_stride, subsampling_factor)
