"""SaveRestoreConnector with a tiny stand-in model that follows the save/restore protocol ModelPT will follow."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from compat.archive import open_nemo, save_nemo
from compat.artifacts import ArtifactItem, ArtifactPathType
from compat.core.connectors import SavableModel, SaveRestoreConnector
from compat.errors import MissingArtifactError, NemoFileNotFoundError

BPE_KEYS = ("tokenizer.model_path", "tokenizer.vocab_path", "tokenizer.spe_tokenizer_vocab")


class FakeModel:
    """Holds a config and a flat state dict; registers tokenizer artifacts while it is built, as ASR BPE models do."""

    restore_states: list[tuple[bool, str | None]] = []

    def __init__(self, cfg: DictConfig, trainer: Any = None) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.artifacts: dict[str, ArtifactItem] = {}
        self.weights: dict[str, torch.Tensor] = {"decoder.weight": torch.zeros(2, 2)}
        self.loaded_strict: bool | None = None
        self.device = None
        self.artifact_bytes: dict[str, bytes] = {}
        if "tokenizer" in cfg:
            connector = SaveRestoreConnector()
            for key in BPE_KEYS:
                path = connector.register_artifact(self, key, OmegaConf.select(cfg, key))
                self.artifact_bytes[key] = Path(path).read_bytes()  # the file exists while the model is built

    @classmethod
    def from_config_dict(cls, config: DictConfig, trainer: Any = None) -> FakeModel:
        return cls(config, trainer=trainer)

    @classmethod
    def _set_model_restore_state(cls, is_being_restored: bool, folder: str | None = None) -> None:
        cls.restore_states.append((is_being_restored, folder))

    def to(self, device: Any) -> FakeModel:
        self.device = torch.device(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        self.loaded_strict = strict
        self.weights = dict(state_dict)


def test_protocol_and_properties() -> None:
    connector = SaveRestoreConnector()
    assert connector.model_config_yaml == "model_config.yaml"
    assert connector.model_weights_ckpt == "model_weights.ckpt"
    assert connector.model_extracted_dir is None and connector.pack_nemo_file is True
    connector.model_config_yaml, connector.model_weights_ckpt = "cfg.yaml", "w.ckpt"
    connector.model_extracted_dir, connector.pack_nemo_file = "/x", False
    assert (connector.model_config_yaml, connector.model_weights_ckpt) == ("cfg.yaml", "w.ckpt")
    assert (connector.model_extracted_dir, connector.pack_nemo_file) == ("/x", False)
    assert isinstance(FakeModel(OmegaConf.create({"a": 1})), SavableModel)


def test_restore_from_reference_bpe(nemo3_dir: Path) -> None:
    path = nemo3_dir / "citrinet_bpe.nemo"
    FakeModel.restore_states.clear()
    model = SaveRestoreConnector().restore_from(FakeModel, str(path), map_location="cpu", strict=False, trainer="T")
    with open_nemo(path) as archive:
        expected = archive.state_dict()
        raw_cfg = archive.config()
        for key in BPE_KEYS:
            extracted = archive.resolve_artifact(OmegaConf.select(raw_cfg, key))
            assert model.artifact_bytes[key] == Path(extracted).read_bytes()
    assert isinstance(model, FakeModel) and model.trainer == "T" and model.loaded_strict is False
    assert model.device == torch.device("cpu")
    assert model.weights.keys() == expected.keys()
    assert all(torch.equal(model.weights[k], expected[k]) for k in expected)
    assert OmegaConf.is_struct(model.cfg)
    assert FakeModel.restore_states and FakeModel.restore_states[0][0] is True
    for key in BPE_KEYS:
        item = model.artifacts[key]
        assert item.path_type == ArtifactPathType.TAR_PATH and item.archive == str(path)
        assert item.path == OmegaConf.select(raw_cfg, key)  # "nemo:<hex>_<name>"
        assert os.path.isabs(OmegaConf.select(model.cfg, key)), "the live config holds the extracted path"


def test_return_config_and_override(nemo3_dir: Path, tmp_path: Path) -> None:
    path = str(nemo3_dir / "quartznet_char.nemo")
    connector = SaveRestoreConnector()
    conf = connector.restore_from(FakeModel, path, return_config=True)
    assert isinstance(conf, DictConfig)
    assert {"preprocessor", "encoder", "decoder", "target", "nemo_version", "decoding"} <= set(conf)
    changed = OmegaConf.to_container(conf)
    changed["decoding"]["strategy"] = "greedy"
    model = connector.restore_from(FakeModel, path, override_config_path=OmegaConf.create({"model": changed}))
    assert model.cfg.decoding.strategy == "greedy" and model.loaded_strict is True


def test_save_restore_round_trip_keeps_artifact_names(nemo3_dir: Path, tmp_path: Path) -> None:
    path = nemo3_dir / "conformer_bpe.nemo"
    connector = SaveRestoreConnector()
    model = connector.restore_from(FakeModel, str(path), map_location="cpu")
    out = tmp_path / "resaved" / "model.nemo"
    assert connector.save_to(model, str(out)) == str(out)
    with tarfile.open(path) as ref, tarfile.open(out) as new:
        assert new.getnames() == ref.getnames()
    with open_nemo(path) as ref, open_nemo(out) as new:
        assert OmegaConf.to_container(new.config()) == OmegaConf.to_container(ref.config())
        for key in BPE_KEYS:
            value = OmegaConf.select(new.config(), key)
            assert Path(new.resolve_artifact(value)).read_bytes() == model.artifact_bytes[key]
        new_state, ref_state = new.state_dict(), ref.state_dict()
        assert all(torch.equal(new_state[k], ref_state[k]) for k in ref_state)
    again = connector.restore_from(FakeModel, str(out))  # a re-saved archive restores in turn
    assert again.artifact_bytes == model.artifact_bytes


def test_save_local_artifact_then_restore(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.model", "vocab.txt", "tokenizer.vocab"):
        (tokenizer_dir / name).write_text(f"content of {name}")
    cfg = OmegaConf.create(
        {
            "tokenizer": {
                "dir": str(tokenizer_dir),
                "model_path": str(tokenizer_dir / "tokenizer.model"),
                "vocab_path": str(tokenizer_dir / "vocab.txt"),
                "spe_tokenizer_vocab": str(tokenizer_dir / "tokenizer.vocab"),
            },
            "target": "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
        }
    )
    model = FakeModel(cfg)
    assert all(model.artifacts[k].path_type == ArtifactPathType.LOCAL_PATH for k in BPE_KEYS)
    out = tmp_path / "model.nemo"
    SaveRestoreConnector().save_to(model, str(out))
    with open_nemo(out) as archive:
        written = archive.config()
        for key in BPE_KEYS:
            value = OmegaConf.select(written, key)
            assert value.startswith("nemo:") and value.endswith("_" + os.path.basename(OmegaConf.select(cfg, key)))
    restored = SaveRestoreConnector().restore_from(FakeModel, str(out))
    assert restored.artifact_bytes == model.artifact_bytes


def test_pack_nemo_file_false_writes_a_folder(tmp_path: Path) -> None:
    model = FakeModel(OmegaConf.create({"target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel"}))
    connector = SaveRestoreConnector()
    connector.pack_nemo_file = False
    connector.save_to(model, str(tmp_path / "out" / "model.nemo"))
    assert sorted(os.listdir(tmp_path / "out")) == ["model_config.yaml", "model_weights.ckpt"]
    # ... which restores as an unpacked folder (NeMo's model_extracted_dir).
    reader = SaveRestoreConnector()
    reader.model_extracted_dir = str(tmp_path / "out")
    restored = reader.restore_from(FakeModel, "ignored.nemo")
    assert torch.equal(restored.weights["decoder.weight"], model.weights["decoder.weight"])


def test_custom_member_names(tmp_path: Path) -> None:
    model = FakeModel(OmegaConf.create({"a": 1}))
    connector = SaveRestoreConnector()
    connector.model_config_yaml, connector.model_weights_ckpt = "cfg.yaml", "w.ckpt"
    connector.save_to(model, str(tmp_path / "m.nemo"))
    with tarfile.open(tmp_path / "m.nemo") as tar:
        assert tar.getnames() == [".", "./cfg.yaml", "./w.ckpt"]
    assert connector.restore_from(FakeModel, str(tmp_path / "m.nemo")).cfg.a == 1


def test_extract_state_dict_from(nemo3_dir: Path, tmp_path: Path) -> None:
    connector = SaveRestoreConnector()
    source = str(nemo3_dir / "quartznet_char.nemo")
    state = connector.extract_state_dict_from(source, str(tmp_path), split_by_module=True)
    decoder = torch.load(tmp_path / "decoder.ckpt", weights_only=True)
    assert decoder.keys() == {k.removeprefix("decoder.") for k in state if k.startswith("decoder.")}


def test_register_artifact_outside_a_restore(tmp_path: Path) -> None:
    connector = SaveRestoreConnector()
    model = FakeModel(OmegaConf.create({"tok": {"path": "x"}}))
    file = tmp_path / "vocab.txt"
    file.write_text("v")
    assert connector.register_artifact(model, "tok.path", str(file)) == str(file)
    assert model.artifacts["tok.path"] == ArtifactItem(path=str(file), path_type=ArtifactPathType.LOCAL_PATH)
    assert model.cfg.tok.path == str(file)
    assert connector.register_artifact(model, "tok.other", "") == ""
    assert connector.register_artifact(model, "tok.other", None) is None
    with pytest.raises(MissingArtifactError) as info:
        connector.register_artifact(model, "tok.missing", "nemo:abc_missing.model")
    assert isinstance(info.value, FileNotFoundError) and "tok.missing" in str(info.value)
    with pytest.warns(UserWarning, match="optional artifact"):
        missing = connector.register_artifact(model, "tok.missing", str(tmp_path / "nope"), verify_src_exists=False)
    assert missing is None
    assert "tok.missing" not in model.artifacts


def test_missing_restore_path_and_nested_models(tmp_path: Path) -> None:
    with pytest.raises(NemoFileNotFoundError) as info:
        SaveRestoreConnector().restore_from(FakeModel, str(tmp_path / "nope.nemo"))
    assert isinstance(info.value, FileNotFoundError)
    model = FakeModel(OmegaConf.create({"a": 1}))
    model.has_nemo_submodules = lambda: True
    with pytest.raises(NotImplementedError, match="nested"):
        SaveRestoreConnector().save_to(model, str(tmp_path / "m.nemo"))
    assert not (tmp_path / "m.nemo").exists()


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    model = FakeModel(OmegaConf.create({"a": 1}))
    assert SaveRestoreConnector().save_to(model, str(tmp_path / "m.nemo")) is None
    assert not (tmp_path / "m.nemo").exists()


def test_static_helpers(nemo3_dir: Path, tmp_path: Path) -> None:
    source = nemo3_dir / "citrinet_bpe.nemo"
    with tarfile.open(source) as tar:
        yaml_members = [m for m in tar.getmembers() if m.name.endswith(".yaml")]
    out = SaveRestoreConnector._unpack_nemo_file(str(source), str(tmp_path / "x"), members=yaml_members)
    assert os.listdir(out) == ["model_config.yaml"]
    save_nemo(tmp_path / "y" / "m.nemo", {"a": 1}, {"w": torch.ones(1)})
    SaveRestoreConnector._unpack_nemo_file(str(tmp_path / "y" / "m.nemo"), str(tmp_path / "z"))
    SaveRestoreConnector._make_nemo_file_from_folder(str(tmp_path / "packed.nemo"), str(tmp_path / "z"))
    with tarfile.open(tmp_path / "packed.nemo") as tar:
        assert tar.getnames() == [".", "./model_config.yaml", "./model_weights.ckpt"]
    weights = SaveRestoreConnector._load_state_dict_from_disk(str(tmp_path / "z" / "model_weights.ckpt"))
    assert torch.equal(weights["w"], torch.ones(1))
