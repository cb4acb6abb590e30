"""Named errors of the ASR data pipeline. Each message names the file (and line) at fault and says how to fix it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ManifestError", "BadManifestError", "AudioError", "DataConfigError"]


class ManifestError(ValueError):
    """A manifest line that cannot be used: bad JSON, a missing or bad key, or an audio file that is not there.

    Attributes:
        path: the manifest file.
        line: the 1-based line number (``None`` when the problem is the whole file).
        problem: what is wrong, without the file and line.
    """

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class BadManifestError(ManifestError):
    """Manifest lines found bad before training: every one of them, each as ``path:line: reason``.

    Raised by the up-front check (:mod:`nemofn.asr.data.manifest_check`) so that all bad lines are known at once,
    not one per run and hours into training.

    Attributes:
        bad_lines: every bad line, a :class:`~nemofn.asr.data.manifest_check.BadLine` (``manifest``, ``line``,
            ``kind``, ``reason``; its ``str`` is ``path:line: reason``).
        counts: the number of bad lines per kind of problem.
        path: the manifest(s) at fault, comma-separated; ``line`` is ``None``.
    """

    #: How many bad lines the message lists before "... and N more".
    MAX_LISTED = 50

    def __init__(self, bad_lines: Sequence[Any], counts: Mapping[str, int], *, summary: str, fix: str):
        self.bad_lines = tuple(bad_lines)
        self.counts = dict(counts)
        self.path = ", ".join(dict.fromkeys(b.manifest for b in self.bad_lines))
        self.line = None
        listed = [f"  {b}" for b in self.bad_lines[: self.MAX_LISTED]]
        if len(self.bad_lines) > self.MAX_LISTED:
            listed.append(f"  ... and {len(self.bad_lines) - self.MAX_LISTED} more")
        ValueError.__init__(self, "\n".join([f"{summary}; {fix}:", *listed]))


class AudioError(RuntimeError):
    """An audio file that cannot be read: missing, corrupt, in an unknown format, or holding no samples.

    Attributes:
        path: the audio file.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        super().__init__(f"audio file {self.path}: {problem}")


class DataConfigError(ValueError):
    """A ``train_ds`` / ``validation_ds`` / ``test_ds`` config block with an unknown or unsupported key or value."""
