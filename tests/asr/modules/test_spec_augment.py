"""Tests for nemofn/asr/modules/spec_augment.py: SpecAugment and SpecCutout with explicit randomness."""

from __future__ import annotations

import pytest
import torch

from nemofn.asr.modules.spec_augment import SpectrogramAugmentation
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError

KEY = RngKey(0)


def _batch(batch: int = 16, channels: int = 80, frames: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Features that are never equal to a mask value used below, and lengths spread over the range."""
    x = torch.rand(batch, channels, frames) + 1.0
    lengths = torch.linspace(frames // 4, frames, batch).long()
    return x, lengths


def _run(aug, x, lengths, seed=0):
    torch.manual_seed(seed)
    out, buffers = aug.apply({}, {}, x, lengths, train=True, rng=KEY)
    assert buffers == {}
    return out


def _masked_runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of True in a 1-D bool mask."""
    runs, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_identity_in_eval_and_when_empty():
    x, lengths = _batch()
    aug = SpectrogramAugmentation(freq_masks=2, time_masks=2, rect_masks=3)
    out, _ = aug.apply({}, {}, x, lengths, train=False)
    assert out is x
    out, _ = SpectrogramAugmentation().apply({}, {}, x, lengths, train=True, rng=KEY)
    assert out is x
    with pytest.raises(ValueError, match="rng"):
        aug.apply({}, {}, x, lengths, train=True)


def test_deterministic_under_the_same_seed_and_input_untouched():
    x, lengths = _batch()
    before = x.clone()
    aug = SpectrogramAugmentation(freq_masks=2, time_masks=2, freq_width=15, time_width=0.05, rect_masks=2)
    a, b, c = _run(aug, x, lengths, 1), _run(aug, x, lengths, 1), _run(aug, x, lengths, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, before)


def test_masked_values_equal_mask_value():
    x, lengths = _batch()
    aug = SpectrogramAugmentation(freq_masks=2, time_masks=2, freq_width=20, time_width=30, mask_value=-7.5)
    out = _run(aug, x, lengths)
    changed = out != x
    assert changed.any()
    assert torch.all(out[changed] == -7.5)


def test_frequency_mask_widths_and_counts():
    # One mask of width floor(u * 15) in 0..14 (NeMo's vectorised draw), placed within the channels.
    aug = SpectrogramAugmentation(freq_masks=1, freq_width=15)
    widths = []
    for seed in range(40):
        x, lengths = _batch()
        masked = (_run(aug, x, lengths, seed) == 0.0).all(dim=2)  # [B, F]: whole channels
        for row in masked:
            runs = _masked_runs(row)
            assert len(runs) <= 1
            widths.append(runs[0][1] - runs[0][0] if runs else 0)
    assert max(widths) == 14 and min(widths) == 0
    assert 5.5 < sum(widths) / len(widths) < 8.5  # mean of uniform 0..14 is 7

    two = SpectrogramAugmentation(freq_masks=2, freq_width=15)
    x, lengths = _batch()
    masked = (_run(two, x, lengths) == 0.0).all(dim=2)
    assert torch.all(masked.sum(dim=1) <= 28)
    assert all(len(_masked_runs(row)) <= 2 for row in masked)


def test_adaptive_time_width_respects_lengths():
    # One mask per utterance of width floor(u * 0.1 * length), starting so that it ends inside the utterance.
    aug = SpectrogramAugmentation(time_masks=1, time_width=0.1)
    fractions = []
    for seed in range(20):
        x, lengths = _batch()
        masked = (_run(aug, x, lengths, seed) == 0.0).all(dim=1)  # [B, T]: whole frames
        for row, length in zip(masked, lengths.tolist()):
            assert not row[length:].any()  # masks stay inside the utterance
            runs = _masked_runs(row)
            assert len(runs) <= 1
            width = runs[0][1] - runs[0][0] if runs else 0
            assert width < 0.1 * length
            fractions.append(width / length)
    assert max(fractions) > 0.08  # the width scales with each utterance's length

    two = SpectrogramAugmentation(time_masks=2, time_width=0.1)
    x, lengths = _batch()
    masked = (_run(two, x, lengths) == 0.0).all(dim=1)
    for row, length in zip(masked, lengths.tolist()):
        assert not row[length:].any() and int(row.sum()) < 2 * 0.1 * length


def test_fixed_time_width():
    aug = SpectrogramAugmentation(time_masks=1, time_width=10)
    widths = []
    for seed in range(30):
        x, lengths = _batch()
        masked = (_run(aug, x, lengths, seed) == 0.0).all(dim=1)
        for row, length in zip(masked, lengths.tolist()):
            runs = _masked_runs(row)
            assert len(runs) <= 1
            if runs:
                assert runs[0][1] <= length
                widths.append(runs[0][1] - runs[0][0])
    assert max(widths) == 9  # floor(u * 10) for u in [0, 1)


def test_legacy_distributions_are_inclusive():
    aug = SpectrogramAugmentation(freq_masks=1, freq_width=6, time_masks=1, time_width=5,
                                  use_vectorized_spec_augment=False)
    freq_widths, time_widths = [], []
    for seed in range(30):
        x, lengths = _batch()
        out = _run(aug, x, lengths, seed)
        for row in (out == 0.0).all(dim=2):
            runs = _masked_runs(row)
            freq_widths.append(runs[0][1] - runs[0][0] if runs else 0)
        for row, length in zip((out == 0.0).all(dim=1), lengths.tolist()):
            runs = _masked_runs(row)
            assert not runs or runs[0][1] <= length + 5
            time_widths.append(runs[0][1] - runs[0][0] if runs else 0)
    assert max(freq_widths) == 6 and min(freq_widths) == 0
    assert max(time_widths) == 5 and min(time_widths) == 0


def test_cutout_rectangles():
    aug = SpectrogramAugmentation(rect_masks=1, rect_freq=20, rect_time=5, mask_value=-1.0)
    sizes = []
    for seed in range(30):
        x, lengths = _batch()
        out = _run(aug, x, lengths, seed)
        changed = out != x
        assert torch.all(out[changed] == 0.0)  # NeMo's SpecCutout writes zeros, not mask_value
        for b in range(x.shape[0]):
            rows = changed[b].any(dim=1).nonzero()
            cols = changed[b].any(dim=0).nonzero()
            if rows.numel():
                height = int(rows.max() - rows.min()) + 1
                width = int(cols.max() - cols.min()) + 1
                assert height <= 20 and width <= 5
                assert int(changed[b].sum()) == height * width  # one filled rectangle
                sizes.append((height, width))
    assert max(h for h, _ in sizes) == 20 and max(w for _, w in sizes) == 5


def test_config_and_validation():
    cfg = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2, "time_masks": 2,
           "freq_width": 15, "time_width": 0.05}
    aug = SpectrogramAugmentation.from_config(cfg)
    assert aug.adaptive_time_width and aug.freq_masks == 2
    assert not SpectrogramAugmentation(time_width=10).adaptive_time_width
    with pytest.raises(ConfigError, match="unknown key spec_augment.freq_maskz; did you mean "
                                          "spec_augment.freq_masks"):
        SpectrogramAugmentation.from_config({"freq_maskz": 1})
    with pytest.raises(ValueError, match="time_width"):
        SpectrogramAugmentation(time_width=1.5)
    with pytest.raises(ValueError, match="freq_masks"):
        SpectrogramAugmentation(freq_masks=-1)


def test_compile_fullgraph_matches_eager():
    aug = SpectrogramAugmentation(freq_masks=2, time_masks=2, freq_width=15, time_width=0.05, rect_masks=2)
    x, lengths = _batch(batch=4)

    def run(x, lengths):
        return aug.apply({}, {}, x, lengths, train=True, rng=KEY)[0]

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    eager = run(x, lengths)
    torch.manual_seed(3)
    assert torch.equal(compiled(x, lengths), eager)
