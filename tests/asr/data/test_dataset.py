"""AudioToTextDataset and build_dataloader from NeMo dataset config blocks."""

from __future__ import annotations

import json
import logging
import string

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from nemofn.asr.configs.data import DatasetConfigError
from nemofn.asr.data import AudioToTextDataset, DataConfigError, build_dataloader, collate, load_audio, \
    load_manifests
from nemofn.asr.tokenizers import CharTokenizer, SentencePieceTokenizer
from nemofn.core.schema import ConfigError, reset_logged_keys

LABELS = [" ", *string.ascii_lowercase, "'"]
TEXTS = ["hello world", "a cat", "it's seven", "stop", "the big red dog", "one two", "blue sky", "yes"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "wavs").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "train.json", "w") as f:
        for i, text in enumerate(TEXTS):
            seconds = 0.2 + 0.1 * i
            rate = 22050 if i == 3 else 16000
            audio = rng.uniform(-0.5, 0.5, size=(int(seconds * rate), 2 if i == 5 else 1)).astype(np.float32)
            sf.write(root / "wavs" / f"{i}.wav", audio, rate, subtype="FLOAT")
            f.write(json.dumps({"audio_filepath": f"wavs/{i}.wav", "duration": seconds, "text": text}) + "\n")
    return root / "train.json"


def _cfg(manifest, **overrides):
    cfg = {"manifest_filepath": str(manifest), "sample_rate": 16000, "batch_size": 3, "shuffle": True,
           "num_workers": 0, "pin_memory": False, "labels": LABELS, "max_duration": 20.0, "min_duration": 0.1,
           "trim_silence": False, "is_tarred": False, "tarred_audio_filepaths": None, "shuffle_n": 2048,
           "bucketing_strategy": "synced_randomized", "bucketing_batch_size": None}
    cfg.update(overrides)
    return cfg


def test_items(manifest):
    entries = load_manifests(str(manifest))
    ds = AudioToTextDataset(entries, CharTokenizer(LABELS), 16000)
    assert len(ds) == 8
    signal, signal_len, tokens, tokens_len = ds[0]
    assert signal.dtype == torch.float32 and signal.shape == (3200,) and int(signal_len) == 3200
    assert tokens.dtype == torch.int64 and int(tokens_len) == len(tokens) == 11
    assert CharTokenizer(LABELS).decode(tokens) == "hello world"
    np.testing.assert_array_equal(signal.numpy(), load_audio(entries[0].audio_filepath, sample_rate=16000))
    assert ds[3][0].shape[0] == 8000  # 0.5 s at 22050 Hz resampled to 16 kHz
    assert ds[5][0].ndim == 1  # stereo mixed down
    np.testing.assert_allclose(ds.durations, [0.2 + 0.1 * i for i in range(8)])


def test_dataloader_batches_cover_the_epoch(manifest):
    loader = build_dataloader(_cfg(manifest), shuffle_seed=0)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [3, 3, 2]
    for signal, signal_len, tokens, tokens_len in batches:
        assert signal.shape[1] == int(signal_len.max()) and tokens.shape[1] == int(tokens_len.max())
    tok = CharTokenizer(LABELS, normalize=False)
    texts = sorted(tok.decode(t[: int(n)]) for b in batches for t, n in zip(b[2], b[3]))
    assert texts == sorted(TEXTS)


def test_two_workers_match_the_main_process(manifest):
    cfg = _cfg(manifest, use_semi_sorted_batching=True, randomization_factor=0.2)
    main = list(build_dataloader(cfg, shuffle_seed=5))
    workers = list(build_dataloader({**cfg, "num_workers": 2}, shuffle_seed=5))
    assert len(main) == len(workers) == 3
    for a, b in zip(main, workers):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_epochs_and_resume(manifest):
    loader = build_dataloader(_cfg(manifest), shuffle_seed=1)
    loader.batch_sampler.set_epoch(0)
    epoch0 = [b[3].tolist() for b in loader]
    loader.batch_sampler.set_epoch(1)
    epoch1 = [b[3].tolist() for b in loader]
    assert epoch0 != epoch1
    fresh = build_dataloader(_cfg(manifest), shuffle_seed=1)
    fresh.batch_sampler.set_epoch(1, start_batch=1)
    assert [b[3].tolist() for b in fresh] == epoch1[1:]


