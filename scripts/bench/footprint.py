"""Install footprint: what a user's environment holds after installing nemofn, against NeMo 3.0's.

    python scripts/bench/footprint.py                                   # a fresh nemofn venv only
    python scripts/bench/footprint.py --vs-nemo ~/nemo-venv/bin/python  # ... and NeMo's venv as it is
    python scripts/bench/footprint.py --python .venv/bin/python         # an existing environment instead
    python scripts/bench/footprint.py --keep /tmp/nemofn-venv           # keep (or reuse) the fresh venv

The fresh nemofn venv is made the way the README installs for users: ``python -m venv``, ``pip install
torch==2.13.0`` (the pin takes the CPU wheel; ``--torch-index-url`` adds an index such as PyTorch's CPU one),
then ``pip install <project>`` without the test or demo extras. The project is installed from a copy of its
package files (``pyproject.toml``, ``README.md``, ``nemofn/``, ``compat/``), not editable, so its own files are in
site-packages and count, and the build leaves nothing in the checkout. pip's cache makes a rerun quick. The venv
lives in a temporary folder that is removed at the end unless ``--keep DIR`` is given.

NeMo's venv (``--vs-nemo``) is measured as it is, not reinstalled; it was made with ``python3 -m venv
~/nemo-venv && ~/nemo-venv/bin/pip install torch==2.13.0 'nemo_toolkit[asr]==3.0.0'``.

What is counted, per environment (inside a child process of its own interpreter, so it sees that environment's
``sys.path``): the installed distributions (``importlib.metadata``, one per normalized name, the first on
``sys.path`` winning as for imports); the bytes of the files each one's ``RECORD`` lists (for a distribution without
``RECORD``: its top-level packages and its metadata folder), every file counted once (hard links and files listed
by two distributions included); the same for torch's closure (``torch`` and, recursively, the requirements it
declares without extras: filelock, sympy, mpmath, networkx, jinja2, MarkupSafe, fsspec, typing-extensions,
setuptools, where present); and "beyond torch" = total - closure. Sizes are apparent file sizes in MB (10^6 bytes).
An editable install's sources are not in its ``RECORD`` and are not counted (measure a fresh venv for that).

Import time: the median of ``--runs`` fresh processes (``python -I``, from a neutral folder) timing ``import X``
of the top-level package (``compat.collections.asr.models``, which loads nemofn, for us; ``nemo.collections.asr``
for NeMo), and of ``import torch`` alone for reference. The OS file cache is warm after the first run.

This file imports only the standard library: the child processes run it under the measured interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_PIN = "torch==2.13.0"
MB = 1e6
INVENTORY_FLAG = "--inventory"
_MARK = "@@footprint "  # prefixes a child's JSON answer among whatever else it prints
# what `pip install <project>` needs from the checkout (pyproject's packages.find includes nemofn* and compat*)
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "nemofn", "compat")
# the package whose import is timed, by the distribution that marks the environment
IMPORT_MODULES = (("nemo-toolkit", "nemo.collections.asr"), ("nemofn", "compat.collections.asr.models"))


# ------------------------------------------------------------------ the inventory (runs under the measured python)
def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name (``Jinja2`` -> ``jinja2``, ``typing_extensions`` ->
    ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_applies(marker: str) -> bool:
    """Whether a requirement's environment marker holds here with no extra selected."""
    for module in ("packaging.markers", "pip._vendor.packaging.markers"):
        try:
            markers = __import__(module, fromlist=["Marker"])
        except ImportError:
            continue
        return bool(markers.Marker(marker).evaluate({"extra": ""}))
    return "extra" not in marker  # no packaging at all: keep every requirement that is not an extra's


def requirement_names(dist) -> list[str]:
    """The normalized names a distribution requires (extras' requirements and false markers left out)."""
    names = []
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        if marker.strip() and not _marker_applies(marker.strip()):
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(normalize(match.group(1)))
    return names


def closure(root: str, requires: dict[str, list[str]]) -> list[str]:
    """``root`` and everything it requires, recursively, among the installed names (keys of ``requires``)."""
    seen, todo = set(), [normalize(root)]
    while todo:
        name = todo.pop()
        if name in seen or name not in requires:
            continue
        seen.add(name)
        todo.extend(requires[name])
    return sorted(seen)


