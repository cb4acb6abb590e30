"""Counting the steps ``train_step`` left out (non-finite loss or gradient norm) and stopping when they persist.

``train_step`` reports ``metrics["skipped"]`` (a 0/1 device tensor) and leaves the state unchanged on such a step
(see :mod:`nemofn.train.step`). The loop gives each step's flag to a :class:`SkipTracker` together with where its
batches came from; the tracker reads the flags back only when the loop syncs anyway (log steps, the end of the run,
or every 1024 unread steps), so a run pays no per-step host sync. Each read:

* adds the skipped steps to ``skipped_steps`` (logged with the metrics);
* warns once (:class:`NonFiniteStepWarning`, on rank 0) naming the steps skipped since the last read and their
  batches, when training goes on;
* raises :class:`NonFiniteLossError` when some run of consecutive skipped steps reached ``max_consecutive`` (it may
  be seen a few steps after it happened, at the next read; the parameters are those of the last finite step).

Steps are numbered as in the logs: the global step after the step (step 1 is the first). Batches are named by their
manifest lines (``train.json:17``) when the dataset holds manifest entries (``dataset.entries[i].manifest`` and
``.line``, as :class:`~nemofn.asr.data.dataset.AudioToTextDataset`), otherwise by their dataset indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

__all__ = ["NonFiniteLossError", "NonFiniteStepWarning", "SkipTracker", "SkippedStep", "batch_namer"]

#: Unread steps after which the tracker reads the flags even between log steps (bounds the memory it holds).
MAX_PENDING = 1024
_SHOWN_STEPS = 10
_SHOWN_SAMPLES = 8


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a NaN/Inf loss or gradient norm (all of them were skipped).

    Attributes:
        steps: the skipped steps of the run that reached the limit (log numbering), in order.
        batches: ``{step: [sample names]}`` for those steps (manifest lines, or dataset indices).
    """

    def __init__(self, message: str, steps: Sequence[int], batches: dict[int, list[str]]) -> None:
        super().__init__(message)
        self.steps = list(steps)
        self.batches = dict(batches)


class NonFiniteStepWarning(RuntimeWarning):
    """Some training steps were skipped for a non-finite loss or gradient norm; training goes on."""


@attrs.frozen
class SkippedStep:
    """Where a step's batches came from: ``count`` batches from position ``first`` of epoch ``epoch``."""

    step: int
    epoch: int
    first: int
    count: int


def batch_namer(sampler: Any, dataset: Any) -> Callable[[SkippedStep], list[str]]:
    """A function naming the samples of a step's batches (see the module doc); only called for skipped steps.

    Args:
        sampler: the training batch sampler (``epoch_batches(epoch)`` gives this rank's index lists; without it
            the batches are named by epoch and position).
        dataset: the training dataset (``entries[i].manifest`` / ``.line`` name samples; else their indices).
    """
    cache: dict[int, list[list[int]]] = {}

    def sample_name(index: int) -> str:
        entries = getattr(dataset, "entries", None)
        if entries is not None and 0 <= index < len(entries):
            entry = entries[index]
            manifest, line = getattr(entry, "manifest", ""), getattr(entry, "line", 0)
            if manifest and line:
                return f"{manifest}:{line}"
        return f"index {index}"

    def names(record: SkippedStep) -> list[str]:
        epoch_batches = getattr(sampler, "epoch_batches", None)
        if epoch_batches is None:
            return [f"epoch {record.epoch} batch {b}" for b in range(record.first, record.first + record.count)]
        if record.epoch not in cache:
            cache.clear()
            cache[record.epoch] = epoch_batches(record.epoch)
        batches = cache[record.epoch][record.first:record.first + record.count]
        return [sample_name(int(i)) for batch in batches for i in batch]

    return names


@attrs.define(eq=False)
class SkipTracker:
    """Accumulates ``metrics["skipped"]`` on the device; reads, warns and raises at :meth:`flush` (module doc).

    Args:
        max_consecutive: raise once this many consecutive steps were skipped (``None`` or 0: never).
        name_batches: names a step's samples (:func:`batch_namer`).
        warn: emit :class:`NonFiniteStepWarning` (the loop sets it on rank 0 only).
        where: added to messages (e.g. ``" on rank 1"``).
    """

    max_consecutive: int | None
    name_batches: Callable[[SkippedStep], list[str]]
    warn: bool = True
    where: str = ""
    total: int = 0
    _pending: list[tuple[torch.Tensor, SkippedStep]] = attrs.field(factory=list)
    _run: list[SkippedStep] = attrs.field(factory=list)

    def record(self, metrics: dict[str, Any], step: SkippedStep) -> bool:
        """Keeps the step's flag (no sync); returns whether enough steps are unread that a :meth:`flush` is due."""
        flag = metrics.get("skipped")
        if isinstance(flag, torch.Tensor):
            self._pending.append((flag, step))
        return len(self._pending) >= MAX_PENDING

    def flush(self) -> None:
        """Reads the unread flags (one host read), counts, warns; raises :class:`NonFiniteLossError` (see above)."""
        if not self._pending:
            return
        flags = torch.stack([f.reshape(()).to(self._pending[0][0].device) for f, _ in self._pending]).tolist()
        records = [r for _, r in self._pending]
        self._pending = []
        skipped = []
        for flag, record in zip(flags, records):
            if not flag:
                self._run = []
                continue
            skipped.append(record)
            self.total += 1
            if not self.max_consecutive:
                continue
            self._run.append(record)
            if len(self._run) >= self.max_consecutive:
                raise self._error()
        if skipped and self.warn:
            warnings.warn(f"{len(skipped)} training step(s) had a non-finite loss or gradient norm and were skipped "
                          f"(parameters, buffers and optimizer state left unchanged){self.where}: "
                          f"{self._describe(skipped)}; {self.total} skipped in all", NonFiniteStepWarning,
                          stacklevel=2)

    def _describe(self, records: list[SkippedStep]) -> str:
        parts = []
        for record in records[:_SHOWN_STEPS]:
            names = self.name_batches(record)
            more = f", ... ({len(names) - _SHOWN_SAMPLES} more)" if len(names) > _SHOWN_SAMPLES else ""
            parts.append(f"step {record.step} ({', '.join(names[:_SHOWN_SAMPLES])}{more})")
        if len(records) > _SHOWN_STEPS:
            parts.append(f"... and {len(records) - _SHOWN_STEPS} more step(s)")
        return "; ".join(parts)

    def _error(self) -> NonFiniteLossError:
        run = list(self._run)
        steps = [r.step for r in run]
        span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
        kept = (f"those after step {steps[0] - 1}, the last finite one" if steps[0] > 1
                else "the initial ones: no step was finite")
        message = (f"{len(run)} consecutive training steps had a non-finite (NaN/Inf) loss or gradient norm and were "
                   f"skipped ({span}; limit max_consecutive_skips={self.max_consecutive}){self.where}. The "
                   f"parameters are {kept}. Batches: "
                   f"{self._describe(run)}. Check those samples (NaN/Inf or silent audio, empty or over-long "
                   "transcripts), lower the learning rate or add gradient clipping, or raise max_consecutive_skips "
                   "(trainer.max_consecutive_skips with compat.Trainer; 0 or None disables the stop)")
        return NonFiniteLossError(message, steps, {r.step: self.name_batches(r) for r in run})
