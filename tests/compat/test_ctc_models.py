"""``EncDecCTCModel`` / ``EncDecCTCModelBPE``: transcribe inputs and outputs, NeMo-style submodule calls,
``change_vocabulary`` and ``change_decoding_strategy``, on tiny randomly initialised models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from compat.artifacts import ArtifactPathType
from compat import Trainer
from compat.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemofn.asr.tokenizers.builder import train_sentencepiece

LABELS = [" ", "a", "b", "c", "d", "e"]
TEXTS = ["abc bad", "cab de", "dead bee", "ace"]


def tiny_cfg(**extra) -> dict:
    cfg = {
        "sample_rate": 16000,
        "labels": LABELS,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "features": 16, "n_fft": 512, "dither": 1e-5},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 1,
                         "time_masks": 1, "freq_width": 4, "time_width": 0.05},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 16, "activation": "relu",
                    "conv_mask": True, "jasper": [{"filters": 24, "repeat": 1, "kernel": [11], "stride": [2],
                                                   "dilation": [1], "dropout": 0.0, "residual": False,
                                                   "separable": True}]},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 24, "num_classes": -1,
                    "vocabulary": LABELS},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """Four tone clips (0.3 s to 1.5 s) as files, arrays and a manifest with a relative path."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    arrays, paths, lines = [], [], []
    for i, seconds in enumerate((0.3, 0.7, 1.1, 1.5)):
        t = np.arange(int(16000 * seconds)) / 16000
        audio = (0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
        path = root / f"clip_{i}.wav"
        sf.write(path, audio, 16000, subtype="FLOAT")
        arrays.append(audio)
        paths.append(str(path))
        lines.append(json.dumps({"audio_filepath": path.name, "duration": seconds, "text": TEXTS[i]}))
    (root / "clips.json").write_text("\n".join(lines) + "\n")
    return {"arrays": arrays, "paths": paths, "manifest": str(root / "clips.json")}


@pytest.fixture(scope="module")
def model() -> EncDecCTCModel:
    torch.manual_seed(0)
    return EncDecCTCModel(tiny_cfg())


def _texts(hyps):
    assert all(isinstance(h, Hypothesis) for h in hyps)
    return [h.text for h in hyps]


# ---------------------------------------------------------------------------------------------------- transcribe


def test_transcribe_input_forms_agree(model, clips):
    by_path = model.transcribe(clips["paths"], batch_size=3, verbose=False)
    assert len(by_path) == 4
    assert _texts(model.transcribe(clips["manifest"], verbose=False)) == _texts(by_path)
    assert _texts(model.transcribe(clips["paths"][3], verbose=True)) == _texts(by_path)[3:]
    long_arrays = clips["arrays"][2:]  # >= 1 s: not padded, so identical to reading the files
    assert _texts(model.transcribe(long_arrays, verbose=False)) == _texts(by_path)[2:]
    cropped = torch.stack([torch.from_numpy(a[:17600]) for a in long_arrays])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cropped, torch.tensor([17600, 17600])),
                                         batch_size=1)
    assert _texts(model.transcribe(loader, verbose=False)) == _texts(model.transcribe(list(cropped), verbose=False))
    tensors = [torch.from_numpy(a) for a in long_arrays]
    for a, b in zip(model.transcribe(tensors, return_hypotheses=True, verbose=False),
                    model.transcribe([str(p) for p in clips["paths"][2:]], return_hypotheses=True, verbose=False)):
        assert torch.equal(a.y_sequence, b.y_sequence)


