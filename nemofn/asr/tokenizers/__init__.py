"""Tokenizers for ASR: characters (NeMo's char parser) and SentencePiece (NeMo's BPE models).

Both share one interface, :class:`Tokenizer`: ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``vocabulary`` (NeMo's ``decoder.vocabulary``), ``pad_id``, ``bos_id``, ``eos_id`` (negative when absent), and NeMo's
names ``text_to_ids`` / ``ids_to_text``. The CTC blank is ``vocab_size``. Both also have
``encode_with_unknown(text) -> (ids, lost characters)``, which the dataset uses to warn about characters outside the
vocabulary (optional for other tokenizers).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from nemofn.asr.tokenizers.char import CharTokenizer
from nemofn.asr.tokenizers.sentencepiece import SentencePieceTokenizer, bert_style_vocab

__all__ = ["Tokenizer", "CharTokenizer", "SentencePieceTokenizer", "bert_style_vocab"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and decoders need from a tokenizer."""

    vocab_size: int

    @property
    def vocabulary(self) -> list[str]: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...
