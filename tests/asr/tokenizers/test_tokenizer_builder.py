"""Training a SentencePiece tokenizer from manifests, NeMo's process_asr_text_tokenizer.py layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemofn.asr.data.errors import ManifestError
from nemofn.asr.tokenizers import SentencePieceTokenizer, bert_style_vocab
from nemofn.asr.tokenizers.builder import build_document_from_manifests, main, process_asr_text_tokenizer, \
    tokenizer_dir_name

REPO = Path(__file__).resolve().parents[3]
WORDS = ("the quick brown fox jumps over the lazy dog while seven small rabbits sing about rivers and stones "
         "under the dark summer sky please stop the slow cow").split()


def _manifest(path, n=200, offset=0):
    with open(path, "w") as f:
        for i in range(n):
            words = [WORDS[(i * 7 + k * 3 + offset) % len(WORDS)] for k in range(3 + i % 6)]
            f.write(json.dumps({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": " ".join(words)}) + "\n")
    return path


def test_dir_names_follow_nemo():
    assert tokenizer_dir_name(128, "bpe") == "tokenizer_spe_bpe_v128"
    assert tokenizer_dir_name(256, "unigram", max_sentencepiece_length=4, pad=True, bos=True, eos=True) == \
        "tokenizer_spe_unigram_v256_max_4_pad_bos_eos"


@pytest.mark.parametrize("spe_type", ["bpe", "unigram"])
def test_writes_the_three_files_and_they_load(tmp_path, spe_type):
    m1, m2 = _manifest(tmp_path / "a.json"), _manifest(tmp_path / "b.json", offset=5)
    out = process_asr_text_tokenizer(manifest=f"{m1},{m2}", data_root=tmp_path / "tok", vocab_size=48,
                                     spe_type=spe_type)
    assert out == tmp_path / "tok" / f"tokenizer_spe_{spe_type}_v48"
    assert {p.name for p in out.iterdir()} == {"tokenizer.model", "tokenizer.vocab", "vocab.txt"}
    document = (tmp_path / "tok" / "text_corpus" / "document.txt").read_text().splitlines()
    assert len(document) == 400

    tok = SentencePieceTokenizer(out / "tokenizer.model", out / "vocab.txt")
    listing = [line.split("\t")[0] for line in (out / "tokenizer.vocab").read_text().splitlines()]
    assert listing == tok.vocab and tok.vocab[0] == "<unk>"
    assert 30 <= tok.vocab_size <= 48  # hard_vocab_limit=false lets a small corpus give fewer pieces
    assert (out / "vocab.txt").read_text().splitlines() == bert_style_vocab(listing)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (-1, -1, -1)
    text = "the quick brown fox sings"
    assert tok.decode(tok.encode(text)) == text


def test_lower_case_folds_and_special_tokens(tmp_path):
    _manifest(tmp_path / "a.json")
    out = process_asr_text_tokenizer(manifest=str(tmp_path / "a.json"), data_root=tmp_path, vocab_size=40,
                                     spe_bos=True, spe_eos=True, spe_pad=True)
    assert out.name == "tokenizer_spe_bpe_v40_pad_bos_eos"
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.encode("THE DOG") == tok.encode("the dog")
    assert not {"<s>", "</s>", "<pad>", "<unk>"} & set((out / "vocab.txt").read_text().splitlines())


def test_cli_and_script(tmp_path):
    _manifest(tmp_path / "a.json")
    out = main(["--manifest", str(tmp_path / "a.json"), "--data_root", str(tmp_path / "cli"), "--vocab_size", "40",
                "--tokenizer", "spe", "--spe_type", "bpe", "--spe_character_coverage", "1.0", "--no_lower_case"])
    assert (out / "tokenizer.model").is_file()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenizers" / "process_asr_text_tokenizer.py"),
                             "--manifest", str(tmp_path / "a.json"), "--data_root", str(tmp_path / "script"),
                             "--vocab_size", "40", "--tokenizer", "spe"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "script" / "tokenizer_spe_bpe_v40" / "vocab.txt").is_file()


def test_errors(tmp_path):
    with pytest.raises(NotImplementedError, match="wpe"):
        process_asr_text_tokenizer(manifest="x.json", data_root=tmp_path, tokenizer="wpe")
    (tmp_path / "bad.json").write_text('{"audio_filepath": "a.wav", "duration": 1}\n')
    with pytest.raises(ManifestError, match=r"bad.json, line 1: no 'text' key"):
        build_document_from_manifests(str(tmp_path / "bad.json"), tmp_path)
