"""Audio-to-text dataset and the DataLoader built from a NeMo ``train_ds`` / ``validation_ds`` / ``test_ds`` block.

:class:`AudioToTextDataset` is NeMo's ``AudioToCharDataset`` / ``AudioToBPEDataset`` in one class: the tokenizer
decides which. Transcripts are tokenised once, when the dataset is built; audio is read on each ``__getitem__``.

:func:`build_dataloader` reads a NeMo dataset config, checked against
:class:`~nemofn.asr.configs.data.ASRDatasetConfig`: every key NeMo's ASR datasets know is accepted; most are
honoured, some have no effect here (tarred, Lhotse, DALI and concat-dataset options, bucketing options of the
tarred loader) and a few are only accepted with their default value (e.g. ``is_tarred: true`` or
``trim_silence: true`` raise). A key NeMo does not know raises
:class:`~nemofn.asr.configs.data.DatasetConfigError` (a :class:`~nemofn.asr.data.errors.DataConfigError`) naming
it and the closest known key.

Bad data is found when the dataset is built, not when an item is first read (:mod:`~nemofn.asr.data.manifest_check`):
every audio header is checked against its manifest line (in threads, cached by file size and mtime), and all bad
lines raise one :class:`~nemofn.asr.data.errors.BadManifestError` listing each as ``path:line: reason``. Two keys of
nemofn's own (NeMo has neither; see :class:`DatasetConfig`) control it: ``skip_bad_samples: true`` drops the bad lines
instead, with one warning giving counts per kind; ``check_audio: false`` turns the check off (then only a missing
audio file is caught up front, at the first one, as before). Transcripts that silently lose data in training (no
tokens, characters outside the vocabulary, too long for CTC) are counted and warned about once per build
(:mod:`~nemofn.asr.data.transcript_check`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from nemofn.asr.configs.data import ASRDatasetConfig, DatasetConfigError
from nemofn.asr.data.audio import ChannelSelector, load_audio
from nemofn.asr.data.batching import EpochBatchSampler, RandomBatchSampler, SemiSortedBatchSampler, collate
from nemofn.asr.data.errors import DataConfigError, ManifestError
from nemofn.asr.data.manifest import ManifestEntry, load_manifests
from nemofn.asr.data.manifest_check import AudioCheckReport, check_manifest_audio
from nemofn.asr.data.transcript_check import CTCFrames, check_transcripts
from nemofn.core.schema import drop_keys, find_missing, join_key, resolved_plain, validate

__all__ = ["AudioToTextDataset", "DatasetConfig", "build_dataset", "build_dataloader", "checked_config"]


class AudioToTextDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``(signal, signal_len, tokens, tokens_len)``.

    Args:
        entries: manifest entries (:func:`~nemofn.asr.data.manifest.load_manifests`).
        tokenizer: a :class:`~nemofn.asr.tokenizers.Tokenizer` (``encode``, ``bos_id``, ``eos_id``, ``pad_id``).
        sample_rate: the rate audio is resampled to.
        int_values: see :func:`~nemofn.asr.data.audio.load_audio`.
        channel_selector: see :func:`~nemofn.asr.data.audio.select_channels`.
        use_start_end_token: add the tokenizer's BOS/EOS ids when it has them (id > 0), as NeMo's BPE dataset.
        return_sample_id: append the item's index as a fifth element.

    Items:
        ``signal [T] float32``, ``signal_len`` (int64 scalar), ``tokens [U] int64``, ``tokens_len`` (int64 scalar).
    """

    def __init__(self, entries: Sequence[ManifestEntry], tokenizer: Any, sample_rate: int, *,
                 int_values: bool = False, channel_selector: ChannelSelector = None,
                 use_start_end_token: bool = True, return_sample_id: bool = False):
        self.entries = list(entries)
        self.tokenizer = tokenizer
        self.sample_rate = int(sample_rate)
        self.int_values = int_values
        self.channel_selector = channel_selector
        self.return_sample_id = return_sample_id
        bos = getattr(tokenizer, "bos_id", -1)
        eos = getattr(tokenizer, "eos_id", -1)
        prefix = [bos] if use_start_end_token and bos is not None and bos > 0 else []
        suffix = [eos] if use_start_end_token and eos is not None and eos > 0 else []
        self.num_special_tokens = len(prefix) + len(suffix)
        #: Characters each transcript lost to the tokenizer (dropped, or mapped to ``<unk>``), by index; only items
        #: that lost some (for tokenizers with ``encode_with_unknown``).
        self.unknown_text: dict[int, str] = {}
        encode_with_unknown = getattr(tokenizer, "encode_with_unknown", None)
        self._tokens = []
        for index, entry in enumerate(self.entries):
            if encode_with_unknown is None:
                ids = tokenizer.encode(entry.text)
            else:
                ids, unknown = encode_with_unknown(entry.text)
                if unknown:
                    self.unknown_text[index] = unknown
            self._tokens.append(np.asarray(prefix + list(ids) + suffix, dtype=np.int64))
        pad = getattr(tokenizer, "pad_id", 0)
        self.pad_id = pad if pad is not None and pad > 0 else 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def durations(self) -> np.ndarray:
        """Manifest durations in seconds, ``[N]``."""
        return np.array([e.duration for e in self.entries], dtype=np.float64)

    def tokens(self, index: int) -> np.ndarray:
        """Token ids of item ``index``, ``[U]`` (no audio is read)."""
        return self._tokens[index]

    def __getitem__(self, index: int) -> tuple:
        entry = self.entries[index]
        signal = load_audio(entry.audio_filepath, sample_rate=self.sample_rate, offset=entry.offset or 0.0,
                            duration=entry.duration, channel_selector=self.channel_selector,
                            int_values=self.int_values)
        tokens = self._tokens[index]
        item = (torch.from_numpy(signal), torch.tensor(len(signal), dtype=torch.int64),
                torch.from_numpy(tokens), torch.tensor(len(tokens), dtype=torch.int64))
        return (*item, index) if self.return_sample_id else item

    def collate_fn(self, batch: Sequence[tuple]) -> tuple[torch.Tensor, ...]:
        """:func:`~nemofn.asr.data.batching.collate` with this dataset's pad id."""
        return collate(batch, self.pad_id)


