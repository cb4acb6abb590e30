"""``compat.utils.exp_manager``: NeMo's folder layout and files, checkpoint names, top-k and ``.nemo``, and a resume
through ``resume_if_exists`` that ends bitwise equal to the uninterrupted run."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compat import Trainer
from compat.collections.asr.models import ASRModel, EncDecCTCModel
from compat.core.config.schemas import ConfigError
from compat.utils.callbacks import format_checkpoint_name
from compat.utils.exp_manager import LoggerMisconfigurationError, NotFoundError, exp_manager
from nemofn.train.checkpoint import owned_temp_name

_SPEC = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).with_name("tiny_asr.py"))
helpers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(helpers)

QUIET = helpers.QUIET


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.small_corpus(tmp_path_factory.mktemp("expm"))


@pytest.fixture(autouse=True)
def _no_version_env():
    os.environ.pop("NEMO_EXPM_VERSION", None)
    yield
    os.environ.pop("NEMO_EXPM_VERSION", None)  # exp_manager exports it for ddp ranks; keep it out of other tests


def test_format_checkpoint_name_follows_lightning():
    assert format_checkpoint_name("QN--{val_wer:.4f}-{epoch}", {"val_wer": 0.12345, "epoch": 3}) == \
        "QN--val_wer=0.1235-epoch=3"
    assert format_checkpoint_name("{epoch}-{step}", {"epoch": 0, "step": 7}) == "epoch=0-step=7"
    assert format_checkpoint_name("{val_loss:.2f}", {}) == "val_loss=0.00"  # not logged yet: 0


def test_folder_files_loggers_checkpoints_and_nemo(corpus, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, **QUIET)
    log_dir = exp_manager(trainer, {"exp_dir": str(tmp_path), "name": "Tiny", "use_datetime_version": False,
                                    "checkpoint_callback_params": {"monitor": "val_wer", "mode": "min",
                                                                   "save_top_k": 2, "always_save_nemo": True}})
    assert log_dir == tmp_path / "Tiny" / "version_0"
    model = EncDecCTCModel(helpers.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    trainer.fit(model)
    names = {p.name for p in log_dir.iterdir()}
    assert {"cmd-args.log", "nemo_log_globalrank-0_localrank-0.txt", "lightning_logs.txt", "nemo_error_log.txt",
            "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    ckpts = sorted(p.name for p in (log_dir / "checkpoints").glob("*.ckpt"))
    last = [n for n in ckpts if n.endswith("-last.ckpt")]
    assert len(last) == 1 and len(ckpts) == 3  # top 2 by val_wer, and the last one
    assert all(n.startswith("Tiny--val_wer=") and "-epoch=" in n for n in ckpts)
    callback = trainer.checkpoint_callback
    assert callback.best_model_score == min(callback.best_k_models.values())
    nemo = log_dir / "checkpoints" / "Tiny.nemo"
    restored = ASRModel.restore_from(str(nemo))
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())
    assert "val_wer" in (log_dir / "nemo_log_globalrank-0_localrank-0.txt").read_text()


class StopAt:
    """Stops training after a given step (as a preempted or killed job would, after its last checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _run(corpus, exp_dir, stop_at=None, resume=False):
    os.environ.pop("NEMO_EXPM_VERSION", None)  # each call stands for a new process (a new job)
    torch.manual_seed(0)
    trainer = Trainer(max_steps=8, val_check_interval=3, check_val_every_n_epoch=None, **QUIET)
    exp_manager(trainer, {"exp_dir": str(exp_dir), "name": "R", "resume_if_exists": resume,
                          "resume_ignore_no_checkpoint": resume,
                          "checkpoint_callback_params": {"monitor": "val_wer", "save_top_k": 1}})
    if stop_at is not None:
        trainer.callbacks.append(StopAt(stop_at))
    cfg = helpers.tiny_cfg(corpus["train"], corpus["val"])
    cfg["preprocessor"]["dither"] = 1e-5  # randomness in every step: the RNG state must resume exactly too
    model = EncDecCTCModel(cfg, trainer=trainer)
    trainer.fit(model)
    return trainer, model


@pytest.fixture(scope="module")
def full(corpus, tmp_path_factory):
    """The uninterrupted run's model."""
    os.environ.pop("NEMO_EXPM_VERSION", None)
    _, model = _run(corpus, tmp_path_factory.mktemp("full"))
    os.environ.pop("NEMO_EXPM_VERSION", None)
    return model


def test_resume_if_exists_continues_bitwise_exactly(corpus, full, tmp_path, caplog):
    first, _ = _run(corpus, tmp_path / "split", stop_at=5, resume=True)  # no checkpoint yet: a fresh start
    assert first.global_step == 5
    with caplog.at_level(logging.INFO, logger="compat"):
        resumed, model = _run(corpus, tmp_path / "split", resume=True)
    assert "resuming from" in caplog.text and "-last.ckpt" in caplog.text
    assert resumed.global_step == 8 and resumed.ckpt_path.endswith("-last.ckpt")
    for key, value in full.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert (tmp_path / "split" / "R" / "run_0" / "cmd-args.log").is_file()  # NeMo moves the earlier run's files


def test_resume_without_a_checkpoint_names_the_flag(corpus, tmp_path):
    trainer = Trainer(max_steps=1, **QUIET)
    with pytest.raises(NotFoundError, match="resume_ignore_no_checkpoint"):
        exp_manager(trainer, {"exp_dir": str(tmp_path), "resume_if_exists": True})


def test_configuration_errors_are_named(tmp_path):
    trainer = Trainer(max_steps=1, **QUIET)
    with pytest.raises(ConfigError, match=r"exp_manager.checkpoint_callback_params.monitr; did you mean "
                                          r"exp_manager.checkpoint_callback_params.monitor\?"):
        exp_manager(trainer, {"exp_dir": str(tmp_path), "checkpoint_callback_params": {"monitr": "val_wer"}})
    with_logger = Trainer(max_steps=1, **{**QUIET, "logger": True})
    with pytest.raises(LoggerMisconfigurationError, match="trainer.logger=false"):
        exp_manager(with_logger, {"exp_dir": str(tmp_path)})
    assert exp_manager(Trainer(fast_dev_run=True, **QUIET), {"exp_dir": str(tmp_path)}) is None
    with pytest.raises(ConfigError, match=r"exp_manager.resum_if_exists; did you mean exp_manager.resume_if_exists"):
        exp_manager(Trainer(fast_dev_run=True, **QUIET), {"exp_dir": str(tmp_path), "resum_if_exists": True})
    with pytest.raises(NotImplementedError, match="create_mlflow_logger"):
        exp_manager(trainer, {"exp_dir": str(tmp_path), "create_mlflow_logger": True})


def test_resume_skips_a_damaged_last_checkpoint_with_a_warning(tmp_path, caplog):
    from compat.utils.exp_manager import _find_resume_checkpoint
    from nemofn.core.state import ModelState, TrainState
    from nemofn.optim.adam import adamw
    from nemofn.train.checkpoint import save_checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    state = TrainState.create(ModelState.create({"w": torch.ones(2)}, {}), adamw(), rng=0)
    older = save_checkpoint(ckpt_dir / "R--val_wer=0.5-epoch=0.ckpt", state)
    last = save_checkpoint(ckpt_dir / "R--val_wer=0.4-epoch=1-last.ckpt", state)
    os.utime(older, (1, 1))
    last.write_bytes(last.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert _find_resume_checkpoint(ckpt_dir, resume_past_end=False, ignore_missing=False) == older
    assert "epoch=1-last.ckpt cannot be read" in caplog.text
    older.write_bytes(b"")
    with pytest.raises(NotFoundError, match="every checkpoint in .* is damaged"):
        _find_resume_checkpoint(ckpt_dir, resume_past_end=False, ignore_missing=False)


def test_a_torn_last_checkpoint_is_skipped_and_the_resumed_run_still_ends_bitwise_equal(corpus, full, tmp_path,
                                                                                        caplog):
    _run(corpus, tmp_path, stop_at=7, resume=True)  # top-1 checkpoint after the validations at steps 3 and 6
    ckpts = tmp_path / "R" / "checkpoints"
    [last] = ckpts.glob("*-last.ckpt")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torn, e.g. by a full disk
    writer = subprocess.Popen([sys.executable, "-c", ""])
    writer.wait()  # a writer that is gone: its temporary file is what a kill mid-write leaves
    host = owned_temp_name("").split(".tmp-", 1)[1].rsplit("-", 2)[0]
    orphan = ckpts / f"{last.name}.tmp-{host}-{writer.pid}-1"
    orphan.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.INFO):
        resumed, model = _run(corpus, tmp_path, resume=True)
    assert f"{last.name} cannot be read" in caplog.text and "removed 1 temporary file(s)" in caplog.text
    assert not orphan.exists()
    used = Path(resumed.ckpt_path)
    assert used != last and not used.name.endswith("-last.ckpt") and used.parent == ckpts
    assert torch.load(used, weights_only=True)["train_state"]["step"] in (3, 6)
    assert resumed.global_step == 8
    for key, value in full.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
