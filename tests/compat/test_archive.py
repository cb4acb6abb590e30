"""compat.archive on NeMo 3.0's reference `.nemo` files and on archives built here (good and hostile ones)."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from compat import archive as nemo_archive
from compat.archive import (
    extract_state_dict,
    load_config,
    maybe_update_config_version,
    open_nemo,
    save_nemo,
    unpack,
)
from compat.artifacts import ArtifactSpec, find_nemo_values, specs_from_config, strip_hash_prefix
from compat.errors import (
    BadOverrideError,
    BadStateDictError,
    CorruptArchiveError,
    DanglingArtifactError,
    MissingArtifactError,
    MissingConfigError,
    MissingWeightsError,
    NemoArchiveError,
    NemoFileNotFoundError,
    UnsafeArchiveError,
    UnsafeTargetError,
)

NAMES = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe")
BPE_NAMES = NAMES[1:]
TOKENIZER_FILES = {
    "tokenizer.model_path": "tokenizer.model",
    "tokenizer.vocab_path": "vocab.txt",
    "tokenizer.spe_tokenizer_vocab": "tokenizer.vocab",
}
TOKENIZER_KEYS = tuple(TOKENIZER_FILES)
HASHED_MEMBER = re.compile(r"^\./[0-9a-f]{32}_(?P<base>.+)$")


def _tar_bytes(path: Path) -> dict[str, bytes]:
    """``{normalised member name: bytes}`` of the regular files of a tar, read with tarfile directly."""
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _reference_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(_tar_bytes(path)["model_weights.ckpt"]), weights_only=True)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def _write_tar(path: Path, members: dict[str, bytes], mode: str = "w:") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _tiny_config() -> dict:
    return {
        "sample_rate": 16000,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "features": 4},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 3, "num_classes": 2},
        "target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
    }


def _tiny_state() -> dict[str, torch.Tensor]:
    return {
        "decoder.decoder_layers.0.weight": torch.randn(3, 3, 1),
        "encoder.encoder.0.mconv.2.num_batches_tracked": torch.tensor(7),
    }


# -- reading the reference archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_reference_archive_opens_and_loads(nemo3_dir: Path, name: str) -> None:
    path = nemo3_dir / f"{name}.nemo"
    with open_nemo(path) as archive:
        assert archive.is_packed and archive.source == str(path)
        assert {"model_config.yaml", "model_weights.ckpt"} <= set(archive.members)
        cfg = archive.config()
        assert isinstance(cfg, DictConfig)
        assert cfg.target.startswith("nemo.collections.asr.models.") and cfg.nemo_version == "3.0.0"
        assert cfg.encoder._target_.startswith("nemo.collections.asr.modules.")
        state = archive.state_dict()
        folder = archive.folder
        assert os.path.isdir(folder)
    assert not os.path.exists(folder), "the temporary extraction folder must be removed on close"
    _assert_same_weights(state, _reference_weights(path))
    assert {"preprocessor.featurizer.window", "preprocessor.featurizer.fb"} <= set(state)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert counters and all(state[k].dtype == torch.int64 and state[k].ndim == 0 for k in counters)


@pytest.mark.parametrize("name", BPE_NAMES)
def test_bpe_artifacts_resolve(nemo3_dir: Path, name: str) -> None:
    path = nemo3_dir / f"{name}.nemo"
    raw = _tar_bytes(path)
    with open_nemo(path) as archive:
        cfg = archive.config()
        assert set(find_nemo_values(cfg)) == set(TOKENIZER_KEYS)
        for key in TOKENIZER_KEYS:
            value = OmegaConf.select(cfg, key)
            member = value.removeprefix("nemo:")
            resolved = archive.resolve_artifact(value)
            assert Path(resolved).read_bytes() == raw[member]
            # Old archives name the file by a path whose basename is the member.
            assert archive.resolve_artifact(f"/somewhere/else/{member}") == resolved
            assert strip_hash_prefix(member) == TOKENIZER_FILES[key]
        with pytest.raises(MissingArtifactError, match="no member"):
            archive.resolve_artifact("nemo:0123_missing.model")
        assert archive.resolve_artifact("nemo:0123_missing.model", verify=False) is None
        assert archive.resolve_artifact(None) is None and archive.resolve_artifact("") == ""
        with pytest.raises(UnsafeArchiveError):
            archive.resolve_artifact("nemo:../../etc/passwd")
        specs = archive.artifact_specs()
        assert {k: s.member for k, s in specs.items()} == {
            k: OmegaConf.select(cfg, k).removeprefix("nemo:") for k in TOKENIZER_KEYS
        }


@pytest.mark.parametrize("name", ["citrinet_bpe"])
def test_gzip_copy_without_dot_prefix_reads_the_same(nemo3_dir: Path, tmp_path: Path, name: str) -> None:
    path = nemo3_dir / f"{name}.nemo"
    raw = _tar_bytes(path)
    gz = _write_tar(tmp_path / "old_style.nemo", raw, mode="w:gz")
    with tarfile.open(gz) as tar:
        assert all(not n.startswith("./") and n != "." for n in tar.getnames())
    with open(gz, "rb") as file:
        assert file.read(2) == b"\x1f\x8b"
    with open_nemo(path) as ref, open_nemo(gz) as old:
        assert old.members == tuple(raw) == ref.members
        assert _container(old.config()) == _container(ref.config())
        _assert_same_weights(old.state_dict(), ref.state_dict())
        for value in find_nemo_values(ref.config()).values():
            assert Path(old.resolve_artifact(value)).read_bytes() == Path(ref.resolve_artifact(value)).read_bytes()


@pytest.mark.parametrize("name", ["conformer_bpe"])
def test_unpacked_folder_reads_the_same(nemo3_dir: Path, tmp_path: Path, name: str) -> None:
    path = nemo3_dir / f"{name}.nemo"
    folder = tmp_path / "unpacked"
    extracted = unpack(path, folder)
    assert sorted(extracted) == sorted(_tar_bytes(path))
    with open_nemo(path) as ref, open_nemo(folder) as unpacked:
        assert not unpacked.is_packed and unpacked.folder == str(folder)
        assert set(unpacked.members) == set(ref.members)
        assert _container(unpacked.config()) == _container(ref.config())
        _assert_same_weights(unpacked.state_dict(), ref.state_dict())
        for value in find_nemo_values(ref.config()).values():
            assert unpacked.resolve_artifact(value) == str(folder / value.removeprefix("nemo:"))
    assert (folder / "model_config.yaml").is_file(), "closing must not delete a user's unpacked folder"


def test_only_config_extracts_only_yaml(nemo3_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "cfg_only"
    with open_nemo(nemo3_dir / "citrinet_bpe.nemo", extract_to=target, only_config=True) as archive:
        assert sorted(os.listdir(target)) == ["model_config.yaml"]
        assert "model_weights.ckpt" in archive.members
        with pytest.raises(MissingWeightsError, match="only_config"):
            archive.state_dict()
        with pytest.raises(MissingArtifactError, match="only_config"):
            archive.resolve_artifact(archive.config().tokenizer.model_path)
    assert target.is_dir(), "an explicit extract_to folder belongs to the caller"


def test_load_config_overrides(nemo3_dir: Path, tmp_path: Path) -> None:
    path = nemo3_dir / "quartznet_char.nemo"
    own = load_config(path)
    assert own.decoder.num_classes == len(own.labels)
    changed = OmegaConf.to_container(own)
    changed["decoding"]["strategy"] = "greedy"
    wrapped = OmegaConf.create({"model": changed, "trainer": {"devices": 1}})
    assert load_config(path, wrapped).decoding.strategy == "greedy"
    assert "trainer" not in load_config(path, wrapped)
    assert load_config(path, {"model": changed}).decoding.strategy == "greedy"
    yaml_file = tmp_path / "override.yaml"
    OmegaConf.save(OmegaConf.create({"model": changed}), yaml_file)
    assert _container(load_config(path, str(yaml_file))) == changed
    assert _container(load_config(path, yaml_file)) == changed
    with pytest.raises(BadOverrideError, match="no such file"):
        load_config(path, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(BadOverrideError, match="not a mapping"):
        load_config(path, tmp_path / "list.yaml")
    with pytest.raises(BadOverrideError):
        load_config(path, 42)


def test_extract_state_dict(nemo3_dir: Path, tmp_path: Path) -> None:
    path = nemo3_dir / "quartznet_char.nemo"
    state = extract_state_dict(path, tmp_path / "whole")
    _assert_same_weights(torch.load(tmp_path / "whole" / "model_weights.ckpt", weights_only=True), state)
    extract_state_dict(path, tmp_path / "split", split_by_module=True)
    assert sorted(os.listdir(tmp_path / "split")) == ["decoder.ckpt", "encoder.ckpt", "preprocessor.ckpt"]
    encoder = torch.load(tmp_path / "split" / "encoder.ckpt", weights_only=True)
    assert encoder.keys() == {k.removeprefix("encoder.") for k in state if k.startswith("encoder.")}
    assert torch.equal(encoder["encoder.0.mconv.0.conv.weight"], state["encoder.encoder.0.mconv.0.conv.weight"])


# -- writing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(nemo3_dir: Path, tmp_path: Path, name: str) -> None:
    path = nemo3_dir / f"{name}.nemo"
    out = tmp_path / f"{name}.nemo"
    with open_nemo(path) as archive:
        cfg, state = archive.config(), archive.state_dict()
        save_nemo(out, cfg, state, archive.artifact_specs())
    with tarfile.open(path) as ref_tar, tarfile.open(out, "r:") as out_tar:  # "r:" : written uncompressed
        # Same members in the same order, artifacts keeping their names: the `arcname="."` layout.
        assert out_tar.getnames() == ref_tar.getnames()
        assert out_tar.getmembers()[0].isdir() and out_tar.getnames()[0] == "."
    raw_ref, raw_out = _tar_bytes(path), _tar_bytes(out)
    assert raw_out["model_config.yaml"] == raw_ref["model_config.yaml"], "the YAML text itself round-trips"
    for member in raw_ref:
        if HASHED_MEMBER.match("./" + member):
            assert raw_out[member] == raw_ref[member]
    with open_nemo(out) as again:
        assert _container(again.config()) == _container(cfg)
        _assert_same_weights(again.state_dict(), state)


def test_local_artifact_gets_hashed_member_and_nemo_value(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")
    cfg = _tiny_config() | {"tokenizer": {"dir": str(tmp_path), "vocab_path": str(vocab)}}
    out = tmp_path / "out" / "model.nemo"
    save_nemo(out, cfg, _tiny_state(), {"tokenizer.vocab_path": ArtifactSpec(str(vocab))})
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "." and names[-2:] == ["./model_config.yaml", "./model_weights.ckpt"]
    (artifact,) = [n for n in names if HASHED_MEMBER.match(n)]
    assert HASHED_MEMBER.match(artifact).group("base") == "vocab.txt"
    with open_nemo(out) as archive:
        written = archive.config()
        assert written.tokenizer.vocab_path == "nemo:" + artifact.removeprefix("./")
        assert written.tokenizer.dir == str(tmp_path)
        assert written.nemo_version == nemo_archive.DEFAULT_NEMO_VERSION
        assert Path(archive.resolve_artifact(written.tokenizer.vocab_path)).read_text() == "a\nb\n"
        # Re-saving from this archive keeps the member name; a second local save would draw a new one.
        resave = tmp_path / "resave.nemo"
        save_nemo(resave, written, archive.state_dict(), specs_from_config(written, out))
    with tarfile.open(resave) as tar:
        assert tar.getnames() == names
    save_nemo(tmp_path / "again.nemo", cfg, _tiny_state(), {"tokenizer.vocab_path": str(vocab)})
    with tarfile.open(tmp_path / "again.nemo") as tar:
        assert [n for n in tar.getnames() if HASHED_MEMBER.match(n)] != [artifact]


def test_written_weights_are_plain_compact_cpu_tensors(tmp_path: Path) -> None:
    big = torch.randn(1000, 100)
    param = torch.nn.Parameter(torch.randn(4, 3))
    state = {"a.weight": big[:2], "b.weight": big.t()[:, :5], "c.weight": param, "d.count": torch.tensor(3)}
    save_nemo(tmp_path / "m.nemo", _tiny_config(), state)
    raw = _tar_bytes(tmp_path / "m.nemo")["model_weights.ckpt"]
    assert len(raw) < 20_000, "a view must not drag its whole 400 kB storage into the file"
    loaded = torch.load(io.BytesIO(raw), weights_only=True)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert type(loaded[key]) is torch.Tensor and loaded[key].is_contiguous()
        assert torch.equal(loaded[key], value.detach())
    assert not loaded["c.weight"].requires_grad


def test_legacy_hydra0_keys_are_upgraded_on_write(tmp_path: Path) -> None:
    cfg = _tiny_config()
    cfg["encoder"] = {"cls": "nemo.collections.asr.modules.ConvASREncoder", "params": {"feat_in": 4}}
    upgraded = maybe_update_config_version(cfg)
    assert upgraded.encoder == {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 4}
    assert upgraded.target == cfg["target"], "`target` is never renamed"
    save_nemo(tmp_path / "m.nemo", cfg, _tiny_state())
    assert load_config(tmp_path / "m.nemo").encoder == upgraded.encoder


def test_interpolations_are_resolved_on_write(tmp_path: Path) -> None:
    cfg = OmegaConf.create(_tiny_config() | {"feat": 64, "encoder": {"feat_in": "${feat}"}})
    save_nemo(tmp_path / "m.nemo", cfg, _tiny_state())
    text = _tar_bytes(tmp_path / "m.nemo")["model_config.yaml"].decode()
    assert "${" not in text and load_config(tmp_path / "m.nemo").encoder.feat_in == 64


# -- errors ------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NemoFileNotFoundError) as info:
        open_nemo(tmp_path / "nope.nemo")
    assert isinstance(info.value, FileNotFoundError) and "nope.nemo" in str(info.value)


@pytest.mark.parametrize("fraction", [0.002, 0.5])
def test_truncated_archive(nemo3_dir: Path, tmp_path: Path, fraction: float) -> None:
    data = (nemo3_dir / "citrinet_bpe.nemo").read_bytes()
    cut = tmp_path / "cut.nemo"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptArchiveError, match="truncated") as info:
        with open_nemo(cut) as archive:
            archive.state_dict()
    assert str(cut) in str(info.value)
    assert not [p for p in Path(tmp_path).iterdir() if p.name != "cut.nemo"]


def test_truncated_gzip_and_not_a_tar(tmp_path: Path) -> None:
    good = _write_tar(tmp_path / "g.nemo", {"model_config.yaml": b"a: 1\n", "model_weights.ckpt": os.urandom(50000)},
                      mode="w:gz")
    cut = tmp_path / "gcut.nemo"
    cut.write_bytes(good.read_bytes()[:-20000])
    with pytest.raises(CorruptArchiveError):
        open_nemo(cut)
    junk = tmp_path / "junk.nemo"
    junk.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(CorruptArchiveError, match="not a readable .nemo"):
        open_nemo(junk)
    assert gzip.decompress(good.read_bytes())  # the intact one was a real gzip


def test_missing_config_lists_members(tmp_path: Path) -> None:
    path = _write_tar(tmp_path / "m.nemo", {"./model_weights.ckpt": b"x", "./notes.txt": b"y"})
    with pytest.raises(MissingConfigError, match="model_config.yaml") as info:
        open_nemo(path)
    assert "'model_weights.ckpt', 'notes.txt'" in str(info.value)


def test_missing_weights(tmp_path: Path) -> None:
    path = _write_tar(tmp_path / "m.nemo", {"./model_config.yaml": b"a: 1\n"})
    with open_nemo(path) as archive:
        assert archive.config().a == 1
        with pytest.raises(MissingWeightsError, match="no such member"):
            archive.state_dict()


class _NotATensor:
    pass


def test_weights_are_never_fully_unpickled(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "evil": _NotATensor()}, buffer)
    path = _write_tar(tmp_path / "m.nemo", {"model_config.yaml": b"a: 1\n", "model_weights.ckpt": buffer.getvalue()})
    with open_nemo(path) as archive, pytest.raises(CorruptArchiveError, match="weights_only"):
        archive.state_dict()
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, buffer)
    path = _write_tar(tmp_path / "l.nemo", {"model_config.yaml": b"a: 1\n", "model_weights.ckpt": buffer.getvalue()})
    with open_nemo(path) as archive, pytest.raises(MissingWeightsError, match="Lightning checkpoint"):
        archive.state_dict()


def _hostile(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "hostile.nemo"
    with tarfile.open(path, "w:") as tar:
        ok = tarfile.TarInfo("./model_config.yaml")
        ok.size = 5
        tar.addfile(ok, io.BytesIO(b"a: 1\n"))
        info.size = len(data) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tarfile.TarInfo("../evil"), "'..'"),
        (tarfile.TarInfo("./sub/../../evil"), "'..'"),
        (tarfile.TarInfo("/tmp/absolute_evil"), "absolute"),
        (_link("./link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_link("./hard", tarfile.LNKTYPE, "model_config.yaml"), "hard link"),
        (_device("./dev"), "device"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_members_are_refused_by_name(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    data = b"pwned" if member.isfile() else b""
    path = _hostile(tmp_path, member, data)
    extract_to = tmp_path / "x" / "y"
    with pytest.raises(UnsafeArchiveError, match=reason) as info:
        open_nemo(path, extract_to=extract_to)
    assert info.value.member == member.name and repr(member.name) in str(info.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x" / "evil").exists()
    assert not Path("/tmp/absolute_evil").exists()
    assert not any(extract_to.iterdir()), "every member is checked before anything is extracted"
    with pytest.raises(UnsafeArchiveError):
        open_nemo(path)  # into a temporary folder


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    path = _write_tar(tmp_path / "d.nemo", {"./model_config.yaml": b"a: 1\n", "model_config.yaml": b"a: 2\n"})
    with pytest.raises(UnsafeArchiveError, match="twice"):
        open_nemo(path)


def test_non_tensor_state_dict_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "model.nemo"
    for bad, message in [
        ({"w": torch.zeros(2), "step": 3}, "'step'.*int, not a torch.Tensor"),
        ({"w": torch.zeros(2), "nested": {"b": torch.zeros(1)}}, "'nested'.*dict"),
        ({"w": torch.empty(2, device="meta")}, "meta"),
        ([torch.zeros(2)], "expected a dict"),
    ]:
        with pytest.raises(BadStateDictError, match=message):
            save_nemo(out, _tiny_config(), bad)
        assert list(tmp_path.iterdir()) == [], "a failed save leaves no file and no temporary behind"


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.nemo"
    save_nemo(out, _tiny_config(), _tiny_state())
    before = out.read_bytes()

    def fail_on_weights(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if info.name.endswith("model_weights.ckpt"):
            raise OSError("disk full (simulated)")
        return info

    monkeypatch.setattr("compat.archive.tar._normalise_tarinfo", fail_on_weights)
    with pytest.raises(OSError, match="simulated"):
        save_nemo(out, _tiny_config(), {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nemo"]
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c.update(target="compat.collections.asr.models.EncDecCTCModel"), "target"),
        (lambda c: c["decoder"].update(_target_="nemofn.asr.modules.decoder.ConvASRDecoder"), "decoder._target_"),
        (lambda c: c.update(callbacks=[{"_target_": "os.system"}]), "callbacks.0._target_"),
        (lambda c: c.update(x={"cls": "builtins.eval", "params": {}}), "x.cls"),
    ],
)
def test_unsafe_targets_are_refused_on_write(tmp_path: Path, edit, key: str) -> None:
    cfg = _tiny_config()
    edit(cfg)
    with pytest.raises(UnsafeTargetError) as info:
        save_nemo(tmp_path / "m.nemo", cfg, _tiny_state())
    assert info.value.key in (key, key.replace(".cls", "._target_"))
    assert list(tmp_path.iterdir()) == []
    extra = ("compat.", "nemofn.", "os.", "builtins.")
    save_nemo(tmp_path / "ok.nemo", cfg, _tiny_state(), extra_target_prefixes=extra)


def test_dangling_and_missing_artifacts_are_refused(tmp_path: Path) -> None:
    cfg = _tiny_config() | {"tokenizer": {"model_path": "nemo:abc_tokenizer.model"}}
    with pytest.raises(DanglingArtifactError, match="tokenizer.model_path"):
        save_nemo(tmp_path / "m.nemo", cfg, _tiny_state())
    with pytest.raises(MissingArtifactError, match="no such local file"):
        save_nemo(tmp_path / "m.nemo", cfg, _tiny_state(), {"tokenizer.model_path": str(tmp_path / "nope.model")})
    source = tmp_path / "src.nemo"
    save_nemo(source, _tiny_config(), _tiny_state())
    spec = ArtifactSpec("nemo:abc_tokenizer.model", from_archive=source)
    with pytest.raises(MissingArtifactError, match="no such regular-file member"):
        save_nemo(tmp_path / "m.nemo", cfg, _tiny_state(), {"tokenizer.model_path": spec})
    with pytest.raises(UnsafeArchiveError):
        save_nemo(tmp_path / "m.nemo", cfg, _tiny_state(), {"tokenizer.model_path": ArtifactSpec("../x", source)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.nemo"]


def test_every_error_is_a_nemo_archive_error() -> None:
    import compat.errors as errors

    registry_errors = {"UnknownTargetError": LookupError, "TargetImportError": ImportError}  # nemofn.core.registry's
    for name in errors.__all__:
        if name in registry_errors:
            assert issubclass(getattr(errors, name), registry_errors[name]), name
            continue
        assert issubclass(getattr(errors, name), NemoArchiveError), name


def test_size_limits_parse_and_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    from compat.archive.tar import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, ExtractionLimits, parse_size

    assert (DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES) == (8 * 2**30, 16 * 2**30)
    assert [parse_size(v, "x") for v in ("4096", "512MiB", "8GiB", "1.5k", " 2 m ", 7)] == [
        4096, 512 * 2**20, 8 * 2**30, 1536, 2 * 2**20, 7]
    for bad in ("lots", "5 MB", "-1", "1e9"):
        with pytest.raises(ValueError, match="is not a size|is negative"):
            parse_size(bad, "NEMOFN_MAX_MEMBER_BYTES")
    monkeypatch.delenv("NEMOFN_MAX_MEMBER_BYTES", raising=False)
    monkeypatch.setenv("NEMOFN_MAX_TOTAL_BYTES", "1GiB")
    assert ExtractionLimits.resolve() == ExtractionLimits(8 * 2**30, 2**30)
    assert ExtractionLimits.resolve(max_total_bytes="2GiB", max_member_bytes=10) == ExtractionLimits(10, 2 * 2**30)


def test_limits_apply_to_unpack_and_a_failed_extraction_into_a_folder_keeps_nothing_partial(tmp_path: Path) -> None:
    from compat.errors import ArchiveTooLargeError

    path = _write_tar(tmp_path / "m.nemo", {"./model_config.yaml": b"a: 1\n", "./model_weights.ckpt": b"w" * 5000})
    out = tmp_path / "out"
    with pytest.raises(ArchiveTooLargeError, match="'./model_weights.ckpt': its tar header declares 5,000 bytes") as e:
        unpack(path, out, max_member_bytes=4096)
    assert e.value.size == 5000 and e.value.limit == 4096 and e.value.member == "./model_weights.ckpt"
    assert not out.exists() or not any(out.iterdir()), "sizes are checked from the headers before writing"
    assert unpack(path, out, max_member_bytes=5000) == ["model_config.yaml", "model_weights.ckpt"]
    with pytest.raises(ArchiveTooLargeError, match="max_total_bytes= or NEMOFN_MAX_TOTAL_BYTES"):
        open_nemo(path, max_total_bytes=5004)  # 5 + 5000 bytes
    with open_nemo(path, only_config=True, max_total_bytes=5004) as archive:  # only the YAML is extracted
        assert archive.config().a == 1


def test_pack_folder_writes_an_owner_tagged_temporary_and_removes_it_on_failure(tmp_path, monkeypatch):
    from compat.archive import tar as tar_module
    from nemofn.core.temp_files import temp_owner_alive

    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "model_config.yaml").write_text("a: 1\n")
    seen = []

    def failing_replace(src, dst):
        seen.append(os.path.basename(src))
        raise OSError("disk gone")

    monkeypatch.setattr(tar_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        tar_module.pack_folder(folder, tmp_path / "out" / "m.nemo")
    (name,) = seen
    assert name.startswith(".m.nemo.") and temp_owner_alive(name) is True  # tagged: a later save sweeps it if killed
    assert os.listdir(tmp_path / "out") == []  # nothing half-written stays


def test_pack_folder_fsyncs_the_tar_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    import stat

    from compat.archive import tar as tar_module

    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "model_config.yaml").write_text("a: 1\n")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(tar_module.os, "fsync", fsync)
    monkeypatch.setattr(tar_module.os, "replace", replace)
    tar_module.pack_folder(folder, tmp_path / "m.nemo")
    assert events == ["fsync file", "rename", "fsync folder"]
