"""``AudioToMelSpectrogramPreprocessor``: waveforms ``[B, T]`` -> log-mel features ``[B, n_mels, T']``, NeMo-exact.

The hyperparameters are NeMo's constructor arguments with NeMo's defaults, so a ``preprocessor:`` config block
builds it unchanged (:meth:`AudioToMelSpectrogramPreprocessor.from_config`). It has no parameters and two
constant buffers under NeMo's state-dict names, ``featurizer.window [win_length]`` and
``featurizer.fb [1, n_mels, n_fft//2 + 1]``, so ``preprocessor.featurizer.*`` from a ``.nemo`` loads key for key.

The computation follows NeMo 3.0's ``FilterbankFeatures.forward``: dither (training only), pre-emphasis, zeroing
beyond the length, ``torch.stft(center=not exact_pad, pad_mode="constant")``, magnitude, power, mel projection,
log with a zero guard, frame splicing, normalisation over valid frames, masking beyond the output length and
right-padding the time axis to a multiple of ``pad_to``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from nemofn.asr.configs.modules import AudioToMelSpectrogramPreprocessorConfig
from nemofn.asr.modules.features import (
    WINDOW_NAMES,
    FixedStats,
    make_window,
    mask_frames,
    normalize_batch,
    splice_frames,
)
from nemofn.asr.modules.mel import mel_filterbank
from nemofn.core.schema import module_kwargs
from nemofn.nn.module import Module

__all__ = ["AudioToMelSpectrogramPreprocessor"]

# NeMo's FilterbankFeatures sizes ``pad_to="max"`` outputs for this many seconds of audio.
MAX_DURATION_S = 16.7

_KNOWN_NORMALIZE = ("per_feature", "all_features")


def _convert_normalize(value: Any) -> str | FixedStats | None:
    if isinstance(value, Mapping):
        return FixedStats.from_mapping(value)
    if value is False or value == "":
        return None
    return value


def _check_pad_to(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value == "max":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"pad_to={value!r}: use a non-negative int (0 disables padding) or 'max'")


@attrs.frozen(kw_only=True)
class AudioToMelSpectrogramPreprocessor(Module):
    """NeMo's mel-spectrogram preprocessor as a stateless module (constructor arguments and defaults as NeMo).

    Only the arguments that change the maths are described; see NeMo's docs for the rest.

    Args:
        window_size, window_stride: window and hop in seconds (give ``None`` to use the ``n_window_*`` sample
            counts instead; giving both is an error, as in NeMo).
        window: ``'hann'`` (symmetric), ``'hamming'``, ``'blackman'``, ``'bartlett'``, or ``'none'``/``None``
            (rectangular; no ``window`` buffer).
        normalize: ``'per_feature'``, ``'all_features'``, ``{fixed_mean: [...], fixed_std: [...]}`` or ``None``.
            Any other string disables normalisation, as in NeMo (e.g. ``"NA"``), with a warning.
        n_fft: FFT size; ``None`` means the next power of two >= the window length.
        log_zero_guard_value: a float, ``'tiny'`` or ``'eps'`` (of float32).
        pad_to: right-pad the time axis to a multiple of this (0: no padding), or ``'max'`` to pad to the frame
            count of 16.7 s of audio.
        frame_splicing: repeats the features this many times along the channel axis (NeMo's behaviour).
        nb_augmentation_prob: narrow-band augmentation is not implemented; only 0 (or an ``nb_max_freq`` at or
            above Nyquist, where NeMo disables it) is accepted.
        use_torchaudio, stft_exact_pad, stft_conv: accepted and ignored, as in NeMo 3.0.
        rng: must be ``None``; randomness (dither) comes from ``apply(..., rng=key)``.
    """

    sample_rate: int = 16000
    window_size: float | None = 0.02
    window_stride: float | None = 0.01
    n_window_size: int | None = None
    n_window_stride: int | None = None
    window: str | None = "hann"
    normalize: str | FixedStats | None = attrs.field(default="per_feature", converter=_convert_normalize)
    n_fft: int | None = None
    preemph: float | None = 0.97
    features: int = 64
    lowfreq: float = 0
    highfreq: float | None = None
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float | str = 2**-24
    dither: float = 1e-5
    pad_to: int | str = attrs.field(default=16, validator=_check_pad_to)
    frame_splicing: int = 1
    exact_pad: bool = False
    pad_value: float = 0.0
    mag_power: float = 2.0
    rng: None = None
    nb_augmentation_prob: float = 0.0
    nb_max_freq: float = 4000
    use_torchaudio: bool = False
    mel_norm: str | float | None = "slaney"
    stft_exact_pad: bool = False
    stft_conv: bool = False
    # Not a NeMo argument (a class constant): outside training, inputs of more STFT frames than this (over the batch)
    # are featurised in chunks of that many frames (the same result, a fraction of the memory; `_mel_in_chunks`).
    chunk_frames: ClassVar[int] = 1 << 16

    def __attrs_post_init__(self) -> None:
        if self.window_size and self.n_window_size:
            raise ValueError("give window_size (seconds) or n_window_size (samples), not both; set the other to None")
        if self.window_stride and self.n_window_stride:
            raise ValueError(
                "give window_stride (seconds) or n_window_stride (samples), not both; set the other to None"
            )
        for name, value in (("window size", self.win_length), ("window stride", self.hop_length)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive number of samples, got {value!r}")
        if self.window not in WINDOW_NAMES:
            raise ValueError(f"window={self.window!r} is not one of {list(WINDOW_NAMES)}")
        if self.log_zero_guard_type not in ("add", "clamp"):
            raise ValueError(f"log_zero_guard_type={self.log_zero_guard_type!r}: use 'add' or 'clamp'")
        if isinstance(self.log_zero_guard_value, str) and self.log_zero_guard_value not in ("tiny", "eps"):
            raise ValueError(f"log_zero_guard_value={self.log_zero_guard_value!r}: use a number, 'tiny' or 'eps'")
        if self.exact_pad and self.hop_length % 2 == 1:
            raise ValueError(
                f"exact_pad=True needs an even hop, got {self.hop_length} samples; change window_stride or exact_pad"
            )
        if self.nb_augmentation_prob > 0 and self.nb_max_freq < self.sample_rate / 2:
            raise ValueError(
                f"nb_augmentation_prob={self.nb_augmentation_prob}: narrow-band augmentation is not implemented "
                "in nemofn; set nb_augmentation_prob to 0"
            )
        if not isinstance(self.frame_splicing, int) or self.frame_splicing < 1:
            raise ValueError(f"frame_splicing={self.frame_splicing!r} must be an int >= 1")
        if self.rng is not None:
            raise ValueError("rng must be None: pass randomness to apply(..., rng=RngKey) instead")
        if isinstance(self.normalize, str) and self.normalize not in _KNOWN_NORMALIZE:
            warnings.warn(
                f"normalize={self.normalize!r} is not 'per_feature' or 'all_features'; features will not be "
                "normalised (NeMo does the same)",
                stacklevel=3,
            )
        if self.stft_exact_pad or self.stft_conv:
            warnings.warn(
                "stft_exact_pad/stft_conv are deprecated and ignored (as in NeMo); use exact_pad", stacklevel=3
            )

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def win_length(self) -> int:
        """Window length in samples (``int(window_size * sample_rate)`` or ``n_window_size``)."""
        if self.window_size:
            return int(self.window_size * self.sample_rate)
        return self.n_window_size

    @property
    def hop_length(self) -> int:
        """Hop in samples (``int(window_stride * sample_rate)`` or ``n_window_stride``)."""
        if self.window_stride:
            return int(self.window_stride * self.sample_rate)
        return self.n_window_stride

    @property
    def fft_size(self) -> int:
        """The FFT size actually used: ``n_fft`` or the next power of two >= ``win_length``."""
        return self.n_fft or 2 ** math.ceil(math.log2(self.win_length))

    @property
    def num_features(self) -> int:
        """Output channels: ``features * frame_splicing``."""
        return self.features * self.frame_splicing

    @property
    def stft_pad_amount(self) -> int | None:
        """Samples padded on each side before a ``center=False`` STFT when ``exact_pad``; else ``None``."""
        return (self.fft_size - self.hop_length) // 2 if self.exact_pad else None

    @property
    def max_length(self) -> int:
        """Frame count ``pad_to='max'`` pads to (16.7 s of audio, as NeMo's ``FilterbankFeatures``)."""
        samples = torch.tensor(MAX_DURATION_S * self.sample_rate, dtype=torch.float64, device="cpu")  # a host size
        return int(self.get_seq_len(samples))

    def get_seq_len(self, length: torch.Tensor) -> torch.Tensor:
        """Feature lengths ``[B]`` int64 for signal lengths ``[B]`` (samples), as the preprocessor outputs them.

        ``(length + 2*pad - n_fft) // hop`` with ``pad = n_fft//2`` (centred STFT) or the exact-pad amount; an
        empty signal gives 0.
        """
        pad = self.stft_pad_amount if self.exact_pad else self.fft_size // 2
        frames = torch.floor_divide(length + 2 * pad - self.fft_size, self.hop_length).to(torch.long)
        return torch.where(length == 0, torch.zeros_like(frames), frames)

    # ------------------------------------------------------------------------------------- module API
    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "preprocessor") -> AudioToMelSpectrogramPreprocessor:
        """Builds from a NeMo ``preprocessor:`` block (dict, DictConfig or
        :class:`~nemofn.asr.configs.modules.AudioToMelSpectrogramPreprocessorConfig`), checked against that schema
        (errors name ``path``, e.g. ``model.preprocessor.features``); ``_target_`` is dropped."""
        return cls(**module_kwargs(cfg, AudioToMelSpectrogramPreprocessorConfig, path))

    def init(self, rng: Any = None) -> tuple[dict, dict]:
        """No params; buffers ``{"featurizer": {"window": [win_length], "fb": [1, n_mels, n_fft//2+1]}}``.

        The buffers are constants (``rng`` is ignored). With ``window='none'`` there is no ``window`` buffer.
        """
        featurizer: dict[str, torch.Tensor] = {}
        window = make_window(self.window, self.win_length)
        if window is not None:
            featurizer["window"] = window
        fb = mel_filterbank(
            self.sample_rate,
            self.fft_size,
            self.features,
            fmin=self.lowfreq,
            fmax=self.highfreq or self.sample_rate / 2,
            norm=self.mel_norm,
        )
        featurizer["fb"] = fb.unsqueeze(0)
        return {}, {"featurizer": featurizer}

    def apply(
        self,
        params: Mapping,
        buffers: Mapping,
        signal: torch.Tensor,
        length: torch.Tensor,
        *,
        train: bool = False,
        rng: Any = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], Mapping]:
        """Waveforms to features.

        Args:
            params: ``{}``.
            buffers: ``{"featurizer": {"window", "fb"}}`` from :meth:`init` or a checkpoint.
            signal: ``[B, T]`` waveforms (cast to float32).
            length: ``[B]`` int64 valid samples per row.
            train: dither only when true.
            rng: required when ``train`` and ``dither > 0`` (the noise comes from torch's global generator).

        Returns:
            ``((features [B, features*frame_splicing, T'], feature_lengths [B] int64), buffers)``; ``T'`` is the
            STFT frame count right-padded to a multiple of ``pad_to``. Frames ``>= feature_lengths`` hold
            ``pad_value``.
        """
        featurizer = buffers["featurizer"]
        x = signal.to(torch.float32)
        length = length.to(x.device)  # lengths often stay on the host; the masks below are made on x's device
        out_len = self.get_seq_len(length)

        if self.exact_pad:
            pad = self.stft_pad_amount
            x = F.pad(x, (pad, pad))
        if train and self.dither > 0:
            if rng is None:
                raise ValueError("dither needs rng while training: pass rng=RngKey(...) or set dither=0.0")
            x = x + self.dither * torch.randn_like(x)
        if self.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
            x = mask_frames(x[:, None, :], length, 0.0)[:, 0, :]

        frames = self._num_frames(x.shape[-1])
        if not train and x.shape[0] * frames > self.chunk_frames:
            x = self._mel_in_chunks(x, featurizer, frames)
        else:
            x = self._mel(x, featurizer, center=not self.exact_pad)
        x = splice_frames(x, self.frame_splicing)
        if self.normalize:
            x = normalize_batch(x, out_len, self.normalize)
        x = mask_frames(x, out_len, self.pad_value)
        x = self._pad_time(x)
        return (x, out_len), buffers

    # --------------------------------------------------------------------------------------- pieces
    def _num_frames(self, samples: int) -> int:
        """STFT frames of a signal of ``samples`` (after the ``exact_pad`` padding, when set)."""
        if self.exact_pad:
            return (samples - self.fft_size) // self.hop_length + 1
        return samples // self.hop_length + 1

    def _mel(self, x: torch.Tensor, featurizer: Mapping, *, center: bool) -> torch.Tensor:
        """``[B, T]`` -> (log-)mel ``[B, n_mels, frames]``, before splicing and normalisation."""
        x = self._power_spectrum(x, featurizer.get("window"), center=center)
        with torch.autocast(x.device.type, enabled=False):
            x = torch.matmul(featurizer["fb"].to(x.dtype), x)  # [B, n_mels, T']
        return self._log(x) if self.log else x

    def _mel_in_chunks(self, x: torch.Tensor, featurizer: Mapping, frames: int) -> torch.Tensor:
        """:meth:`_mel` over chunks of frames, for long inputs outside training: each chunk's STFT reads exactly the
        samples its frames cover (the centre padding is applied once, to the whole signal), so the result is the
        unchunked one while the complex spectrum and its intermediates exist for one chunk at a time (a 60-minute
        file: about 1.5 GB less)."""
        if not self.exact_pad:
            x = F.pad(x, (self.fft_size // 2, self.fft_size // 2))  # what stft(center=True, "constant") does
        step = max(1, self.chunk_frames // x.shape[0])
        out = None
        for f0 in range(0, frames, step):
            f1 = min(frames, f0 + step)
            chunk = x[:, f0 * self.hop_length: (f1 - 1) * self.hop_length + self.fft_size]
            mel = self._mel(chunk, featurizer, center=False)
            if out is None:
                out = mel.new_empty(x.shape[0], mel.shape[1], frames)
            out[:, :, f0:f1] = mel
        return out

    def _power_spectrum(self, x: torch.Tensor, window: torch.Tensor | None, *, center: bool = True
                        ) -> torch.Tensor:
        """``[B, T]`` -> ``|STFT|^mag_power`` ``[B, n_fft//2+1, frames]`` in float32."""
        if window is None:  # rectangular; explicit ones avoid torch's warning and give the same result
            window = torch.ones(self.win_length, dtype=torch.float32, device=x.device)
        else:
            window = window.to(dtype=torch.float32, device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(
                x,
                n_fft=self.fft_size,
                hop_length=self.hop_length,
                win_length=self.win_length,
                center=center,
                window=window,
                pad_mode="constant",
                return_complex=True,
            )
        # sqrt(re^2 + im^2) as NeMo computes it (bit for bit), without a slow reduction over a size-2 axis.
        parts = torch.view_as_real(spec)
        real, imag = parts[..., 0], parts[..., 1]
        magnitude = torch.sqrt(real * real + imag * imag)
        if self.mag_power != 1.0:
            magnitude = magnitude.pow(self.mag_power)
        return magnitude

    def _log(self, x: torch.Tensor) -> torch.Tensor:
        guard = self.log_zero_guard_value
        if guard == "tiny":
            guard = torch.finfo(x.dtype).tiny
        elif guard == "eps":
            guard = torch.finfo(x.dtype).eps
        if self.log_zero_guard_type == "add":
            return torch.log(x + guard)
        return torch.log(torch.clamp(x, min=guard))

    def _pad_time(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        if self.pad_to == "max":
            target = self.max_length
            if frames > target:
                raise ValueError(
                    f"pad_to='max' pads to {target} frames ({MAX_DURATION_S} s) but the batch has {frames}; "
                    "use an int pad_to for longer audio"
                )
            return F.pad(x, (0, target - frames), value=self.pad_value)
        if self.pad_to > 0:
            extra = (-frames) % self.pad_to
            if extra:
                x = F.pad(x, (0, extra), value=self.pad_value)
        return x

