"""Parity with real NeMo 3.0: Conformer and FastConformer checkpoints give NeMo's encoder outputs and log-probs.

For each reference model the test reads ``model_config.yaml`` and ``model_weights.ckpt`` from the ``.nemo`` tar,
builds :class:`ConformerEncoder` from the config's ``encoder:`` block, checks that its state names and shapes are
exactly the checkpoint's ``encoder.*`` keys, loads them, and runs NeMo's recorded features through it in eval
mode. The CTC decoder (``decoder.decoder_layers.0``: a 1x1 conv, then log-softmax over the classes) is applied
inline to compare the log-probs too.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nemofn.asr.modules.conformer import ConformerEncoder
from nemofn.core.tree import flatten, unflatten

TOLERANCE = 1e-4


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    for candidate in (name, f"./{name}"):
        try:
            return tar.extractfile(candidate).read()
        except KeyError:
            continue
    raise KeyError(f"{tar.name}: no member {name!r} (nor ./{name})")


def _load_nemo(path: Path):
    with tarfile.open(path, "r:*") as tar:
        config = OmegaConf.create(_read_member(tar, "model_config.yaml").decode())
        weights = torch.load(io.BytesIO(_read_member(tar, "model_weights.ckpt")), weights_only=True)
    return config, weights


@pytest.mark.parametrize("name", ["conformer_bpe", "fastconformer_bpe"])
def test_encoder_and_decoder_match_nemo(nemo3_dir, name):
    config, weights = _load_nemo(nemo3_dir / f"{name}.nemo")
    encoder = ConformerEncoder.from_config(config.encoder)

    fresh_params, fresh_buffers = encoder.init(0)
    ours = {k: tuple(v.shape) for k, v in {**flatten(fresh_params), **flatten(fresh_buffers)}.items()}
    theirs = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    assert ours == {k: tuple(v.shape) for k, v in theirs.items()}

    param_names = set(flatten(fresh_params))
    params = unflatten({k: v for k, v in theirs.items() if k in param_names})
    buffers = unflatten({k: v for k, v in theirs.items() if k not in param_names})

    ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
    with torch.no_grad():
        (encoded, encoded_len), new_buffers = encoder.apply(params, buffers, ref["features"], ref["features_len"])
    assert new_buffers == buffers
    assert encoded.shape == ref["encoded"].shape
    assert torch.equal(encoded_len, ref["encoded_len"])
    assert (encoded - ref["encoded"]).abs().max().item() <= TOLERANCE

    logits = F.conv1d(encoded, weights["decoder.decoder_layers.0.weight"], weights["decoder.decoder_layers.0.bias"])
    log_probs = logits.transpose(1, 2).log_softmax(dim=-1)
    assert log_probs.shape == ref["log_probs"].shape
    assert (log_probs - ref["log_probs"]).abs().max().item() <= TOLERANCE