# --- config ------------------------------------------------------------------------------------------------------

@dataclass
class DatasetConfig(ASRDatasetConfig):
    """:class:`~nemofn.asr.configs.data.ASRDatasetConfig` plus nemofn's own keys (NeMo knows neither).

    Attributes:
        check_audio: check every audio header against its manifest line when the dataset is built (see
            :mod:`~nemofn.asr.data.manifest_check`); false skips it, for data known to be good.
        skip_bad_samples: drop the lines the check finds bad (one warning, counts per kind) instead of raising.
    """

    check_audio: bool = True
    skip_bad_samples: bool = False


def checked_config(ds_cfg: Any, *, path: str = "dataset", unknown_keys: str = "error") -> dict:
    """A dataset block as a plain dict (interpolations resolved), checked against :class:`DatasetConfig` (NeMo's
    keys, :class:`~nemofn.asr.configs.data.ASRDatasetConfig`, plus ``check_audio`` and ``skip_bad_samples``).

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping (a DictConfig works).
        path: the block's full key for messages (``model.train_ds``).
        unknown_keys: ``"error"``, or ``"warn"`` to drop unknown keys with a warning.

    Raises:
        DatasetConfigError: an unknown key, a wrong type, an unsupported value, a ``???`` value, or no
            ``manifest_filepath`` / ``sample_rate``.
    """
    cfg = resolved_plain(ds_cfg, path)
    if not isinstance(cfg, dict):
        raise DatasetConfigError(f"{path}: expected a mapping, got {type(ds_cfg).__name__}", key=path)
    drop_keys(cfg, validate(cfg, DatasetConfig, path, unknown=unknown_keys), path)
    for key in ("manifest_filepath", "sample_rate"):
        if cfg.get(key) is None:
            full = join_key(path, key)
            raise DatasetConfigError(f"{full} is not set in the dataset config; set it (e.g. {full}=... on the "
                                     "command line)", key=full)
    missing = find_missing(cfg, path)
    if missing:
        raise DatasetConfigError(f"{missing} is not set (???); set it (e.g. {missing}=... on the command line)",
                                 key=missing)
    if cfg.get("skip_bad_samples") and cfg.get("check_audio") is False:
        full = join_key(path, "skip_bad_samples")
        raise DatasetConfigError(f"{full}=true needs {join_key(path, 'check_audio')}=true: bad lines are found by "
                                 "the up-front audio check", key=full)
    return cfg


def build_dataset(ds_cfg: Mapping[str, Any], tokenizer: Any = None, *, path: str = "dataset",
                  unknown_keys: str = "error", ctc_output_frames: CTCFrames | None = None) -> AudioToTextDataset:
    """The dataset of a NeMo dataset config block (checked as :func:`checked_config`).

    The manifests' audio headers are checked first (unless ``check_audio: false``), and transcripts that lose data
    silently are warned about (see the module doc).

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping (a DictConfig works).
        tokenizer: the model's tokenizer; ``None`` builds a :class:`~nemofn.asr.tokenizers.CharTokenizer` from
            ``labels``.
        path, unknown_keys: see :func:`checked_config`.
        ctc_output_frames: a CTC model's output length, to warn about transcripts too long for it: frames per second
            of audio, or a function from signal lengths in samples ``[N]`` to output frames ``[N]``
            (:data:`~nemofn.asr.data.transcript_check.CTCFrames`). ``None`` skips that warning.

    Raises:
        BadManifestError: every bad manifest line, each as ``path:line: reason`` (unless ``skip_bad_samples``).
        ManifestError: a missing manifest, or one that is not UTF-8.
    """
    return _build_dataset(checked_config(ds_cfg, path=path, unknown_keys=unknown_keys), tokenizer, path=path,
                          ctc_output_frames=ctc_output_frames)


