"""Mel filterbanks, computed the way ``librosa.filters.mel`` does (librosa is not a dependency).

NeMo's ``FilterbankFeatures`` stores ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, norm="slaney")`` (Slaney
mel scale, area-normalised triangles) as its ``fb`` buffer. This module reproduces that matrix: the arithmetic runs
in float64 in the same order as librosa, and the result is rounded to float32 at the same points, so the output
matches librosa's to the last bit or two.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hz_to_mel", "mel_to_hz", "mel_frequencies", "fft_frequencies", "mel_filterbank"]

# Slaney's auditory-toolbox scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _device_of(x: object) -> torch.device | None:
    """A tensor's own device (so a ``torch.device(...)`` context does not move it), else the default (``None``)."""
    return x.device if isinstance(x, torch.Tensor) else None


def hz_to_mel(hz: torch.Tensor, *, htk: bool = False) -> torch.Tensor:
    """Hz -> mels (float64). ``htk=False`` is the Slaney scale, ``htk=True`` is ``2595 log10(1 + f/700)``."""
    hz = torch.as_tensor(hz, dtype=torch.float64, device=_device_of(hz))
    if htk:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / _F_SP
    logarithmic = _MIN_LOG_MEL + torch.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mels: torch.Tensor, *, htk: bool = False) -> torch.Tensor:
    """Mels -> Hz (float64); the inverse of :func:`hz_to_mel`."""
    mels = torch.as_tensor(mels, dtype=torch.float64, device=_device_of(mels))
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    linear = _F_SP * mels
    logarithmic = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, logarithmic, linear)


def _linspace_like_numpy(start: float, stop: float, num: int) -> torch.Tensor:
    """``np.linspace(start, stop, num)`` in float64, with numpy's rounding (``arange * step + start``)."""
    if num == 1:
        return torch.tensor([start], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    out = torch.arange(num, dtype=torch.float64) * step + start
    out[-1] = stop
    return out


def mel_frequencies(n_mels: int, fmin: float, fmax: float, *, htk: bool = False) -> torch.Tensor:
    """``[n_mels]`` centre frequencies in Hz, evenly spaced on the mel scale from ``fmin`` to ``fmax``.

    The two end points are computed on the CPU whatever the default device, so building a filterbank also works
    under ``with torch.device("meta"):`` (shapes only, e.g. to count a model's parameters without allocating them).
    """
    cpu = torch.device("cpu")
    lo = float(hz_to_mel(torch.tensor(float(fmin), device=cpu), htk=htk))
    hi = float(hz_to_mel(torch.tensor(float(fmax), device=cpu), htk=htk))
    return mel_to_hz(_linspace_like_numpy(lo, hi, n_mels), htk=htk)


def fft_frequencies(sample_rate: float, n_fft: int) -> torch.Tensor:
    """``[n_fft//2 + 1]`` frequencies of the one-sided FFT bins (``np.fft.rfftfreq(n_fft, 1/sr)``)."""
    spacing = 1.0 / (n_fft * (1.0 / sample_rate))
    return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * spacing


def mel_filterbank(
    sample_rate: float,
    n_fft: int,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    *,
    htk: bool = False,
    norm: str | float | None = "slaney",
) -> torch.Tensor:
    """Triangular mel filters, as ``librosa.filters.mel``.

    Args:
        sample_rate: sampling rate in Hz.
        n_fft: FFT size; the filters cover its ``n_fft//2 + 1`` one-sided bins.
        n_mels: number of filters.
        fmin, fmax: frequency range in Hz (``fmax=None`` means ``sample_rate / 2``).
        htk: use the HTK mel formula instead of Slaney's.
        norm: ``"slaney"`` divides each triangle by its width in Hz (constant area); a number ``p`` scales each
            filter to unit ``p``-norm (``inf`` for max-norm); ``None`` leaves peaks at 1.

    Returns:
        ``[n_mels, n_fft//2 + 1]`` float32 weights.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    fft_hz = fft_frequencies(sample_rate, n_fft)
    edges = mel_frequencies(n_mels + 2, fmin, fmax, htk=htk)  # [n_mels + 2] band edges and centres
    widths = edges[1:] - edges[:-1]  # [n_mels + 1]
    ramps = edges[:, None] - fft_hz[None, :]  # [n_mels + 2, n_bins]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa writes the triangles into a float32 array, then scales that array in place.
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)

    if norm == "slaney":
        area = 2.0 / (edges[2 : n_mels + 2] - edges[:n_mels])
        return (weights.to(torch.float64) * area[:, None]).to(torch.float32)
    if norm is None:
        return weights
    if isinstance(norm, str):
        raise ValueError(f"mel norm {norm!r} is not supported; use 'slaney', a number (p-norm) or None")
    return _normalize_rows(weights, float(norm))


def _normalize_rows(weights: torch.Tensor, p: float) -> torch.Tensor:
    """Scales each row to unit ``p``-norm; rows whose norm is below float32's ``tiny`` are left as they are."""
    if p <= 0:
        raise ValueError(f"mel norm must be positive (a p-norm), got {p}")
    magnitude = weights.abs()
    if math.isinf(p):
        lengths = magnitude.amax(dim=-1, keepdim=True)
    else:
        lengths = (magnitude**p).sum(dim=-1, keepdim=True) ** (1.0 / p)
    tiny = torch.finfo(weights.dtype).tiny
    lengths = torch.where(lengths < tiny, torch.ones_like(lengths), lengths)
    return weights / lengths
