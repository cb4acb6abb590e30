"""SentencePiece tokenizer for BPE CTC models (NeMo's ``SentencePieceTokenizer``, non-legacy mode).

A NeMo BPE model's tokenizer is three files (``tokenizer.model_path``, ``tokenizer.vocab_path``,
``tokenizer.spe_tokenizer_vocab`` in the config):

- ``tokenizer.model``: the SentencePiece model, the only one used to encode and decode;
- ``vocab.txt``: the pieces in BERT style (``▁ab`` -> ``ab``, ``ab`` -> ``##ab``, special tokens left out), kept as an
  artifact;
- ``tokenizer.vocab``: SentencePiece's own ``piece<TAB>score`` listing.

NeMo's CTC decoder vocabulary is the list of pieces in id order (:attr:`SentencePieceTokenizer.vocab`); the blank
is ``vocab_size``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece

__all__ = ["SentencePieceTokenizer", "bert_style_vocab"]

SPM_SEPARATOR = "▁"
SPECIAL_PIECES = ("<s>", "</s>", "<pad>", "<unk>")


def bert_style_vocab(pieces: Iterable[str], special: Sequence[str] = SPECIAL_PIECES) -> list[str]:
    """The lines of NeMo's ``vocab.txt`` for SentencePiece ``pieces``, in order.

    ``▁word`` becomes ``word``, a piece without the leading ``▁`` becomes ``##piece``, the lone ``▁`` stays ``▁``, and
    the special pieces (``<s> </s> <pad> <unk>`` and any control or user symbols passed in ``special``) are left out.
    """
    special = set(special)
    lines = []
    for piece in pieces:
        if piece in special:
            continue
        token = piece[1:] if piece.startswith(SPM_SEPARATOR) else f"##{piece}"
        lines.append(token if token else piece[0])
    return lines


class SentencePieceTokenizer:
    """Encodes text to SentencePiece ids and back.

    Args:
        model_path: the ``tokenizer.model`` file.
        vocab_path: the model's ``vocab.txt``, if there is one (kept as :attr:`vocab_path` so the model can be saved
            again with all its tokenizer files; encoding does not use it).

    Raises:
        FileNotFoundError: when a given file is missing.
        ValueError: when ``model_path`` is not a SentencePiece model.
    """

    def __init__(self, model_path: str | os.PathLike, vocab_path: str | os.PathLike | None = None):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
        if vocab_path is not None and not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"tokenizer vocab_path not found: {vocab_path}")
        self.model_path = model_path
        self.vocab_path = os.fspath(vocab_path) if vocab_path is not None else None
        with open(model_path, "rb") as f:
            self._load(f.read())

    def _load(self, model_proto: bytes) -> None:
        self._model_proto = model_proto
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{self.model_path} is not a SentencePiece model ({e})") from None
        self.vocab_size: int = self.sp.get_piece_size()
        self.vocab: list[str] = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    # DataLoader workers started with "spawn" pickle the dataset and its tokenizer.
    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "vocab_path": self.vocab_path, "model_proto": self._model_proto}

    def __setstate__(self, state: dict) -> None:
        self.model_path, self.vocab_path = state["model_path"], state["vocab_path"]
        self._load(state["model_proto"])

    @property
    def vocabulary(self) -> list[str]:
        """The pieces in id order: NeMo's ``decoder.vocabulary`` for this tokenizer."""
        return list(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self.sp.encode_as_ids(text)

    def encode_with_unknown(self, text: str) -> tuple[list[int], str]:
        """:meth:`encode`, and the (normalised) text of the pieces that became ``unk_id``, in text order."""
        ids = self.sp.encode_as_ids(text)
        unk = self.sp.unk_id()
        if unk < 0 or unk not in ids:
            return ids, ""
        pieces = self.sp.encode_as_pieces(text)
        return ids, "".join(p.lstrip(SPM_SEPARATOR) for i, p in zip(ids, pieces) if i == unk)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of token ids (pieces joined, ``▁`` turned into spaces)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.sp.decode_ids(list(ids))

    def text_to_tokens(self, text: str) -> list[str]:
        """Pieces of ``text``."""
        return self.sp.encode_as_pieces(text)

    def ids_to_tokens(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Pieces of token ids."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return [self.sp.id_to_piece(i) for i in ids]

    def tokens_to_ids(self, tokens: str | Sequence[str]) -> list[int]:
        """Ids of pieces (unknown pieces give ``unk_id``)."""
        if isinstance(tokens, str):
            tokens = [tokens]
        return [self.sp.piece_to_id(t) for t in tokens]

    def tokens_to_text(self, tokens: Sequence[str]) -> str:
        """Text of pieces."""
        return self.sp.decode_pieces(list(tokens))

    def bert_style_vocab(self, user_defined_symbols: Sequence[str] = ()) -> list[str]:
        """The lines NeMo writes to ``vocab.txt`` for this model (see :func:`bert_style_vocab`).

        Control and unknown pieces are left out; pass the model's user-defined symbols too, as NeMo leaves those
        out (SentencePiece cannot tell them from ordinary pieces).
        """
        special = [p for i, p in enumerate(self.vocab) if self.sp.is_control(i) or self.sp.is_unknown(i)]
        return bert_style_vocab(self.vocab, special=[*SPECIAL_PIECES, *special, *user_defined_symbols])

    # NeMo's tokenizer method names.
    text_to_ids = encode
    ids_to_text = decode

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"
