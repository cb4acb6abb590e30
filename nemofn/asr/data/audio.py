"""Reading audio files as mono float32 at a target sample rate (NeMo's ``AudioSegment.from_file``).

Files are read with ``soundfile`` (WAV, FLAC, OGG and whatever else libsndfile knows). Only the requested range is
read: ``offset`` and ``duration`` are converted to frames with the file's own sample rate, as NeMo does. Multi-channel
audio is mixed down to mono by averaging, or a channel is picked with ``channel_selector``. When the file's rate
differs from the target, the signal is resampled with ``soxr`` at quality ``"HQ"``, which is what NeMo gets through
``librosa.resample`` (its default ``res_type`` is ``"soxr_hq"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import soxr

from nemofn.asr.data.errors import AudioError

__all__ = ["ChannelSelector", "load_audio", "select_channels", "resample", "audio_info"]

ChannelSelector = int | Sequence[int] | str | None

RESAMPLE_QUALITY = "HQ"


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """``soundfile.info`` of ``path`` (``samplerate``, ``frames``, ``channels``, ``duration``, ...).

    Raises:
        AudioError: when the file is missing or not readable audio.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "file not found")
    try:
        return sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"cannot be decoded by soundfile ({e})") from None


def select_channels(samples: np.ndarray, channel_selector: ChannelSelector = None, *, path: str = "") -> np.ndarray:
    """Reduces ``samples`` [T, C] to mono [T].

    Args:
        samples: audio frames by channel, ``[T, C]``.
        channel_selector: ``None`` or ``"average"``: the mean over channels (NeMo's downmix); an int: that channel
            (0-based); a list of ints: the mean of those channels (NeMo would keep them as channels, but the ASR
            pipeline here is mono).
        path: the file name for error messages.

    Returns:
        ``[T]`` float32.
    """
    num_channels = samples.shape[1]
    if channel_selector is None or channel_selector == "average":
        mono = samples[:, 0] if num_channels == 1 else samples.mean(axis=1)
    elif isinstance(channel_selector, (int, np.integer)) and not isinstance(channel_selector, bool):
        if not -num_channels <= channel_selector < num_channels:
            raise AudioError(path, f"channel_selector={channel_selector} but the file has {num_channels} channel(s); "
                                   f"use a channel in 0..{num_channels - 1} or 'average'")
        mono = samples[:, channel_selector]
    elif isinstance(channel_selector, Sequence) and not isinstance(channel_selector, str) and channel_selector:
        chosen = list(channel_selector)
        bad = [c for c in chosen if not isinstance(c, (int, np.integer)) or not -num_channels <= c < num_channels]
        if bad:
            raise AudioError(path, f"channel_selector={chosen} names channel(s) {bad} but the file has "
                                   f"{num_channels} channel(s)")
        mono = samples[:, chosen].mean(axis=1)
    else:
        raise ValueError(f"channel_selector must be None, 'average', an int or a non-empty list of ints, "
                         f"got {channel_selector!r}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(signal: np.ndarray, orig_sample_rate: int, target_sample_rate: int) -> np.ndarray:
    """Resamples ``signal`` [T] with soxr ("HQ"); returns it unchanged when the rates are equal."""
    if orig_sample_rate == target_sample_rate:
        return signal
    out = soxr.resample(signal, orig_sample_rate, target_sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(path: str | os.PathLike, *, sample_rate: int, offset: float = 0.0, duration: float | None = None,
               channel_selector: ChannelSelector = None, int_values: bool = False) -> np.ndarray:
    """Reads ``duration`` seconds from ``offset`` of an audio file as mono float32 at ``sample_rate``.

    Args:
        path: the audio file.
        sample_rate: the target rate in Hz; the signal is resampled when the file's rate differs.
        offset: seconds to skip at the start (``None`` means 0).
        duration: seconds to read (``None`` or 0 reads to the end, as NeMo); a range that runs past the end of the
            file is cut at the end.
        channel_selector: see :func:`select_channels`.
        int_values: read 32-bit integers and scale them to [-1, 1) (NeMo's ``int_values``); the result is float32
            either way.

    Returns:
        ``[T]`` float32, values in [-1, 1].

    Raises:
        AudioError: when the file is missing, cannot be decoded, the offset lies past its end, or the requested range
            holds no samples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "file not found")
    offset = float(offset or 0.0)
    try:
        with sf.SoundFile(path, "r") as f:
            file_rate, total = f.samplerate, f.frames
            start = int(offset * file_rate)
            if total == 0:
                raise AudioError(path, "the file holds no audio samples")
            if start >= total:
                raise AudioError(path, f"offset {offset} s lies past the end of the file ({total / file_rate:.3f} s)")
            if start > 0:
                f.seek(start)
            frames = int(duration * file_rate) if duration else -1
            samples = f.read(frames, dtype="int32" if int_values else "float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, EOFError) as e:
        raise AudioError(path, f"cannot be decoded by soundfile ({e}); check the file is complete and in a format "
                               "libsndfile reads (wav, flac, ogg)") from None
    if samples.shape[0] == 0:
        raise AudioError(path, f"no samples in the requested range (offset {offset} s, duration {duration} s)")
    if samples.dtype.kind == "f" and not np.isfinite(samples).all():
        bad = int(np.flatnonzero(~np.isfinite(samples).all(axis=1))[0])
        raise AudioError(path, f"holds NaN or Inf samples (the first at sample {start + bad}, "
                               f"{(start + bad) / file_rate:.3f} s); fix or drop the file (a non-finite sample "
                               "would turn every weight into NaN in training)")
    if int_values:
        samples = samples.astype(np.float32) * np.float32(1.0 / 2**31)
    mono = select_channels(samples, channel_selector, path=path)
    return resample(mono, file_rate, sample_rate)
