"""Batching for ASR data: the padding collate. The batch samplers live in :mod:`nemofn.train.samplers` (one
implementation for the loop and the ASR loaders) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemofn.train.samplers import EpochBatchSampler, RandomBatchSampler, SemiSortedBatchSampler

__all__ = ["collate", "EpochBatchSampler", "RandomBatchSampler", "SemiSortedBatchSampler"]


def collate(batch: Sequence[tuple], pad_id: int = 0) -> tuple[torch.Tensor, ...]:
    """Pads dataset items into a batch.

    Args:
        batch: items ``(signal [T_i] float32, signal_len, tokens [U_i] int64, tokens_len)``, optionally with a fifth
            element, the sample index.
        pad_id: the value for token padding (NeMo pads with 0).

    Returns:
        ``(signal [B, T_max] float32, signal_len [B] int64, tokens [B, U_max] int64, tokens_len [B] int64)``, plus
        ``sample_id [B] int32`` when the items carry one. Signals are padded with zeros.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    width = len(batch[0])
    if width not in (4, 5):
        raise ValueError(f"collate expects items of 4 or 5 elements (signal, signal_len, tokens, tokens_len"
                         f"[, sample_id]), got {width}")
    signal_lens = torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)
    token_lens = torch.tensor([int(item[3]) for item in batch], dtype=torch.int64)
    signals = torch.zeros(len(batch), int(signal_lens.max()), dtype=torch.float32)
    tokens = torch.full((len(batch), int(token_lens.max())), pad_id, dtype=torch.int64)
    for i, item in enumerate(batch):
        signals[i, : int(signal_lens[i])] = torch.as_tensor(item[0])
        tokens[i, : int(token_lens[i])] = torch.as_tensor(item[2])
    if width == 5:
        sample_ids = torch.tensor([int(item[4]) for item in batch], dtype=torch.int32)
        return signals, signal_lens, tokens, token_lens, sample_ids
    return signals, signal_lens, tokens, token_lens