def _build_dataset(cfg: dict, tokenizer: Any, *, path: str = "dataset",
                   ctc_output_frames: CTCFrames | None = None) -> AudioToTextDataset:
    if tokenizer is None:
        if not cfg.get("labels"):
            raise DataConfigError("no tokenizer given and no 'labels' in the dataset config; pass the model's "
                                  "tokenizer or set labels for a char model")
        from nemofn.asr.tokenizers.char import CharTokenizer

        tokenizer = CharTokenizer(list(cfg["labels"]), normalize=bool(cfg.get("normalize_transcripts", False)),
                                  parser=cfg.get("parser") or "en")
    channel_selector = cfg.get("channel_selector")
    if channel_selector is not None and not isinstance(channel_selector, (int, str)):
        channel_selector = list(channel_selector)
    check = cfg.get("check_audio", True) is not False
    line_errors: list[ManifestError] | None = [] if check else None
    entries = load_manifests(cfg["manifest_filepath"], min_duration=cfg.get("min_duration"),
                             max_duration=cfg.get("max_duration"), max_utts=cfg.get("max_utts") or 0,
                             check_audio_exists=not check, errors=line_errors)
    report: AudioCheckReport | None = None
    if check:
        report = check_manifest_audio(entries, channel_selector=channel_selector, line_errors=line_errors or ())
        entries = report.resolve(skip_bad_samples=bool(cfg.get("skip_bad_samples")), name=path)
    dataset = AudioToTextDataset(entries, tokenizer, cfg["sample_rate"], int_values=bool(cfg.get("int_values")),
                                 channel_selector=channel_selector,
                                 use_start_end_token=bool(cfg.get("use_start_end_token", True)),
                                 return_sample_id=bool(cfg.get("return_sample_id", False)))
    check_transcripts(dataset, ctc_output_frames=ctc_output_frames,
                      readable_seconds=report.readable_seconds if report is not None else None).log(path)
    return dataset


def build_dataloader(ds_cfg: Mapping[str, Any], tokenizer: Any = None, *, shuffle_seed: int = 0,
                     num_replicas: int = 1, rank: int = 0, path: str = "dataset", unknown_keys: str = "error",
                     ctc_output_frames: CTCFrames | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader for a NeMo dataset config block.

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping; see
            :class:`~nemofn.asr.configs.data.ASRDatasetConfig`.
        tokenizer: the model's tokenizer, or ``None`` for a char model with ``labels`` in ``ds_cfg``.
        shuffle_seed: seed of the batch order (the same on every rank).
        num_replicas, rank: DDP world size and rank; each rank gets its share of every epoch.
        path: the block's full key in error messages (``model.train_ds``).
        unknown_keys: ``"error"``, or ``"warn"`` to drop unknown keys with a warning.
        ctc_output_frames: see :func:`build_dataset`.

    Returns:
        A DataLoader whose ``batch_sampler`` is an :class:`~nemofn.asr.data.batching.EpochBatchSampler`: call
        ``loader.batch_sampler.set_epoch(epoch, start_batch)`` before each epoch. Batches are
        ``(signal [B, T], signal_len [B], tokens [B, U], tokens_len [B])``.

    Raises:
        DatasetConfigError: for an unknown key, a wrong type, an unsupported value, or a missing
            ``manifest_filepath`` (a :class:`~nemofn.asr.data.errors.DataConfigError`).
        BadManifestError: every bad manifest line, before any batch is read (see :func:`build_dataset`).

    Note:
        A list in ``manifest_filepath`` is read here as one combined dataset (NeMo's datasets do the same). NeMo's
        ``ModelPT`` turns a list in ``validation_ds`` / ``test_ds`` into one loader per manifest; to do that, call
        this function once per manifest.
    """
    cfg = checked_config(ds_cfg, path=path, unknown_keys=unknown_keys)
    dataset = _build_dataset(cfg, tokenizer, path=path, ctc_output_frames=ctc_output_frames)
    batch_size = int(cfg.get("batch_size") or 32)
    shuffle = bool(cfg.get("shuffle", False))
    drop_last = bool(cfg.get("drop_last", False))
    sampler: EpochBatchSampler
    if cfg.get("use_semi_sorted_batching", False):
        seed = cfg.get("semi_sort_sampler_seed")
        factor = cfg.get("randomization_factor")
        sampler = SemiSortedBatchSampler(dataset.durations, batch_size, shuffle=shuffle,
                                         randomization_factor=0.1 if factor is None else float(factor),
                                         seed=shuffle_seed if seed is None else int(seed), drop_last=drop_last,
                                         num_replicas=num_replicas, rank=rank)
    else:
        sampler = RandomBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=shuffle_seed,
                                     drop_last=drop_last, num_replicas=num_replicas, rank=rank)
    workers = int(cfg.get("num_workers") or 0)
    # Persistent workers: the loader processes survive from one epoch (and validation pass) to the next instead of
    # being forked again each time (NeMo leaves torch's default, which restarts them).
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_id=dataset.pad_id),
        num_workers=workers, pin_memory=bool(cfg.get("pin_memory", False)), persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(int(shuffle_seed)),
    )
