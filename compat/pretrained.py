"""``from_pretrained`` without a network: a model name resolves to a local ``.nemo`` file (or unpacked folder).

NeMo downloads from NGC or the HuggingFace Hub and caches the file; nemofn never goes online. A name is looked up,
in order:

1. as a path: an existing ``.nemo`` file or unpacked ``.nemo`` folder (``~`` expanded);
2. in the cache folders, first match wins:

   * ``$NEMOFN_CACHE`` (if set), then ``$NEMO_CACHE_DIR`` (NeMo's override), then NeMo's default caches
     ``~/.cache/torch/NeMo/NeMo_<version>/`` (newest version name first);
   * inside each: ``<name>.nemo``, ``<name>/<name>.nemo``, NeMo's NGC layout ``<name>/<md5>/<name>.nemo`` (newest
     first), an unpacked folder ``<name>/`` holding ``model_config.yaml``, and for ``org/model`` names NeMo's
     snapshot layout ``hf_hub_cache/org/model/<md5>/``;

3. for ``org/model`` names, the HuggingFace Hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``): ``models--org--model/snapshots/<rev>/model.nemo`` or the snapshot folder itself.

Anything else raises :class:`PretrainedModelNotFoundError`, which lists where it looked and where to put the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import total_ordering
from pathlib import Path
from typing import Any

__all__ = [
    "NEMOFN_CACHE_ENV",
    "NEMO_CACHE_ENV",
    "PretrainedModelInfo",
    "PretrainedModelNotFoundError",
    "cache_roots",
    "resolve_pretrained",
    "list_local_models",
]

NEMOFN_CACHE_ENV = "NEMOFN_CACHE"
NEMO_CACHE_ENV = "NEMO_CACHE_DIR"
_CONFIG = "model_config.yaml"


@total_ordering
@dataclass
class PretrainedModelInfo:
    """NeMo's catalogue entry; here ``location`` is a local path found in a cache folder."""

    pretrained_model_name: str
    description: str
    location: str
    class_: Any = None
    aliases: list[str] | None = None

    def __hash__(self) -> int:
        return hash(self.location)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PretrainedModelInfo):
            return NotImplemented
        return self.location == other.location or self.pretrained_model_name == other.pretrained_model_name

    def __lt__(self, other: PretrainedModelInfo) -> bool:
        return self.pretrained_model_name < other.pretrained_model_name


class PretrainedModelNotFoundError(FileNotFoundError):
    """A pretrained model name matched no local file."""

    def __init__(self, name: str, searched: list[Path]) -> None:
        roots = cache_roots()
        first = roots[0] if roots else Path.home() / ".cache" / "torch" / "NeMo" / "NeMo_3.0.0"
        tail = name.split("/")[-1]
        shown = "\n  ".join(str(p) for p in searched[:12]) + ("\n  ..." if len(searched) > 12 else "")
        super().__init__(
            f"pretrained model {name!r} was not found locally (nemofn never downloads). Looked in:\n  {shown}\n"
            f"Put the file at {first / (tail + '.nemo')} (or set {NEMOFN_CACHE_ENV}=<folder> holding "
            f"{tail}.nemo), or pass the .nemo path itself to from_pretrained / restore_from. A file NeMo already "
            f"downloaded is found in its cache (~/.cache/torch/NeMo/NeMo_<version>/{tail}/<md5>/{tail}.nemo)."
        )
        self.name = name
        self.searched = searched


def cache_roots() -> list[Path]:
    """The cache folders searched, in order (only existing ones after the environment overrides)."""
    roots: list[Path] = []
    for env in (NEMOFN_CACHE_ENV, NEMO_CACHE_ENV):
        value = os.environ.get(env, "")
        if value:
            roots.append(Path(value).expanduser().resolve())
    nemo_base = Path.home() / ".cache" / "torch" / "NeMo"
    if nemo_base.is_dir():
        roots.extend(sorted((p for p in nemo_base.glob("NeMo_*") if p.is_dir()), reverse=True))
    seen: set[Path] = set()
    return [r for r in roots if not (r in seen or seen.add(r))]


