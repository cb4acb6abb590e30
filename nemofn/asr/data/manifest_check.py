"""The up-front check of the audio a manifest names: headers only, read in parallel threads, cached.

Without it, a corrupt, empty or too-short audio file surfaces when a DataLoader worker first reads it, possibly hours
into training, as an error that names the audio file but not the manifest line. :func:`check_manifest_audio` reads
the header of every file the entries name (``soundfile`` opens the file and parses the header; no sample is
decoded) and compares it with each entry's ``offset`` and ``duration``, the way
:func:`~nemofn.asr.data.audio.load_audio` will read it. Every problem is a :class:`BadLine`, printed
``path:line: reason`` with the manifest's path and line.

Errors (the line cannot be read as asked; :data:`ERROR_KINDS`): a malformed manifest line (collected by
:func:`~nemofn.asr.data.manifest.load_manifests`), a missing audio file, a header libsndfile cannot read (corrupt,
truncated, unknown format), a sample rate or channel count of 0, a header with no samples, an ``offset`` at or past
the end of the file, a ``duration`` shorter than one sample, and a ``channel_selector`` naming a channel the file
lacks. Multi-channel files are otherwise fine: the dataset mixes them down.

Warnings (:data:`WARNING_KINDS`): ``offset + duration`` past the end of the file by more than
:data:`DURATION_TOLERANCE_S` (manifest durations are often rounded). Reading then stops at the end of the file, so
the line still loads, but the manifest duration the batching and the ``min/max_duration`` filters use is wrong.

Header facts are cached per manifest in a small JSON file under :func:`cache_dir` (``$NEMOFN_CACHE_DIR``, else
``$XDG_CACHE_HOME/nemofn``, else ``~/.cache/nemofn``), keyed by the audio file's absolute path, size and
modification time (ns): a file that changed is read again. The cache is written atomically (a temporary file, then
``os.replace``), so concurrent runs (DDP ranks) never see a half-written one; a cache that cannot be read or written
is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import soundfile as sf

from nemofn.asr.data.errors import BadManifestError, ManifestError
from nemofn.asr.data.manifest import ManifestEntry

__all__ = ["AudioHeader", "BadLine", "AudioCheckReport", "check_manifest_audio", "read_audio_header", "cache_dir",
           "ERROR_KINDS", "WARNING_KINDS", "DURATION_TOLERANCE_S", "CACHE_ENV"]

logger = logging.getLogger(__name__)

#: Seconds by which ``offset + duration`` may run past the end of the file before it is reported.
DURATION_TOLERANCE_S = 0.05
#: The environment variable that moves the header cache.
CACHE_ENV = "NEMOFN_CACHE_DIR"
_CACHE_VERSION = 1

#: Kinds of bad lines, and how counts name them.
ERROR_KINDS = {
    "bad_line": "malformed manifest line",
    "missing": "audio file not found",
    "unreadable": "unreadable audio header",
    "bad_sample_rate": "sample rate 0",
    "bad_channels": "bad channel count",
    "no_samples": "no samples (header only)",
    "offset_past_end": "offset past the end",
    "empty_range": "duration under one sample",
}
#: Kinds of lines that load but disagree with their file.
WARNING_KINDS = {"duration_overshoot": "duration past the end of the file"}


@attrs.frozen
class AudioHeader:
    """What an audio file's header says, or why it could not be used.

    Attributes:
        sample_rate: frames per second (0 when unknown).
        frames: number of frames (samples per channel).
        channels: number of channels.
        kind: ``None`` for a usable header, else one of :data:`ERROR_KINDS`.
        problem: what is wrong, for messages (``None`` for a usable header).
    """

    sample_rate: int = 0
    frames: int = 0
    channels: int = 0
    kind: str | None = None
    problem: str | None = None

    @property
    def seconds(self) -> float:
        """The file's length in seconds (0 when the header is not usable)."""
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


@attrs.frozen
class BadLine:
    """One manifest line with a problem; ``str()`` gives ``path:line: reason``.

    Attributes:
        manifest: the manifest file; line: the 1-based line number; kind: a key of :data:`ERROR_KINDS` or
        :data:`WARNING_KINDS`; reason: what is wrong and how to fix it.
    """

    manifest: str
    line: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"


