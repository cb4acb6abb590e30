"""Atomic checkpoint files of a whole TrainState, with and without Fabric; temporary files named for their
process, and the removal of those a killed writer left; resuming past torn checkpoints, bitwise exactly."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from nemofn.core.rng import RngKey
from nemofn.core.state import DataPosition, ModelState, TrainState
from nemofn.optim.adam import adamw
from nemofn.train.checkpoint import (checkpoint_name, latest_checkpoint, load_checkpoint, load_model_state,
                                     owned_temp_name, remove_orphaned_temps, save_checkpoint, temp_owner_alive)


def _state(seed: int) -> TrainState:
    g = torch.Generator().manual_seed(seed)
    ms = ModelState.create({"enc": {"w": torch.randn(3, 2, generator=g)}}, {"enc": {"n": torch.tensor(seed)}})
    return TrainState.create(ms, adamw(), rng=RngKey(seed))


def test_save_then_load_restores_the_state_and_extra(tmp_path):
    src = _state(1).replace(step=12, data=DataPosition(2, 5, 9))
    path = save_checkpoint(tmp_path / checkpoint_name(src.step), src, extra={"note": "hello"}, link_last=True)
    assert path.name == "step=00000012.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step=00000012.ckpt"]  # no .tmp left over
    # last.ckpt is its own file with the same bytes (damaging one does not damage the other)
    assert not os.path.samefile(tmp_path / "last.ckpt", path)
    assert (tmp_path / "last.ckpt").read_bytes() == path.read_bytes()
    dst = _state(2)
    extra = load_checkpoint(tmp_path / "last.ckpt", dst)
    assert extra == {"note": "hello"}
    assert dst.step == 12 and dst.data == DataPosition(2, 5, 9) and dst.rng == RngKey(1)
    assert torch.equal(dst.model.params["enc"]["w"], src.model.params["enc"]["w"])
    assert int(dst.model.buffers["enc"]["n"]) == 1


def test_load_model_state_takes_only_params_and_buffers(tmp_path):
    src = _state(1).replace(step=7)
    path = save_checkpoint(tmp_path / checkpoint_name(7), src)
    model = _state(2).model
    assert load_model_state(path, model) == 7
    assert torch.equal(model.params["enc"]["w"], src.model.params["enc"]["w"])
    assert int(model.buffers["enc"]["n"]) == 1
    other = ModelState.create({"dec": {"w": torch.zeros(3, 2)}}, {})
    with pytest.raises((KeyError, ValueError), match="enc.w|dec.w"):
        load_model_state(path, other)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model_state(tmp_path / "missing.ckpt", model)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(3))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # the partial temp file is removed


def test_latest_checkpoint_and_errors(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (3, 20, 7):
        save_checkpoint(tmp_path / checkpoint_name(step), _state(step))
    assert latest_checkpoint(tmp_path).name == "step=00000020.ckpt"
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.ckpt", _state(0))
    with pytest.raises(KeyError, match="reserved keys"):
        save_checkpoint(tmp_path / "x.ckpt", _state(0), extra={"train_state": 1})


def test_fabric_save_and_load_round_trip(tmp_path):
    from lightning_fabric import Fabric

    from nemofn.train.adapter import setup_fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    fabric.launch()
    src, _ = setup_fabric(fabric, _state(1).model, adamw(), rng=4)
    src = src.replace(step=5)
    save_checkpoint(tmp_path / "f.ckpt", src, fabric=fabric, extra={"k": 1})
    dst, _ = setup_fabric(fabric, _state(2).model, adamw())
    assert load_checkpoint(tmp_path / "f.ckpt", dst, fabric=fabric) == {"k": 1}
    assert dst.step == 5 and dst.rng == RngKey(4)
    assert torch.equal(dst.model.params["enc"]["w"], src.model.params["enc"]["w"])


def test_writes_are_durable_file_then_rename_then_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = save_checkpoint(tmp_path / checkpoint_name(3), _state(1).replace(step=3), link_last=True)
    assert synced == [str(tmp_path / owned_temp_name(path.name)), str(tmp_path),  # the data before the rename,
                      str(tmp_path / owned_temp_name("last.ckpt")), str(tmp_path)]  # the folder entry after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", path.name]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    save_checkpoint(tmp_path / checkpoint_name(1), _state(1).replace(step=1), link_last=True)
    newest = save_checkpoint(tmp_path / checkpoint_name(2), _state(2).replace(step=2), link_last=True)
    last = tmp_path / "last.ckpt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])  # a torn write, e.g. a full disk
    assert latest_checkpoint(tmp_path) == newest
    assert "last.ckpt cannot be read" in caplog.text
    newest.write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / checkpoint_name(1)
    with pytest.raises(ValueError, match=r"step=00000002\.ckpt cannot be read: not a complete checkpoint"):
        load_checkpoint(newest, _state(3))
    (tmp_path / checkpoint_name(1)).write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path) is None


# -- temporary files of killed writers -----------------------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _tag(pid: int, start: int) -> str:
    host = owned_temp_name("x").split(".tmp-", 1)[1].rsplit("-", 2)[0]
    return f".tmp-{host}-{pid}-{start}"


def test_temporary_names_say_whose_they_are():
    mine = owned_temp_name("step=00000003.ckpt")
    assert mine.startswith("step=00000003.ckpt.tmp-") and f"-{os.getpid()}-" in mine
    assert temp_owner_alive(mine) is True
    own_start = int(mine.rsplit("-", 1)[1])
    assert temp_owner_alive("a.ckpt" + _tag(_dead_pid(), 1)) is False
    # a later process that got a dead writer's pid (a restarted container's pid 1, say) is not the writer
    assert temp_owner_alive("a.ckpt" + _tag(os.getpid(), own_start + 1)) is False
    assert temp_owner_alive("a.ckpt.tmp-otherhost-1-1") is True  # another machine's: cannot be checked, kept
    assert temp_owner_alive("a.ckpt.tmp") is None and temp_owner_alive("notes.txt") is None


def test_orphans_of_dead_writers_are_removed_and_logged_live_and_untagged_ones_kept(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / ("a.ckpt" + _tag(dead, 1))).write_bytes(b"x" * 3000)
    staging = tmp_path / ("nemo_save_ab12" + _tag(dead, 1))
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "model_weights.ckpt").write_bytes(b"y" * 2000)
    live = tmp_path / owned_temp_name("b.ckpt")
    live.write_bytes(b"z")
    keep = ["a.ckpt.tmp", "b.ckpt.tmp-otherhost-1-1", "c.ckpt", live.name]
    for name in keep[:-1]:
        (tmp_path / name).write_bytes(b"k")
    with caplog.at_level(logging.WARNING):
        removed = remove_orphaned_temps(tmp_path)
    assert sorted(removed) == [("a.ckpt" + _tag(dead, 1), 3000), (staging.name, 2000)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert "removed 2 temporary file(s) of 5.0 kB" in caplog.text and staging.name in caplog.text
    assert remove_orphaned_temps(tmp_path) == [] and remove_orphaned_temps(tmp_path / "missing") == []
    (tmp_path / ("d.ckpt" + _tag(dead, 1))).write_bytes(b"d")
    assert remove_orphaned_temps(tmp_path, prefix="nemo_") == [] and remove_orphaned_temps(tmp_path, prefix="d.")


_KILLED_WRITER = textwrap.dedent("""
    import os, shutil, signal, sys
    import torch
    from lightning_fabric import Fabric
    from nemofn.core.state import ModelState, TrainState
    from nemofn.optim.adam import adamw
    from nemofn.train.adapter import setup_fabric
    from nemofn.train.checkpoint import save_checkpoint

    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    state, _ = setup_fabric(fabric, ModelState.create({"w": torch.ones(1000)}), adamw(), rng=0)
    die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    os.replace = shutil.move = die  # killed just before the finished file would be renamed into place
    save_checkpoint(sys.argv[1], state, fabric=fabric)
