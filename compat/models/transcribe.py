"""Input handling for ``transcribe()``: paths, manifests, arrays and tensors into padded batches.

Accepted ``audio`` (NeMo 3.0's ``TranscriptionMixin``):

* a path or a list of paths (read with ``nemofn.asr.data.audio.load_audio`` at the model's sample rate; files are
  not padded, as NeMo 3.0's non-Lhotse file path);
* one manifest path ending in ``.json`` / ``.jsonl`` (NeMo's test; relative audio paths resolve beside the
  manifest; ``offset`` / ``duration`` are honoured);
* numpy arrays or torch tensors of samples at the model's sample rate. As in NeMo 3.0 these are zero-padded to at
  least ``pad_min_duration`` seconds (default 1.0), split evenly before and after (``pad_direction="both"``;
  ``"left"`` / ``"right"`` also accepted);
* a ``DataLoader`` whose batches start with ``(signal [B, T], signal_len [B])``.

Batches come out as ``(indices, signal [B, T_max] float32, signal_len [B] int64)``: the inputs are grouped longest
first (fewer padded frames; no transcript changes, see :mod:`nemofn.asr.data.inference_batches`) and their audio is
read ahead in ``num_workers`` threads (at least one); ``indices`` put each output back in input order. A DataLoader's
batches keep their order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from nemofn.asr.data.audio import audio_info, load_audio
from nemofn.asr.data.inference_batches import length_sorted_batches, prefetched_batches

__all__ = ["AudioSource", "collect_sources", "pad_to_min_duration", "iterate_batches", "count_batches",
           "TranscribeRequest", "transcribe_request", "transcribe_batches"]


@attrs.frozen
class AudioSource:
    """One input: a file (with optional offset / duration) or samples already in memory."""

    path: str | None = None
    samples: np.ndarray | None = None
    offset: float = 0.0
    duration: float | None = None

    def load(self, sample_rate: int, channel_selector: Any) -> np.ndarray:
        if self.samples is not None:
            return self.samples
        return load_audio(self.path, sample_rate=sample_rate, offset=self.offset, duration=self.duration,
                          channel_selector=channel_selector)

    def seconds(self, sample_rate: int) -> float:
        """The input's length in seconds: the samples', the manifest's ``duration``, else the file header's."""
        if self.samples is not None:
            return self.samples.shape[0] / sample_rate
        if self.duration:
            return float(self.duration)
        return max(0.0, audio_info(self.path).duration - self.offset)


def pad_to_min_duration(samples: np.ndarray, min_samples: int, direction: str = "both") -> np.ndarray:
    """Zero-pads ``samples [T]`` to ``min_samples`` (``both``: ``total // 2`` before, the rest after)."""
    missing = min_samples - samples.shape[0]
    if missing <= 0:
        return samples
    if direction == "both":
        before = missing // 2
    elif direction == "left":
        before = missing
    elif direction == "right":
        before = 0
    else:
        raise ValueError(f"pad_direction must be 'both', 'left' or 'right', got {direction!r}")
    return np.pad(samples, (before, missing - before))


def _is_manifest(items: Sequence[str]) -> bool:
    # NeMo's test, kept as written: `len(audio) == 1 and audio[0].endswith('.json') or audio[0].endswith('.jsonl')`
    return (len(items) == 1 and items[0].endswith(".json")) or items[0].endswith(".jsonl")


def _as_samples(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1:
        if array.ndim == 2 and 1 in array.shape:
            array = array.reshape(-1)
        else:
            raise ValueError(f"transcribe: an audio array must be 1-D samples [T] at the model's sample rate, got "
                             f"shape {tuple(array.shape)}; mix multi-channel audio down first")
    return np.ascontiguousarray(array)


def collect_sources(audio: Any, *, sample_rate: int, pad_min_duration: float = 1.0,
                    pad_direction: str = "both") -> list[AudioSource]:
    """The inputs of one ``transcribe`` call, in order (see the module doc for the accepted forms)."""
    items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    if not items:
        raise ValueError("transcribe: the audio input is empty")
    if all(isinstance(a, (str, os.PathLike)) for a in items):
        paths = [os.fspath(a) for a in items]
        if _is_manifest(paths):
            from nemofn.asr.data.manifest import read_manifest

            entries = read_manifest(paths[0])
            return [AudioSource(path=e.audio_filepath, offset=e.offset or 0.0, duration=e.duration) for e in entries]
        return [AudioSource(path=p) for p in paths]
    if all(isinstance(a, (np.ndarray, torch.Tensor)) for a in items):
        min_samples = int(pad_min_duration * sample_rate)
        return [AudioSource(samples=pad_to_min_duration(_as_samples(a), min_samples, pad_direction)) for a in items]
    kinds = sorted({type(a).__name__ for a in items})
    raise TypeError(f"transcribe: audio must be paths (str), a manifest path, numpy arrays or torch tensors (not "
                    f"mixed); got {kinds}")


def count_batches(audio: Any, sources: list[AudioSource] | None, batch_size: int) -> int | None:
    if sources is not None:
        return -(-len(sources) // batch_size)
    try:
        return len(audio)
    except TypeError:
        return None


def iterate_batches(audio: Any, sources: list[AudioSource] | None, *, batch_size: int, sample_rate: int,
                    channel_selector: Any = None, num_workers: int = 0, sort_by_length: bool = True
                    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``(indices, signal [B, T], signal_len [B])`` batches: ``sources`` longest first (in input order without
    ``sort_by_length``), read ahead in ``max(1, num_workers)`` threads; or (``sources`` None) a DataLoader
    ``audio``'s batches in order."""
    if sources is None:
        start = 0
        for batch in audio:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise TypeError("transcribe: a DataLoader must yield (signal [B, T], signal_len [B], ...) batches")
            count = int(batch[0].shape[0])
            yield list(range(start, start + count)), batch[0], batch[1]
            start += count
        return
    if sort_by_length:
        groups = length_sorted_batches([s.seconds(sample_rate) for s in sources], batch_size)
    else:
        groups = [list(range(i, min(i + batch_size, len(sources)))) for i in range(0, len(sources), batch_size)]
    yield from prefetched_batches(groups, lambda i: sources[i].load(sample_rate, channel_selector),
                                  workers=num_workers)


@attrs.frozen
class TranscribeRequest:
    """The settings of one ``transcribe()`` call, after NeMo's ``override_config`` is applied."""

    batch_size: int = 4
    return_hypotheses: bool = False
    channel_selector: Any = None
    verbose: bool = True
    timestamps: bool = False
    pad_min_duration: float = 1.0
    pad_direction: str = "both"
    num_workers: int = 0
    sort_by_length: bool = True


def transcribe_request(*, batch_size: int, return_hypotheses: bool, channel_selector: Any, augmentor: Any,
                       verbose: bool, timestamps: bool | None, override_config: Any,
                       config_kwargs: dict[str, Any], num_workers: int | None = 0) -> TranscribeRequest:
    """NeMo's ``transcribe`` arguments checked and merged: ``override_config`` (an object with ``TranscribeConfig``
    attributes) replaces the arguments; ``config_kwargs`` may hold ``pad_min_duration``, ``pad_direction`` and
    ``use_lhotse`` (accepted, ignored).

    Raises:
        TypeError: an unknown keyword; ValueError: ``batch_size < 1``; NotImplementedError: an ``augmentor``.
    """
    kwargs = dict(config_kwargs)
    if override_config is not None:
        batch_size = getattr(override_config, "batch_size", batch_size)
        return_hypotheses = getattr(override_config, "return_hypotheses", return_hypotheses)
        channel_selector = getattr(override_config, "channel_selector", channel_selector)
        augmentor = getattr(override_config, "augmentor", augmentor)
        verbose = getattr(override_config, "verbose", verbose)
        timestamps = getattr(override_config, "timestamps", timestamps)
        num_workers = getattr(override_config, "num_workers", num_workers)
        for key in ("pad_min_duration", "pad_direction"):
            if hasattr(override_config, key):
                kwargs.setdefault(key, getattr(override_config, key))
    unknown = sorted(set(kwargs) - {"pad_min_duration", "pad_direction", "use_lhotse"})
    if unknown:
        raise TypeError(f"transcribe: unknown argument(s) {unknown}")
    if augmentor is not None:
        raise NotImplementedError("transcribe(augmentor=...) is not implemented in compat: audio perturbation "
                                  "at inference is not supported")
    if batch_size < 1:
        raise ValueError(f"transcribe: batch_size must be >= 1, got {batch_size}")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"transcribe: num_workers must be >= 0, got {num_workers}")
    return TranscribeRequest(batch_size=int(batch_size), return_hypotheses=bool(return_hypotheses),
                             channel_selector=channel_selector, verbose=bool(verbose), timestamps=bool(timestamps),
                             pad_min_duration=float(kwargs.get("pad_min_duration", 1.0)),
                             pad_direction=str(kwargs.get("pad_direction", "both")),
                             num_workers=int(num_workers or 0))


def transcribe_batches(audio: Any, request: TranscribeRequest, *, sample_rate: int
                       ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The ``(indices, signal [B, T], signal_len [B])`` batches of ``transcribe(audio)`` (see
    :func:`iterate_batches`; a progress bar when verbose)."""
    from torch.utils.data import DataLoader

    sources = None if isinstance(audio, DataLoader) else collect_sources(
        audio, sample_rate=sample_rate, pad_min_duration=request.pad_min_duration,
        pad_direction=request.pad_direction)
    batches = iterate_batches(audio, sources, batch_size=request.batch_size, sample_rate=sample_rate,
                              channel_selector=request.channel_selector, num_workers=request.num_workers,
                              sort_by_length=request.sort_by_length)
    if request.verbose:
        from tqdm import tqdm

        batches = tqdm(batches, desc="Transcribing", total=count_batches(audio, sources, request.batch_size))
    return batches
