"""NeMo's ``Hypothesis``: what ``transcribe()`` returns for every input (NeMo 3.0 always returns these).

The fields, their order and defaults are those of ``nemo.collections.asr.parts.utils.rnnt_utils.Hypothesis``, so
code that reads ``hyp.text``, ``hyp.score`` or ``hyp.y_sequence`` (or builds ``Hypothesis(score, y_sequence,
text)`` positionally) ports unchanged. For greedy CTC, as filled by
:meth:`compat.models.ctc_models.EncDecCTCModel.transcribe`:

* ``text``: the decoded transcript;
* ``score``: the sum over frames inside the utterance of the arg-max log-prob of every non-blank frame (repeats
  not folded), NeMo's greedy score;
* ``y_sequence``: the per-frame arg-max labels ``[T']`` (int64), or with ``return_hypotheses=True`` the log-prob
  matrix ``[T', V+1]`` of the utterance (then ``alignments`` is the same tensor);
* ``length``: ``T'``, the number of encoder frames of the utterance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Hypothesis", "NBestHypotheses"]


@dataclass
class Hypothesis:
    """One decoding result (field names, order and defaults as NeMo's).

    Attributes:
        score: the hypothesis score (greedy CTC: summed arg-max log-probs of the non-blank frames).
        y_sequence: token ids / frame labels, or the ``[T', V+1]`` log-probs when ``return_hypotheses``.
        text: the decoded text.
        timestamp: per-token frame indices (not computed by the greedy CTC path here: empty).
        alignments: the log-prob matrix when ``return_hypotheses`` (NeMo's CTC transcribe sets it so).
        length: the number of valid frames of the utterance.
        The remaining fields are carried for compatibility and stay at their defaults.
    """

    score: float
    y_sequence: list[int] | torch.Tensor
    text: str | None = None
    dec_out: list[torch.Tensor] | None = None
    dec_state: Any = None
    timestamp: list[int] | torch.Tensor | dict = field(default_factory=list)
    alignments: Any = None
    frame_confidence: list[float] | list[list[float]] | None = None
    token_confidence: list[float] | None = None
    word_confidence: list[float] | None = None
    length: int | torch.Tensor = 0
    y: list[torch.Tensor] | None = None
    lm_state: Any = None
    lm_scores: torch.Tensor | None = None
    ngram_lm_state: Any = None
    tokens: list[int] | torch.Tensor | None = None
    last_token: torch.Tensor | None = None
    token_duration: torch.Tensor | None = None
    last_frame: int | None = None

    @property
    def words(self) -> list[str]:
        """``text.split()`` (``[]`` when there is no text)."""
        return [] if self.text is None else self.text.split()

    @property
    def non_blank_frame_confidence(self) -> list[float]:
        """Per-frame confidence of the non-blank frames listed in ``timestamp`` (``[]`` without confidences)."""
        stamps = self.timestamp["timestep"] if isinstance(self.timestamp, dict) else self.timestamp
        if self.frame_confidence is None or len(stamps) == 0:
            return []
        return [self.frame_confidence[t] for t in stamps]

    def clean_decoding_state_(self) -> None:
        """Drops the decoder state to save memory (NeMo's method)."""
        self.dec_state = None


@dataclass
class NBestHypotheses:
    """A list of hypotheses for one input (beam search); kept for import compatibility."""

    n_best_hypotheses: list[Hypothesis] | None
