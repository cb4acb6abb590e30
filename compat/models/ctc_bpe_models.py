"""``EncDecCTCModelBPE``: NeMo's subword CTC model (SentencePiece ``bpe`` tokenizers).

The tokenizer files are artifacts, as in NeMo: ``tokenizer.model_path`` (``<dir>/tokenizer.model``),
``tokenizer.vocab_path`` (``<dir>/vocab.txt``) and, when present, ``tokenizer.spe_tokenizer_vocab``
(``<dir>/tokenizer.vocab``) are registered with :meth:`register_artifact`. ``save_to`` stores them as
``<32 hex>_<basename>`` with ``nemo:`` config values; files restored from a ``.nemo`` keep their member names when
saved again. ``decoder.vocabulary`` is rewritten from the tokenizer's pieces. ``wpe`` (BERT word-piece) and ``agg``
(aggregate) tokenizers are not implemented and raise.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from compat.models.ctc_models import EncDecCTCModel
from nemofn.asr.tokenizers import SentencePieceTokenizer

__all__ = ["EncDecCTCModelBPE"]

log = logging.getLogger("compat.models")

_TOKENIZER_ARTIFACTS = ("tokenizer.model_path", "tokenizer.vocab_path", "tokenizer.spe_tokenizer_vocab")


class EncDecCTCModelBPE(EncDecCTCModel, nemo_target="nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
                        nemo_aliases=("nemo.collections.asr.models.EncDecCTCModelBPE",)):
    """NeMo's ``EncDecCTCModelBPE``: :class:`EncDecCTCModel` with a SentencePiece tokenizer from ``cfg.tokenizer``."""

    def _build_tokenizer(self, cfg: DictConfig) -> SentencePieceTokenizer:
        """NeMo's ``_setup_monolingual_tokenizer`` for ``type: bpe``: registers the files, loads the model."""
        tok = cfg.get("tokenizer")
        if tok is None:
            raise ValueError("`cfg` must have a `tokenizer` config (dir, type) to build EncDecCTCModelBPE")
        tok_type = str(tok.get("type", "bpe")).lower()
        if tok_type != "bpe":
            raise NotImplementedError(f"tokenizer.type={tok_type!r} is not implemented in compat; only 'bpe' "
                                      "(SentencePiece) tokenizers are supported")
        folder = tok.get("dir")

        def default(key: str, basename: str) -> str | None:
            if tok.get(key) is not None:
                return tok.get(key)
            return os.path.join(folder, basename) if folder else None

        model_path = default("model_path", "tokenizer.model")
        if model_path is None:
            raise ValueError("tokenizer.dir is not set (and neither is tokenizer.model_path): point it at a folder "
                             "holding tokenizer.model and vocab.txt")
        with open_dict(cfg):
            cfg.tokenizer.type = tok_type
        model_path = self.register_artifact("tokenizer.model_path", model_path)
        vocab_path = self.register_artifact("tokenizer.vocab_path", default("vocab_path", "vocab.txt"))
        spe_vocab = default("spe_tokenizer_vocab", "tokenizer.vocab")
        try:
            self.register_artifact("tokenizer.spe_tokenizer_vocab", spe_vocab)
        except FileNotFoundError:
            log.info("no tokenizer.vocab (spe_tokenizer_vocab) found at %s; older checkpoints lack it", spe_vocab)
        tokenizer = SentencePieceTokenizer(model_path, vocab_path)
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
        if isinstance(new_tokenizer_dir, DictConfig):
            raise NotImplementedError("aggregate ('agg') tokenizers are not implemented in compat")
        if not os.path.isdir(new_tokenizer_dir):
            raise NotADirectoryError(f"new tokenizer dir must be a directory holding tokenizer.model; got "
                                     f"{new_tokenizer_dir!r}")
        if new_tokenizer_type.lower() not in ("bpe", "wpe"):
            raise ValueError(f"new tokenizer type must be 'bpe' or 'wpe', got {new_tokenizer_type!r}")
        old_artifacts = {k: self.artifacts.pop(k) for k in _TOKENIZER_ARTIFACTS if k in self.artifacts}
        cfg = copy.deepcopy(self._cfg)
        with open_dict(cfg):
            cfg.tokenizer = OmegaConf.create({"dir": os.fspath(new_tokenizer_dir), "type": new_tokenizer_type})
            cfg.decoder.num_classes = -1
        try:
            tokenizer = self._build_tokenizer_into(cfg)
        except BaseException:
            self.artifacts.update(old_artifacts)
            raise
        self._swap_decoder(cfg, tokenizer, decoding_cfg)
        with open_dict(self._cfg):
            self._cfg.tokenizer = copy.deepcopy(cfg.tokenizer)
        log.info("changed the tokenizer to %s (%d pieces)", new_tokenizer_dir, len(tokenizer.vocabulary))

    def _build_tokenizer_into(self, cfg: DictConfig) -> SentencePieceTokenizer:
        """Runs :meth:`_build_tokenizer` on ``cfg`` while ``register_artifact`` writes the paths into it."""
        live, self._cfg = self._cfg, cfg
        try:
            return self._build_tokenizer(cfg)
        finally:
            self._cfg = live
