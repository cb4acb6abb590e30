"""Training a SentencePiece tokenizer from manifests, as NeMo's ``scripts/tokenizers/process_asr_text_tokenizer.py``.

The output matches NeMo's layout, so ``model.tokenizer.dir`` can point at it::

    <data_root>/text_corpus/document.txt               one transcript per line
    <data_root>/tokenizer_spe_<type>_v<size>/           (+ "_max_<n>" and "_pad" / "_bos" / "_eos" when set)
        tokenizer.model    the SentencePiece model
        tokenizer.vocab    SentencePiece's "piece<TAB>score" listing
        vocab.txt          BERT-style pieces (see ``bert_style_vocab``)

Training options are NeMo's (``create_spt_model``): ``hard_vocab_limit=false``, ``shuffle_input_sentence=true``,
no ``<s>``/``</s>``/``<pad>`` unless asked, ``nmt_nfkc_cf`` normalisation (case folding) when lower-casing, and
whitespace kept as is unless ``remove_extra_whitespaces``.

One difference: NeMo reuses an existing ``document.txt`` even when the manifests changed; here it is rewritten on
every run, so a tokenizer always reflects the manifests it was built from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece

from nemofn.asr.data.errors import ManifestError
from nemofn.asr.data.manifest import manifest_lines, split_manifest_paths
from nemofn.asr.tokenizers.sentencepiece import SPECIAL_PIECES, bert_style_vocab

__all__ = ["build_document_from_manifests", "tokenizer_dir_name", "train_sentencepiece", "process_asr_text_tokenizer",
           "main"]

logger = logging.getLogger(__name__)

SPE_TYPES = ("bpe", "unigram", "char", "word")


def build_document_from_manifests(manifests: str | Sequence[str], data_root: str | os.PathLike) -> Path:
    """Writes the ``text`` of every manifest line to ``<data_root>/text_corpus/document.txt``, one per line.

    Raises:
        ManifestError: for a missing manifest, a line that is not UTF-8 or not JSON, or a line without ``text``.
    """
    document = Path(data_root) / "text_corpus" / "document.txt"
    document.parent.mkdir(parents=True, exist_ok=True)
    num_lines = 0
    with open(document, "w", encoding="utf-8") as out:
        for manifest in split_manifest_paths(manifests):
            for number, line in manifest_lines(manifest):
                try:
                    text = json.loads(line)["text"]
                except json.JSONDecodeError as e:
                    raise ManifestError(manifest, number, f"not valid JSON ({e.msg})") from None
                except (KeyError, TypeError):
                    raise ManifestError(manifest, number, "no 'text' key; tokenizers are trained on the "
                                                          "manifests' 'text' values") from None
                out.write(f"{text}\n")
                num_lines += 1
            logger.info("Finished extracting manifest: %s", manifest)
    logger.info("Finished extracting all manifests; number of sentences: %d", num_lines)
    if num_lines == 0:
        raise ValueError(f"no transcripts found in {manifests}; cannot train a tokenizer on an empty corpus")
    return document


def tokenizer_dir_name(vocab_size: int, spe_type: str = "bpe", *, max_sentencepiece_length: int = -1,
                       pad: bool = False, bos: bool = False, eos: bool = False) -> str:
    """NeMo's folder name, e.g. ``tokenizer_spe_bpe_v128`` or ``tokenizer_spe_unigram_v256_max_4_pad``."""
    name = f"tokenizer_spe_{spe_type}_v{vocab_size}"
    if max_sentencepiece_length > 0:
        name += f"_max_{max_sentencepiece_length}"
    return name + "_pad" * pad + "_bos" * bos + "_eos" * eos


