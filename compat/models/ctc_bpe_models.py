"""``EncDecCTCModelBPE``: NeMo's subword CTC model (SentencePiece ``bpe`` tokenizers).

The tokenizer and its artifacts are NeMo's ``ASRBPEMixin`` (:mod:`compat.models.bpe_tokenizer`);
``decoder.vocabulary`` is rewritten from the tokenizer's pieces.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from omegaconf import DictConfig, open_dict

from compat.models.bpe_tokenizer import BPETokenizerMixin
from compat.models.ctc_models import EncDecCTCModel
from nemofn.asr.tokenizers import SentencePieceTokenizer

__all__ = ["EncDecCTCModelBPE"]

log = logging.getLogger("compat.models")


class EncDecCTCModelBPE(BPETokenizerMixin, EncDecCTCModel,
                        nemo_target="nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
                        nemo_aliases=("nemo.collections.asr.models.EncDecCTCModelBPE",)):
    """NeMo's ``EncDecCTCModelBPE``: :class:`EncDecCTCModel` with a SentencePiece tokenizer from ``cfg.tokenizer``."""

    def _build_tokenizer(self, cfg: DictConfig) -> SentencePieceTokenizer:
        tokenizer = self._setup_bpe_tokenizer(cfg)
        with open_dict(cfg):
            cfg.decoder.vocabulary = list(tokenizer.vocabulary)
            if cfg.decoder.get("num_classes") is None or cfg.decoder.num_classes < 1:
                cfg.decoder.num_classes = len(tokenizer.vocabulary)
        return tokenizer

    def change_vocabulary(self, new_tokenizer_dir: str | DictConfig, new_tokenizer_type: str,
                          decoding_cfg: Any = None) -> None:
        """A new tokenizer (registered as new artifacts) and a fresh decoder; other weights are kept.

        Args:
            new_tokenizer_dir: a folder holding ``tokenizer.model``, ``vocab.txt`` (and ``tokenizer.vocab``).
            new_tokenizer_type: ``"bpe"`` (``"wpe"`` / ``"agg"`` raise ``NotImplementedError``).
        """
        cfg = self._new_tokenizer_config(new_tokenizer_dir, new_tokenizer_type)
        with open_dict(cfg):
            cfg.decoder.num_classes = -1
        tokenizer = self._build_tokenizer_into(cfg)
        self._swap_decoder(cfg, tokenizer, decoding_cfg)
        with open_dict(self._cfg):
            self._cfg.tokenizer = copy.deepcopy(cfg.tokenizer)
        log.info("changed the tokenizer to %s (%d pieces)", new_tokenizer_dir, len(tokenizer.vocabulary))
