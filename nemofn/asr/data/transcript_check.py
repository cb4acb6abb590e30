"""Warnings, once per dataset build and with counts, where transcripts silently lose data in training.

NeMo's rules (which nemofn keeps) let three kinds of bad transcript through without a word:

- a transcript that tokenises to nothing (empty, or only characters the tokenizer drops): the utterance trains the
  model to output nothing for speech;
- characters outside the vocabulary: a char tokenizer drops them (``"Hello"`` loses its ``H`` when
  ``normalize_transcripts`` is false), SentencePiece maps them to ``<unk>``;
- a transcript too long for CTC: CTC needs one output frame per target token plus a blank between two equal
  neighbours; with fewer frames the loss is infinite, and ``zero_infinity=True`` (NeMo's setting) turns it into 0, so
  the utterance teaches nothing.

:func:`check_transcripts` counts them for a built :class:`~nemofn.asr.data.dataset.AudioToTextDataset` and
:meth:`TranscriptReport.log` warns once per kind, giving ``path:line`` examples and the most frequent offending
characters. Nothing is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from nemofn.asr.data.manifest import ManifestEntry

__all__ = ["TranscriptReport", "check_transcripts", "CTCFrames", "ctc_required_frames"]

logger = logging.getLogger(__name__)

#: The model's CTC output length: frames per second of audio (``sample_rate / hop_length / subsampling_factor``;
#: rounded up per utterance), or a function from signal lengths in samples (at the dataset's sample rate, ``[N]``
#: int64) to output frames (``[N]``), for the exact count.
CTCFrames = float | Callable[[np.ndarray], Any]

_EXAMPLES = 3


def ctc_required_frames(tokens: np.ndarray) -> int:
    """Output frames CTC needs for ``tokens`` ``[U]``: ``U`` plus one blank between each pair of equal neighbours."""
    return int(len(tokens) + np.count_nonzero(tokens[1:] == tokens[:-1]))


@attrs.frozen
class TranscriptReport:
    """What :func:`check_transcripts` found; indices are dataset positions.

    Attributes:
        entries: the dataset's manifest entries (for ``path:line`` examples).
        empty: items whose transcript tokenises to no tokens; empty_in_manifest: how many of them have an empty
            transcript in the manifest.
        unknown_lines: items with characters the tokenizer drops or maps to ``<unk>``; unknown_chars: those
            characters with their counts.
        unknown_is_unk: whether the tokenizer maps unknown characters to ``<unk>`` (else it drops them).
        ctc_too_long: ``(index, frames needed, frames available)`` of items CTC cannot align.
    """

    entries: Sequence[ManifestEntry]
    empty: tuple[int, ...] = ()
    empty_in_manifest: int = 0
    unknown_lines: tuple[int, ...] = ()
    unknown_chars: Counter = attrs.field(factory=Counter)
    unknown_is_unk: bool = False
    ctc_too_long: tuple[tuple[int, int, int], ...] = ()

    def counts(self) -> dict[str, int]:
        """Items per kind: ``empty_tokens``, ``unknown_chars``, ``ctc_too_long`` (kinds with none left out)."""
        counts = {"empty_tokens": len(self.empty), "unknown_chars": len(self.unknown_lines),
                  "ctc_too_long": len(self.ctc_too_long)}
        return {k: v for k, v in counts.items() if v}

    def _where(self, indices: Sequence[int]) -> str:
        shown = [f"{self.entries[i].manifest}:{self.entries[i].line}" for i in indices[:_EXAMPLES]]
        more = f" and {len(indices) - _EXAMPLES} more" if len(indices) > _EXAMPLES else ""
        return ", ".join(shown) + more

    def messages(self, name: str = "dataset") -> list[str]:
        """One warning per kind found, each with its count and examples."""
        total = len(self.entries)
        out = []
        if self.empty:
            out.append(f"{name}: {len(self.empty)} of {total} transcripts tokenize to no tokens "
                       f"({self.empty_in_manifest} of them empty in the manifest); they train the model to output "
                       f"nothing for speech. Fix the text or the tokenizer's vocabulary (char models: "
                       f"normalize_transcripts). At {self._where(self.empty)}")
        if self.unknown_lines:
            top = ", ".join(f"{c!r} x{n}" for c, n in self.unknown_chars.most_common(10))
            what = "become <unk>" if self.unknown_is_unk else "are dropped"
            out.append(f"{name}: {len(self.unknown_lines)} of {total} transcripts have characters outside the "
                       f"tokenizer's vocabulary, which silently {what}; most frequent: {top}. Normalise the text "
                       f"(char models: normalize_transcripts: true) or extend the vocabulary. At "
                       f"{self._where(self.unknown_lines)}")
        if self.ctc_too_long:
            index, needed, frames = self.ctc_too_long[0]
            out.append(f"{name}: {len(self.ctc_too_long)} of {total} utterances have more target tokens (plus a blank "
                       f"between equal neighbours) than the model has output frames, e.g. {needed} > {frames}; CTC "
                       f"cannot align them and zero_infinity turns their loss into 0, so they teach nothing. Drop or "
                       f"split them. At {self._where([i for i, _, _ in self.ctc_too_long])}")
        return out

    def log(self, name: str = "dataset") -> None:
        """Logs :meth:`messages` as warnings."""
        for message in self.messages(name):
            logger.warning("%s", message)


def _output_frames(ctc_output_frames: CTCFrames, seconds: np.ndarray, sample_rate: int) -> np.ndarray:
    if callable(ctc_output_frames):
        samples = np.floor(seconds * sample_rate).astype(np.int64)
        return np.asarray(ctc_output_frames(samples), dtype=np.int64).reshape(-1)
    # Rounded up: the real count (centred STFT frames, then padded strided convolutions) is never below
    # seconds * rate by more than a fraction of a frame, and a false warning is worse than a missed borderline one.
    return np.ceil(seconds * float(ctc_output_frames)).astype(np.int64)


def check_transcripts(dataset: Any, *, ctc_output_frames: CTCFrames | None = None,
                      readable_seconds: Callable[[ManifestEntry], float] | None = None) -> TranscriptReport:
    """Counts the transcripts of ``dataset`` that lose data silently (see the module doc).

    Args:
        dataset: an :class:`~nemofn.asr.data.dataset.AudioToTextDataset` (its ``entries``, ``tokens(i)``,
            ``num_special_tokens``, ``unknown_text`` and ``sample_rate`` are read; no audio is).
        ctc_output_frames: the model's CTC output length (:data:`CTCFrames`); ``None`` skips the CTC check.
        readable_seconds: seconds of audio an entry yields (default: its manifest ``duration``); pass
            :meth:`~nemofn.asr.data.manifest_check.AudioCheckReport.readable_seconds` to use the file lengths.
    """
    entries = dataset.entries
    empty = [i for i in range(len(entries)) if len(dataset.tokens(i)) <= dataset.num_special_tokens]
    unknown_chars: Counter = Counter()
    for text in dataset.unknown_text.values():
        unknown_chars.update(text)
    too_long: list[tuple[int, int, int]] = []
    if ctc_output_frames is not None and len(entries):
        seconds = np.array([readable_seconds(e) if readable_seconds else e.duration for e in entries])
        frames = _output_frames(ctc_output_frames, seconds, dataset.sample_rate)
        for i, e in enumerate(entries):
            if seconds[i] <= 0:  # duration 0 without a header: the length is unknown
                continue
            needed = ctc_required_frames(dataset.tokens(i))
            if needed > frames[i]:
                too_long.append((i, needed, int(frames[i])))
    unk = getattr(dataset.tokenizer, "unk_id", None)
    return TranscriptReport(entries, tuple(empty), sum(1 for i in empty if not entries[i].text.strip()),
                            tuple(sorted(dataset.unknown_text)), unknown_chars, isinstance(unk, int) and unk >= 0,
                            tuple(too_long))