def _walk(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return [Path(d) / f for d, _, files in os.walk(path) for f in files]
    return []


def distribution_files(dist) -> tuple[list[Path], bool]:
    """``(paths, has_record)``: the files a distribution's ``RECORD`` lists, or, without one, its top-level
    packages/modules (``top_level.txt`` or its name) in its site folder plus its metadata folder."""
    files = dist.files
    if files is not None:
        return [Path(dist.locate_file(f)) for f in files], True
    site = Path(dist.locate_file(""))
    tops = (dist.read_text("top_level.txt") or "").split() or [normalize(dist.metadata["Name"]).replace("-", "_")]
    paths = []
    for top in tops:
        paths += _walk(site / top) + _walk(site / f"{top}.py")
    meta = getattr(dist, "_path", None)  # the .dist-info / .egg-info folder (PathDistribution)
    if meta is not None:
        paths += _walk(Path(meta))
    return paths, False


def inventory() -> dict:
    """This interpreter's installed distributions and their sizes, every file counted once.

    Returns:
        ``python``, ``python_version``, ``distributions`` (count), ``versions`` {name: version}, ``bytes``
        {name: bytes of the files first claimed by it}, ``no_record`` (names sized by folder), ``torch_closure``
        (names), ``total_bytes``, ``torch_closure_bytes``, ``beyond_torch_bytes``.
    """
    import importlib.metadata as metadata

    dists = {}
    for dist in metadata.distributions():
        raw = dist.metadata["Name"]
        if raw and normalize(raw) not in dists:  # the first on sys.path wins, as for imports
            dists[normalize(raw)] = dist
    requires = {name: requirement_names(dist) for name, dist in dists.items()}
    sizes: dict[tuple[int, int], int] = {}  # (device, inode) -> bytes: each file once
    owned: dict[str, set] = {}
    no_record = []
    for name, dist in dists.items():
        paths, has_record = distribution_files(dist)
        if not has_record:
            no_record.append(name)
        keys = set()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:  # listed but gone (e.g. a pyc never written)
                continue
            key = (st.st_dev, st.st_ino)
            keys.add(key)
            sizes.setdefault(key, st.st_size)
        owned[name] = keys
    torch_names = closure("torch", requires)
    torch_keys = set().union(*(owned[n] for n in torch_names)) if torch_names else set()
    claimed: set = set()
    per_dist = {}
    for name in dists:
        mine = owned[name] - claimed
        per_dist[name] = sum(sizes[k] for k in mine)
        claimed |= mine
    total = sum(sizes.values())
    in_torch = sum(sizes[k] for k in torch_keys)
    return {"python": sys.executable, "python_version": sys.version.split()[0], "distributions": len(dists),
            "versions": {n: d.version for n, d in dists.items()}, "bytes": per_dist, "no_record": no_record,
            "torch_closure": torch_names, "total_bytes": total, "torch_closure_bytes": in_torch,
            "beyond_torch_bytes": total - in_torch}


# --------------------------------------------------------------------------------- the parent's side
def _child(cmd: list[str], what: str, cwd: str | None = None) -> dict:
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    answers = [line[len(_MARK):] for line in run.stdout.splitlines() if line.startswith(_MARK)]
    if run.returncode != 0 or not answers:
        raise RuntimeError(f"{what} failed (exit {run.returncode}): {' '.join(cmd)}\n{run.stderr[-3000:]}")
    return json.loads(answers[-1])


def count_environment(python: str) -> dict:
    """The inventory of the environment of ``python`` (an interpreter path), from a child process; no timing.

    Returns:
        :func:`inventory`'s dict plus MB figures: ``total_mb``, ``torch_closure_mb``, ``beyond_torch_mb``,
        ``beyond_torch_distributions`` (count), ``largest_beyond_torch`` [(name, MB)] (the 8 largest).
    """
    inv = _child([python, "-I", str(Path(__file__).resolve()), INVENTORY_FLAG], f"the inventory under {python}",
                 cwd=tempfile.gettempdir())
    closure_names = set(inv["torch_closure"])
    beyond = {n: b for n, b in inv["bytes"].items() if n not in closure_names}
    inv.update(total_mb=inv["total_bytes"] / MB, torch_closure_mb=inv["torch_closure_bytes"] / MB,
               beyond_torch_mb=inv["beyond_torch_bytes"] / MB, beyond_torch_distributions=len(beyond),
               largest_beyond_torch=[(n, b / MB) for n, b in sorted(beyond.items(), key=lambda kv: -kv[1])[:8]])
    return inv


_IMPORT_CHILD = """
import sys, time
t0 = time.perf_counter()
__import__(sys.argv[1])
print({mark!r} + repr(time.perf_counter() - t0))
"""


def import_time(python: str, module: str, runs: int = 3) -> float:
    """Median seconds of ``import module`` in ``runs`` fresh ``python -I`` processes started in a neutral folder."""
    code = _IMPORT_CHILD.format(mark=_MARK)
    times = [_child([python, "-I", "-c", code, module], f"`import {module}` under {python}",
                    cwd=tempfile.gettempdir()) for _ in range(runs)]
    return statistics.median(times)


def default_import_module(versions: dict) -> str | None:
    """The package to time for an environment: NeMo's ASR collection, or compat's models (which load nemofn)."""
    for dist, module in IMPORT_MODULES:
        if dist in versions:
            return module
    return None


def measure_environment(python: str, *, module: str | None = None, runs: int = 3) -> dict:
    """Footprint of the environment of the interpreter ``python``: :func:`count_environment`'s figures plus
    ``import_module``, ``import_s`` (median of ``runs`` fresh processes) and ``import_torch_s``.

    Args:
        python: the interpreter whose environment is measured (it runs the child processes).
        module: the package to time; default :func:`default_import_module` (none: no import timing).
        runs: fresh processes per import timing.
    """
    out = count_environment(python)
    module = module or default_import_module(out["versions"])
    out["import_module"] = module
    out["import_s"] = import_time(python, module, runs) if module else None
    out["import_torch_s"] = import_time(python, "torch", runs) if "torch" in out["versions"] else None
    return out


def _pip(python: Path, *args: str) -> None:
    run = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed in {python}:\n"
                           f"{run.stdout[-2000:]}{run.stderr[-3000:]}")


