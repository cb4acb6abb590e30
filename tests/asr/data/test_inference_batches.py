"""Length-sorted, read-ahead inference batches, and transcribe's input order with them."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from nemofn.asr.data.inference_batches import length_sorted_batches, pad_signals, prefetched_batches, restore_order


def test_length_sorted_batches_longest_first_ties_in_input_order():
    lengths = [1.0, 3.0, 2.0, 3.0, 0.5]
    assert length_sorted_batches(lengths, 2) == [[1, 3], [2, 0], [4]]
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_sorted_batches_pad_less_than_input_order():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(0.8, 4.1, size=200).tolist()

    def padded(groups):
        return sum(max(lengths[i] for i in g) * len(g) for g in groups)

    in_order = [list(range(i, min(i + 16, 200))) for i in range(0, 200, 16)]
    assert padded(length_sorted_batches(lengths, 16)) < 0.8 * padded(in_order)


def test_prefetched_batches_pads_and_keeps_indices():
    clips = {i: np.full(i + 1, float(i), dtype=np.float32) for i in range(5)}
    out = list(prefetched_batches([[4, 2], [0, 3], [1]], clips.__getitem__, workers=2))
    assert [b[0] for b in out] == [[4, 2], [0, 3], [1]]
    signal, lengths = out[0][1], out[0][2]
    assert signal.shape == (2, 5) and lengths.tolist() == [5, 3]
    assert torch.equal(signal[1], torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0]))


def test_prefetched_batches_reads_in_background_threads():
    names = []

    def load(i):
        names.append(threading.current_thread().name)
        return np.zeros(3, dtype=np.float32)

    list(prefetched_batches([[0], [1], [2]], load, workers=1))
    assert names and all(n.startswith("nemofn-audio") for n in names)


def test_prefetched_batches_raises_the_loaders_error_at_its_batch():
    def load(i):
        if i == 3:
            raise OSError("bad file 3")
        return np.zeros(2, dtype=np.float32)

    batches = prefetched_batches([[0, 1], [2, 3]], load)
    assert next(batches)[0] == [0, 1]
    with pytest.raises(OSError, match="bad file 3"):
        next(batches)


def test_restore_order_and_its_checks():
    assert restore_order([([2, 0], ["c", "a"]), ([1], ["b"])], 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="gave 1 outputs"):
        restore_order([([0, 1], ["a"])], 2)
    with pytest.raises(ValueError, match=r"no output for inputs \[1\]"):
        restore_order([([0], ["a"])], 2)


def test_pad_signals_empty_and_ragged():
    signal, lengths = pad_signals([np.ones(2, np.float32), np.ones(4, np.float32)])
    assert signal.shape == (2, 4) and lengths.tolist() == [2, 4] and float(signal[0, 2:].abs().sum()) == 0.0
