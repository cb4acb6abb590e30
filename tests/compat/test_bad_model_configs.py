"""Named errors for bad model configs in archives: no `target` (abstract classes), unresolvable interpolations."""

from __future__ import annotations

import io
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
