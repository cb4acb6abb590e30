"""SentencePieceTokenizer on the tokenizer artifacts of real NeMo 3.0 ``.nemo`` archives."""

from __future__ import annotations

import pickle
import tarfile

import pytest
import yaml

from nemofn.asr.tokenizers import SentencePieceTokenizer, Tokenizer, bert_style_vocab

BPE_ARCHIVES = ("citrinet_bpe", "conformer_bpe", "fastconformer_bpe")


def _extract(nemo_path, out_dir):
    """The archive's tokenizer files (``<hex>_`` prefix stripped) and its parsed ``model_config.yaml``."""
    files = {}
    with tarfile.open(nemo_path) as tar:
        for member in tar.getmembers():
            name = member.name.split("/")[-1]
            if name == "model_config.yaml":
                config = yaml.safe_load(tar.extractfile(member).read())
            for suffix in ("_tokenizer.model", "_tokenizer.vocab", "_vocab.txt"):
                if name.endswith(suffix):
                    target = out_dir / suffix.lstrip("_")
                    target.write_bytes(tar.extractfile(member).read())
                    files[suffix.lstrip("_")] = target
    return files, config


@pytest.fixture(params=BPE_ARCHIVES)
def nemo_tokenizer(request, nemo3_dir, tmp_path):
    files, config = _extract(nemo3_dir / f"{request.param}.nemo", tmp_path)
    assert set(files) == {"tokenizer.model", "tokenizer.vocab", "vocab.txt"}
    return files, config


def test_vocabulary_equals_the_archives_decoder_vocabulary(nemo_tokenizer):
    files, config = nemo_tokenizer
    tok = SentencePieceTokenizer(files["tokenizer.model"], files["vocab.txt"])
    assert tok.vocab == config["decoder"]["vocabulary"]
    assert tok.vocab_size == config["decoder"]["num_classes"] == len(tok.vocabulary)
    assert isinstance(tok, Tokenizer)


def test_vocab_files_match_nemos_formats(nemo_tokenizer):
    files, _ = nemo_tokenizer
    tok = SentencePieceTokenizer(files["tokenizer.model"])
    spm_listing = [line.split("\t")[0] for line in files["tokenizer.vocab"].read_text().splitlines()]
    assert spm_listing == tok.vocab
    nemo_vocab_txt = files["vocab.txt"].read_text().splitlines()
    assert bert_style_vocab(spm_listing) == nemo_vocab_txt
    assert tok.bert_style_vocab() == nemo_vocab_txt


def test_round_trips(nemo_tokenizer):
    files, _ = nemo_tokenizer
    tok = SentencePieceTokenizer(files["tokenizer.model"])
    text = "river must cat rabbit left dark cow"
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    pieces = tok.ids_to_tokens(ids)
    assert pieces == tok.text_to_tokens(text)
    assert tok.tokens_to_ids(pieces) == ids
    assert tok.tokens_to_text(pieces) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (-1, -1, -1, 0)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == ids and clone.vocab == tok.vocab


def test_transcripts_of_the_reference_corpus_encode_without_unknowns(nemo_tokenizer, nemo3_dir):
    files, _ = nemo_tokenizer
    tok = SentencePieceTokenizer(files["tokenizer.model"])
    reference = yaml.safe_load("[" + ",".join((nemo3_dir / "audio_manifest.json").read_text().splitlines()) + "]")
    for item in reference:
        ids = tok.encode(item["text"])
        assert tok.unk_id not in ids and tok.decode(ids) == item["text"]


def test_missing_and_invalid_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(tmp_path / "bad.model")
