"""``transcribe(timestamps=True)``: NeMo's ``timestamp`` dicts for a compat model's hypotheses.

The computation is :mod:`nemofn.asr.timestamps`; this file reads what it needs from the model: the vocabulary (its
tokenizer), the separators and timestamp type of the decoding config, the preprocessor's ``window_stride`` and the
encoder's subsampling factor (seconds = frame offset x window stride x subsampling factor, as NeMo).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nemofn.asr.timestamps import TimestampOptions, TimestampVocab, ctc_timestamps, transducer_timestamps

__all__ = ["ctc_timestamp_dicts", "transducer_timestamp_dicts"]


def _frames(model: Any) -> tuple[float, int]:
    """``(window_stride seconds, encoder subsampling factor)`` of a model."""
    net = model.fn_model.network
    stride = model.cfg.preprocessor.get("window_stride", net.preprocessor.window_stride)
    if stride is None:
        raise ValueError("transcribe(timestamps=True) converts frames to seconds with preprocessor.window_stride, "
                         "which is not set; set it (seconds) in the config")
    return float(stride), int(net.encoder.subsampling_factor)


def ctc_timestamp_dicts(model: Any, log_probs: torch.Tensor, lengths: torch.Tensor,
                        decoding_cfg: Mapping[str, Any] | None) -> list[dict]:
    """One dict per utterance from greedy CTC: ``log_probs [B, T, V+1]``, ``lengths [B]``."""
    stride, subsampling = _frames(model)
    vocab = TimestampVocab.from_tokenizer(model.fn_model.tokenizer)
    options = TimestampOptions.from_decoding_config(decoding_cfg, model="ctc")
    labels = log_probs.argmax(dim=-1).cpu()
    blank = model.fn_model.network.blank_id
    return [ctc_timestamps(row[:n], vocab, blank_id=blank, window_stride=stride, subsampling_factor=subsampling,
                           options=options) for row, n in zip(labels, lengths.cpu().tolist())]


def transducer_timestamp_dicts(model: Any, hyps: Any) -> list[dict]:
    """One dict per utterance of a greedy transducer batch (a ``TransducerHyps``; TDT durations when the model
    is a TDT)."""
    stride, subsampling = _frames(model)
    vocab = TimestampVocab.from_tokenizer(model.fn_model.tokenizer)
    options = TimestampOptions.from_decoding_config(model.cfg.get("decoding"), model="rnnt")
    tdt = model.fn_model.decoding.durations is not None
    blank = model.fn_model.blank_id
    return [transducer_timestamps(tokens, frames, durations if tdt else None, vocab, blank_id=blank,
                                  window_stride=stride, subsampling_factor=subsampling, options=options)
            for tokens, frames, durations in zip(hyps.tokens, hyps.timestamps, hyps.durations)]
