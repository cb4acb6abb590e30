"""A training run through ``scripts/asr/speech_to_text_ctc.py`` with ``exp_manager.resume_if_exists=true``, killed
with SIGKILL at seven points (between steps, twice inside a checkpoint write, between a checkpoint's rename and the
``last`` update, between the new ``last`` and the removal of the old one, and twice inside a ``.nemo`` save) and
re-run after each kill with the same command: it resumes every time, ends with the parameters, optimizer state
and ``.nemo`` bitwise equal to an uninterrupted run's, and leaves no temporary file behind.

The kills come from ``kill_points.py`` (patches installed before the script runs, no hooks in the project). Its
``--serve`` mode imports torch, Fabric and Hydra once and forks each run: the 9 runs take about 15 s on 2 cores
instead of about 45 s.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compat.archive import open_nemo
from nemofn.train.checkpoint import checkpoint_problem

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "asr" / "speech_to_text_ctc.py")
WRAPPER = str(Path(__file__).with_name("kill_points.py"))

_SPEC = importlib.util.spec_from_file_location("tiny_asr", ROOT / "tests" / "compat" / "tiny_asr.py")
tiny = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tiny)

# 6 clips in batches of 2: 3 steps an epoch. Checkpoints (and a .nemo each) every 2 steps and after each validation
# (every 3 steps); the run ends at step 8.
TINY = ["--config-name=quartznet_demo_char",
        "model.encoder.jasper=[{filters:16,repeat:1,kernel:[11],stride:[2],dilation:[1],dropout:0.0,"
        "residual:false,separable:true}]",
        "model.encoder.feat_in=16", "model.preprocessor.features=16", "model.decoder.feat_in=16",
        "model.train_ds.batch_size=2", "model.validation_ds.batch_size=4", "model.optim.sched.warmup_steps=2",
        "trainer.max_steps=8", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
        "exp_manager.resume_if_exists=true", "exp_manager.resume_ignore_no_checkpoint=true",
        "++exp_manager.checkpoint_callback_params.every_n_train_steps=2"]


class Runs:
    """The wrapper's ``--serve`` process: one forked run of the script per call."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, WRAPPER, "--serve"], cwd=workdir, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def __call__(self, point: str, args: list[str]) -> tuple[int, str]:
        self.count += 1
        log = self.workdir / f"run{self.count}-{point.replace('@', '-')}.log"
        self.proc.stdin.write(json.dumps({"point": point, "argv": [SCRIPT, *args], "cwd": str(self.workdir),
                                          "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], 180)[0]:  # one reply line per request: nothing buffered
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its forked run
            pytest.fail(f"run {self.count} ({point}) did not end within 180 s:\n{log.read_text()[-3000:]}")
        reply = self.proc.stdout.readline()
        assert reply, f"the --serve process ended (exit code {self.proc.poll()})"
        return json.loads(reply)["returncode"], log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture
def runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NEMO_EXPM_VERSION"}  # each run is a new job
    env.update(PL_GLOBAL_SEED="7", TMPDIR=str(tmp_path / "tmp"), HYDRA_FULL_ERROR="1")
    (tmp_path / "tmp").mkdir()
    runner = Runs(tmp_path, env)
    yield runner
    runner.close()


def _temps(folder: Path) -> list[Path]:
    """Temporary files and folders under ``folder``: owner-tagged ones, ``*.tmp`` and Python's nameless
    ``tmpXXXXXXXX`` (``tempfile.mkstemp``, which fsspec stages Fabric's checkpoint writes in)."""
    return sorted(p for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".tmp")
                  or re.fullmatch(r"tmp[a-z0-9_]{8}", p.name))


def _train_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["train_state"]


def _step_of(ckpt: Path) -> int:
    return _train_state(ckpt)["step"]


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _final(exp: Path) -> tuple[dict, dict]:
    ckpts = exp / "QuartzNetDemoChar" / "checkpoints"
    [last] = ckpts.glob("*-last.ckpt")
    train_state = _train_state(last)
    with open_nemo(ckpts / "QuartzNetDemoChar.nemo") as archive:
        return train_state, archive.state_dict()


def test_killed_at_seven_points_resumes_bitwise_exactly_and_leaves_no_temporaries(runs, tmp_path):
    corpus = tiny.small_corpus(tmp_path / "corpus")
    data = [f"model.train_ds.manifest_filepath={corpus['train']}",
            f"model.validation_ds.manifest_filepath={corpus['val']}"]
    code, log = runs("none", [*TINY, *data, f"exp_manager.exp_dir={tmp_path / 'full'}"])
    assert code == 0, log[-3000:]

    exp = tmp_path / "killed"
    args = [*TINY, *data, f"exp_manager.exp_dir={exp}"]
    ckpts = exp / "QuartzNetDemoChar" / "checkpoints"
    tmp = tmp_path / "tmp"

    def killed(point: str) -> str:
        code, log = runs(point, args)
        assert code == -9, f"{point} was not reached (exit code {code}):\n{log[-3000:]}"
        return log

    def lasts() -> list[int]:
        return sorted(_step_of(p) for p in ckpts.glob("*-last.ckpt"))

    # 1. the first checkpoint write (step 2's last checkpoint) is torn: half of it reaches the temporary file
    killed("torn@1")
    [torn] = _temps(ckpts)
    assert torn.stat().st_size > 0 and checkpoint_problem(torn) is not None and not lasts()
    # 2. no checkpoint to resume (a temporary file is none): a fresh start, which removes the torn file first; it
    #    dies after the second last checkpoint (step 3) is renamed into place, before the first one is deleted
    log = killed("last_renamed@2")
    assert "starting a fresh run" in log and "removed 1 temporary file(s)" in log and torn.name in log
    assert not torn.exists() and lasts() == [2, 3]
    # 3. resumes from the newer last checkpoint; dies between two steps in the middle of an epoch, after a
    #    checkpoint (step 4, the first of epoch 1) and before the next step
    log = killed("step@2")
    assert "several *last.ckpt" in log and "resuming from" in log
    [last] = ckpts.glob("*-last.ckpt")
    resumed_at = _step_of(last)
    assert resumed_at > 3 and _train_state(last)["data"]["batch"] > 0  # mid-epoch
    # 4. dies with a checkpoint written and fsynced to its temporary file, not yet renamed: a complete orphan
    killed("before_rename@1")
    [complete] = _temps(ckpts)
    assert checkpoint_problem(complete) is None and _step_of(complete) > lasts()[-1] == resumed_at
    # 5. dies right after a top-k checkpoint is renamed into place, before the last checkpoint is updated
    killed("after_rename@1")
    assert not complete.exists() and not _temps(ckpts)
    newest = max(_step_of(p) for p in ckpts.glob("*.ckpt"))
    assert newest > lasts()[-1]
    # 6. dies in a .nemo save during training: its members are staged in $TMPDIR, not yet packed
    killed("nemo_staged@1")
    [staging] = _temps(tmp)
    assert staging.name.startswith("nemo_save_") and (staging / "model_weights.ckpt").is_file()
    assert lasts()[-1] == newest
    # 7. resumes at the last step and dies in the .nemo save at the end of training; its first .nemo save removed
    #    the orphaned staging folder of run 6
    log = killed("nemo_staged@1")
    assert "resuming from" in log and not staging.exists()
    [staging] = _temps(tmp)
    # 8. the same command once more: it completes and removes the last orphan
    code, log = runs("none", args)
    assert code == 0, log[-3000:]
    assert "removed 1 temporary file(s)" in log and staging.name in log
    assert not _temps(tmp) and not _temps(exp)

    ours, theirs = _final(exp), _final(tmp_path / "full")
    _assert_same(ours[0], theirs[0], "train_state")
    _assert_same(ours[1], theirs[1], ".nemo")


def test_a_nemo_save_removes_what_killed_saves_left_and_nothing_else(tmp_path, monkeypatch, caplog):
    """Unit level: the first ``.nemo`` save of a process sweeps ``$TMPDIR``'s orphaned staging folders, and a save
    to a path sweeps the orphaned temporary tars beside it; live and untagged ones stay."""
    import tempfile

    from compat.archive import save_nemo
    from compat.archive.temp_dirs import owned_temp_name

    writer = subprocess.Popen([sys.executable, "-c", ""])
    writer.wait()
    host = owned_temp_name("").split(".tmp-", 1)[1].rsplit("-", 2)[0]
    dead = f".tmp-{host}-{writer.pid}-1"
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    orphans = [tmp / f"nemo_save_abcd1234{dead}", out / f".m.nemo{dead}"]
    kept = [tmp / f"nemo_save_live{owned_temp_name('')}", tmp / "nemo_save_untagged", tmp / f"other{dead}",
            out / f".other.nemo{dead}"]
    for folder in (orphans[0], kept[0], kept[1]):
        folder.mkdir(parents=True)
        (folder / "model_weights.ckpt").write_bytes(b"w" * 1000)
    out.mkdir()
    for file in (orphans[1], kept[2], kept[3]):
        file.write_bytes(b"t" * 500)
    config = {"sample_rate": 16000, "target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
              "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 3, "num_classes": 2}}
    with caplog.at_level(logging.WARNING):
        save_nemo(out / "m.nemo", config, {"decoder.decoder_layers.0.weight": torch.ones(3, 3, 1)})
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp.iterdir()) == sorted(p.name for p in kept[:3])  # its own staging is gone
    assert "removed 1 temporary file(s) of 1.0 kB" in caplog.text  # the staging folder
    assert "removed 1 temporary file(s) of 500 bytes" in caplog.text  # the tar
    with open_nemo(out / "m.nemo") as archive:
        assert torch.equal(archive.state_dict()["decoder.decoder_layers.0.weight"], torch.ones(3, 3, 1))