def train_sentencepiece(text_path: str | os.PathLike, output_dir: str | os.PathLike, *, vocab_size: int,
                        spe_type: str = "bpe", character_coverage: float = 1.0, lower_case: bool = True,
                        sample_size: int = -1, max_sentencepiece_length: int = -1, split_by_unicode_script: bool = True,
                        bos: bool = False, eos: bool = False, pad: bool = False,
                        control_symbols: Sequence[str] | None = None, user_defined_symbols: Sequence[str] | None = None,
                        byte_fallback: bool = False, split_digits: bool = False, remove_extra_whitespaces: bool = False,
                        train_extremely_large_corpus: bool = False, verbose: bool = False) -> tuple[Path, Path]:
    """Trains ``<output_dir>/tokenizer.model`` (+ ``tokenizer.vocab``) and writes ``vocab.txt`` (NeMo's
    ``create_spt_model``).

    Returns:
        ``(model_path, vocab_txt_path)``.
    """
    if spe_type not in SPE_TYPES:
        raise ValueError(f"spe_type must be one of {SPE_TYPES}, got {spe_type!r}")
    if not os.path.isfile(text_path):
        raise FileNotFoundError(f"text corpus not found: {text_path}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    options: dict = dict(
        input=os.fspath(text_path), model_prefix=os.fspath(output_dir / "tokenizer"), vocab_size=vocab_size,
        shuffle_input_sentence=True, hard_vocab_limit=False, model_type=spe_type,
        character_coverage=character_coverage, minloglevel=0 if verbose else 2,
    )
    next_id = 3
    if not bos:
        next_id -= 1
        options["bos_id"] = -1
    if not eos:
        next_id -= 1
        options["eos_id"] = -1
    if pad:
        options["pad_id"] = next_id
    if control_symbols:
        options["control_symbols"] = ",".join(control_symbols)
    if user_defined_symbols:
        options["user_defined_symbols"] = ",".join(user_defined_symbols)
    if lower_case:
        options["normalization_rule_name"] = "nmt_nfkc_cf"
    if sample_size > 0:
        options["input_sentence_size"] = sample_size
    if train_extremely_large_corpus:
        options["train_extremely_large_corpus"] = True
    if max_sentencepiece_length >= 0:
        options["max_sentencepiece_length"] = max_sentencepiece_length
    if byte_fallback:
        options["byte_fallback"] = True
    if split_digits:
        options["split_digits"] = True
    if not split_by_unicode_script:
        options["split_by_unicode_script"] = False
    if not remove_extra_whitespaces:
        options["remove_extra_whitespaces"] = False
    sentencepiece.SentencePieceTrainer.train(**options)

    with open(output_dir / "tokenizer.vocab", encoding="utf-8") as f:
        pieces = [line.split("\t")[0] for line in f]
    special = [*SPECIAL_PIECES, *(control_symbols or ()), *(user_defined_symbols or ())]
    vocab_txt = output_dir / "vocab.txt"
    with open(vocab_txt, "w", encoding="utf-8") as f:
        f.writelines(f"{token}\n" for token in bert_style_vocab(pieces, special=special))
    return output_dir / "tokenizer.model", vocab_txt


