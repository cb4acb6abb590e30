"""Collate padding of ASR batches (the samplers are tested in tests/train/test_samplers.py)."""

from __future__ import annotations

import numpy as np
import torch

from nemofn.asr.data.batching import collate


def _item(t, u, sample_id=None):
    item = (torch.full((t,), float(t)), torch.tensor(t), torch.arange(1, u + 1), torch.tensor(u))
    return item if sample_id is None else (*item, sample_id)


def test_collate_shapes_and_padding():
    signal, signal_len, tokens, tokens_len = collate([_item(5, 2), _item(3, 4), _item(7, 0)])
    assert signal.shape == (3, 7) and signal.dtype == torch.float32
    assert tokens.shape == (3, 4) and tokens.dtype == torch.int64
    assert signal_len.tolist() == [5, 3, 7] and tokens_len.tolist() == [2, 4, 0]
    assert signal_len.dtype == tokens_len.dtype == torch.int64
    assert signal[1].tolist() == [3.0] * 3 + [0.0] * 4
    assert tokens[0].tolist() == [1, 2, 0, 0] and tokens[2].tolist() == [0, 0, 0, 0]


def test_collate_pad_id_and_sample_ids():
    out = collate([_item(2, 1, sample_id=7), _item(2, 3, sample_id=9)], pad_id=5)
    assert len(out) == 5
    assert out[2][0].tolist() == [1, 5, 5]
    assert out[4].tolist() == [7, 9] and out[4].dtype == torch.int32


def test_collate_accepts_numpy_items():
    item = (np.ones(3, np.float32), 3, np.array([1, 2]), 2)
    signal, _, tokens, _ = collate([item])
    assert signal.tolist() == [[1.0, 1.0, 1.0]] and tokens.tolist() == [[1, 2]]
