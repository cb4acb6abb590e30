"""Runs a training script as ``python <script> <args>`` would, and SIGKILLs its own process at a chosen point.

The project has no test hooks: this wrapper patches, before the script runs, the functions the point is defined on
(``torch.save``, ``os.replace``, the training loop's ``train_step``, the ``.nemo`` writer's ``pack_folder``)::

    python tests/scripts/kill_points.py torn@1 scripts/asr/speech_to_text_ctc.py <overrides...>
    python tests/scripts/kill_points.py --serve    # tests: import once, then fork one run per JSON request

Points, ``<name>@<n>``, counted in the process from 1 (``none`` runs the script without a kill):

* ``step@n``: before the n-th training step.
* ``torn@n``: the n-th checkpoint write stops half-way: half of its bytes reach its temporary file.
* ``before_rename@n``: the n-th checkpoint rename, after the data were fsynced, before the rename.
* ``after_rename@n``: right after the n-th rename of a checkpoint that is not a ``last`` one (before the last
  checkpoint is updated).
* ``last_renamed@n``: right after the n-th rename of a ``*last.ckpt`` (before the previous one is deleted).
* ``nemo_staged@n``: the n-th ``.nemo`` save, once its members are staged in ``$TMPDIR``, before they are packed.

A point that is never reached lets the script finish normally: callers check that the run was killed.

``--serve`` imports the heavy packages once (about 3 s of the 4 s a tiny run takes on 2 cores), then reads one
JSON request per line, ``{"point": ..., "argv": [script, args...], "cwd": ..., "log": path}``; each run is a
forked child whose stdout and stderr go to ``log``, and the reply is ``{"returncode": n}`` (``-9``: killed).
"""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import signal
import sys
import traceback

_CKPT_TEMP = re.compile(r"\.ckpt\.tmp-")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _is_ckpt_temp(path: object) -> bool:
    return isinstance(path, (str, os.PathLike)) and bool(_CKPT_TEMP.search(os.path.basename(os.fspath(path))))


def install(point: str) -> None:
    """Patches the process so that it SIGKILLs itself at ``point`` (see the module doc)."""
    if point == "none":
        return
    name, _, n = point.partition("@")
    target = int(n)
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen += 1
        return seen == target

    if name == "step":
        import nemofn.train.loop as loop

        if not callable(getattr(loop, "train_step", None)):
            raise RuntimeError("nemofn.train.loop no longer calls a module-level train_step: update kill point 'step'")
        real_step = loop.train_step

        def train_step(*args, **kwargs):
            if reached():
                _die()
            return real_step(*args, **kwargs)

        loop.train_step = train_step
    elif name == "torn":
        import torch

        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not (_is_ckpt_temp(f) and reached()):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as file:
                file.write(data[: len(data) // 2])
                file.flush()
                os.fsync(file.fileno())
            _die()

        torch.save = save
    elif name in ("before_rename", "after_rename", "last_renamed"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if not _is_ckpt_temp(src):
                return real_replace(src, dst, *args, **kwargs)
            is_last = os.fspath(dst).endswith("last.ckpt")
            if name == "before_rename" and reached():
                _die()
            real_replace(src, dst, *args, **kwargs)
            if (name == "after_rename" and not is_last and reached()) or (
                    name == "last_renamed" and is_last and reached()):
                _die()

        os.replace = replace
    elif name == "nemo_staged":
        import compat.archive.writer as writer

        real_pack = writer.pack_folder

        def pack_folder(folder, path):
            if reached():
                _die()
            return real_pack(folder, path)

        writer.pack_folder = pack_folder
    else:
        raise ValueError(f"unknown kill point {point!r}; see {__file__}")


def run(point: str, argv: list[str]) -> int:
    """Runs ``argv[0]`` as ``__main__`` with ``argv`` as ``sys.argv`` after :func:`install`; returns its exit code."""
    install(point)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def serve() -> None:
    """See the module doc (``--serve``)."""
    import hydra  # noqa: F401  (imported once here, shared by every forked run)
    import lightning_fabric  # noqa: F401
    import torch  # noqa: F401

    import compat.collections.asr.models  # noqa: F401
    import compat.core.config  # noqa: F401
    import compat.utils.exp_manager  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.chdir(request["cwd"])
                code = run(request["point"], request["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    elif len(sys.argv) >= 3:
        sys.exit(run(sys.argv[1], sys.argv[2:]))
    else:
        sys.exit(__doc__)
