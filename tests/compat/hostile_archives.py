"""A corpus of hostile ``.nemo`` archives, generated at test time (nothing binary is committed).

Every :class:`Case` writes one archive, derived from a small valid one (:class:`Base`: the tiny char CTC model of
``tiny_asr``), and says which named error ``restore_from`` must raise for it, with which limits (environment
variables or ``restore_from`` arguments, lowered so that the whole corpus runs in seconds). Payloads aim at
:attr:`Paths.marker` and at folders outside the extraction folder: a traversal member, a link, a pickle
``__reduce__`` or a YAML ``!!python`` tag that worked would create the marker or leave a file behind, which
``test_hostile_archives.py`` asserts never happens.

Test modules load this file by path (``tests/`` is not a package)::

    corpus = load_helpers("hostile_archives")
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from compat.errors import (
    ArchiveConfigError,
    ArchiveTooLargeError,
    ConfigInterpolationError,
    CorruptArchiveError,
    MissingConfigError,
    MissingTargetError,
    MissingWeightsError,
    NonFiniteWeightsError,
    UnknownTargetError,
    UnsafeArchiveError,
    UnsupportedTensorError,
    WeightDtypeError,
    WeightKeysError,
    WeightShapeError,
    YamlBudgetError,
)

CONFIG = "./model_config.yaml"
WEIGHTS = "./model_weights.ckpt"
#: A conv weight of the tiny model (``[24, 16, 1]``: 24 filters of the first block over 16 features).
CONV_KEY = "encoder.encoder.0.mconv.1.conv.weight"
#: 10^9 nodes once expanded, in about 350 bytes.
LAUGHS = "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10 if p else ['lol'] * 10)}]\n"
                 for p, n in zip([None, *"abcdefgh"], "abcdefghi"))


@dataclass(frozen=True)
class Paths:
    """The folders of one case. Only ``archives`` may hold anything once the restore has failed.

    Attributes:
        archives: where the hostile archive is written.
        sentinel: the parent of ``tmp``; must hold nothing but ``tmp`` afterwards.
        tmp: ``TMPDIR`` during the restore (the extraction folder is made here); must be empty afterwards.
        cwd: the working directory during the restore; must stay empty.
        marker: what payloads try to create.
    """

    root: Path
    archives: Path
    sentinel: Path
    tmp: Path
    cwd: Path
    marker: Path

    @classmethod
    def make(cls, root: Path) -> Paths:
        paths = cls(root, root / "archives", root / "sentinel", root / "sentinel" / "tmp", root / "cwd",
                    root / "marker")
        for folder in (paths.archives, paths.tmp, paths.cwd):
            folder.mkdir(parents=True)
        return paths


@dataclass(frozen=True)
class Base:
    """The valid archive every case starts from: its config (a plain dict) and weights."""

    config: dict
    state: dict[str, torch.Tensor]

    def config_text(self, edit: Callable[[dict], None] | None = None) -> bytes:
        config = yaml.safe_load(yaml.safe_dump(self.config))
        if edit is not None:
            edit(config)
        return yaml.safe_dump(config).encode()

    def weights(self, edit: Callable[[dict], None] | None = None) -> bytes:
        state = {key: value.clone() for key, value in self.state.items()}
        if edit is not None:
            edit(state)
        return _saved(state)

    def members(self, *, config: bytes | None = None, weights: bytes | None = None) -> list[tuple[str, bytes]]:
        return [(CONFIG, self.config_text() if config is None else config),
                (WEIGHTS, self.weights() if weights is None else weights)]


@dataclass(frozen=True)
class Case:
    """One hostile archive and what restoring it must raise.

    Attributes:
        build: ``(base, paths) -> archive path``.
        error: the error class ``restore_from`` must raise.
        match: a regex its message must match (the message must also name the archive's path).
        env: environment for the restore (lowered limits).
        options: ``restore_from`` keyword arguments.
    """

    name: str
    build: Callable[[Base, Paths], Path]
    error: type[BaseException]
    match: str = ""
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ tar writing
def _saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _write(paths: Paths, entries: list, *, mode: str = "w:", fmt: int = tarfile.GNU_FORMAT,
           name: str = "model.nemo") -> Path:
    """A tar of ``entries``: ``(name, bytes)`` pairs or ``(TarInfo, bytes | None)`` pairs, in order."""
    path = paths.archives / name
    with tarfile.open(path, mode, format=fmt) as tar:
        for entry, data in entries:
            info, data = _file(entry, data) if isinstance(entry, str) else (entry, data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _raw(paths: Paths, data: bytes, name: str = "model.nemo") -> Path:
    path = paths.archives / name
    path.write_bytes(data)
    return path


def _sparse_member(name: str, stored: bytes, real_size: int) -> bytes:
    """An old-GNU sparse member (type ``S``): ``stored`` bytes at offset 0 of a ``real_size``-byte file of holes.

    ``tarfile`` reads such members (and would write out their holes as zeros) but cannot write them.
    """
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)             # first sparse entry: offset
    header[398:410] = tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)   # ... and its stored length
    header[482] = 0                                                       # no extension headers
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)     # the size once expanded
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    padding = b"\0" * (-len(stored) % tarfile.BLOCKSIZE)
    return bytes(header) + stored + padding


def _with_raw_member(paths: Paths, base: Base, raw_member: bytes) -> Path:
    """The base members followed by a hand-made member, then the end-of-archive marker."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name, data in base.members():
            info, data = _file(name, data)
            tar.addfile(info, io.BytesIO(data))
        tar.fileobj.write(raw_member)
        tar.offset += len(raw_member)
    return _raw(paths, buffer.getvalue())


# ------------------------------------------------------------------------------------------------ payloads
class _OpenMarker:
    """Unpickling this calls ``open(marker, "w")``: the marker exists iff the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _python_tag(marker: Path) -> bytes:
    return f"target: !!python/object/apply:builtins.open ['{marker}', 'w']\nsample_rate: 16000\n".encode()


# ------------------------------------------------------------------------------------------------ builders
def _members(edit_config=None, edit_weights=None, *, mode: str = "w:"):
    def build(base: Base, paths: Paths) -> Path:
        members = base.members(config=base.config_text(edit_config), weights=base.weights(edit_weights))
        return _write(paths, members, mode=mode)

    return build


def _config_bytes(make: Callable[[Base, Paths], bytes]):
    def build(base: Base, paths: Paths) -> Path:
        return _write(paths, base.members(config=make(base, paths)))

    return build


def _weights_bytes(make: Callable[[Base, Paths], bytes]):
    def build(base: Base, paths: Paths) -> Path:
        return _write(paths, base.members(weights=make(base, paths)))

    return build


def _extra(make_entries: Callable[[Base, Paths], list], *, fmt: int = tarfile.GNU_FORMAT):
    """The base members, then the hostile entries (so the good members are seen first, as in a tampered file)."""

    def build(base: Base, paths: Paths) -> Path:
        return _write(paths, base.members() + make_entries(base, paths), fmt=fmt)

    return build


def _set(path: str, value: Any):
    """A config edit: ``path`` is dotted, with list indices as numbers (``encoder.jasper.0.filters``)."""

    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _weight(key: str, make: Callable[[torch.Tensor], torch.Tensor]):
    def edit(state: dict) -> None:
        state[key] = make(state[key])

    return edit


def _quiet(make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``make`` with torch's deprecation / prototype warnings silenced (quantised and nested tensors)."""

    def quiet(tensor: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return make(tensor)

    return quiet


def _quantised(tensor: torch.Tensor) -> torch.Tensor:
    return torch.quantize_per_tensor(tensor, 0.1, 0, torch.qint8)


def _nested(tensor: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor([tensor[0], tensor[1, :, :0]])


def _poison(value: float):
    def make(tensor: torch.Tensor) -> torch.Tensor:
        tensor.view(-1)[0] = value
        return tensor

    return _weight(CONV_KEY, make)


def _gzip_bomb(base: Base, paths: Paths) -> Path:
    members = base.members() + [("./padding.bin", b"\0" * (8 << 20))]  # 8 MiB of zeros: about 8 KiB gzipped
    return _write(paths, members, mode="w:gz")


def _lying_header(base: Base, paths: Paths) -> Path:
    """A member whose header declares 100 GiB, with a few bytes behind it: refused from the header alone."""
    info = tarfile.TarInfo("./model_weights.ckpt")
    info.size = 100 << 30
    header = info.tobuf(tarfile.GNU_FORMAT)
    config = tarfile.TarInfo("./model_config.yaml")
    text = base.config_text()
    config.size = len(text)
    body = config.tobuf(tarfile.GNU_FORMAT) + text + b"\0" * (-len(text) % 512)
    return _raw(paths, body + header + b"x" * 4096)


def _truncated(base: Base, paths: Paths) -> Path:
    data = _write(paths, base.members(), name="whole.nemo").read_bytes()
    (paths.archives / "whole.nemo").unlink()
    return _raw(paths, data[: len(data) // 2])


def _truncated_gzip(base: Base, paths: Paths) -> Path:
    data = _write(paths, base.members(), mode="w:gz", name="whole.nemo").read_bytes()
    (paths.archives / "whole.nemo").unlink()
    return _raw(paths, data[: len(data) * 2 // 3])


def _bad_checksum(base: Base, paths: Paths) -> Path:
    data = bytearray(_write(paths, base.members(), name="whole.nemo").read_bytes())
    (paths.archives / "whole.nemo").unlink()
    data[10] ^= 0xFF  # inside the first header's name: its checksum no longer matches
    return _raw(paths, bytes(data))


def _long_path(base: Base, paths: Paths) -> list:
    deep = "/".join(["d" * 200] * 25)  # 5,000 bytes: past PATH_MAX, each part within NAME_MAX
    return [(f"./{deep}/model.bin", b"x")]


def _strict_missing(state: dict) -> None:
    del state["decoder.decoder_layers.0.bias"]


def _only_preprocessor(state: dict) -> None:
    for key in [k for k in state if not k.startswith("preprocessor.")]:
        del state[key]


def _wide(config: dict) -> None:
    for block in config["encoder"]["jasper"]:
        block["filters"] = 4096


MiB = str(1 << 20)

CASES: list[Case] = [
    # -- members that would land outside the extraction folder, or are not plain files ------------------------
    Case("dotdot", _extra(lambda b, p: [("../../../marker", b"pwned")]), UnsafeArchiveError, "'\\.\\.'"),
    Case("nested-dotdot", _extra(lambda b, p: [("./sub/../../../../marker", b"pwned")]), UnsafeArchiveError,
         "path traversal"),
    Case("backslash-dotdot", _extra(lambda b, p: [("..\\..\\..\\marker", b"pwned")]), UnsafeArchiveError,
         "path traversal"),
    Case("absolute", _extra(lambda b, p: [(str(p.marker), b"pwned")]), UnsafeArchiveError, "absolute path"),
    Case("pax-long-dotdot", _extra(lambda b, p: [("../" * 4 + "m" * 120, b"pwned")], fmt=tarfile.PAX_FORMAT),
         UnsafeArchiveError, "path traversal"),
    Case("gnu-longname-dotdot", _extra(lambda b, p: [("./" + "../" * 40 + "marker", b"pwned")]),
         UnsafeArchiveError, "path traversal"),
    Case("symlink-out", _extra(lambda b, p: [_special("./link", tarfile.SYMTYPE, str(p.marker))]),
         UnsafeArchiveError, "symbolic link"),
    Case("symlink-then-write-through",
         _extra(lambda b, p: [_special("./escape", tarfile.SYMTYPE, "../../.."), ("./escape/marker", b"pwned")]),
         UnsafeArchiveError, "symbolic link"),
    Case("hardlink", _extra(lambda b, p: [_special("./hard", tarfile.LNKTYPE, "/etc/passwd")]), UnsafeArchiveError,
         "hard link"),
    Case("char-device", _extra(lambda b, p: [_special("./tty", tarfile.CHRTYPE)]), UnsafeArchiveError, "device"),
    Case("block-device", _extra(lambda b, p: [_special("./sda", tarfile.BLKTYPE)]), UnsafeArchiveError, "device"),
    Case("fifo", _extra(lambda b, p: [_special("./pipe", tarfile.FIFOTYPE)]), UnsafeArchiveError, "FIFO"),
    Case("duplicate-config", _extra(lambda b, p: [("model_config.yaml", b"target: other\n")]), UnsafeArchiveError,
         "appears twice"),
    # 1.5 KiB on disk, 2 GiB of zeros once extracted: refused as sparse before its size is even considered (the
    # lowered limit only keeps a regression from writing 2 GiB).
    Case("sparse-2GiB", lambda b, p: _with_raw_member(p, b, _sparse_member("./holes.bin", b"x" * 1024, 2 << 30)),
         UnsafeArchiveError, "sparse file", env={"NEMOFN_MAX_TOTAL_BYTES": "64MiB"}),
    Case("name-part-too-long", _extra(lambda b, p: [("./" + "n" * 300, b"x")]), UnsafeArchiveError,
         "300 bytes long; the file system allows at most"),
    Case("path-too-long", _extra(_long_path), UnsafeArchiveError, "path in the extraction folder is"),
    # -- sizes --------------------------------------------------------------------------------------------------
    Case("member-over-env-limit", _extra(lambda b, p: [("./big.bin", b"\1" * 300_000)]), ArchiveTooLargeError,
         "'./big.bin': its tar header declares 300,000 bytes", env={"NEMOFN_MAX_MEMBER_BYTES": "256KiB"}),
    Case("total-over-argument-limit", _extra(lambda b, p: [(f"./part{i}.bin", b"\1" * 100_000) for i in range(4)]),
         ArchiveTooLargeError, "the members to extract declare", options={"max_total_bytes": "256KiB"}),
    Case("many-members", _extra(lambda b, p: [(f"./empty{i}", b"") for i in range(40)]), ArchiveTooLargeError,
         "it holds more than 32 entries", env={"NEMOFN_MAX_MEMBERS": "32"}),
    Case("gzip-bomb", _gzip_bomb, ArchiveTooLargeError, "padding.bin", env={"NEMOFN_MAX_MEMBER_BYTES": MiB}),
    Case("header-declares-100GiB", _lying_header, ArchiveTooLargeError, "declares 107,374,182,400 bytes"),
    Case("config-over-byte-limit", _config_bytes(lambda b, p: b.config_text() + b"#" * 200_000 + b"\n"),
         YamlBudgetError, "more than the 65,536 a config may take", env={"NEMOFN_MAX_CONFIG_BYTES": "64KiB"}),
    Case("model-over-total-limit", _members(_wide, _only_preprocessor), ArchiveTooLargeError,
         "the tensors its config describes beyond those in model_weights.ckpt would take",
         options={"strict": False, "max_total_bytes": MiB}),
    # -- YAML ---------------------------------------------------------------------------------------------------
    Case("python-tag", _config_bytes(lambda b, p: _python_tag(p.marker)), CorruptArchiveError, "not valid YAML"),
    Case("python-name-tag", _config_bytes(lambda b, p: b"target: !!python/name:os.system\n"), CorruptArchiveError,
         "not valid YAML"),
    Case("alias-bomb", _config_bytes(lambda b, p: LAUGHS.encode()), YamlBudgetError, "more than 1,000,000 nodes"),
    Case("recursive-alias", _config_bytes(lambda b, p: b"target: x\nloop: &l [1, *l]\n"), YamlBudgetError,
         "recursive alias"),
    Case("interpolation-cycle", _members(_set("sample_rate", "${sample_rate}")), ConfigInterpolationError,
         "`sample_rate` cannot be resolved"),
    Case("interpolation-missing", _members(_set("sample_rate", "${nope.x}")), ConfigInterpolationError,
         "not found"),
    Case("config-not-a-mapping", _config_bytes(lambda b, p: b"- a\n- b\n"), CorruptArchiveError, "not a mapping"),
    Case("config-not-yaml", _config_bytes(lambda b, p: b"a: [1, 2\nb: {\n"), CorruptArchiveError, "not valid YAML"),
    Case("config-not-utf8", _config_bytes(lambda b, p: b"\xff\xfe\x00garbage"), CorruptArchiveError,
         "model_config.yaml"),
    # -- targets ------------------------------------------------------------------------------------------------
    Case("unknown-model-target", _members(_set("target", "builtins.open")), UnknownTargetError,
         "model_config.yaml: no nemofn builder is registered for 'builtins.open'"),
    Case("unsafe-module-target", _members(_set("encoder._target_", "builtins.open")), ArchiveConfigError,
         "encoder._target_: 'builtins.open' is not a module nemofn implements"),
    Case("missing-target", _members(lambda c: c.pop("target")), MissingTargetError, "has no `target`"),
    # -- weights ------------------------------------------------------------------------------------------------
    Case("pickle-payload", _weights_bytes(lambda b, p: _saved({"w": torch.zeros(1), "x": _OpenMarker(p.marker)})),
         CorruptArchiveError, "weights_only"),
    Case("legacy-pickle-payload", _weights_bytes(lambda b, p: pickle.dumps(_OpenMarker(p.marker), protocol=2)),
         CorruptArchiveError, "model_weights.ckpt"),
    Case("nan-weights", _members(edit_weights=_poison(float("nan"))), NonFiniteWeightsError, CONV_KEY),
    Case("inf-weights", _members(edit_weights=_poison(float("-inf"))), NonFiniteWeightsError, CONV_KEY),
    Case("int-for-float", _members(edit_weights=_weight(CONV_KEY, lambda t: t.long())), WeightDtypeError,
         "torch.int64 tensor where the model has a torch.float32"),
    Case("bool-for-float", _members(edit_weights=_weight(CONV_KEY, lambda t: t > 0)), WeightDtypeError,
         "torch.bool"),
    Case("complex-for-float", _members(edit_weights=_weight(CONV_KEY, lambda t: t.to(torch.complex64))),
         WeightDtypeError, "torch.complex64"),
    Case("meta-tensor", _members(edit_weights=_weight(CONV_KEY, lambda t: t.to("meta"))), UnsupportedTensorError,
         "meta tensor"),
    Case("sparse-tensor", _members(edit_weights=_weight(CONV_KEY, lambda t: t.to_sparse())),
         UnsupportedTensorError, "sparse tensor"),
    Case("quantised-tensor", _members(edit_weights=_weight(CONV_KEY, _quiet(_quantised))), UnsupportedTensorError,
         "quantised tensor"),
    Case("nested-tensor", _members(edit_weights=_weight(CONV_KEY, _quiet(_nested))), UnsupportedTensorError,
         "nested tensor"),
    Case("20M-filters", _members(_set("encoder.jasper.0.filters", 20_000_000)), WeightShapeError,
         rf"size mismatch for {CONV_KEY}: .* shape \(24, 16, 1\), .* has \(20000000, 16, 1\)"),
    Case("strict-missing-key", _members(edit_weights=_strict_missing), WeightKeysError,
         "Missing key\\(s\\) in state_dict: 'decoder.decoder_layers.0.bias'"),
    Case("lightning-checkpoint", _weights_bytes(lambda b, p: _saved({"state_dict": b.state})), MissingWeightsError,
         "Lightning checkpoint"),
    Case("weights-not-a-dict", _weights_bytes(lambda b, p: _saved([torch.zeros(2)])), MissingWeightsError,
         "not a dict of tensors"),
    Case("weights-garbage", _weights_bytes(lambda b, p: b"PK\x03\x04" + b"\0" * 200), CorruptArchiveError,
         "model_weights.ckpt could not be read"),
    Case("no-weights", lambda b, p: _write(p, b.members()[:1]), MissingWeightsError, "no such member"),
    Case("no-config", lambda b, p: _write(p, b.members()[1:]), MissingConfigError, "no 'model_config.yaml'"),
    # -- config values ------------------------------------------------------------------------------------------
    Case("negative-filters", _members(_set("encoder.jasper.0.filters", -5)), ArchiveConfigError,
         r"encoder.jasper\[0\].filters: invalid value -5: must be > 0"),
    Case("zero-kernel", _members(_set("encoder.jasper.1.kernel", [0])), ArchiveConfigError,
         r"encoder.jasper\[1\].kernel: invalid value \[0\]"),
    Case("negative-features", _members(_set("preprocessor.features", -64)), ArchiveConfigError,
         "preprocessor.features: invalid value -64"),
    Case("10M-repeats", _members(_set("encoder.jasper.0.repeat", 10_000_000)), ArchiveConfigError,
         r"encoder.jasper\[0\].repeat: invalid value 10000000: must be > 0 and <= 10,000"),  # modules, not tensors
    Case("features-sixtyfour", _members(_set("preprocessor.features", "sixtyfour")), ArchiveConfigError,
         "preprocessor.features: wrong type: got 'sixtyfour'"),
    # -- damaged files ------------------------------------------------------------------------------------------
    Case("not-a-tar", lambda b, p: _raw(p, b"this is not a tar file at all" * 40), CorruptArchiveError,
         "not a readable .nemo"),
    Case("empty-file", lambda b, p: _raw(p, b""), CorruptArchiveError, "not a readable .nemo"),
    Case("truncated-tar", _truncated, CorruptArchiveError, "truncated"),
    Case("truncated-gzip", _truncated_gzip, CorruptArchiveError, "not a readable .nemo"),
    Case("bad-header-checksum", _bad_checksum, CorruptArchiveError, "not a readable .nemo"),
    Case("gzip-of-garbage", lambda b, p: _raw(p, gzip.compress(b"\x07" * 5000)), CorruptArchiveError,
         "not a readable .nemo"),
]
