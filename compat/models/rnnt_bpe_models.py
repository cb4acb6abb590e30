"""``EncDecRNNTBPEModel``: NeMo's subword RNNT / TDT model (SentencePiece ``bpe`` tokenizers).

parakeet-tdt and parakeet-rnnt checkpoints restore as this class. The tokenizer and its artifacts are NeMo's
``ASRBPEMixin`` (:mod:`compat.models.bpe_tokenizer`); ``labels``, ``decoder.vocab_size`` and ``joint.vocabulary``
are rewritten from the tokenizer's pieces, as NeMo's constructor does.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from omegaconf import DictConfig, open_dict

from compat.models.bpe_tokenizer import BPETokenizerMixin
from compat.models.rnnt_models import EncDecRNNTModel
from nemofn.asr.tokenizers import SentencePieceTokenizer

__all__ = ["EncDecRNNTBPEModel"]

log = logging.getLogger("compat.models")


class EncDecRNNTBPEModel(BPETokenizerMixin, EncDecRNNTModel,
                         nemo_target="nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
                         nemo_aliases=("nemo.collections.asr.models.EncDecRNNTBPEModel",)):
    """NeMo's ``EncDecRNNTBPEModel``: :class:`EncDecRNNTModel` with a SentencePiece tokenizer from
    ``cfg.tokenizer``."""

    def _build_tokenizer(self, cfg: DictConfig) -> SentencePieceTokenizer:
        return self._setup_bpe_tokenizer(cfg)

    def change_vocabulary(self, new_tokenizer_dir: str | DictConfig, new_tokenizer_type: str,
                          decoding_cfg: Any = None) -> None:
        """A new tokenizer (registered as new artifacts), a fresh prediction net and joint (and CTC head for
        hybrids); preprocessor and encoder weights are kept.

        Args:
            new_tokenizer_dir: a folder holding ``tokenizer.model``, ``vocab.txt`` (and ``tokenizer.vocab``).
            new_tokenizer_type: ``"bpe"`` (``"wpe"`` / ``"agg"`` raise ``NotImplementedError``).
        """
        cfg = self._new_tokenizer_config(new_tokenizer_dir, new_tokenizer_type)
        tokenizer = self._build_tokenizer_into(cfg)
        self._swap_heads(cfg, tokenizer, decoding_cfg)
        with open_dict(self._cfg):
            self._cfg.tokenizer = copy.deepcopy(cfg.tokenizer)
        log.info("changed the tokenizer to %s (%d pieces)", new_tokenizer_dir, len(tokenizer.vocabulary))