def process_asr_text_tokenizer(*, data_root: str | os.PathLike, manifest: str | Sequence[str] | None = None,
                               data_file: str | None = None, vocab_size: int = 1024, tokenizer: str = "spe",
                               spe_type: str = "bpe", spe_character_coverage: float = 1.0, lower_case: bool = True,
                               spe_sample_size: int = -1, spe_max_sentencepiece_length: int = -1,
                               spe_split_by_unicode_script: bool = True, spe_bos: bool = False, spe_eos: bool = False,
                               spe_pad: bool = False, spe_control_symbols: Sequence[str] | None = None,
                               spe_user_defined_symbols: Sequence[str] | None = None, spe_byte_fallback: bool = False,
                               spe_split_digits: bool = False, spe_remove_extra_whitespaces: bool = False,
                               spe_train_extremely_large_corpus: bool = False) -> Path:
    """NeMo's script as a function: builds the text corpus and trains the tokenizer; returns the tokenizer folder.

    Give either ``manifest`` (paths, or one comma-separated string) or ``data_file`` (text files, one sentence a line,
    comma-separated for several). Only ``tokenizer="spe"`` is supported.
    """
    if tokenizer != "spe":
        raise NotImplementedError(f"--tokenizer {tokenizer}: only 'spe' (SentencePiece) is supported; NeMo's 'wpe' "
                                  "needs HuggingFace's BERT WordPiece trainer, which nemofn does not depend on")
    if (manifest is None) == (data_file is None):
        raise ValueError("give exactly one of manifest= and data_file=")
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        text_path = build_document_from_manifests(manifest, data_root)
    else:
        files = split_manifest_paths(data_file)
        if len(files) == 1:
            text_path = Path(files[0])
        else:
            text_path = data_root / "text_corpus" / "document.txt"
            text_path.parent.mkdir(parents=True, exist_ok=True)
            with open(text_path, "w", encoding="utf-8") as out:
                for name in files:
                    out.write(Path(name).read_text(encoding="utf-8"))
    out_dir = data_root / tokenizer_dir_name(vocab_size, spe_type, pad=spe_pad, bos=spe_bos, eos=spe_eos,
                                             max_sentencepiece_length=spe_max_sentencepiece_length)
    if (out_dir / "tokenizer.model").exists():
        logger.warning("Model file already exists, overriding old model file: %s", out_dir / "tokenizer.model")
        (out_dir / "tokenizer.model").unlink()
    train_sentencepiece(
        text_path, out_dir, vocab_size=vocab_size, spe_type=spe_type, character_coverage=spe_character_coverage,
        lower_case=lower_case, sample_size=spe_sample_size, max_sentencepiece_length=spe_max_sentencepiece_length,
        split_by_unicode_script=spe_split_by_unicode_script, bos=spe_bos, eos=spe_eos, pad=spe_pad,
        control_symbols=spe_control_symbols, user_defined_symbols=spe_user_defined_symbols,
        byte_fallback=spe_byte_fallback, split_digits=spe_split_digits,
        remove_extra_whitespaces=spe_remove_extra_whitespaces,
        train_extremely_large_corpus=spe_train_extremely_large_corpus,
    )
    return out_dir


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a SentencePiece tokenizer for ASR (NeMo's "
                                            "process_asr_text_tokenizer.py options)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="comma-separated manifest files")
    source.add_argument("--data_file", help="text file(s), one sentence a line, comma-separated")
    p.add_argument("--data_root", required=True, help="output directory")
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--tokenizer", default="spe", choices=["spe", "wpe"],
                   help="spe (SentencePiece; the default here, NeMo's default is wpe, which is not supported)")
    p.add_argument("--spe_type", default="bpe", choices=list(SPE_TYPES))
    p.add_argument("--spe_character_coverage", type=float, default=1.0)
    p.add_argument("--spe_bos", action="store_true")
    p.add_argument("--spe_eos", action="store_true")
    p.add_argument("--spe_pad", action="store_true")
    p.add_argument("--spe_user_defined_symbols", nargs="+", default=None)
    p.add_argument("--spe_control_symbols", nargs="+", default=None)
    p.add_argument("--spe_split_digits", action="store_true")
    p.add_argument("--spe_remove_extra_whitespaces", action="store_true")
    p.add_argument("--spe_sample_size", type=int, default=-1)
    p.add_argument("--spe_train_extremely_large_corpus", action="store_true")
    p.add_argument("--spe_max_sentencepiece_length", type=int, default=-1)
    p.add_argument("--spe_no_split_by_unicode_script", dest="spe_split_by_unicode_script", action="store_false")
    p.add_argument("--spe_byte_fallback", action="store_true")
    p.add_argument("--no_lower_case", dest="lower_case", action="store_false")
    p.add_argument("--log", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (``scripts/tokenizers/process_asr_text_tokenizer.py``)."""
    args = vars(_arg_parser().parse_args(argv))
    if args.pop("log"):
        logging.basicConfig(level=logging.INFO)
    out_dir = process_asr_text_tokenizer(**args)
    print("Serialized tokenizer at location :", out_dir)
    return out_dir
