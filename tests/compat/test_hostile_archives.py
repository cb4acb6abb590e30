"""The hostile-archive corpus (``hostile_archives.py``): every archive is refused with its named error, nothing is
written outside the extraction folder, the extraction folder is removed, and no payload runs."""

from __future__ import annotations

import importlib.util
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401 - its first import makes a cache folder under TMPDIR: the real one, not a case's
from omegaconf import OmegaConf

from compat.archive import open_nemo, unpack
from compat.collections.asr.models import ASRModel, EncDecCTCModel
from compat.errors import (
    ArchiveTooLargeError,
    CorruptArchiveError,
    ExtractionError,
    NemoArchiveError,
    WeightShapeError,
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tiny = _load("tiny_asr")
corpus = _load("hostile_archives")
CASES = {case.name: case for case in corpus.CASES}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> corpus.Base:
    """The tiny char CTC model, saved and read back: the valid archive every case derives from."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny.nemo"
    EncDecCTCModel(cfg=tiny.tiny_cfg()).save_to(str(path))
    with open_nemo(path) as archive:
        return corpus.Base(OmegaConf.to_container(archive.config()), archive.state_dict())


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> corpus.Paths:
    """Fresh folders for one case; the restore runs with TMPDIR and the working directory inside them."""
    paths = corpus.Paths.make(tmp_path)
    monkeypatch.setenv("TMPDIR", str(paths.tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the folder it found first
    monkeypatch.chdir(paths.cwd)
    for name in ("NEMOFN_MAX_MEMBER_BYTES", "NEMOFN_MAX_TOTAL_BYTES", "NEMOFN_MAX_CONFIG_BYTES",
                 "NEMOFN_ALLOW_NON_FINITE_WEIGHTS", "NEMOFN_YAML_NODE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    return paths


def _assert_left_nothing(paths: corpus.Paths) -> None:
    assert not paths.marker.exists(), "a payload ran"
    assert sorted(p.name for p in paths.root.iterdir()) == ["archives", "cwd", "sentinel"]
    assert [p.name for p in paths.sentinel.iterdir()] == ["tmp"], "something was written beside TMPDIR"
    assert list(paths.tmp.iterdir()) == [], "the extraction folder was not removed"
    assert list(paths.cwd.iterdir()) == [], "something was written to the working directory"
    assert [p.name for p in paths.archives.iterdir()] == ["model.nemo"]


def test_the_corpus_is_large_and_named():
    assert len(CASES) == len(corpus.CASES) >= 30
    covered = {case.error.__name__ for case in corpus.CASES}
    assert {"UnsafeArchiveError", "ArchiveTooLargeError", "CorruptArchiveError", "YamlBudgetError",
            "NonFiniteWeightsError", "WeightDtypeError", "UnsupportedTensorError", "WeightShapeError",
            "MissingTargetError", "ConfigInterpolationError", "MissingConfigError", "MissingWeightsError",
            "UnknownTargetError", "ArchiveConfigError"} <= covered
    registry_errors = {"UnknownTargetError"}  # nemofn.core.registry's, a LookupError as before
    assert all(issubclass(case.error, NemoArchiveError) for case in corpus.CASES
               if case.error.__name__ not in registry_errors)


def test_the_base_archive_restores_under_the_same_harness(base, isolated):
    path = corpus._write(isolated, base.members())
    model = ASRModel.restore_from(str(path), map_location="cpu")
    assert type(model) is EncDecCTCModel
    assert torch.equal(model.state_dict()[corpus.CONV_KEY], base.state[corpus.CONV_KEY])
    assert list(isolated.tmp.iterdir()) == []
    with open_nemo(path) as archive:  # extracted into an owner-tagged folder in TMPDIR (swept if a kill leaves it)
        folder = Path(archive.folder)
        assert folder.parent == isolated.tmp and folder.name.startswith("nemo_restore_") and ".tmp-" in folder.name
    assert not folder.exists()


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch, loading the quantised tensor
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_archive_is_refused(name, base, isolated, monkeypatch):
    case = CASES[name]
    path = case.build(base, isolated)
    assert path == isolated.archives / "model.nemo" and path.stat().st_size < 1 << 20, "cases stay small"
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(case.error, match=case.match) as info:
        ASRModel.restore_from(str(path), map_location="cpu", **case.options)
    assert str(path) in str(info.value), "the error names the archive"
    _assert_left_nothing(isolated)


def test_a_config_of_20M_filters_allocates_nothing(base, isolated):
    path = CASES["20M-filters"].build(base, isolated)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(WeightShapeError) as info:
        ASRModel.restore_from(str(path), map_location="cpu")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"the peak memory grew by {grown_mib:.0f} MiB (the model would take 2.6 GB)"
    assert time.perf_counter() - start < 10
    assert info.value.key == corpus.CONV_KEY
    assert info.value.checkpoint_shape == (24, 16, 1) and info.value.model_shape == (20_000_000, 16, 1)
    assert isinstance(info.value, RuntimeError), "torch's size mismatch is a RuntimeError; ported code catches it"


def test_limits_come_from_arguments_then_environment(base, isolated, monkeypatch):
    path = CASES["member-over-env-limit"].build(base, isolated)
    with pytest.raises(ArchiveTooLargeError, match="max_member_bytes= or NEMOFN_MAX_MEMBER_BYTES"):
        ASRModel.restore_from(str(path), map_location="cpu", max_member_bytes="256KiB")
    monkeypatch.setenv("NEMOFN_MAX_MEMBER_BYTES", "256KiB")
    with pytest.raises(ArchiveTooLargeError):
        ASRModel.restore_from(str(path), map_location="cpu")
    # The argument wins over the environment; the big member is not a model member, so the restore works.
    model = ASRModel.restore_from(str(path), map_location="cpu", max_member_bytes=1 << 20)
    assert type(model) is EncDecCTCModel
    monkeypatch.setenv("NEMOFN_MAX_MEMBER_BYTES", "lots")
    with pytest.raises(ValueError, match="NEMOFN_MAX_MEMBER_BYTES='lots' is not a size"):
        ASRModel.restore_from(str(path), map_location="cpu")
    _assert_left_nothing(isolated)


def test_only_config_counts_only_what_it_extracts(base, isolated):
    path = CASES["total-over-argument-limit"].build(base, isolated)
    conf = ASRModel.restore_from(str(path), return_config=True, max_total_bytes="256KiB")
    assert conf.target == base.config["target"]
    with pytest.raises(ArchiveTooLargeError):
        unpack(path, isolated.tmp / "out", max_total_bytes="256KiB")
    assert list(isolated.tmp.iterdir()) == [isolated.tmp / "out"]


def test_a_stream_longer_than_its_header_is_cut_off(base, isolated, monkeypatch):
    """The header check cannot see a member that grows while it is read: the copy counts the bytes itself."""
    path = corpus._write(isolated, base.members())
    real_extractfile = tarfile.TarFile.extractfile

    def growing(self, member):
        stream = real_extractfile(self, member)
        if not member.name.endswith("model_weights.ckpt"):
            return stream
        return io.BytesIO(stream.read() + b"\0" * (3 << 20))

    monkeypatch.setattr(tarfile.TarFile, "extractfile", growing)
    with pytest.raises(ArchiveTooLargeError, match="it yields at least"):
        open_nemo(path, max_member_bytes=100_000)  # the header's 29 kB pass; the 1 MiB first chunk does not
    with pytest.raises(CorruptArchiveError, match="yields more than the .* bytes its tar header declares"):
        open_nemo(path)
    assert list(isolated.tmp.iterdir()) == []
    target = isolated.root / "cwd" / "out"
    with pytest.raises(CorruptArchiveError):
        unpack(path, target)
    assert sorted(os.listdir(target)) == ["model_config.yaml"], "the partial member is removed"


def test_a_full_disk_is_named_and_cleaned_up(base, isolated, monkeypatch):
    import errno

    import compat.archive.tar as tar_module

    path = corpus._write(isolated, base.members())
    real_open = open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith("model_weights.ckpt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tar_module, "open", full_disk, raising=False)
    with pytest.raises(ExtractionError, match="cannot extract member './model_weights.ckpt' into .*: No space left"
                       ) as info:
        ASRModel.restore_from(str(path), map_location="cpu")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value)
    _assert_left_nothing(isolated)
