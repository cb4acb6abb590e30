"""``save_to`` / ``restore_from`` round trips: reference archives re-save identically, and models trained with
nemofn are written in NeMo's exact layout (members, ``target`` values, tensors-only weights, hashed artifacts)."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from compat.archive import open_nemo
from compat.collections.asr.models import ASRModel, EncDecCTCModel, EncDecCTCModelBPE
from compat.core.classes import ModelPT
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.tokenizers.builder import train_sentencepiece
from nemofn.core.state import TrainState
from nemofn.train.step import StepConfig, train_step

LABELS = [" ", "a", "b", "c", "d", "e", "'"]
TEXTS = ["abc", "bad cab", "dead", "bee", "ace", "a bed"]
HASHED = re.compile(r"^\./[0-9a-f]{32}_(tokenizer\.model|vocab\.txt|tokenizer\.vocab)$")


def _members(path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


@pytest.mark.parametrize("name", ["quartznet_char", "conformer_bpe"])
def test_reference_round_trip_is_identical(nemo3_dir: Path, tmp_path: Path, name: str):
    source = nemo3_dir / f"{name}.nemo"
    model = ASRModel.restore_from(str(source), map_location="cpu")
    first = tmp_path / "first.nemo"
    model.save_to(str(first))
    again = ASRModel.restore_from(str(first), map_location="cpu")
    assert type(again) is type(model)
    second = tmp_path / "second.nemo"
    again.save_to(str(second))
    assert _members(first) == _members(source) == _members(second)  # artifacts keep their member names
    with open_nemo(source) as a, open_nemo(first) as b, open_nemo(second) as c:
        assert OmegaConf.to_container(a.config()) == OmegaConf.to_container(b.config()) \
            == OmegaConf.to_container(c.config())
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert sa.keys() == sb.keys() == sc.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]) and torch.equal(sa[key], sc[key])
        for member in a.members:
            if member not in ("model_config.yaml", "model_weights.ckpt"):
                assert Path(a.member_path(member)).read_bytes() == Path(c.member_path(member)).read_bytes()


# ------------------------------------------------------------------------------------ models trained by nemofn


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(3)
    lines = []
    for i, text in enumerate(TEXTS):
        n = int(16000 * (0.4 + 0.1 * i))
        wave = 0.2 * np.sin(2 * np.pi * (180 + 50 * i) * np.arange(n) / 16000) + 0.05 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": f"u{i}.wav", "duration": n / 16000, "text": text}))
    (root / "train.json").write_text("\n".join(lines) + "\n")
    return str(root / "train.json")


def _config(manifest: str, **extra) -> dict:
    cfg = {
        "sample_rate": 16000,
        "labels": LABELS,
        "train_ds": {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": 3, "shuffle": True,
                     "labels": LABELS},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "features": 16, "n_fft": 512},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 16, "activation": "relu",
                    "conv_mask": True, "jasper": [{"filters": 16, "repeat": 1, "kernel": [7], "stride": [1],
                                                   "dilation": [1], "dropout": 0.1, "residual": False}]},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 16, "num_classes": -1,
                    "vocabulary": LABELS},
        "optim": {"name": "adamw", "lr": 0.01},
    }
    cfg.update(extra)
    return cfg


def _train(fn: CTCModel, state, steps: int = 3):
    optimizer, schedule, _ = fn.optimization()
    train_state = TrainState.create(state, optimizer, rng=0)
    step = StepConfig(fn.network.objective, optimizer, schedule)
    loader = fn.dataloader(fn.cfg.train_ds)
    for _, batch in zip(range(steps), loader):
        train_state, _ = train_step(train_state, batch, step)
    return train_state


def test_nemofn_trained_char_model_is_written_in_nemo_layout(manifest: str, tmp_path: Path):
    fn = CTCModel.from_config(_config(manifest))
    state = fn.init_state(0)
    _train(fn, state, steps=2)
    path = tmp_path / "char.nemo"
    model = EncDecCTCModel.from_functional(fn, state)
    model.save_to(str(path))

    assert _members(path) == [".", "./model_config.yaml", "./model_weights.ckpt"]
    with tarfile.open(path) as tar:
        assert tar.getmember(".").isdir() and tar.getmember("./model_weights.ckpt").isfile()
    with open_nemo(path) as archive:
        cfg = archive.config()
        weights = torch.load(archive.member_path("model_weights.ckpt"), map_location="cpu", weights_only=True)
    assert cfg.target == "nemo.collections.asr.models.ctc_models.EncDecCTCModel" and cfg.nemo_version
    assert cfg.encoder._target_ == "nemo.collections.asr.modules.ConvASREncoder"
    assert cfg.decoding.strategy == "greedy_batch" and cfg.decoder.num_classes == len(LABELS)
    assert isinstance(weights, dict)
    assert all(isinstance(k, str) and type(v) is torch.Tensor for k, v in weights.items())
    assert weights.keys() == state.state_dict().keys()
    assert {"preprocessor.featurizer.window", "preprocessor.featurizer.fb"} <= weights.keys()
    tracked = [k for k in weights if k.endswith("num_batches_tracked")]
    assert tracked and all(weights[k].dtype == torch.int64 and weights[k].item() == 2 for k in tracked)

    restored = ModelPT.restore_from(str(path), map_location="cpu")
    assert type(restored) is EncDecCTCModel
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in state.state_dict().items())
    files = [str(Path(manifest).parent / f"u{i}.wav") for i in range(3)]
    for a, b in zip(model.transcribe(files, return_hypotheses=True, verbose=False),
                    restored.transcribe(files, return_hypotheses=True, verbose=False)):
        assert a.text == b.text and torch.equal(a.y_sequence, b.y_sequence)


def test_bpe_model_writes_hashed_tokenizer_artifacts(manifest: str, tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20) + "\n")
    tok_dir = tmp_path / "tok"
    train_sentencepiece(text, tok_dir, vocab_size=36)
    cfg = _config(manifest, tokenizer={"dir": str(tok_dir), "type": "bpe"})
    del cfg["labels"], cfg["train_ds"]["labels"], cfg["decoder"]["vocabulary"]
    model = EncDecCTCModelBPE(cfg)
    model.setup_optimization()
    model.training_step(next(iter(model.train_dataloader())))
    path = tmp_path / "bpe.nemo"
    model.save_to(str(path))

    members = _members(path)
    assert members[0] == "." and members[-2:] == ["./model_config.yaml", "./model_weights.ckpt"]
    hashed = members[1:-2]
    assert len(hashed) == 3 and all(HASHED.match(m) for m in hashed), hashed
    with open_nemo(path) as archive:
        saved = archive.config()
        for key, name in (("model_path", "tokenizer.model"), ("vocab_path", "vocab.txt"),
                          ("spe_tokenizer_vocab", "tokenizer.vocab")):
            value = saved.tokenizer[key]
            assert value.startswith("nemo:") and value.endswith("_" + name) and f"./{value[5:]}" in hashed
            assert Path(archive.resolve_artifact(value)).read_bytes() == (tok_dir / name).read_bytes()
        assert saved.tokenizer.dir == str(tok_dir)
        assert saved.target == "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE"
    assert model.cfg.tokenizer.model_path == str(tok_dir / "tokenizer.model")  # the live config keeps local paths

    restored = ASRModel.restore_from(str(path))
    assert type(restored) is EncDecCTCModelBPE
    assert restored.tokenizer.vocabulary == model.tokenizer.vocabulary
    resaved = tmp_path / "bpe_again.nemo"
    restored.save_to(str(resaved))
    assert _members(resaved) == members


def test_restore_from_an_unpacked_folder_and_save_again(nemo3_dir: Path, tmp_path: Path):
    from compat.archive import unpack
    from compat.core.connectors import SaveRestoreConnector

    source = nemo3_dir / "citrinet_bpe.nemo"
    folder = tmp_path / "unpacked"
    unpack(source, folder)
    connector = SaveRestoreConnector()
    connector.model_extracted_dir = str(folder)
    model = ASRModel.restore_from("ignored.nemo", save_restore_connector=connector, map_location="cpu")
    assert type(model) is EncDecCTCModelBPE and model.restoration_path == str(folder)
    by_name = ASRModel.from_pretrained(str(folder), map_location="cpu")  # a folder path resolves too
    assert all(torch.equal(by_name.state_dict()[k], v) for k, v in model.state_dict().items())
    out = tmp_path / "from_folder.nemo"
    model.save_to(str(out))
    assert _members(out) == _members(source)
    with open_nemo(source) as a, open_nemo(out) as b:
        assert OmegaConf.to_container(a.config()) == OmegaConf.to_container(b.config())
