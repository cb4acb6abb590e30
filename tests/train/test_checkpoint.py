"""Atomic checkpoint files of a whole TrainState, with and without Fabric."""

from __future__ import annotations

import os

import pytest
import torch

from nemofn.core.rng import RngKey
from nemofn.core.state import DataPosition, ModelState, TrainState
from nemofn.optim.adam import adamw
from nemofn.train.checkpoint import (checkpoint_name, latest_checkpoint, load_checkpoint, load_model_state,
                                     save_checkpoint)


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
    assert synced == [str(path) + ".tmp", str(tmp_path),  # the data before the rename, the folder entry after
                      str(tmp_path / "last.ckpt.tmp"), str(tmp_path)]
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