def fresh_nemofn_venv(dest: str | os.PathLike, *, torch_index_url: str | None = None) -> Path:
    """Creates a venv in ``dest`` and installs nemofn as a user would; returns its python.

    ``python -m venv dest``, ``pip install torch==2.13.0`` (with ``--extra-index-url torch_index_url`` if
    given), then ``pip install <copy of the project>`` (no extras, not editable).
    """
    dest = Path(dest).resolve()
    run = subprocess.run([sys.executable, "-m", "venv", str(dest)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"python -m venv {dest} failed:\n{run.stderr[-3000:]}")
    python = dest / "bin" / "python"
    _pip(python, TORCH_PIN, *(["--extra-index-url", torch_index_url] if torch_index_url else []))
    with tempfile.TemporaryDirectory(prefix="nemofn-src-") as src:
        for name in PROJECT_FILES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, Path(src) / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
            elif path.is_file():
                shutil.copy2(path, Path(src) / name)
        _pip(python, src)
    return python


# --------------------------------------------------------------------------------------------- the table
def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of :func:`measure_environment` results, with a ratio row when there are two."""
    lines = ["| environment | distributions | MB total | MB torch + its deps | MB beyond torch | import "
             "(median) | import torch |", "|---|---|---|---|---|---|---|"]
    for label, m in rows:
        lines.append(f"| {label} | {m['distributions']} | {m['total_mb']:.0f} | {m['torch_closure_mb']:.0f} | "
                     f"{m['beyond_torch_mb']:.0f} | `{m['import_module']}` {_seconds(m['import_s'])} | "
                     f"{_seconds(m['import_torch_s'])} |")
    if len(rows) == 2:
        (_, a), (_, b) = rows
        lines.append(f"| ratio {rows[0][0].split()[0]} / {rows[1][0].split()[0]} | "
                     f"{_ratio(a['distributions'], b['distributions'])} | {_ratio(a['total_mb'], b['total_mb'])} | "
                     f"{_ratio(a['torch_closure_mb'], b['torch_closure_mb'])} | "
                     f"{_ratio(a['beyond_torch_mb'], b['beyond_torch_mb'])} | {_ratio(a['import_s'], b['import_s'])} "
                     f"| {_ratio(a['import_torch_s'], b['import_torch_s'])} |")
    return "\n".join(lines)


def _describe(label: str, m: dict) -> str:
    largest = ", ".join(f"{n} {mb:.0f}" for n, mb in m["largest_beyond_torch"])
    return (f"{label}: {m['python']} (Python {m['python_version']}, torch {m['versions'].get('torch', 'absent')}); "
            f"torch closure: {', '.join(m['torch_closure'])}; {m['beyond_torch_distributions']} distributions beyond "
            f"it, the largest (MB): {largest}"
            + (f"; sized by folder (no RECORD): {', '.join(m['no_record'])}" if m["no_record"] else ""))


def main() -> None:
    if sys.argv[1:] == [INVENTORY_FLAG]:  # the child: report this interpreter's environment
        print(_MARK + json.dumps(inventory()), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-nemo", metavar="PYTHON", help="NeMo's interpreter, e.g. ~/nemo-venv/bin/python")
    ap.add_argument("--python", help="measure this nemofn environment instead of making a fresh venv")
    ap.add_argument("--keep", metavar="DIR", help="make the fresh venv in DIR and keep it (one there is reused)")
    ap.add_argument("--torch-index-url", help="an extra index for torch (e.g. https://download.pytorch.org/whl/cpu)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per import timing (median)")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="nemofn-footprint-") as tmp:
        if args.python:
            python, label = args.python, "nemofn (existing environment)"
        else:
            dest = Path(args.keep).expanduser() if args.keep else Path(tmp) / "venv"
            python = dest / "bin" / "python"
            if python.exists():
                print(f"reusing the venv in {dest} (remove it for a fresh install)", flush=True)
            else:
                print(f"installing nemofn into a fresh venv in {dest} ...", flush=True)
                python = fresh_nemofn_venv(dest, torch_index_url=args.torch_index_url)
            label = "nemofn (fresh venv: torch==2.13.0 + nemofn, no extras)"
        rows.append((label, measure_environment(str(python), runs=args.runs)))
        if args.vs_nemo:
            rows.append(("NeMo 3.0.0 (its venv as installed, not reinstalled)",
                         measure_environment(str(Path(args.vs_nemo).expanduser()), runs=args.runs)))
    print(format_table(rows))
    print()
    for label, m in rows:
        print(_describe(label, m))
    print(f"\nSizes: apparent bytes of the files each distribution's RECORD lists, each file once, MB = 10^6 bytes. "
          f"Import: median of {args.runs} fresh `python -I` processes.")


if __name__ == "__main__":
    main()