def _count_text(counts: Mapping[str, int]) -> str:
    labels = {**ERROR_KINDS, **WARNING_KINDS}
    return ", ".join(f"{labels.get(kind, kind)}: {n}" for kind, n in counts.items())


@attrs.frozen
class AudioCheckReport:
    """The result of :func:`check_manifest_audio`.

    Attributes:
        entries: the entries checked, in order.
        errors: bad lines, by manifest and line.
        warnings: lines that load but disagree with their file (:data:`WARNING_KINDS`).
        headers: the header of every distinct audio file, by the entry's ``audio_filepath``.
        num_files: distinct audio files; num_cached: of those, how many came from the cache.
        seconds: wall time of the check.
        tolerance: the seconds ``offset + duration`` may overshoot the file before a warning.
    """

    entries: tuple[ManifestEntry, ...]
    errors: tuple[BadLine, ...]
    warnings: tuple[BadLine, ...]
    headers: Mapping[str, AudioHeader]
    num_files: int
    num_cached: int
    seconds: float
    tolerance: float = DURATION_TOLERANCE_S

    def counts(self, lines: Iterable[BadLine] | None = None) -> dict[str, int]:
        """Bad lines per kind (of :attr:`errors` unless ``lines`` is given), most frequent first."""
        return dict(Counter(b.kind for b in (self.errors if lines is None else lines)).most_common())

    def good_entries(self) -> list[ManifestEntry]:
        """The entries with no error, in order."""
        bad = {(b.manifest, b.line) for b in self.errors}
        return [e for e in self.entries if (e.manifest, e.line) not in bad]

    def readable_seconds(self, entry: ManifestEntry) -> float:
        """Seconds of audio the dataset will read for ``entry``: its duration, cut at the end of the file."""
        header = self.headers.get(entry.audio_filepath)
        if header is None or header.kind is not None:
            return entry.duration
        left = max(0.0, header.seconds - (entry.offset or 0.0))
        return min(entry.duration, left) if entry.duration else left

    def resolve(self, *, skip_bad_samples: bool = False, name: str = "dataset") -> list[ManifestEntry]:
        """The entries to train on: raises on errors, or drops them with one warning when ``skip_bad_samples``.

        Warnings are logged (once, with counts) either way.

        Raises:
            BadManifestError: when there are errors and ``skip_bad_samples`` is false; it lists every bad line.
        """
        if self.warnings:
            logger.warning("%s: %d manifest line(s) ask for audio past the end of their file by more than %.2f s; "
                           "only the audio that exists is read, but batching and min/max_duration use the manifest "
                           "duration. Fix their 'duration'. First: %s", name, len(self.warnings), self.tolerance,
                           self.warnings[0])
        if not self.errors:
            return list(self.entries)
        counts = self.counts()
        summary = (f"{name}: {len(self.errors)} bad manifest line(s) found before training ({_count_text(counts)})")
        if not skip_bad_samples:
            fix = (f"fix or remove them, or set {name}.skip_bad_samples=true to drop them ({name}.check_audio=false "
                   "turns this check off)")
            raise BadManifestError(self.errors, counts, summary=summary, fix=fix)
        good = self.good_entries()
        examples = "; ".join(str(b) for b in self.errors[:3])
        logger.warning("%s; dropped them (skip_bad_samples), %d entries left. First: %s", summary, len(good),
                       examples)
        return good


def cache_dir() -> str:
    """Where nemofn caches audio headers: ``$NEMOFN_CACHE_DIR``, else ``$XDG_CACHE_HOME/nemofn``, else
    ``~/.cache/nemofn``."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nemofn")


# --- reading headers ---------------------------------------------------------------------------------------------

def _wav_fmt_problem(path: str) -> AudioHeader | None:
    """For a RIFF/WAVE file libsndfile refused: a zero sample rate or channel count in its ``fmt`` chunk."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"fmt " and pos + 16 <= len(head):
            channels, rate = struct.unpack_from("<HI", head, pos + 10)
            if rate == 0:
                return AudioHeader(0, 0, channels, "bad_sample_rate", "the WAV header gives sample rate 0")
            if channels == 0:
                return AudioHeader(rate, 0, 0, "bad_channels", "the WAV header gives 0 channels")
            return None
        pos += 8 + size + (size & 1)
    return None