def test_filters_sample_id_and_dictconfig(manifest):
    cfg = OmegaConf.create(_cfg(manifest, shuffle=False, min_duration=0.35, max_duration=0.75, return_sample_id=True,
                                batch_size=8))
    (batch,) = list(build_dataloader(cfg))
    assert batch[4].tolist() == [0, 1, 2, 3]  # 0.4, 0.5, 0.6 and 0.7 s kept
    assert batch[1].tolist()[0] == 6400  # 0.4 s


def test_bpe_tokenizer_and_channel_selector(manifest, tmp_path):
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    out = process_asr_text_tokenizer(manifest=str(manifest), data_root=tmp_path, vocab_size=30)
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    cfg = _cfg(manifest, shuffle=False, batch_size=8, channel_selector=0, use_start_end_token=False)
    del cfg["labels"]
    (signal, signal_len, tokens, tokens_len) = next(iter(build_dataloader(cfg, tok)))
    assert [tok.decode(t[: int(n)]) for t, n in zip(tokens, tokens_len)] == TEXTS
    stereo = sf.read(manifest.parent / "wavs" / "5.wav", dtype="float32")[0]
    np.testing.assert_array_equal(signal[5, : int(signal_len[5])].numpy(), stereo[:, 0])


@pytest.mark.parametrize("key, value, message", [
    ("is_tarred", True, "tarred"),
    ("use_lhotse", True, "Lhotse"),
    ("trim_silence", True, "silence trimming"),
    ("augmentor", {"white_noise": {"prob": 0.5}}, "augmentation"),
    ("manifest_filepat", "x.json", "unknown key dataset.manifest_filepat; did you mean dataset.manifest_filepath"),
    ("batchsize", 4, "unknown key dataset.batchsize; did you mean dataset.batch_size"),
    ("batch_size", "16", r"dataset.batch_size: wrong type: got '16' \(str\), expected int"),
])
def test_config_errors_name_the_key(manifest, key, value, message):
    with pytest.raises(DataConfigError, match=message) as info:
        build_dataloader(_cfg(manifest, **{key: value}))
    assert key in str(info.value)


def test_missing_manifest_and_tokenizer(manifest):
    with pytest.raises(DataConfigError, match="manifest_filepath is not set"):
        build_dataloader(_cfg(manifest, manifest_filepath=None))
    cfg = _cfg(manifest)
    del cfg["labels"]
    with pytest.raises(DataConfigError, match="no tokenizer"):
        build_dataloader(cfg)


def test_errors_name_the_block_and_warn_mode_drops_unknown_keys(manifest, caplog):
    with pytest.raises(DatasetConfigError, match="unknown key model.train_ds.batch_sizee; did you mean "
                                                 "model.train_ds.batch_size") as info:
        build_dataloader(_cfg(manifest, batch_sizee=4), path="model.train_ds")
    assert isinstance(info.value, ConfigError) and info.value.suggestion == "model.train_ds.batch_size"
    reset_logged_keys()
    with caplog.at_level(logging.INFO, logger="nemofn.core.schema"):
        loader = build_dataloader(_cfg(manifest, batch_size=4, batch_sizee=8, shuffle_n=2048), path="test_ds",
                                  unknown_keys="warn")
    assert loader.batch_sampler.batch_size == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("unknown config key test_ds.batch_sizee is ignored" in m for m in messages)
    assert any("test_ds.shuffle_n has no effect in nemofn" in m for m in messages)


def test_reference_batch_matches_nemo(nemo3_dir):
    """The 8 reference clips, read whole and collated, equal the batch NeMo 3.0 recorded."""
    reference = torch.load(nemo3_dir / "citrinet_bpe.ref.pt", weights_only=True)
    entries = load_manifests(str(nemo3_dir / "audio_manifest.json"))
    items = []
    for entry in entries:
        signal = torch.from_numpy(load_audio(entry.audio_filepath, sample_rate=16000))
        items.append((signal, len(signal), torch.zeros(0, dtype=torch.int64), 0))
    signal, signal_len, _, _ = collate(items)
    assert torch.equal(signal_len, reference["signal_len"])
    assert torch.equal(signal, reference["signal"])
    assert [e.text for e in entries] == reference["text"]
