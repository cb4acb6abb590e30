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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from nemofn.asr.configs.data import ASRDatasetConfig, DatasetConfigError
from nemofn.asr.data.audio import ChannelSelector, load_audio
from nemofn.asr.data.batching import EpochBatchSampler, RandomBatchSampler, SemiSortedBatchSampler, collate
from nemofn.asr.data.errors import DataConfigError
from nemofn.asr.data.manifest import ManifestEntry, load_manifests
from nemofn.core.schema import drop_keys, find_missing, join_key, resolved_plain, validate

__all__ = ["AudioToTextDataset", "build_dataset", "build_dataloader", "checked_config"]


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


# --- config ------------------------------------------------------------------------------------------------------

def checked_config(ds_cfg: Any, *, path: str = "dataset", unknown_keys: str = "error") -> dict:
    """A dataset block as a plain dict (interpolations resolved), checked against
    :class:`~nemofn.asr.configs.data.ASRDatasetConfig`.

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
    drop_keys(cfg, validate(cfg, ASRDatasetConfig, path, unknown=unknown_keys), path)
    for key in ("manifest_filepath", "sample_rate"):
        if cfg.get(key) is None:
            full = join_key(path, key)
            raise DatasetConfigError(f"{full} is not set in the dataset config; set it (e.g. {full}=... on the "
                                     "command line)", key=full)
    missing = find_missing(cfg, path)
    if missing:
        raise DatasetConfigError(f"{missing} is not set (???); set it (e.g. {missing}=... on the command line)",
                                 key=missing)
    return cfg


def build_dataset(ds_cfg: Mapping[str, Any], tokenizer: Any = None, *, path: str = "dataset",
                  unknown_keys: str = "error") -> AudioToTextDataset:
    """The dataset of a NeMo dataset config block (checked as :func:`checked_config`).

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping (a DictConfig works).
        tokenizer: the model's tokenizer; ``None`` builds a :class:`~nemofn.asr.tokenizers.CharTokenizer` from
            ``labels``.
        path, unknown_keys: see :func:`checked_config`.
    """
    return _build_dataset(checked_config(ds_cfg, path=path, unknown_keys=unknown_keys), tokenizer)


def _build_dataset(cfg: dict, tokenizer: Any) -> AudioToTextDataset:
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
                     num_replicas: int = 1, rank: int = 0, path: str = "dataset",
                     unknown_keys: str = "error") -> torch.utils.data.DataLoader:
    """A DataLoader for a NeMo dataset config block.

    Args:
        ds_cfg: the ``train_ds`` / ``validation_ds`` / ``test_ds`` mapping; see
            :class:`~nemofn.asr.configs.data.ASRDatasetConfig`.
        tokenizer: the model's tokenizer, or ``None`` for a char model with ``labels`` in ``ds_cfg``.
        shuffle_seed: seed of the batch order (the same on every rank).
        num_replicas, rank: DDP world size and rank; each rank gets its share of every epoch.
        path: the block's full key in error messages (``model.train_ds``).
        unknown_keys: ``"error"``, or ``"warn"`` to drop unknown keys with a warning.

    Returns:
        A DataLoader whose ``batch_sampler`` is an :class:`~nemofn.asr.data.batching.EpochBatchSampler`: call
        ``loader.batch_sampler.set_epoch(epoch, start_batch)`` before each epoch. Batches are
        ``(signal [B, T], signal_len [B], tokens [B, U], tokens_len [B])``.

    Raises:
        DatasetConfigError: for an unknown key, a wrong type, an unsupported value, or a missing
            ``manifest_filepath`` (a :class:`~nemofn.asr.data.errors.DataConfigError`).

    Note:
        A list in ``manifest_filepath`` is read here as one combined dataset (NeMo's datasets do the same). NeMo's
        ``ModelPT`` turns a list in ``validation_ds`` / ``test_ds`` into one loader per manifest; to do that, call
        this function once per manifest.
    """
    cfg = checked_config(ds_cfg, path=path, unknown_keys=unknown_keys)
    dataset = _build_dataset(cfg, tokenizer)
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