def read_audio_header(path: str) -> AudioHeader:
    """The header of one audio file (no samples are decoded); problems are returned, not raised."""
    try:
        with sf.SoundFile(path) as f:
            rate, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        wav = _wav_fmt_problem(path)
        if wav is not None:
            return wav
        detail = getattr(e, "error_string", None) or str(e)
        if "does not exist" in detail:  # what libsndfile 1.2 says of some unrecognised files that do exist
            detail = "format not recognised"
        return AudioHeader(kind="unreadable", problem=f"libsndfile cannot read the audio header ({detail}); the file "
                                                      "is corrupt, truncated or not in a format it reads (wav, flac, "
                                                      "ogg)")
    if rate <= 0:
        return AudioHeader(rate, frames, channels, "bad_sample_rate", f"the header gives sample rate {rate}")
    if channels <= 0:
        return AudioHeader(rate, frames, channels, "bad_channels", f"the header gives {channels} channels")
    if frames <= 0:
        return AudioHeader(rate, frames, channels, "no_samples", "the file holds no audio samples (a header only)")
    return AudioHeader(rate, frames, channels)


def _probe(path: str, cached: Mapping[str, list]) -> tuple[AudioHeader, list | None, bool]:
    """``(header, cache record or None, came from the cache)`` of one file."""
    try:
        st = os.stat(path)
    except OSError:
        return AudioHeader(kind="missing", problem="not found"), None, False
    if not stat.S_ISREG(st.st_mode):
        return AudioHeader(kind="missing", problem="not a regular file"), None, False
    key = os.path.abspath(path)
    record = cached.get(key)
    if record is not None and record[0] == st.st_size and record[1] == st.st_mtime_ns:
        return AudioHeader(*record[2:]), None, True
    header = read_audio_header(path)
    return header, [st.st_size, st.st_mtime_ns, *attrs.astuple(header)], False


def _probe_all(paths: Sequence[str], cached: Mapping[str, list], workers: int
               ) -> list[tuple[AudioHeader, list | None, bool]]:
    """:func:`_probe` of every path, in ``workers`` threads (libsndfile and ``stat`` release the GIL)."""
    if workers <= 1 or len(paths) < 64:
        return [_probe(p, cached) for p in paths]
    # Contiguous chunks (a few per thread) keep the per-task overhead far below the cost of a cached stat.
    step = max(16, math.ceil(len(paths) / (workers * 4)))
    chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nemofn-audio-check") as pool:
        results = pool.map(lambda chunk: [_probe(p, cached) for p in chunk], chunks)
        return [r for chunk in results for r in chunk]


# --- cache -------------------------------------------------------------------------------------------------------

