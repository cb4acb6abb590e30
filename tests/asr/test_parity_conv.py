"""Parity with real NeMo 3.0 for the convolutional CTC models (QuartzNet char, Citrinet BPE).

For each reference ``.nemo`` archive: build ConvASREncoder / ConvASRDecoder from its ``model_config.yaml``, load
``model_weights.ckpt`` strictly (our flattened names must be exactly the checkpoint's ``encoder.*`` /
``decoder.*`` keys), feed NeMo's preprocessor output from ``<name>.ref.pt`` and compare the encoder output,
lengths and log-probs, then greedy-decode and compare with NeMo's ``transcribe()`` texts.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nemofn.asr.decoding import CharDecoder, TokenizerDecoder
from nemofn.asr.modules.conv_asr import ConvASREncoder
from nemofn.asr.modules.decoder import ConvASRDecoder
from nemofn.asr.tokenizers.sentencepiece import SentencePieceTokenizer
from nemofn.core.tree import flatten, unflatten

ATOL = 1e-4


def _member(tar: tarfile.TarFile, basename_suffix: str) -> tarfile.TarInfo:
    """The member whose name (with or without ``./``) ends with ``basename_suffix``."""
    found = [m for m in tar.getmembers() if m.isfile() and m.name.removeprefix("./").endswith(basename_suffix)]
    assert len(found) == 1, f"expected one member ending in {basename_suffix!r}, got {[m.name for m in found]}"
    return found[0]


def _read_archive(path: Path):
    with tarfile.open(path, "r:") as tar:
        cfg = OmegaConf.create(tar.extractfile(_member(tar, "model_config.yaml")).read().decode())
        weights = torch.load(io.BytesIO(tar.extractfile(_member(tar, "model_weights.ckpt")).read()),
                             map_location="cpu", weights_only=True)
    return cfg, weights


def _load_strict(module, checkpoint: dict[str, torch.Tensor], prefix: str):
    """``(params, buffers)`` of ``module`` taken from the checkpoint's ``prefix*`` entries; asserts that the key
    sets are equal and every shape matches."""
    params, buffers = module.init(0)
    ours = {**flatten(params, prefix), **flatten(buffers, prefix)}
    theirs = {k: v for k, v in checkpoint.items() if k.startswith(prefix)}
    assert set(ours) == set(theirs), (f"missing in ours: {sorted(set(theirs) - set(ours))}; "
                                      f"extra in ours: {sorted(set(ours) - set(theirs))}")
    for name, tensor in ours.items():
        assert tuple(theirs[name].shape) == tuple(tensor.shape), name
        assert theirs[name].dtype == tensor.dtype, name
    n = len(prefix)
    loaded_params = unflatten({k[n:]: theirs[k] for k in flatten(params, prefix)})
    loaded_buffers = unflatten({k[n:]: theirs[k] for k in flatten(buffers, prefix)})
    return loaded_params, loaded_buffers


@pytest.mark.parametrize("name", ["quartznet_char", "citrinet_bpe"])
def test_encoder_decoder_match_nemo(nemo3_dir: Path, name: str, tmp_path: Path):
    cfg, checkpoint = _read_archive(nemo3_dir / f"{name}.nemo")
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", map_location="cpu", weights_only=True)

    encoder = ConvASREncoder.from_config(cfg.encoder)
    decoder = ConvASRDecoder.from_config(cfg.decoder)
    assert decoder.feat_in == encoder.feat_out
    enc_params, enc_buffers = _load_strict(encoder, checkpoint, "encoder.")
    dec_params, dec_buffers = _load_strict(decoder, checkpoint, "decoder.")

    with torch.no_grad():
        (encoded, encoded_len), new_buffers = encoder.apply(enc_params, enc_buffers, ref["features"],
                                                            ref["features_len"], train=False)
        log_probs, _ = decoder.apply(dec_params, dec_buffers, encoded)
    assert new_buffers is not None and flatten(new_buffers).keys() == flatten(enc_buffers).keys()
    assert encoded.shape == ref["encoded"].shape
    assert torch.equal(encoded_len, ref["encoded_len"])
    assert (encoded - ref["encoded"]).abs().max().item() <= ATOL
    assert (log_probs - ref["log_probs"]).abs().max().item() <= ATOL
    assert encoded.shape[-1] == -(-ref["features"].shape[-1] // encoder.subsampling_factor)

    if "labels" in cfg:
        text_decoder = CharDecoder(list(cfg.decoder.vocabulary))
    else:
        with tarfile.open(nemo3_dir / f"{name}.nemo", "r:") as tar:
            member = _member(tar, "_tokenizer.model")
            model_file = tmp_path / "tokenizer.model"
            model_file.write_bytes(tar.extractfile(member).read())
        tokenizer = SentencePieceTokenizer(model_file)
        assert tokenizer.vocab_size == decoder.num_classes
        text_decoder = TokenizerDecoder(tokenizer)
    assert text_decoder.blank_id == decoder.num_classes_with_blank - 1
    assert text_decoder.decode(ref["log_probs"], ref["encoded_len"]) == ref["transcripts"]
    assert text_decoder.decode(log_probs, encoded_len) == ref["transcripts"]
