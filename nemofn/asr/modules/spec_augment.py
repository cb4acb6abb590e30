"""``SpectrogramAugmentation``: NeMo's SpecAugment (frequency and time masks) and SpecCutout (rectangles).

Stateless and batched: every random number is drawn as a tensor from torch's global generator, and the masks are
built by broadcasting, so there is no per-utterance Python loop and no host sync. Augmentation happens only when
``train`` is true, and then ``rng`` must be given (the train step seeds the global generator from it).

Semantics, per utterance ``b`` with ``L = lengths[b]`` valid frames and ``F`` channels:

* Default (``use_vectorized_spec_augment=True``, NeMo's vectorised code, same draw order so that the same torch
  seed gives NeMo's masks): time masks first, then frequency masks. Each mask has width
  ``floor(u * W)`` (so ``0 .. W-1``) and start ``trunc(u' * (L - width))`` for time (``F - width`` for
  frequency). ``W`` is ``time_width``, or ``min(time_width * L, T)`` when ``time_width`` is a float in ``[0, 1]``.
* Legacy (``use_vectorized_spec_augment=False``, NeMo's loop over ``random.Random``): widths are uniform on
  ``0 .. W`` inclusive, frequency starts on ``0 .. F - freq_width``, time starts on ``0 .. max(1, L - W)``,
  with ``W = max(1, int(L * time_width))`` when adaptive. Same distributions, drawn with torch instead.
* Cutout (``rect_masks > 0``, applied first): each rectangle starts uniformly on ``0 .. F - rect_freq`` and
  ``0 .. T - rect_time`` (``T`` = padded frames), with sizes uniform on ``0 .. rect_freq`` and ``0 .. rect_time``.
  Like NeMo's ``SpecCutout`` it writes ``0.0``, not ``mask_value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from nemofn.asr.configs.modules import SpectrogramAugmentationConfig
from nemofn.core.schema import module_kwargs
from nemofn.nn.module import Module

__all__ = ["SpectrogramAugmentation"]


def _check_time_width(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"time_width={value}: a float time_width is a fraction of the length and must be in [0, 1]")


def _uniform_int(shape: tuple[int, ...], high: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    """Integers uniform on ``0 .. high`` inclusive (``high`` broadcast to ``shape``), from the global generator."""
    u = torch.rand(shape, dtype=torch.float64, device=device)
    high = torch.as_tensor(high, device=device)
    return torch.minimum((u * (high + 1)).floor().long(), high.long())


def _span_mask(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, M]`` starts and widths -> ``[B, size]`` bool, True inside any ``[start, start + width)``."""
    idx = torch.arange(size, device=start.device)
    inside = (idx >= start[..., None]) & (idx < (start + width)[..., None])  # [B, M, size]
    return inside.any(dim=1)


