"""NeMo's ``ASRBPEMixin`` for SentencePiece (``type: bpe``) tokenizers, shared by the BPE CTC and transducer models.

The tokenizer files are artifacts, as in NeMo: ``tokenizer.model_path`` (``<dir>/tokenizer.model``),
``tokenizer.vocab_path`` (``<dir>/vocab.txt``) and, when present, ``tokenizer.spe_tokenizer_vocab``
(``<dir>/tokenizer.vocab``) are registered with ``register_artifact``. ``save_to`` stores them as
``<32 hex>_<basename>`` with ``nemo:`` config values; files restored from a ``.nemo`` keep their member names when
saved again. ``wpe`` (BERT word-piece) and ``agg`` (aggregate) tokenizers are not implemented and raise.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nemofn.asr.tokenizers import SentencePieceTokenizer

__all__ = ["BPETokenizerMixin", "TOKENIZER_ARTIFACTS"]

log = logging.getLogger("compat.models")

TOKENIZER_ARTIFACTS = ("tokenizer.model_path", "tokenizer.vocab_path", "tokenizer.spe_tokenizer_vocab")


class BPETokenizerMixin:
    """Builds and swaps the SentencePiece tokenizer of ``cfg.tokenizer`` (mixed into ``ModelPT`` subclasses)."""

    artifacts: dict[str, Any]
    _cfg: DictConfig

    def _setup_bpe_tokenizer(self, cfg: DictConfig) -> SentencePieceTokenizer:
        """NeMo's ``_setup_monolingual_tokenizer`` for ``type: bpe``: registers the files, loads the model."""
        tok = cfg.get("tokenizer")
        if tok is None:
            raise ValueError(f"`cfg` must have a `tokenizer` config (dir, type) to build {type(self).__name__}")
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
        return SentencePieceTokenizer(model_path, vocab_path)

    def _new_tokenizer_config(self, new_tokenizer_dir: Any, new_tokenizer_type: str) -> DictConfig:
        """A copy of the model config pointing ``tokenizer`` at a new folder (checked)."""
        if isinstance(new_tokenizer_dir, DictConfig):
            raise NotImplementedError("aggregate ('agg') tokenizers are not implemented in compat")
        if not os.path.isdir(new_tokenizer_dir):
            raise NotADirectoryError(f"new tokenizer dir must be a directory holding tokenizer.model; got "
                                     f"{new_tokenizer_dir!r}")
        if new_tokenizer_type.lower() not in ("bpe", "wpe"):
            raise ValueError(f"new tokenizer type must be 'bpe' or 'wpe', got {new_tokenizer_type!r}")
        cfg = copy.deepcopy(self._cfg)
        with open_dict(cfg):
            cfg.tokenizer = OmegaConf.create({"dir": os.fspath(new_tokenizer_dir), "type": new_tokenizer_type})
        return cfg

    def _build_tokenizer_into(self, cfg: DictConfig) -> Any:
        """Runs ``self._build_tokenizer(cfg)`` while ``register_artifact`` writes the paths into ``cfg``; the old
        tokenizer artifacts are restored if that fails."""
        old_artifacts = {k: self.artifacts.pop(k) for k in TOKENIZER_ARTIFACTS if k in self.artifacts}
        live, self._cfg = self._cfg, cfg
        try:
            return self._build_tokenizer(cfg)
        except BaseException:
            self.artifacts.update(old_artifacts)
            raise
        finally:
            self._cfg = live
