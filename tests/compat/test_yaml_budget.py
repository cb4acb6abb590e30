"""Untrusted YAML (a .nemo's model_config.yaml, an override file) is refused when its aliases expand too far."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from compat.archive import open_nemo
from compat.archive.yaml_budget import check_yaml_budget, expanded_nodes
from compat.collections.asr.models import ASRModel
from compat.errors import NemoArchiveError, YamlBudgetError

LAUGHS = "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10 if p else ['lol'] * 10)}]\n"
                 for p, n in zip([None, *"abcdefgh"], "abcdefghi"))  # 10^9 nodes in about 350 bytes


def _archive(folder: Path, config: str) -> Path:
    path = folder / "model.nemo"
    weights = io.BytesIO()
    torch.save({}, weights)
    with tarfile.open(path, "w") as tar:
        for name, data in (("./model_config.yaml", config.encode()), ("./model_weights.ckpt", weights.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_expanded_node_count_shares_nothing():
    root = yaml.compose("a: &a [1, 2]\nb: [*a, *a]\n", Loader=yaml.SafeLoader)
    # mapping + key a + [1, 2] (3) + key b + [*a, *a] (1 + 3 + 3)
    assert expanded_nodes(root, 10**6) == 13
    assert expanded_nodes(yaml.compose(LAUGHS, Loader=yaml.SafeLoader), 10**6) == 10**6 + 1  # stops at the limit


def test_a_billion_laughs_archive_is_refused_before_anything_is_built(tmp_path):
    assert len(LAUGHS) < 500
    path = _archive(tmp_path, LAUGHS)
    with pytest.raises(YamlBudgetError, match="model_config.yaml: its aliases expand to more than 1,000,000 nodes"):
        ASRModel.restore_from(str(path))
    with open_nemo(str(path)) as archive, pytest.raises(YamlBudgetError) as info:
        archive.config()
    assert isinstance(info.value, NemoArchiveError) and isinstance(info.value, ValueError)
    assert info.value.path == str(path)


def test_recursive_alias_is_refused(tmp_path):
    path = _archive(tmp_path, "target: x\nloop: &l [1, *l]\n")
    with pytest.raises(YamlBudgetError, match="recursive alias at line 2"):
        ASRModel.restore_from(str(path))


def test_override_file_is_checked_too(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(LAUGHS)
    with pytest.raises(YamlBudgetError, match="override config"):
        check_yaml_budget(str(override), source=str(override), member="the override config")


def test_benign_anchors_load_and_the_limit_is_configurable(tmp_path, monkeypatch):
    config = tmp_path / "ok.yaml"
    config.write_text("ds: &ds {batch_size: 4, shuffle: false}\ntrain_ds: *ds\nvalidation_ds: *ds\n")
    check_yaml_budget(str(config), source="s", member="m")  # 19 nodes once expanded: fine
    monkeypatch.setenv("NEMOFN_YAML_NODE_LIMIT", "10")
    with pytest.raises(YamlBudgetError, match="more than 10 nodes"):
        check_yaml_budget(str(config), source="s", member="m")
    monkeypatch.setenv("NEMOFN_YAML_NODE_LIMIT", "ten")
    with pytest.raises(ValueError, match="NEMOFN_YAML_NODE_LIMIT='ten'"):
        check_yaml_budget(str(config), source="s", member="m")
