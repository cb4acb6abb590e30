"""Named errors for bad model configs in archives: no `target` (abstract classes), unresolvable interpolations."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from compat.collections.asr.models import ASRModel, EncDecCTCModelBPE
from compat.core.classes import ModelPT
from compat.errors import MissingTargetError, NemoArchiveError


def _repack(reference: Path, dest: Path, edit_config) -> Path:
    with tarfile.open(reference) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_config.yaml"):
                data = edit_config(yaml.safe_load(data)).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def _without_target(cfg):
    cfg.pop("target", None)
    return yaml.safe_dump(cfg)


def test_abstract_classes_name_the_missing_target_and_the_archive(nemo3_dir: Path, tmp_path):
    path = _repack(nemo3_dir / "conformer_bpe.nemo", tmp_path / "no_target.nemo", _without_target)
    for cls in (ASRModel, ModelPT):
        with pytest.raises(MissingTargetError, match=r"no_target\.nemo: model_config\.yaml has no `target` \(its "
                                                     r"keys: .*\), so \w+ cannot tell which model to build") as info:
            cls.restore_from(str(path))
        assert isinstance(info.value, NemoArchiveError) and info.value.source.endswith("no_target.nemo")
    empty = _repack(nemo3_dir / "conformer_bpe.nemo", tmp_path / "empty.nemo", lambda cfg: "")
    with pytest.raises(MissingTargetError, match="model_config.yaml is empty"):
        ASRModel.restore_from(str(empty))


def test_a_concrete_class_restores_a_config_without_target(nemo3_dir: Path, tmp_path):
    path = _repack(nemo3_dir / "conformer_bpe.nemo", tmp_path / "no_target.nemo", _without_target)
    model = EncDecCTCModelBPE.restore_from(str(path))
    assert type(model) is EncDecCTCModelBPE


@pytest.mark.parametrize("value, problem", [("${sample_rate}", "Recursive interpolation detected"),
                                            ("${nope.x}", "Interpolation key 'nope.x' not found")])
def test_unresolvable_interpolations_name_the_archive_and_key(nemo3_dir: Path, tmp_path, value, problem):
    from compat.errors import ConfigInterpolationError

    def edit(cfg):
        cfg["sample_rate"] = value
        return yaml.safe_dump(cfg)

    path = _repack(nemo3_dir / "quartznet_char.nemo", tmp_path / "interp.nemo", edit)
    with pytest.raises(ConfigInterpolationError, match=rf"interp\.nemo: model_config\.yaml: the interpolation at "
                                                       rf"`sample_rate` cannot be resolved: {problem}"):
        ASRModel.restore_from(str(path))


@pytest.mark.parametrize("key, value", [("n_heads", -4), ("d_model", 0), ("conv_kernel_size", -9),
                                        ("subsampling_factor", -4)])
def test_negative_sizes_are_config_errors_naming_the_archive_and_key(nemo3_dir: Path, tmp_path, key, value):
    from compat.errors import ArchiveConfigError
    from nemofn.core.schema import ConfigError

    def edit(cfg):
        cfg["encoder"][key] = value
        return yaml.safe_dump(cfg)

    path = _repack(nemo3_dir / "conformer_bpe.nemo", tmp_path / "negative.nemo", edit)
    with pytest.raises(ArchiveConfigError, match=rf"negative\.nemo: model_config\.yaml: model\.encoder\.{key}: "
                                                 rf"invalid value {value}: must be > 0") as info:
        ASRModel.restore_from(str(path), map_location="cpu")
    assert isinstance(info.value, ConfigError) and info.value.key == f"model.encoder.{key}"


def test_a_modules_own_check_of_its_config_names_the_archive(nemo3_dir: Path, tmp_path):
    def edit(cfg):
        cfg["encoder"]["n_heads"] = 7  # positive, but d_model=96 is not divisible by it
        return yaml.safe_dump(cfg)

    path = _repack(nemo3_dir / "conformer_bpe.nemo", tmp_path / "heads.nemo", edit)
    with pytest.raises(ValueError, match=r"heads\.nemo: model_config\.yaml: .*d_model=96 must be divisible by "
                                         r"n_heads=7"):
        ASRModel.restore_from(str(path), map_location="cpu")


def test_nemo_sentinels_stay_valid_and_other_sizes_are_checked():
    from nemofn.asr.configs.modules import ConformerEncoderConfig, ConvASRDecoderConfig, JasperEncoderConfig
    from nemofn.core.schema import ConfigError, validate

    conformer = {"feat_in": 80, "n_layers": 2, "d_model": 64, "feat_out": -1, "subsampling_conv_channels": -1,
                 "subsampling_conv_chunking_factor": -1}
    validate(conformer, ConformerEncoderConfig)  # NeMo's -1: "the default" / "never"
    validate({"feat_in": None, "num_classes": -1}, ConvASRDecoderConfig)  # filled by the model
    block = {"filters": 8, "repeat": 1, "kernel": [3], "stride": [1], "dilation": [1], "dropout": 0.0,
             "residual": False, "se_context_size": -1, "future_context": -1}
    validate(block, JasperEncoderConfig)
    for bad, message in [({"feat_out": -2}, "feat_out: invalid value -2: must be > 0 (a size or count), or -1"),
                         ({"n_layers": -1}, "n_layers: invalid value -1: must be >= 0")]:
        with pytest.raises(ConfigError, match=re.escape(f"encoder.{message}")):
            validate({**conformer, **bad}, ConformerEncoderConfig, "encoder")
    with pytest.raises(ConfigError, match=r"dilation: invalid value \[1, -2\]: must be > 0 .* \(the item -2\)"):
        validate({**block, "dilation": [1, -2]}, JasperEncoderConfig)
    with pytest.raises(ConfigError, match="future_context: invalid value -3"):
        validate({**block, "future_context": -3}, JasperEncoderConfig)


def test_a_dataset_config_error_keeps_its_class_and_names_the_archive(nemo3_dir: Path, tmp_path):
    from compat.errors import ArchiveConfigError
    from nemofn.asr.configs.data import DatasetConfigError

    def edit(cfg):
        cfg["train_ds"]["batch_size"] = "many"
        return yaml.safe_dump(cfg)

    path = _repack(nemo3_dir / "quartznet_char.nemo", tmp_path / "ds.nemo", edit)
    with pytest.raises(DatasetConfigError, match=r"ds\.nemo: model_config\.yaml: model\.train_ds\.batch_size: "
                                                 r"wrong type") as info:
        ASRModel.restore_from(str(path), map_location="cpu")
    assert isinstance(info.value, ArchiveConfigError) and isinstance(info.value, NemoArchiveError)
