"""Feature maths shared by the audio preprocessor: windows, frame masks, splicing and normalisation.

These reproduce NeMo's ``nemo.collections.asr.parts.preprocessing.features`` (``normalize_batch``,
``splice_frames``, the window table of ``FilterbankFeatures``) with pure, compile-friendly tensor code: no
``.item()``, no per-utterance Python loops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch

__all__ = [
    "WINDOW_NAMES",
    "NORMALIZE_EPS",
    "FixedStats",
    "make_window",
    "frame_mask",
    "mask_frames",
    "splice_frames",
    "normalize_batch",
]

# NeMo adds this to every std so that constant channels do not divide by zero.
NORMALIZE_EPS = 1e-5

_WINDOW_FUNCTIONS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}
WINDOW_NAMES = (*_WINDOW_FUNCTIONS, "none", None)


def make_window(name: str | None, win_length: int) -> torch.Tensor | None:
    """The symmetric (``periodic=False``) analysis window ``[win_length]``, or ``None`` for ``'none'``/``None``.

    ``None`` means a rectangular window (``torch.stft`` then uses ones).
    """
    if name is None or name == "none":
        return None
    try:
        fn = _WINDOW_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"window={name!r} is not one of {list(WINDOW_NAMES)}") from None
    return fn(win_length, periodic=False)


@attrs.frozen
class FixedStats:
    """Precomputed per-channel statistics for NeMo's ``normalize: {fixed_mean: [...], fixed_std: [...]}``.

    ``mean`` and ``std`` have one value per feature channel. (NeMo views them as ``[B, F]``, which works only for
    batch 1; here they are broadcast over the batch, which gives NeMo's result at batch 1.)
    """

    mean: tuple[float, ...] = attrs.field(converter=lambda v: tuple(float(x) for x in v))
    std: tuple[float, ...] = attrs.field(converter=lambda v: tuple(float(x) for x in v))

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> FixedStats:
        missing = {"fixed_mean", "fixed_std"} - set(cfg)
        if missing:
            raise ValueError(f"normalize dict needs keys fixed_mean and fixed_std; missing {sorted(missing)}")
        return cls(mean=_as_floats(cfg["fixed_mean"]), std=_as_floats(cfg["fixed_std"]))


def _as_floats(value: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.flatten().tolist())
    return tuple(float(v) for v in value)


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` bool, True on valid frames (``t < lengths[b]``)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def mask_frames(x: torch.Tensor, lengths: torch.Tensor, value: float) -> torch.Tensor:
    """Sets frames ``t >= lengths[b]`` of ``x [B, C, T]`` to ``value``."""
    valid = frame_mask(lengths, x.shape[-1])
    return x.masked_fill(~valid[:, None, :], value)


def splice_frames(x: torch.Tensor, frame_splicing: int) -> torch.Tensor:
    """NeMo's frame splicing: ``[B, F, T] -> [B, F * frame_splicing, T]``.

    NeMo's implementation concatenates each "shifted" copy from two slices that add up to the unshifted input, so
    the result is the input repeated ``frame_splicing`` times along the channel axis; that is reproduced here.
    """
    if frame_splicing <= 1:
        return x
    return x.repeat(1, frame_splicing, 1)


def normalize_batch(
    x: torch.Tensor, lengths: torch.Tensor, normalize: str | FixedStats | None
) -> torch.Tensor:
    """Normalises features ``x [B, F, T]`` using only the valid frames ``t < lengths[b]``.

    Args:
        x: ``[B, F, T]`` features.
        lengths: ``[B]`` int64 valid frame counts.
        normalize: ``"per_feature"`` (mean/std per channel and utterance), ``"all_features"`` (one mean/std per
            utterance), a :class:`FixedStats`, or ``None``/any other string (no normalisation, as in NeMo).

    Returns:
        ``[B, F, T]``. Stds use the N-1 denominator and get ``+1e-5``; a one-frame utterance gets std ``1e-5``.
        Padded frames hold garbage; callers mask them afterwards.
    """
    if normalize == "per_feature":
        valid = frame_mask(lengths, x.shape[-1])[:, None, :]  # [B, 1, T]
        count = valid.sum(dim=2).to(x.dtype)  # [B, 1]
        mean = torch.where(valid, x, 0.0).sum(dim=2) / count  # [B, F]
        centred = torch.where(valid, x - mean[:, :, None], 0.0)
        std = torch.sqrt(centred.pow(2).sum(dim=2) / (count - 1.0))
        std = std.masked_fill(std.isnan(), 0.0) + NORMALIZE_EPS
        return (x - mean[:, :, None]) / std[:, :, None]
    if normalize == "all_features":
        valid = frame_mask(lengths, x.shape[-1])[:, None, :]
        count = valid.sum(dim=2).to(x.dtype).squeeze(1) * x.shape[1]  # [B]
        mean = torch.where(valid, x, 0.0).sum(dim=(1, 2)) / count
        centred = torch.where(valid, x - mean[:, None, None], 0.0)
        std = torch.sqrt(centred.pow(2).sum(dim=(1, 2)) / (count - 1.0)) + NORMALIZE_EPS
        return (x - mean[:, None, None]) / std[:, None, None]
    if isinstance(normalize, FixedStats):
        mean = torch.tensor(normalize.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(normalize.std, dtype=x.dtype, device=x.device)
        if mean.numel() != x.shape[1] or std.numel() != x.shape[1]:
            raise ValueError(
                f"normalize.fixed_mean/fixed_std have {mean.numel()}/{std.numel()} values but the features have "
                f"{x.shape[1]} channels; give one value per channel"
            )
        return (x - mean[None, :, None]) / std[None, :, None]
    return x