def test_short_arrays_are_padded_to_one_second_both_sides(model, clips):
    short = clips["arrays"][0]  # 0.3 s
    missing = 16000 - short.size
    manual = np.pad(short, (missing // 2, missing - missing // 2))
    padded = model.transcribe([short], return_hypotheses=True, verbose=False)[0]
    reference = model.transcribe([manual], return_hypotheses=True, pad_min_duration=0.0, verbose=False)[0]
    assert torch.equal(padded.y_sequence, reference.y_sequence)
    unpadded = model.transcribe([short], return_hypotheses=True, pad_min_duration=0.0, verbose=False)[0]
    assert unpadded.length < padded.length
    right = model.transcribe([short], return_hypotheses=True, pad_direction="right", verbose=False)[0]
    assert right.length == padded.length and not torch.equal(right.y_sequence, padded.y_sequence)


def test_hypothesis_fields(model, clips):
    plain = model.transcribe(clips["paths"], verbose=False)
    full = model.transcribe(clips["paths"], return_hypotheses=True, verbose=False)
    for p, h in zip(plain, full):
        vocab = len(LABELS) + 1
        assert h.y_sequence.shape == (h.length, vocab) and h.alignments is h.y_sequence
        assert p.y_sequence.dtype == torch.int64 and p.y_sequence.shape == (h.length,)
        assert torch.equal(p.y_sequence, h.y_sequence.argmax(-1)) and p.alignments is None
        best, labels = h.y_sequence.max(-1)
        assert p.score == pytest.approx(best[labels != len(LABELS)].sum().item(), abs=1e-5)
        assert p.text == h.text and isinstance(p.score, float)
    hyp = Hypothesis(-1.5, [1, 2], "ab")  # NeMo's positional order
    assert hyp.words == ["ab"] and hyp.timestamp == [] and hyp.length == 0


def test_transcribe_turns_off_dither_and_restores_the_mode(model, clips):
    model.train()
    first = model.transcribe(clips["paths"], return_hypotheses=True, verbose=False)
    second = model.transcribe(clips["paths"], return_hypotheses=True, verbose=False)
    assert model.training is True
    model.eval()
    third = model.transcribe(clips["paths"], return_hypotheses=True, verbose=False)
    assert model.training is False
    for a, b, c in zip(first, second, third):
        assert torch.equal(a.y_sequence, b.y_sequence) and torch.equal(a.y_sequence, c.y_sequence)


def test_transcribe_unsupported_options(model, clips):
    with pytest.raises(NotImplementedError, match="augmentor"):
        model.transcribe(clips["paths"], augmentor={"white_noise": {}}, verbose=False)
    with pytest.raises(TypeError, match="paths"):
        model.transcribe([1, 2], verbose=False)
    beam_cfg = tiny_cfg(decoding={"strategy": "beam"})
    with pytest.raises(NotImplementedError, match="strategy='beam'"):
        EncDecCTCModel(beam_cfg).transcribe(clips["paths"], verbose=False)


# ------------------------------------------------------------------------------------------- submodule calls


def test_forward_and_submodule_calls_match_the_network(model, clips):
    signal = torch.from_numpy(np.stack([clips["arrays"][2][:16000], clips["arrays"][3][:16000]]))
    lengths = torch.tensor([16000, 12000])
    model.eval()
    log_probs, encoded_len, greedy = model.forward(input_signal=signal, input_signal_length=lengths)
    features, feat_len = model.preprocessor(input_signal=signal, length=lengths)
    encoded, enc_len = model.encoder(audio_signal=features, length=feat_len)
    assert torch.equal(model.decoder(encoder_output=encoded), log_probs) and torch.equal(enc_len, encoded_len)
    assert torch.equal(greedy, log_probs.argmax(-1))
    fn, state = model.functional
    expected, _ = fn.network.forward_eval(state.params, state.buffers, signal, lengths)
    assert torch.equal(expected, log_probs)
    again, _, _ = model(processed_signal=features, processed_signal_length=feat_len)
    assert torch.equal(again, log_probs)
    with pytest.raises(ValueError, match="exactly one pair"):
        model.forward(input_signal=signal)
    with pytest.raises(TypeError, match="unknown argument"):
        model.encoder(signal=features, length=feat_len)


# ---------------------------------------------------------------------------------------- vocabulary, decoding


def test_change_vocabulary_keeps_the_encoder(clips):
    torch.manual_seed(1)
    cfg = tiny_cfg(train_ds={"manifest_filepath": clips["manifest"], "batch_size": 2, "labels": LABELS},
                   optim={"name": "sgd", "lr": 0.1})
    model = EncDecCTCModel(cfg)
    before = model.state_dict()
    new_labels = [" ", "a", "b", "c", "d", "e", "f", "'"]
    model.change_vocabulary(new_labels)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert after["decoder.decoder_layers.0.weight"].shape[0] == len(new_labels) + 1
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("decoder."))
    assert list(model.cfg.decoder.vocabulary) == new_labels and model.cfg.decoder.num_classes == len(new_labels)
    assert list(model.cfg.train_ds.labels) == new_labels
    assert dict(model.named_parameters())["decoder.decoder_layers.0.weight"] is \
        model.fn_state.params["decoder"]["decoder_layers"]["0"]["weight"]  # the new decoder's tensors are registered
    model.setup_training_data(model.cfg.train_ds)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model)
    assert trainer.global_step == 1 and not torch.equal(model.state_dict()["decoder.decoder_layers.0.weight"],
                                                        after["decoder.decoder_layers.0.weight"])
    hyp = model.transcribe(clips["paths"][:1], return_hypotheses=True, verbose=False)[0]
    assert hyp.y_sequence.shape[-1] == len(new_labels) + 1
    trained = model.state_dict()["decoder.decoder_layers.0.weight"].clone()
    model.change_vocabulary(new_labels)  # same vocabulary: nothing changes
    assert torch.equal(model.state_dict()["decoder.decoder_layers.0.weight"], trained)
    with pytest.raises(ValueError, match="non-empty"):
        model.change_vocabulary([])