def _cache_file(root: str, manifest: str) -> str:
    digest = hashlib.sha1(os.path.abspath(manifest).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return os.path.join(root, "audio_headers", f"{digest}.json")


def _load_cache(file: str) -> dict[str, list]:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if (not isinstance(data, dict) or data.get("version") != _CACHE_VERSION
            or data.get("libsndfile") != sf.__libsndfile_version__ or not isinstance(data.get("files"), dict)):
        return {}
    return data["files"]


def _save_cache(file: str, manifest: str, files: Mapping[str, list]) -> None:
    data = {"version": _CACHE_VERSION, "libsndfile": sf.__libsndfile_version__,
            "manifest": os.path.abspath(manifest), "files": files}
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        logger.warning("could not write the audio header cache %s (%s); the check still ran, it will just not be "
                       "cached (set %s to a writable folder)", file, e, CACHE_ENV)


# --- the check ---------------------------------------------------------------------------------------------------

def _channel_problem(selector: Any, channels: int) -> str | None:
    if selector is None or isinstance(selector, str):
        return None
    chosen = [selector] if isinstance(selector, int) else list(selector)
    bad = [c for c in chosen if not -channels <= int(c) < channels]
    if not bad:
        return None
    return (f"channel_selector={selector!r} names channel(s) {bad} but the file has {channels} channel(s); use "
            f"channels 0..{channels - 1} or 'average'")


def _entry_problem(entry: ManifestEntry, header: AudioHeader, channel_selector: Any,
                   tolerance: float) -> tuple[str, str] | None:
    """``(kind, reason)`` of an entry's error or warning given its file's header; ``None`` when it is fine."""
    path = entry.audio_filepath
    if header.kind == "missing":
        where = "" if os.path.isabs(path) else " (looked for it as given and beside the manifest)"
        return "missing", f"audio file {path!r} {header.problem}{where}; fix the path or remove the line"
    if header.kind is not None:
        return header.kind, f"audio file {path}: {header.problem}"
    rate = header.sample_rate
    offset = entry.offset or 0.0
    start = int(offset * rate)  # as load_audio
    if start >= header.frames:
        return "offset_past_end", (f"offset {offset} s is at or past the end of audio file {path} "
                                   f"({header.seconds:.3f} s long); fix 'offset'")
    channels = _channel_problem(channel_selector, header.channels)
    if channels is not None:
        return "bad_channels", f"audio file {path}: {channels}"
    if entry.duration:
        frames = int(entry.duration * rate)
        if frames == 0:
            return "empty_range", (f"duration {entry.duration} s is shorter than one sample at {rate} Hz "
                                   f"(audio file {path}); nothing would be read")
        over = (start + frames - header.frames) / rate
        if over > tolerance:
            return "duration_overshoot", (f"offset + duration = {offset + entry.duration:.3f} s but audio file "
                                          f"{path} is {header.seconds:.3f} s long ({over:.3f} s short)")
    return None


def check_manifest_audio(entries: Sequence[ManifestEntry], *, channel_selector: Any = None,
                         line_errors: Iterable[ManifestError] = (), workers: int | None = None,
                         cache: bool | str | os.PathLike = True,
                         tolerance: float = DURATION_TOLERANCE_S) -> AudioCheckReport:
    """Checks every entry's audio file against its header (no samples are read).

    Args:
        entries: manifest entries, e.g. from :func:`~nemofn.asr.data.manifest.load_manifests` with
            ``check_audio_exists=False`` (a missing file is then reported here, with all the other bad lines).
        channel_selector: the dataset's ``channel_selector``; an int or list must name channels every file has.
        line_errors: manifest lines that failed to parse (``load_manifests(..., errors=[])``), reported first.
        workers: threads reading headers; default ``min(16, 4 * CPUs)`` (the work waits on the disk more than on
            the CPU; a network file system gains most).
        cache: ``True`` for :func:`cache_dir`, a folder, or ``False`` for no cache.
        tolerance: seconds ``offset + duration`` may run past the end of the file before it is a warning.

    Returns:
        An :class:`AudioCheckReport`; call :meth:`~AudioCheckReport.resolve` to raise or drop.
    """
    began = time.perf_counter()
    entries = tuple(entries)
    if workers is None:
        workers = min(16, 4 * (os.cpu_count() or 1))
    root = None if cache is False else (cache_dir() if cache is True else os.fspath(cache))

    by_manifest: dict[str, list[str]] = {}
    for entry in entries:
        by_manifest.setdefault(entry.manifest, []).append(entry.audio_filepath)
    headers: dict[str, AudioHeader] = {}
    num_cached = 0
    for manifest, listed in by_manifest.items():
        paths = [p for p in dict.fromkeys(listed) if p not in headers]
        file = _cache_file(root, manifest) if root is not None else None
        cached = _load_cache(file) if file is not None else {}
        fresh: dict[str, list] = {}
        for path, (header, record, hit) in zip(paths, _probe_all(paths, cached, workers)):
            headers[path] = header
            num_cached += hit
            if record is not None:
                fresh[os.path.abspath(path)] = record
        if file is not None and fresh:
            _save_cache(file, manifest, {**cached, **fresh})

    errors = [BadLine(e.path, e.line or 0, "bad_line", e.problem) for e in line_errors]
    warnings = []
    for entry in entries:
        problem = _entry_problem(entry, headers[entry.audio_filepath], channel_selector, tolerance)
        if problem is not None:
            line = BadLine(entry.manifest, entry.line, *problem)
            (warnings if line.kind in WARNING_KINDS else errors).append(line)
    order = {m: i for i, m in enumerate(dict.fromkeys([*(b.manifest for b in errors), *by_manifest]))}
    errors.sort(key=lambda b: (order[b.manifest], b.line))
    report = AudioCheckReport(entries, tuple(errors), tuple(warnings), headers, len(headers), num_cached,
                              time.perf_counter() - began, tolerance)
    logger.info("Checked the audio headers of %d files (%d from the cache) for %d manifest lines in %.2f s",
                report.num_files, report.num_cached, len(entries), report.seconds)
    return report
