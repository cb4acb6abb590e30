"""The side-by-side benchmark driver (scripts/bench/vs_nemo.py) and its worker, on tiny inputs (no NeMo needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

import vs_nemo  # noqa: E402


def test_failure_reasons_are_short():
    oom = ("Traceback ...\nRuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
           "allocate memory: you tried to allocate 28801440016 bytes. Error code 12")
    assert vs_nemo._failure(oom) == "out of memory (one allocation of 28.8 GB)"
    assert vs_nemo._failure("Traceback\n  File x\nValueError: bad config key") == "failed: ValueError: bad config key"


def test_nemo_is_optional(capsys):
    assert vs_nemo.nemo_available(None) is None
    assert vs_nemo.nemo_available(sys.executable) is None  # the project's python has no NeMo
    assert "cannot import nemo.collections.asr" in capsys.readouterr().err


def test_table_ratio_and_missing_values():
    table = vs_nemo.Table()
    table.add("rtfx", 300.0, 100.0, "{:.0f}", higher_is_better=True, target=">= 2.5x")
    table.add("rss", 400.0, None, "{:.0f}", higher_is_better=False)
    text = table.markdown()
    assert "| rtfx | 300 | 100 | 3.00x faster | >= 2.5x |" in text
    assert "| rss | 400 | — |  |  |" in text


def test_worker_cold_start_and_limits(nemo3_dir: Path):
    task = {"task": "cold", "system": "nemofn", "nemo": str(nemo3_dir / "conformer_bpe.nemo"),
            "files": [str(nemo3_dir / "audio" / "test_00000.wav")], "threads": 1}
    done = vs_nemo.run_worker(sys.executable, task)
    assert done.error is None and len(done.answer["texts"]) == 1 and done.peak_rss_mb > 50
    stopped = vs_nemo.run_worker(sys.executable, task, rss_limit_mb=1.0)
    assert stopped.answer is None and stopped.error.startswith("stopped: RSS passed")
    failed = vs_nemo.run_worker(sys.executable, dict(task, nemo=str(nemo3_dir / "missing.nemo")))
    assert failed.answer is None and failed.error.startswith("failed:")


def test_alternate_orders_rounds(monkeypatch):
    order = []

    def fake(python, task, **kw):
        order.append(task["system"])
        return vs_nemo.Measured({"rtfx": 1.0}, 0.0, 0.0)

    monkeypatch.setattr(vs_nemo, "run_worker", fake)
    vs_nemo.alternate({"nemofn": "a", "nemo": "b"}, 3, lambda s: {"system": s})
    assert order == ["nemofn", "nemo", "nemo", "nemofn", "nemofn", "nemo"]


@pytest.mark.parametrize("bad", ["nope", "train,nope"])
def test_unknown_figure_is_refused(bad, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["vs_nemo.py", "--only", bad])
    with pytest.raises(SystemExit):
        vs_nemo.main()
    assert "unknown figure" in capsys.readouterr().err