def test_change_decoding_strategy(model):
    signal, lengths = torch.randn(1, 16000) * 0.1, torch.tensor([16000])
    model.eval()
    base, _, _ = model(input_signal=signal, input_signal_length=lengths)
    model.change_decoding_strategy({"strategy": "greedy", "temperature": 2.0}, verbose=False)
    assert model.cfg.decoding.strategy == "greedy" and model.cfg.decoding.temperature == 2.0
    assert model.cfg.decoding.greedy.allow_cuda_graphs is True  # merged onto NeMo's defaults
    hot, _, _ = model(input_signal=signal, input_signal_length=lengths)
    torch.testing.assert_close(hot, torch.log_softmax(base / 2.0, dim=-1), atol=1e-5, rtol=0)
    model.change_decoding_strategy({"temperature": 1.0}, verbose=False)
    assert torch.equal(model(input_signal=signal, input_signal_length=lengths)[0], base)
    with pytest.raises(NotImplementedError, match="strategy='beam'"):
        model.change_decoding_strategy({"strategy": "beam"})
    with pytest.raises(NotImplementedError, match="ngram_lm_model"):
        model.change_decoding_strategy({"greedy": {"ngram_lm_model": "lm.arpa"}})
    with pytest.raises(ValueError, match="unknown key"):
        model.change_decoding_strategy({"stratgy": "greedy"})
    assert model.cfg.decoding.temperature == 1.0


# ------------------------------------------------------------------------------------------------------ BPE


def _tokenizer_dir(root: Path, words: str, vocab_size: int) -> Path:
    text = root / f"{vocab_size}.txt"
    text.write_text("\n".join([words] * 40) + "\n")
    train_sentencepiece(text, root / f"tok_{vocab_size}", vocab_size=vocab_size)
    return root / f"tok_{vocab_size}"


def test_bpe_model_registers_artifacts_and_changes_tokenizer(tmp_path, clips):
    tok = _tokenizer_dir(tmp_path, "abc bad cab de dead bee ace the quick brown fox jumps over the lazy dog", 40)
    cfg = tiny_cfg(tokenizer={"dir": str(tok), "type": "bpe"})
    del cfg["labels"]
    cfg["decoder"].pop("vocabulary")
    model = EncDecCTCModelBPE(cfg)
    for key, name in (("model_path", "tokenizer.model"), ("vocab_path", "vocab.txt"),
                      ("spe_tokenizer_vocab", "tokenizer.vocab")):
        item = model.artifacts[f"tokenizer.{key}"]
        assert item.path_type == ArtifactPathType.LOCAL_PATH and item.path == str(tok / name)
        assert model.cfg.tokenizer[key] == str(tok / name)
    assert len(model.cfg.decoder.vocabulary) == 40 == model.cfg.decoder.num_classes
    assert model.tokenizer.vocabulary == list(model.cfg.decoder.vocabulary)
    encoder_before = model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"].clone()

    tok2 = _tokenizer_dir(tmp_path, "sphinx of black quartz judge my vow pack my box with five dozen jugs", 45)
    model.change_vocabulary(str(tok2), "bpe")
    assert model.artifacts["tokenizer.model_path"].path == str(tok2 / "tokenizer.model")
    assert model.cfg.tokenizer.dir == str(tok2) and model.cfg.decoder.num_classes == len(model.tokenizer.vocabulary)
    assert model.state_dict()["decoder.decoder_layers.0.weight"].shape[0] == model.cfg.decoder.num_classes + 1
    assert torch.equal(model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"], encoder_before)
    assert len(model.transcribe(clips["paths"][:2], verbose=False)) == 2
    with pytest.raises(NotADirectoryError):
        model.change_vocabulary(str(tmp_path / "missing"), "bpe")
    with pytest.raises(NotImplementedError, match="'wpe'"):
        model.change_vocabulary(str(tok), "wpe")
    assert model.cfg.tokenizer.dir == str(tok2)  # a failed change leaves the model as it was
    assert model.artifacts["tokenizer.model_path"].path == str(tok2 / "tokenizer.model")
    with pytest.raises(ValueError, match="tokenizer"):
        EncDecCTCModelBPE(tiny_cfg())


def test_importing_the_models_does_not_import_lightning():
    code = ("import sys, compat.collections.asr.models, compat.core.classes; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', "
            "'lightning_fabric')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
