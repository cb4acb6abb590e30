"""What every ASR model unit shares: its tokenizer from the config, audio input, data loaders and optimization.

:class:`ASRUnitMixin` is mixed into the frozen model units (:class:`~nemofn.asr.models.ctc_model.CTCModel`,
:class:`~nemofn.asr.models.transducer_model.TransducerModel`); it reads their ``cfg``, ``tokenizer`` and
``unknown_keys`` attributes and holds no state of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nemofn.asr.configs.optim import validate_optim
from nemofn.asr.data.audio import audio_info, load_audio
from nemofn.asr.data.inference_batches import length_sorted_batches, pad_signals, prefetched_batches
from nemofn.asr.data.dataset import build_dataloader
from nemofn.asr.tokenizers import CharTokenizer, SentencePieceTokenizer
from nemofn.core.schema import MISSING
from nemofn.optim.config import build_optimization

__all__ = ["AudioInput", "ASRUnitMixin", "tokenizer_from_config", "pad_signals"]

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor


def tokenizer_from_config(cfg: Mapping[str, Any]) -> CharTokenizer | SentencePieceTokenizer:
    """The tokenizer a model config names: ``labels`` (char) or ``tokenizer: {dir, type}`` (BPE).

    ``tokenizer.model_path`` / ``vocab_path`` (set by ``.nemo`` restore to extracted artifact files) take
    precedence over ``tokenizer.dir``.
    """
    tok = cfg.get("tokenizer")
    if tok is not None:
        tok_type = tok.get("type", "bpe")
        if tok_type != "bpe":
            raise ValueError(f"model.tokenizer.type={tok_type!r} is not supported yet; use 'bpe' (SentencePiece)")
        model_path = tok.get("model_path")
        vocab_path = tok.get("vocab_path")
        tok_dir = tok.get("dir")
        if not model_path:
            if not tok_dir:
                raise ValueError("model.tokenizer.dir is not set; point it at a folder holding tokenizer.model "
                                 "(build one with scripts/tokenizers/process_asr_text_tokenizer.py)")
            model_path = Path(tok_dir) / "tokenizer.model"
            candidate = Path(tok_dir) / "vocab.txt"
            vocab_path = vocab_path or (candidate if candidate.exists() else None)
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"tokenizer model {model_path} does not exist (from model.tokenizer); build it "
                                    "with scripts/tokenizers/process_asr_text_tokenizer.py")
        return SentencePieceTokenizer(model_path, vocab_path)
    labels = cfg.get("labels")
    if not labels or labels == MISSING:
        raise ValueError("the model config has neither `labels` (char model) nor `tokenizer` (BPE model)")
    return CharTokenizer(list(labels))


class ASRUnitMixin:
    """Data, optimization and audio input of an ASR model unit (reads ``self.cfg``, ``self.tokenizer``,
    ``self.unknown_keys``)."""

    cfg: DictConfig
    tokenizer: Any
    unknown_keys: str

    @property
    def sample_rate(self) -> int:
        return int(self.cfg.get("sample_rate", self.cfg.preprocessor.get("sample_rate", 16000)))

    def dataset_config(self, ds_cfg: Mapping[str, Any]) -> dict:
        """A ``*_ds`` block with ``sample_rate`` (and ``labels`` for char models) filled from the model, as NeMo."""
        out = dict(OmegaConf.to_container(ds_cfg, resolve=True) if isinstance(ds_cfg, DictConfig) else ds_cfg)
        out.setdefault("sample_rate", self.sample_rate)
        if isinstance(self.tokenizer, CharTokenizer):
            out.setdefault("labels", list(self.tokenizer.labels))
        return out

    #: CTC output frames per second of audio (a CTC model sets it): transcripts too long for it are counted and
    #: reported when a loader is built (CTC's ``zero_infinity`` would zero their loss silently).
    ctc_output_frames: float | None = None

    def dataloader(self, ds_cfg: Mapping[str, Any], *, shuffle_seed: int = 0, num_replicas: int = 1,
                   rank: int = 0, path: str = "dataset") -> torch.utils.data.DataLoader:
        """The loader of a NeMo ``train_ds``/``validation_ds``/``test_ds`` block (batches of 4 tensors:
        ``signal [B, T], signal_len [B], tokens [B, U], tokens_len [B]``).

        ``path`` names the block in config errors (``model.train_ds``).
        """
        return build_dataloader(self.dataset_config(ds_cfg), self.tokenizer, shuffle_seed=shuffle_seed,
                                num_replicas=num_replicas, rank=rank, path=path, unknown_keys=self.unknown_keys,
                                ctc_output_frames=self.ctc_output_frames)

    def optimization(self, optim_cfg: Mapping[str, Any] | None = None, *, max_steps: int | None = None):
        """``(optimizer, schedule, base_lr)`` from ``optim_cfg`` (default: the config's ``optim`` block)."""
        if optim_cfg is None:
            optim_cfg = self.cfg.get("optim")  # checked by from_config
        else:
            validate_optim(optim_cfg)
        if optim_cfg is None:
            raise ValueError("no optimizer config: the model config has no `optim` block; pass one")
        return build_optimization(optim_cfg, max_steps=max_steps)

    def load_audio(self, item: AudioInput) -> np.ndarray:
        """A file path, numpy array or tensor -> mono float32 samples at the model's rate."""
        if isinstance(item, torch.Tensor):
            return item.detach().cpu().float().numpy().reshape(-1)
        if isinstance(item, np.ndarray):
            return item.astype(np.float32).reshape(-1)
        return load_audio(item, sample_rate=self.sample_rate)

    def audio_seconds(self, item: AudioInput) -> float:
        """An input's length in seconds (a file's from its header, without reading the samples)."""
        if isinstance(item, (torch.Tensor, np.ndarray)):
            return item.shape[-1] / self.sample_rate if item.ndim else 0.0
        return audio_info(item).duration

    def audio_batches(self, audio: Sequence[AudioInput], batch_size: int, *, progress: bool = False,
                      num_workers: int = 0):
        """Yields ``(indices, signal [B, T], signal_len [B])``: the inputs grouped longest first (the fewest padded
        frames), their audio read ahead in ``max(1, num_workers)`` threads; ``indices`` are positions in ``audio``.
        """
        groups = length_sorted_batches([self.audio_seconds(a) for a in audio], batch_size)
        batches = prefetched_batches(groups, lambda i: self.load_audio(audio[i]), workers=num_workers)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="Transcribing", unit="batch", total=len(groups))
        yield from batches