@attrs.frozen(kw_only=True)
class SpectrogramAugmentation(Module):
    """NeMo's ``SpectrogramAugmentation`` (constructor arguments and defaults as NeMo). No params, no buffers.

    Args:
        freq_masks, time_masks: masks per utterance along each axis.
        freq_width: maximum frequency-mask width (channels).
        time_width: maximum time-mask width: an int (frames) or a float in ``[0, 1]`` (fraction of each
            utterance's length).
        rect_masks, rect_time, rect_freq: SpecCutout rectangles per utterance and their maximum sizes.
        mask_value: value written by the frequency and time masks.
        use_vectorized_spec_augment: NeMo's vectorised distributions (default) or its legacy ones.
        use_numba_spec_augment: accepted and ignored (NeMo's CUDA-only numba kernel).
        rng: must be ``None``; randomness comes from ``apply(..., rng=key)``.
    """

    freq_masks: int = 0
    time_masks: int = 0
    freq_width: int = 10
    time_width: int | float = attrs.field(default=10, validator=_check_time_width)
    rect_masks: int = 0
    rect_time: int = 5
    rect_freq: int = 20
    mask_value: float = 0.0
    use_vectorized_spec_augment: bool = True
    use_numba_spec_augment: bool = False
    rng: None = None

    def __attrs_post_init__(self) -> None:
        if self.rng is not None:
            raise ValueError("rng must be None: pass randomness to apply(..., rng=RngKey) instead")
        for name in ("freq_masks", "time_masks", "rect_masks", "freq_width", "rect_time", "rect_freq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative int")

    @property
    def adaptive_time_width(self) -> bool:
        """True when ``time_width`` is a fraction of each utterance's length (a float, as NeMo decides)."""
        return not isinstance(self.time_width, int)

    @property
    def is_identity(self) -> bool:
        """True when no masks are configured (then ``apply`` returns its input even while training)."""
        return self.rect_masks == 0 and self.freq_masks + self.time_masks == 0

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "spec_augment") -> SpectrogramAugmentation:
        """Builds from a NeMo ``spec_augment:`` block (dict, DictConfig or
        :class:`~nemofn.asr.configs.modules.SpectrogramAugmentationConfig`), checked against that schema (errors
        name ``path``); ``_target_`` is dropped."""
        return cls(**module_kwargs(cfg, SpectrogramAugmentationConfig, path))

    def apply(
        self,
        params: Mapping,
        buffers: Mapping,
        features: torch.Tensor,
        lengths: torch.Tensor,
        *,
        train: bool = False,
        rng: Any = None,
    ) -> tuple[torch.Tensor, Mapping]:
        """Masks ``features [B, F, T]`` (valid frames ``lengths [B]``) while training; identity otherwise.

        Returns:
            ``(features [B, F, T], buffers)``; the input tensor is not modified.
        """
        if not train or self.is_identity:
            return features, buffers
        if rng is None:
            raise ValueError("SpectrogramAugmentation needs rng while training: pass rng=RngKey(...) or train=False")
        x = features
        if self.rect_masks > 0:
            x = x.masked_fill(self._cutout_mask(x), 0.0)
        if self.freq_masks + self.time_masks > 0:
            if self.use_vectorized_spec_augment:
                time, freq = self._vectorized_masks(x, lengths)
            else:
                time, freq = self._legacy_masks(x, lengths)
            x = x.masked_fill(time[:, None, :] | freq[:, :, None], self.mask_value)
        return x, buffers

    # ----------------------------------------------------------------------------------------- masks
    def _vectorized_masks(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T], [B, F])`` masks with NeMo's vectorised distributions and draw order (time, then freq)."""
        batch, channels, frames = x.shape
        lengths = lengths.to(x.device)
        if self.adaptive_time_width:
            max_width = torch.clamp(self.time_width * lengths, max=frames)[:, None]  # [B, 1] float
        else:
            max_width = self.time_width
        width = (torch.rand((batch, self.time_masks), device=x.device) * max_width).long()
        start = (torch.rand((batch, self.time_masks), device=x.device) * (lengths[:, None] - width)).long()
        time = _span_mask(start, width, frames)

        width = (torch.rand((batch, self.freq_masks), device=x.device) * self.freq_width).long()
        start = (torch.rand((batch, self.freq_masks), device=x.device) * (channels - width)).long()
        freq = _span_mask(start, width, channels)
        return time, freq

    def _legacy_masks(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T], [B, F])`` masks with the distributions of NeMo's legacy (``random.Random``) code."""
        batch, channels, frames = x.shape
        if channels < self.freq_width and self.freq_masks > 0:
            raise ValueError(f"freq_width={self.freq_width} exceeds the {channels} feature channels; lower freq_width")
        start = _uniform_int((batch, self.freq_masks), channels - self.freq_width, x.device)
        width = _uniform_int((batch, self.freq_masks), self.freq_width, x.device)
        freq = _span_mask(start, width, channels)

        lengths = lengths.to(x.device)
        if self.adaptive_time_width:
            max_width = torch.clamp((lengths.double() * self.time_width).floor().long(), min=1)
        else:
            max_width = torch.full_like(lengths, self.time_width)
        start_high = torch.clamp(lengths - max_width, min=1)[:, None]
        start = _uniform_int((batch, self.time_masks), start_high, x.device)
        width = _uniform_int((batch, self.time_masks), max_width[:, None], x.device)
        time = _span_mask(start, width, frames)
        return time, freq

    def _cutout_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F, T]`` bool: the union of ``rect_masks`` random rectangles per utterance."""
        batch, channels, frames = x.shape
        if channels < self.rect_freq:
            raise ValueError(f"rect_freq={self.rect_freq} exceeds the {channels} feature channels; lower rect_freq")
        shape = (batch, self.rect_masks)
        f0 = _uniform_int(shape, channels - self.rect_freq, x.device)
        # NeMo raises when the batch is shorter than rect_time; here the start is pinned to 0 instead.
        t0 = _uniform_int(shape, max(frames - self.rect_time, 0), x.device)
        f_width = _uniform_int(shape, self.rect_freq, x.device)
        t_width = _uniform_int(shape, self.rect_time, x.device)
        f_idx = torch.arange(channels, device=x.device)
        t_idx = torch.arange(frames, device=x.device)
        in_f = (f_idx >= f0[..., None]) & (f_idx < (f0 + f_width)[..., None])  # [B, R, F]
        in_t = (t_idx >= t0[..., None]) & (t_idx < (t0 + t_width)[..., None])  # [B, R, T]
        # The union over rectangles: any_r in_f[b, r, f] & in_t[b, r, t], as a boolean matmul.
        return torch.einsum("brf,brt->bft", in_f.float(), in_t.float()) > 0
