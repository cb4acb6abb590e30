"""Named errors of the ASR data pipeline. Each message names the file (and line) at fault and says how to fix it."""

from __future__ import annotations

__all__ = ["ManifestError", "AudioError", "DataConfigError"]


class ManifestError(ValueError):
    """A manifest line that cannot be used: bad JSON, a missing or bad key, or an audio file that is not there.

    Attributes:
        path: the manifest file.
        line: the 1-based line number (``None`` when the problem is the whole file).
    """

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


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
