"""``change_attention_model`` / ``change_subsampling_conv_chunking_factor`` on the NeMo-made references: local
attention matches NeMo's own after the same change, a context wider than the clips equals full attention, weights
are kept, the config follows, ``save_to`` / ``restore_from`` keeps the change; every ASR model class has them."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from compat.collections.asr.models import ASRModel
from compat.models.encoder_changes import EncoderFace

REPO = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((REPO / "tests" / "data" / "nemo3_local_attn.json").read_text())["models"]
ATOL = 1e-4


def _reference_helpers():
    spec = importlib.util.spec_from_file_location("make_local_attn_reference",
                                                  REPO / "scripts" / "dev" / "make_local_attn_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference_helpers()


def _restore(nemo3_dir: Path, name: str):
    return ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu", strict=True).eval()


def _files(nemo3_dir: Path, names) -> list[str]:
    return [str(nemo3_dir / "audio" / f) for f in names]


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_local_attention_matches_nemo_after_the_same_change(name, nemo3_dir: Path):
    """NeMo 3.0's change_attention_model("rel_pos_local_attn", [c, c]) with c below the clips' lengths: the same
    transcripts (they differ from full attention's) and log-probs within 1e-4."""
    expected = FIXTURE[name]
    model = _restore(nemo3_dir, name)
    before = {k: v for k, v in model.state_dict().items()}
    model.change_attention_model("rel_pos_local_attn", expected["att_context_size"])
    assert isinstance(model.encoder, EncoderFace)
    assert model.cfg.encoder.self_attention_model == "rel_pos_local_attn"
    assert list(model.cfg.encoder.att_context_size) == expected["att_context_size"]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(after[k].data_ptr() == before[k].data_ptr() for k in before)
    hyps = model.transcribe(_files(nemo3_dir, expected["files"]), batch_size=4, return_hypotheses=True,
                            verbose=False)
    assert [h.text for h in hyps] == expected["texts"]
    assert expected["texts"] != expected["texts_full_attention"]  # the context really is local
    assert [h.y_sequence.shape[0] for h in hyps] == expected["encoded_lengths"]
    for file, arr in expected["log_probs"].items():
        got = hyps[expected["files"].index(file)].y_sequence
        assert (got - REF.decode_array(arr)).abs().max().item() <= ATOL


@pytest.mark.parametrize("name", ["fastconformer_bpe", "conformer_bpe"])
def test_wide_local_context_equals_full_attention_and_survives_save_restore(name, nemo3_dir: Path, tmp_path: Path):
    model = _restore(nemo3_dir, name)
    files = _files(nemo3_dir, FIXTURE[name]["files"])
    full = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
    assert [h.text for h in full] == FIXTURE[name]["texts_full_attention"]
    model.change_attention_model("rel_pos_local_attn", [1000, 1000])
    local = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
    assert [h.text for h in local] == [h.text for h in full]
    for a, b in zip(local, full):
        assert (a.y_sequence - b.y_sequence).abs().max().item() <= ATOL

    path = tmp_path / "local.nemo"
    model.save_to(str(path))
    restored = ASRModel.restore_from(str(path), map_location="cpu", strict=True).eval()
    assert type(restored) is type(model)
    assert restored.cfg.encoder.self_attention_model == "rel_pos_local_attn"
    assert list(restored.cfg.encoder.att_context_size) == [1000, 1000]
    assert restored.fn_model.network.encoder.is_local_attention
    again = restored.transcribe(files[:2], batch_size=2, return_hypotheses=True, verbose=False)
    for a, b in zip(again, local[:2]):
        assert a.text == b.text and torch.equal(a.y_sequence, b.y_sequence)


def test_switching_back_and_to_abs_pos(nemo3_dir: Path):
    model = _restore(nemo3_dir, "fastconformer_bpe")
    files = _files(nemo3_dir, FIXTURE["fastconformer_bpe"]["files"][:2])
    ref = model.transcribe(files, batch_size=2, return_hypotheses=True, verbose=False)
    keys = list(model.state_dict())
    model.change_attention_model("rel_pos_local_attn", [4, 4])
    model.encoder.change_attention_model("rel_pos")  # NeMo's encoder-level method; keeps the context [4, 4]
    assert model.cfg.encoder.self_attention_model == "rel_pos"
    assert list(model.cfg.encoder.att_context_size) == [4, 4]
    model.change_attention_model(att_context_size=[-1, -1])
    back = model.transcribe(files, batch_size=2, return_hypotheses=True, verbose=False)
    for a, b in zip(back, ref):
        assert a.text == b.text and torch.equal(a.y_sequence, b.y_sequence)
    assert list(model.state_dict()) == keys

    model.change_attention_model("abs_pos")  # NeMo drops linear_pos and the position biases
    dropped = set(keys) - set(model.state_dict())
    assert dropped and all(k.split(".")[-1] in ("pos_bias_u", "pos_bias_v") or ".linear_pos." in k for k in dropped)
    model.change_attention_model("rel_pos")  # fresh linear_pos, zero biases, as NeMo's new layers
    assert list(model.state_dict()) == keys
    assert not model.state_dict()["encoder.layers.0.self_attn.pos_bias_u"].any()


def test_update_config_false_and_errors(nemo3_dir: Path):
    model = _restore(nemo3_dir, "fastconformer_bpe")
    model.change_attention_model("rel_pos_local_attn", [16, 16], update_config=False)
    assert model.cfg.encoder.self_attention_model == "rel_pos"
    assert model.fn_model.network.encoder.att_context == (16, 16)
    model.change_attention_model()  # nothing asked: nothing changes (NeMo returns early)
    assert model.fn_model.network.encoder.is_local_attention
    with pytest.raises(ValueError, match="Not valid self_attention_model"):
        model.change_attention_model("rel_pos_local")
    fresh = _restore(nemo3_dir, "fastconformer_bpe")
    with pytest.raises(ValueError, match="context size must be set > 0"):
        fresh.change_attention_model("rel_pos_local_attn")  # the config's context is [-1, -1]
    assert fresh.cfg.encoder.self_attention_model == "rel_pos"


def test_subsampling_chunking_factor_changes_nothing_but_memory(nemo3_dir: Path):
    model = _restore(nemo3_dir, "fastconformer_bpe")
    files = _files(nemo3_dir, FIXTURE["fastconformer_bpe"]["files"][:4])
    ref = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
    model.change_subsampling_conv_chunking_factor(8)
    assert model.cfg.encoder.subsampling_conv_chunking_factor == 8
    assert model.fn_model.network.encoder.subsampling_conv_chunking_factor == 8
    hyps = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
    for a, b in zip(hyps, ref):
        assert a.text == b.text
        assert (a.y_sequence - b.y_sequence).abs().max().item() <= 1e-5
    model.encoder.change_subsampling_conv_chunking_factor(-1)  # NeMo's encoder-level method: no config update
    assert model.fn_model.network.encoder.subsampling_conv_chunking_factor == -1
    assert model.cfg.encoder.subsampling_conv_chunking_factor == 8
    with pytest.raises(ValueError, match="power of 2"):
        model.change_subsampling_conv_chunking_factor(3)


@pytest.mark.parametrize("name", ["fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe"])
def test_transducer_and_hybrid_models_have_the_methods(name, nemo3_dir: Path):
    model = _restore(nemo3_dir, name)
    files = _files(nemo3_dir, ["test_00007.wav", "test_00002.wav"])
    ref = model.transcribe(files, batch_size=2, verbose=False)
    model.change_attention_model("rel_pos_local_attn", [500, 500])
    model.change_subsampling_conv_chunking_factor(4)
    assert model.cfg.encoder.self_attention_model == "rel_pos_local_attn"
    assert model.cfg.encoder.subsampling_conv_chunking_factor == 4
    got = model.transcribe(files, batch_size=2, verbose=False)
    assert [h.text for h in got] == [h.text for h in ref]


def test_non_conformer_encoders_are_left_alone(nemo3_dir: Path, caplog):
    model = _restore(nemo3_dir, "quartznet_char")
    with caplog.at_level(logging.INFO, logger="compat.models"):
        model.change_attention_model("rel_pos_local_attn", [8, 8])
        model.change_subsampling_conv_chunking_factor(2)
    assert "doesn't have a change_attention_model method" in caplog.text
    assert model.cfg.encoder.get("self_attention_model") is None