""")


def test_a_write_killed_before_its_rename_leaves_one_tagged_file_that_the_next_start_removes(tmp_path, caplog):
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    ckpts = tmp_path / "ckpts"
    run = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(ckpts / checkpoint_name(5))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]
    # nothing staged in $TMPDIR (fabric.save does: fsspec writes a nameless tmpXXXXXXXX there first); torch may
    # create its compile cache folder there
    assert [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")] == []
    [orphan] = ckpts.iterdir()
    assert orphan.name.startswith("step=00000005.ckpt.tmp-") and orphan.stat().st_size > 4000
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(ckpts) is None  # the resume lookup of the next start
    assert not orphan.exists() and "removed 1 temporary file(s)" in caplog.text


def test_the_first_save_into_a_folder_removes_its_orphans(tmp_path):
    orphan = tmp_path / ("step=00000001.ckpt" + _tag(_dead_pid(), 1))
    orphan.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / checkpoint_name(2), _state(1).replace(step=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(2)]


# -- resuming past torn checkpoints, end to end --------------------------------------------------------------------

def _fit_setup():
    from nemofn.nn.activation import Activation
    from nemofn.nn.dropout import Dropout
    from nemofn.nn.linear import Linear
    from nemofn.nn.sequential import Sequential
    from nemofn.optim.schedules import CosineAnnealing
    from nemofn.train.step import StepConfig, SupervisedObjective

    net = Sequential([Linear(4, 8), Activation("relu"), Dropout(0.2), Linear(8, 1)])
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    step = StepConfig(SupervisedObjective(net, F.mse_loss), adamw(), CosineAnnealing(3e-2, max_steps=9, warmup_steps=2))
    return (lambda: ModelState.create(*net.init(RngKey(0)))), step, TensorDataset(x, x.sum(1, keepdim=True))


def test_a_resume_skips_torn_checkpoints_and_ends_bitwise_equal(tmp_path, caplog):
    from nemofn.train.loop import fit

    model, step, data = _fit_setup()
    common = dict(batch_size=8, accelerator="cpu", loggers=(), progress_bar=False, log_every_n_steps=1)
    full = fit(model(), step, data, max_steps=9, **common).state
    ckpts = tmp_path / "ckpts"
    fit(model(), step, data, max_steps=6, checkpoint_dir=str(ckpts), checkpoint_every_n_steps=2, **common)
    for name in ("last.ckpt", checkpoint_name(6)):  # both copies of step 6 torn, e.g. by a full disk
        path = ckpts / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        resumed = fit(model(), step, data, max_steps=9, checkpoint_dir=str(ckpts), resume_from="last", **common)
    assert "last.ckpt cannot be read" in caplog.text and f"{checkpoint_name(6)} cannot be read" in caplog.text
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8, 9]  # from step 4's checkpoint
    state = resumed.state
    assert state.step == full.step and state.data == full.data and state.rng == full.rng
    for name, x, y in zip(full.model.param_names + full.model.buffer_names, full.model.param_list +
                          full.model.buffer_list, state.model.param_list + state.model.buffer_list):
        assert torch.equal(x, y), name
    for key in full.opt_state:
        assert all(torch.equal(x, y) for x, y in zip(full.opt_state[key], state.opt_state[key])), key
