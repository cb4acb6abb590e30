"""NeMo ASR manifests: JSON lines with ``audio_filepath``, ``duration`` and a transcript.

One line per utterance, e.g.::

    {"audio_filepath": "wavs/a.wav", "duration": 3.2, "text": "hello world", "offset": 0.0}

Rules (NeMo's ``nemo/collections/common/parts/preprocessing/manifest.py``):

- audio key ``audio_filepath``, or its alias ``audio_filename``;
- ``duration`` in seconds is required (it is also how much audio is read, from ``offset``);
- text from ``text``, else the contents of ``text_filepath``, else ``normalized_text``, else ``""``;
- a relative audio path that does not exist as given is looked up beside the manifest;
- several manifests are read one after the other (a list, or one comma-separated string);
- ``min_duration`` / ``max_duration`` drop entries outside the range, ``max_utts`` keeps the first N.

Unlike NeMo, a bad line stops loading at once with a :class:`ManifestError` naming the file and line (or, given an
``errors`` list, is collected there and left out, so that every bad line can be reported together), and a missing
audio file is reported here rather than when a DataLoader worker first reads it. Manifests are UTF-8 (a leading
byte-order mark is allowed); a line in another encoding (e.g. latin-1) raises a :class:`ManifestError` giving the
line and byte offset.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from nemofn.asr.data.errors import ManifestError

__all__ = [
    "ManifestEntry",
    "split_manifest_paths",
    "parse_manifest_line",
    "manifest_lines",
    "read_manifest",
    "load_manifests",
    "write_manifest",
]

logger = logging.getLogger(__name__)

_AUDIO_KEYS = ("audio_filepath", "audio_filename")


@attrs.frozen
class ManifestEntry:
    """One utterance of a manifest.

    Attributes:
        audio_filepath: the audio file, resolved (absolute when it was found beside the manifest).
        duration: seconds of audio to read, from ``offset``.
        text: the raw transcript (tokenizers apply their own normalisation).
        offset: seconds to skip at the start of the file (``None`` when the line has none; read as 0).
        id: position over all manifests read together, counting every parsed line (as NeMo's ``item['id']``).
        manifest: the manifest file the line came from.
        line: the 1-based line number in that file.
        speaker: the optional ``speaker`` value.
        lang: the optional ``lang`` value.
        orig_sample_rate: the optional ``orig_sample_rate`` value.
    """

    audio_filepath: str
    duration: float
    text: str
    offset: float | None = None
    id: int = 0
    manifest: str = ""
    line: int = 0
    speaker: Any = None
    lang: str | None = None
    orig_sample_rate: int | None = None


def split_manifest_paths(manifest_filepath: str | os.PathLike | Sequence[Any]) -> list[str]:
    """Manifest paths from a NeMo ``manifest_filepath`` value: a path, a comma-separated string, or a list.

    Raises:
        ValueError: for an empty value, or a nested list (NeMo's layout for tarred buckets, not supported here).
    """
    if isinstance(manifest_filepath, (str, os.PathLike)):
        paths = [p.strip() for p in os.fspath(manifest_filepath).split(",")]
    elif isinstance(manifest_filepath, Iterable):
        paths = []
        for item in manifest_filepath:
            if not isinstance(item, (str, os.PathLike)):
                raise ValueError(
                    f"manifest_filepath: nested lists ({manifest_filepath!r}) are NeMo's layout for tarred buckets, "
                    "which nemofn does not support; give a flat list of manifest paths"
                )
            paths.append(os.fspath(item).strip())
    else:
        raise ValueError(f"manifest_filepath must be a path, a comma-separated string or a list, "
                         f"got {type(manifest_filepath).__name__}")
    paths = [p for p in paths if p]
    if not paths:
        raise ValueError("manifest_filepath is empty: set it to one or more manifest files")
    return paths


def _resolve_path(path: str, manifest_dir: str) -> str | None:
    """``path`` if it exists as given, else the same relative path beside the manifest, else ``None``."""
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return path
    if not os.path.isabs(path):
        beside = os.path.join(manifest_dir, path)
        if os.path.isfile(beside):
            return os.path.abspath(beside)
    return None


def _number(value: Any, key: str, path: str, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(path, line, f"'{key}' must be a finite number of seconds, got {value!r} "
                            f"({type(value).__name__}); write it as a JSON number, e.g. \"{key}\": 3.2")
    if value < 0:
        raise ManifestError(path, line, f"'{key}' must not be negative, got {value!r}")
    return float(value)


def parse_manifest_line(line: str, *, manifest_path: str, line_number: int, entry_id: int = 0,
                        check_audio_exists: bool = True) -> ManifestEntry:
    """Parses one non-blank manifest line.

    Args:
        line: the JSON text of the line.
        manifest_path: the manifest file (for relative paths and error messages).
        line_number: the 1-based line number (for error messages).
        entry_id: the value for :attr:`ManifestEntry.id`.
        check_audio_exists: raise when the audio file is not found (set False to skip the ``stat`` per line).

    Raises:
        ManifestError: for malformed JSON, a missing or non-numeric ``duration``, a missing audio key, a missing
            audio or text file, or a non-numeric ``offset``.
    """
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
        raise ManifestError(manifest_path, line_number, problem) from None
    if not isinstance(item, dict):
        raise ManifestError(manifest_path, line_number,
                            f"expected a JSON object per line, got {type(item).__name__}")
    manifest_dir = os.path.dirname(os.path.abspath(manifest_path))

    audio_key = next((k for k in _AUDIO_KEYS if k in item), None)
    if audio_key is None:
        raise ManifestError(manifest_path, line_number,
                            f"no 'audio_filepath' key (keys present: {sorted(item)}); add the audio file's path "
                            "as \"audio_filepath\"")
    audio = item[audio_key]
    if not isinstance(audio, str) or not audio:
        raise ManifestError(manifest_path, line_number, f"'{audio_key}' must be a non-empty string, got {audio!r}")
    resolved = _resolve_path(audio, manifest_dir)
    if resolved is None:
        if check_audio_exists:
            raise ManifestError(manifest_path, line_number,
                                f"audio file {audio!r} not found (looked for it as given and beside the manifest, "
                                f"in {manifest_dir}); fix the path or remove the line")
        resolved = os.path.expanduser(audio)

    if "duration" not in item:
        raise ManifestError(manifest_path, line_number,
                            "no 'duration' key; add the audio length in seconds, e.g. \"duration\": 3.2")
    duration = _number(item["duration"], "duration", manifest_path, line_number)
    offset = item.get("offset")
    if offset is not None:
        offset = _number(offset, "offset", manifest_path, line_number)

    if "text" in item:
        text = item["text"]
    elif "text_filepath" in item:
        text_path = _resolve_path(str(item["text_filepath"]), manifest_dir)
        if text_path is None:
            raise ManifestError(manifest_path, line_number,
                                f"text_filepath {item['text_filepath']!r} not found (looked for it as given and "
                                "beside the manifest)")
        with open(text_path, encoding="utf-8") as f:
            text = f.read().replace("\n", "")
    elif "normalized_text" in item:
        text = item["normalized_text"]
    else:
        text = ""
    if not isinstance(text, str):
        raise ManifestError(manifest_path, line_number, f"the transcript must be a string, got {text!r}")

    return ManifestEntry(
        audio_filepath=resolved, duration=duration, text=text, offset=offset, id=entry_id,
        manifest=str(manifest_path), line=line_number, speaker=item.get("speaker"), lang=item.get("lang"),
        orig_sample_rate=item.get("orig_sample_rate"),
    )


def manifest_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of each non-blank line of a manifest (1-based numbers; text stripped).

    The file is decoded as UTF-8 line by line, so a line in another encoding is named exactly.

    Raises:
        ManifestError: for a missing or unreadable file, or a line that is not UTF-8 (naming the line, the byte
            offset in the file and the fix).
    """
    path = os.fspath(path)
    try:
        f = open(os.path.expanduser(path), "rb")
    except FileNotFoundError:
        raise ManifestError(path, None, "manifest file not found") from None
    except OSError as e:
        raise ManifestError(path, None, f"cannot open the manifest ({e.strerror})") from None
    position = 0
    with f:
        for number, raw in enumerate(f, start=1):
            skip = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                text = raw[skip:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(path, number, _not_utf8(path, raw, skip + e.start, position)) from None
            position += len(raw)
            text = text.strip()
            if text:
                yield number, text


def _not_utf8(path: str, raw: bytes, start: int, line_offset: int) -> str:
    """The message for a manifest line whose byte ``start`` is not valid UTF-8."""
    guess = raw.decode("latin-1").strip()
    return (f"not UTF-8: byte 0x{raw[start]:02x} at byte offset {line_offset + start} of the file (byte {start + 1} "
            f"of the line) is not valid UTF-8; manifests must be UTF-8 JSON lines. Re-encode the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > fixed.json` if it is latin-1 (the line read as latin-1: "
            f"{guess[:80]!r})")


def read_manifest(path: str | os.PathLike, *, first_id: int = 0, check_audio_exists: bool = True,
                  errors: list[ManifestError] | None = None) -> list[ManifestEntry]:
    """All entries of one manifest file, unfiltered; blank lines are skipped.

    Args:
        path: the manifest file.
        first_id: :attr:`ManifestEntry.id` of the first entry.
        check_audio_exists: see :func:`parse_manifest_line`.
        errors: when given, a bad line's :class:`ManifestError` is appended here and the line left out, instead of
            raised (a missing manifest file and a line that is not UTF-8 still raise).

    Raises:
        ManifestError: for a missing file, a line that is not UTF-8, or (without ``errors``) any bad line (see
            :func:`parse_manifest_line`).
    """
    path = os.fspath(path)
    entries = []
    for number, line in manifest_lines(path):
        try:
            entries.append(parse_manifest_line(line, manifest_path=path, line_number=number,
                                               entry_id=first_id + len(entries),
                                               check_audio_exists=check_audio_exists))
        except ManifestError as e:
            if errors is None:
                raise
            errors.append(e)
    return entries


def load_manifests(manifest_filepath: str | os.PathLike | Sequence[Any], *, min_duration: float | None = None,
                   max_duration: float | None = None, max_utts: int = 0, check_audio_exists: bool = True,
                   errors: list[ManifestError] | None = None) -> list[ManifestEntry]:
    """Reads one or more manifests, filters them by duration and logs what was kept and dropped.

    Args:
        manifest_filepath: a path, a comma-separated string of paths, or a list of paths.
        min_duration: drop entries shorter than this many seconds.
        max_duration: drop entries longer than this many seconds.
        max_utts: keep at most this many entries after filtering (0 keeps all).
        check_audio_exists: see :func:`parse_manifest_line`.
        errors: collect bad lines here instead of raising; see :func:`read_manifest`.

    Returns:
        The kept entries, in manifest order.
    """
    paths = split_manifest_paths(manifest_filepath)
    entries: list[ManifestEntry] = []
    for path in paths:
        entries.extend(read_manifest(path, first_id=len(entries), check_audio_exists=check_audio_exists,
                                     errors=errors))

    kept: list[ManifestEntry] = []
    num_filtered, filtered_seconds = 0, 0.0
    for entry in entries:
        if (min_duration is not None and entry.duration < min_duration) or (
                max_duration is not None and entry.duration > max_duration):
            num_filtered += 1
            filtered_seconds += entry.duration
            continue
        kept.append(entry)
        if max_utts and len(kept) == max_utts:
            break

    kept_seconds = sum(e.duration for e in kept)
    logger.info("Loaded %d utterances totalling %.2f hours from %s", len(kept), kept_seconds / 3600, ", ".join(paths))
    logger.info("%d utterances were filtered (duration outside [%s, %s] s), totalling %.2f hours",
                num_filtered, min_duration, max_duration, filtered_seconds / 3600)
    return kept


def write_manifest(path: str | os.PathLike, entries: Iterable[Mapping[str, Any]]) -> None:
    """Writes ``entries`` (dicts with ``audio_filepath``, ``duration``, ``text``, ...) as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(dict(entry), ensure_ascii=False) + "\n")
