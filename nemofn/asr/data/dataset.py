"""Audio-to-text dataset and the DataLoader built from a NeMo ``train_ds`` / ``validation_ds`` / ``test_ds`` block.

:class:`AudioToTextDataset` is NeMo's ``AudioToCharDataset`` / ``AudioToBPEDataset`` in one class: the tokenizer
decides which. Transcripts are tokenised once, when the dataset is built; audio is read on each ``__getitem__``.

:func:`build_dataloader` reads a NeMo dataset config. Every key NeMo's ASR datasets know is accepted: those listed in
:data:`SUPPORTED_KEYS` are honoured, those in :data:`IGNORED_KEYS` have no effect here (tarred, Lhotse, DALI and
concat-dataset options, and bucketing options of the tarred loader), and a few are only accepted with their
default value (:data:`DEFAULT_ONLY_KEYS`, e.g. ``is_tarred: true`` or ``trim_silence: true`` raise). A key NeMo does
not know raises :class:`~nemofn.asr.data.errors.DataConfigError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from nemofn.asr.data.audio import ChannelSelector, load_audio
from nemofn.asr.data.batching import EpochBatchSampler, RandomBatchSampler, SemiSortedBatchSampler, collate
from nemofn.asr.data.errors import DataConfigError
from nemofn.asr.data.manifest import ManifestEntry, load_manifests

__all__ = ["AudioToTextDataset", "build_dataset", "build_dataloader", "SUPPORTED_KEYS", "IGNORED_KEYS",
           "DEFAULT_ONLY_KEYS"]

logger = logging.getLogger(__name__)


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
        self._tokens = [np.asarray(prefix + list(tokenizer.encode(e.text)) + suffix, dtype=np.int64)
                        for e in self.entries]
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


# --- config keys ---------------------------------------------------------------------------------------------------

SUPPORTED_KEYS: dict[str, str] = {
    "manifest_filepath": "a manifest path, a comma-separated string of paths, or a list",
    "sample_rate": "target sample rate in Hz",
    "batch_size": "samples per batch (default 32, NeMo's DatasetConfig)",
    "shuffle": "shuffle every epoch (default false; NeMo's setup_training_data sets true)",
    "num_workers": "DataLoader worker processes",
    "pin_memory": "DataLoader pin_memory",
    "drop_last": "drop the incomplete last batch",
    "max_duration": "drop utterances longer than this (s)",
    "min_duration": "drop utterances shorter than this (s)",
    "max_utts": "keep the first N utterances (0: all)",
    "channel_selector": "None/'average' (mix down), a channel index, or a list of channels to average",
    "int_values": "read audio as 32-bit ints",
    "labels": "char vocabulary: builds a CharTokenizer when no tokenizer is given",
    "parser": "char parser: 'en' (default) or 'base'",
    "normalize_transcripts": "clean char transcripts first (default false, as NeMo)",
    "use_start_end_token": "add BOS/EOS when the tokenizer has them",
    "return_sample_id": "items and batches carry the sample index",
    "use_semi_sorted_batching": "NeMo's semi-sorted (duration-sorted, noisy) batching",
    "randomization_factor": "noise width of semi-sorted batching (default 0.1)",
    "semi_sort_sampler_seed": "seed of semi-sorted batching (default: shuffle_seed)",
}

DEFAULT_ONLY_KEYS: dict[str, tuple[Any, str]] = {
    "trim_silence": (False, "silence trimming (librosa.effects.trim in NeMo) is not implemented; trim the audio "
                            "beforehand"),
    "is_tarred": (False, "tarred (WebDataset) datasets are not supported; use plain manifests of audio files"),
    "use_lhotse": (False, "the Lhotse dataloader is not supported; use plain manifests (bucketing: "
                          "use_semi_sorted_batching)"),
    "use_dali": (False, "DALI data loading is not supported"),
    "is_concat": (False, "concat datasets with sampling weights are not supported; list the manifests in "
                         "manifest_filepath to read them one after the other"),
    "is_code_switched": (False, "code-switched datasets are not supported"),
    "augmentor": (None, "audio augmentation (perturbations) is not supported; use spec_augment in the model"),
    "blank_index": (-1, "only -1 (unknown characters are dropped) is supported"),
    "unk_index": (-1, "only -1 (unknown characters are dropped) is supported"),
}

IGNORED_KEYS: frozenset[str] = frozenset({
    # tarred / WebDataset
    "tarred_audio_filepaths", "tarred_shard_strategy", "shard_manifests", "shuffle_n", "tarred_random_access",
    "tarred_audio_index_filepaths", "bucketing_strategy", "bucketing_batch_size", "bucketing_weights",
    # Lhotse
    "use_bucketing", "batch_duration", "quadratic_duration", "bucket_batch_size", "bucket_duration_bins",
    "num_buckets", "bucket_buffer_size", "shuffle_buffer_size", "max_open_streams", "force_finite",
    # concat / code-switched / DALI options, only read when their switch is on
    "concat_sampling_technique", "concat_sampling_temperature", "concat_sampling_scale",
    "concat_sampling_probabilities", "concat_shuffle", "concat_sampling_seed", "code_switched",
    # fields of NeMo's ASRDatasetConfig that its dataset builders never read
    "normalize", "trim", "eos_id", "bos_id", "pad_id", "manifest_parse_func",
    # set by NeMo's transcribe / model code
    "defer_setup", "do_transcribe", "global_rank", "world_size", "temp_dir", "paths2audio_files",
})


def _check_keys(cfg: Mapping[str, Any]) -> None:
    ignored = sorted(key for key in cfg if key in IGNORED_KEYS)
    if ignored:
        logger.info("Dataset config keys with no effect in nemofn (see IGNORED_KEYS): %s", ", ".join(ignored))
    for key in cfg:
        if key in SUPPORTED_KEYS or key in IGNORED_KEYS:
            continue
        if key in DEFAULT_ONLY_KEYS:
            default, reason = DEFAULT_ONLY_KEYS[key]
            value = cfg[key]
            if value == default or (default is None and not value) or (default is False and value is None):
                continue
            raise DataConfigError(f"{key}: {value!r} is not supported: {reason}")
        known = sorted(SUPPORTED_KEYS) + sorted(DEFAULT_ONLY_KEYS)
        raise DataConfigError(f"unknown dataset config key {key!r} (not a NeMo ASR dataset key); "
                              f"remove it or fix its spelling. Keys used here: {', '.join(known)}")


def build_dataset(ds_cfg: Mapping[str, Any], tokenizer: Any = None) -> AudioToTextDataset:
    """The dataset of a NeMo dataset config block (keys checked as :func:`build_dataloader`).

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping (a DictConfig works).
        tokenizer: the model's tokenizer; ``None`` builds a :class:`~nemofn.asr.tokenizers.CharTokenizer` from
            ``labels``.
    """
    cfg = dict(ds_cfg)
    _check_keys(cfg)
    for key in ("manifest_filepath", "sample_rate"):
        if cfg.get(key) is None:
            raise DataConfigError(f"{key} is not set in the dataset config; set it (e.g. {key}=... on the "
                                  "command line)")
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
    entries = load_manifests(cfg["manifest_filepath"], min_duration=cfg.get("min_duration"),
                             max_duration=cfg.get("max_duration"), max_utts=cfg.get("max_utts") or 0)
    return AudioToTextDataset(entries, tokenizer, cfg["sample_rate"], int_values=bool(cfg.get("int_values")),
                              channel_selector=channel_selector,
                              use_start_end_token=bool(cfg.get("use_start_end_token", True)),
                              return_sample_id=bool(cfg.get("return_sample_id", False)))


def build_dataloader(ds_cfg: Mapping[str, Any], tokenizer: Any = None, *, shuffle_seed: int = 0,
                     num_replicas: int = 1, rank: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader for a NeMo dataset config block.

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping; see :data:`SUPPORTED_KEYS`.
        tokenizer: the model's tokenizer, or ``None`` for a char model with ``labels`` in ``ds_cfg``.
        shuffle_seed: seed of the batch order (the same on every rank).
        num_replicas, rank: DDP world size and rank; each rank gets its share of every epoch.

    Returns:
        A DataLoader whose ``batch_sampler`` is an :class:`~nemofn.asr.data.batching.EpochBatchSampler`: call
        ``loader.batch_sampler.set_epoch(epoch, start_batch)`` before each epoch. Batches are
        ``(signal [B, T], signal_len [B], tokens [B, U], tokens_len [B])``.

    Raises:
        DataConfigError: for an unknown key, an unsupported value, or a missing ``manifest_filepath``.

    Note:
        A list in ``manifest_filepath`` is read here as one combined dataset (NeMo's datasets do the same). NeMo's
        ``ModelPT`` turns a list in ``validation_ds`` / ``test_ds`` into one loader per manifest; to do that, call
        this function once per manifest.
    """
    cfg = dict(ds_cfg)
    dataset = build_dataset(cfg, tokenizer)
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
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_id=dataset.pad_id),
        num_workers=int(cfg.get("num_workers") or 0), pin_memory=bool(cfg.get("pin_memory", False)),
        generator=torch.Generator().manual_seed(int(shuffle_seed)),
    )