def _hf_hub_roots() -> list[Path]:
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]).expanduser())
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    return roots


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / _CONFIG).is_file()


def _newest_first(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def _candidates_in(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """``(existing matches, places looked)`` for ``name`` inside one cache folder."""
    tail = name.split("/")[-1]
    stem = tail[:-5] if tail.endswith(".nemo") else tail
    folder = root / name
    looked = [root / f"{name}.nemo" if not name.endswith(".nemo") else root / name, folder / f"{stem}.nemo",
              folder / "<md5>" / f"{stem}.nemo", folder]
    found = [p for p in looked[:2] if p.is_file()]
    if folder.is_dir():
        found += _newest_first([p for p in folder.glob(f"*/{stem}.nemo") if p.is_file()])
        if _is_model_folder(folder):
            found.append(folder)
    if "/" in name:
        snapshot_base = root / "hf_hub_cache" / name
        looked.append(snapshot_base / "<md5>")
        if snapshot_base.is_dir():
            subs = _newest_first([p for p in snapshot_base.iterdir() if p.is_dir()])
            found += [p / f"{stem}.nemo" for p in subs if (p / f"{stem}.nemo").is_file()]
            found += [p for p in subs if _is_model_folder(p)]
    return found, looked


def _hf_candidates(name: str) -> tuple[list[Path], list[Path]]:
    org, _, repo = name.partition("/")
    found, looked = [], []
    for root in _hf_hub_roots():
        snapshots = root / f"models--{org}--{repo}" / "snapshots"
        looked.append(snapshots / "<revision>" / f"{repo}.nemo")
        if snapshots.is_dir():
            revisions = _newest_first([p for p in snapshots.iterdir() if p.is_dir()])
            found += [p / f"{repo}.nemo" for p in revisions if (p / f"{repo}.nemo").exists()]
            found += [p for p in revisions if _is_model_folder(p)]
    return found, looked


def resolve_pretrained(name: str | os.PathLike) -> str:
    """The local ``.nemo`` file (or unpacked folder) for a pretrained model name or path.

    Raises:
        PretrainedModelNotFoundError: nothing matched; the message lists the places searched.
    """
    as_path = Path(os.fspath(name)).expanduser()
    if as_path.is_file() or _is_model_folder(as_path):
        return str(as_path.resolve())
    name = os.fspath(name)
    looked: list[Path] = [as_path]
    if not name or as_path.is_absolute() or ".." in Path(name).parts:
        raise PretrainedModelNotFoundError(name, looked)
    for root in cache_roots():
        found, places = _candidates_in(root, name)
        looked += places
        if found:
            return str(found[0].resolve())
    if "/" in name:
        found, places = _hf_candidates(name)
        looked += places
        if found:
            return str(found[0].resolve())
    raise PretrainedModelNotFoundError(name, looked)


def list_local_models(class_: Any = None) -> list[PretrainedModelInfo]:
    """Every ``.nemo`` file (up to three folders deep) and unpacked model folder in the cache folders.

    Names are file stems (``<stem>.nemo`` -> ``stem``), which :func:`resolve_pretrained` finds again.
    """
    infos: dict[str, PretrainedModelInfo] = {}
    for root in cache_roots():
        if not root.is_dir():
            continue
        for depth in ("*.nemo", "*/*.nemo", "*/*/*.nemo"):
            for path in sorted(root.glob(depth)):
                name = path.stem
                if name not in infos and path.is_file():
                    infos[name] = PretrainedModelInfo(name, f"local file in {root}", str(path), class_)
        for path in sorted(root.iterdir()):
            if path.name not in infos and _is_model_folder(path):
                infos[path.name] = PretrainedModelInfo(path.name, f"unpacked .nemo in {root}", str(path), class_)
    return sorted(infos.values())
