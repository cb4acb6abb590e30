"""Non-finite steps are left out exactly: a NaN or Inf batch changes no parameter, buffer or optimizer-state bit,
the step counter still advances, the loop counts, logs and warns about skips, and too many in a row stop the run
with an error naming the steps and their manifest lines. Eager, Fabric and compat.Trainer paths."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nemofn.asr.data.manifest import ManifestEntry
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState, TrainState
from nemofn.nn.activation import Activation
from nemofn.nn.dropout import Dropout
from nemofn.nn.linear import Linear
from nemofn.nn.norm import BatchNorm1d
from nemofn.nn.sequential import Sequential
from nemofn.optim import adamw, novograd, sgd
from nemofn.optim import guard
from nemofn.optim.guard import Snapshot
from nemofn.train import NonFiniteLossError, NonFiniteStepWarning
from nemofn.train.loop import FitConfig, fit
from nemofn.train.step import MicroBatches, StepConfig, SupervisedObjective, train_step

# BatchNorm (running statistics, num_batches_tracked) and dropout (the step's RNG key) in one small net.
NET = Sequential([Linear(4, 16), BatchNorm1d(16), Activation("relu"), Dropout(0.2), Linear(16, 2)])
QUIET = dict(accelerator="cpu", loggers=(), progress_bar=False)

_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


@pytest.fixture(params=["host", "select"])
def path(request, monkeypatch):
    """Both ways a skip is applied: the CPU's host branch, and the GPU's copy-and-select (run here on the CPU)."""
    monkeypatch.setattr(guard, "SELECT_ON_CPU", request.param == "select")
    return request.param


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(_INT[t.dtype]) if t.dtype in _INT else t.detach()


def _assert_bitwise_equal(a: TrainState, b: TrainState) -> None:
    for name, x, y in zip(a.model.param_names + a.model.buffer_names, a.model.param_list + a.model.buffer_list,
                          b.model.param_list + b.model.buffer_list):
        assert torch.equal(_bits(x), _bits(y)), name
    assert a.opt_state.keys() == b.opt_state.keys()
    for key, xs in a.opt_state.items():
        ys = b.opt_state[key]
        pairs = zip(xs, ys) if isinstance(xs, list) else [(xs, ys)]
        for x, y in pairs:
            assert (x is None and y is None) or torch.equal(_bits(x), _bits(y)), key


def _batch(i: int, bad: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 4, generator=g)
    y = torch.stack([x.sum(1), x[:, 0] * x[:, 1]], dim=1)
    if bad is not None:
        x = x.clone()
        x[3, 1] = float(bad)  # one poisoned value: without the guard it would reach every parameter
    return x, y


def _state(cfg: StepConfig) -> TrainState:
    return TrainState.create(ModelState.create(*NET.init(RngKey(0))), cfg.optimizer, rng=RngKey(1))


@pytest.mark.parametrize("optimizer", [adamw(weight_decay=0.1), sgd(momentum=0.9, dampening=0.1), novograd()],
                         ids=["adamw", "sgd-momentum", "novograd"])
def test_nan_and_inf_batches_change_nothing_but_the_step_counter(optimizer, path):
    schedule = lambda step: 0.05 / (1 + step)  # noqa: E731 - the lr differs per step, so the counter matters
    bad = {0: "nan", 2: "nan", 5: "inf"}       # step 0: SGD's momentum buffers are still None placeholders
    guarded = StepConfig(SupervisedObjective(NET, F.mse_loss), optimizer, schedule, clip_grad_norm=5.0)
    plain = StepConfig(SupervisedObjective(NET, F.mse_loss), optimizer, schedule, clip_grad_norm=5.0,
                       skip_nonfinite=False)
    state, reference = _state(guarded), _state(plain)
    skipped, lrs, ref_lrs = [], [], []
    for i in range(8):
        state, metrics = train_step(state, _batch(i, bad.get(i)), guarded)
        skipped.append(int(metrics["skipped"]))
        lrs.append(metrics["lr"])
        if i in bad:
            assert not torch.isfinite(metrics["loss"])
            reference = reference.replace(step=reference.step + 1)  # the update left out, the counter advanced
        else:
            reference, ref_metrics = train_step(reference, _batch(i), plain)
            ref_lrs.append(ref_metrics["lr"])
            assert "skipped" not in ref_metrics
    assert skipped == [1, 0, 1, 0, 0, 1, 0, 0]
    assert state.step == reference.step == 8 and [lr for i, lr in enumerate(lrs) if i not in bad] == ref_lrs
    _assert_bitwise_equal(state, reference)
    assert int(state.model.buffers["1"]["num_batches_tracked"]) == 5
    if optimizer.name == "sgd":
        assert all(b is not None for b in state.opt_state["momentum_buffer"])


def test_without_the_guard_one_nan_batch_poisons_everything():
    cfg = StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), 1e-2, skip_nonfinite=False)
    state, _ = train_step(_state(cfg), _batch(0, "nan"), cfg)
    assert all(not torch.isfinite(p).all() for p in state.model.param_list)  # what the guard prevents


def test_a_non_finite_loss_with_finite_gradients_and_a_bad_micro_batch_are_skipped(path):
    def objective(params, buffers, batch, *, train, rng):
        x, y, poison = batch
        out, new_buffers = NET.apply(params, buffers, x, train=train, rng=rng)
        return F.mse_loss(out, y) + poison, {"poison": poison}, new_buffers  # d(loss)/d(params) stays finite

    cfg = StepConfig(objective, adamw(), 1e-2)
    state, reference = _state(cfg), _state(cfg)
    state, m = train_step(state, (*_batch(0), torch.tensor(float("inf"))), cfg)
    assert int(m["skipped"]) == 1 and torch.isfinite(m["grad_norm"])
    state, m = train_step(state, MicroBatches([(*_batch(1), torch.tensor(0.0)),
                                               (*_batch(2, "nan"), torch.tensor(0.0))]), cfg)
    assert int(m["skipped"]) == 1
    _assert_bitwise_equal(state, reference)


def test_snapshot_restores_every_bit(path):
    values = [torch.tensor([-0.0, 1.5, float("inf")]), torch.tensor([3, -4]), torch.randn(3).bfloat16(),
              torch.randn(2, dtype=torch.complex64), torch.tensor([True, False])]
    before = [v.clone() for v in values]
    for finite in (torch.tensor(True), torch.tensor(False)):
        snap = Snapshot(values)
        for v in values:
            v.copy_(torch.full_like(v, float("nan")) if v.is_floating_point() or v.is_complex() else ~v if
                    v.dtype == torch.bool else v + 7)
        changed = [v.clone() for v in values]
        snap.restore_unless(finite)
        expected = changed if bool(finite) else before
        for v, e in zip(values, expected):
            real = torch.view_as_real(v) if v.is_complex() else v
            ref = torch.view_as_real(e) if e.is_complex() else e
            assert torch.equal(_bits(real), _bits(ref)), (v, e)
        for v, b in zip(values, before):
            v.copy_(b)


# --- the loop ---------------------------------------------------------------------------------------------------

class ManifestData(torch.utils.data.Dataset):
    """``(x, y)`` pairs with manifest entries, like AudioToTextDataset; the samples in ``bad`` hold a NaN/Inf."""

    def __init__(self, n: int, bad: dict[int, str]):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.stack([self.x.sum(1), self.x[:, 0]], dim=1)
        for i, value in bad.items():
            self.x[i, 2] = float(value)
        self.entries = [ManifestEntry(f"/data/{i}.wav", 1.0, "text", id=i, manifest="/data/train.json", line=i + 1)
                        for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _step() -> StepConfig:
    return StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), 1e-2, clip_grad_norm=1.0)


def test_fit_counts_logs_and_warns_about_skipped_steps(tmp_path):
    # Batches of 4 in manifest order: samples 5 and 14 poison steps 2 and 4 (log numbering, the first step is 1).
    data = ManifestData(32, {5: "nan", 14: "-inf"})
    with pytest.warns(NonFiniteStepWarning) as caught:
        result = fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, max_steps=8, batch_size=4,
                     shuffle=False, log_every_n_steps=3, accelerator="cpu", progress_bar=False, loggers=("csv",),
                     log_dir=str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # one warning per log interval that had skips (steps 1-3, then 4-6)
    assert "step 2 (/data/train.json:5, /data/train.json:6, /data/train.json:7, /data/train.json:8)" in messages[0]
    assert "step 4 (/data/train.json:13" in messages[1] and "2 skipped in all" in messages[1]
    assert result.skipped_steps == 2 and result.state.step == 8
    assert [(h["step"], h["skipped_steps"]) for h in result.history] == [(3, 1.0), (6, 2.0)]
    assert "skipped" not in result.history[0]
    assert all(torch.isfinite(t).all() for t in result.state.model.param_list + result.state.model.buffer_list)
    with open(tmp_path / "nemofn" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["skipped_steps"]) for r in rows] == [1.0, 2.0]


def test_consecutive_skips_stop_with_an_error_naming_steps_and_manifest_lines():
    # Samples 8-19 poisoned: steps 3, 4 and 5 (batches of 4, manifest order) are skipped in a row.
    data = ManifestData(40, {i: "nan" for i in range(8, 20)})
    common = dict(max_steps=10, batch_size=4, shuffle=False, log_every_n_steps=4, **QUIET)
    first_read = pytest.warns(NonFiniteStepWarning, match=r"step 3 \(/data/train.json:9")
    with first_read, pytest.raises(NonFiniteLossError) as info:
        fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, max_consecutive_skips=3, **common)
    err = info.value
    assert err.steps == [3, 4, 5]  # seen at the log read after step 8, a few steps late
    assert err.batches[3] == [f"/data/train.json:{line}" for line in (9, 10, 11, 12)]
    message = str(err)
    assert "3 consecutive training steps" in message and "steps 3-5" in message
    assert "max_consecutive_skips=3" in message and "after step 2" in message
    assert "step 5 (/data/train.json:17, /data/train.json:18, /data/train.json:19, /data/train.json:20)" in message
    # Without the limit, the run goes on and ends finite.
    with pytest.warns(NonFiniteStepWarning):
        result = fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, max_consecutive_skips=None, **common)
    assert result.skipped_steps == 3 and result.state.step == 10
    assert all(torch.isfinite(p).all() for p in result.state.model.param_list)
    with pytest.raises(ValueError, match="max_consecutive_skips must be an int >= 0 or None"):
        FitConfig(max_steps=1, max_consecutive_skips=-1)


def test_a_dataset_without_manifest_entries_is_named_by_indices():
    data = torch.utils.data.TensorDataset(*ManifestData(16, {6: "nan"})[:])
    with pytest.warns(NonFiniteStepWarning, match=r"step 2 \(index 4, index 5, index 6, index 7\)"):
        result = fit(ModelState.create(*NET.init(RngKey(0))), _step(), data, max_steps=4, batch_size=4,
                     shuffle=False, log_every_n_steps=10, **QUIET)  # read at the end of the run
    assert result.skipped_steps == 1


# --- Fabric and compat --------------------------------------------------------------------------------------------

def test_the_fabric_runtime_path_skips_too(path):
    from lightning_fabric import Fabric

    from nemofn.train.adapter import setup_fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    cfg = StepConfig(SupervisedObjective(NET, F.mse_loss), adamw(), lambda s: 1e-2 / (1 + s))  # no norm tracked
    cfg = StepConfig(cfg.objective, cfg.optimizer, cfg.schedule, track_grad_norm=False)
    state, runtime = setup_fabric(fabric, ModelState.create(*NET.init(RngKey(0))), cfg.optimizer, rng=RngKey(1))
    reference = _state(cfg)
    for i in range(5):
        bad = {1: "nan", 3: "inf"}.get(i)
        state, m = train_step(state, _batch(i, bad), cfg, runtime=runtime)
        assert int(m["skipped"]) == (bad is not None) and "grad_norm" not in m
        if bad:
            reference = reference.replace(step=reference.step + 1)
        else:
            reference, _ = train_step(reference, _batch(i), cfg)
    _assert_bitwise_equal(state, reference)


def test_compat_trainer_fit_with_a_nan_sample_ends_finite(tmp_path):
    spec = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).parents[1] / "compat" / "tiny_asr.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    from compat import Trainer
    from compat.collections.asr.models import EncDecCTCModel

    corpus = tiny.small_corpus(tmp_path)
    torch.manual_seed(0)
    trainer = Trainer(max_steps=3, **tiny.QUIET)
    model = EncDecCTCModel(tiny.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    clean = model.train_dataloader().dataset

    class Poisoned(torch.utils.data.Dataset):  # NaN audio cannot come from a WAV (load_audio refuses it)
        entries = clean.entries  # the real manifest entries name the batches

        def __len__(self):
            return len(clean)

        def __getitem__(self, i):
            signal, *rest = clean[i]
            return (torch.full_like(signal, float("nan")) if i == 2 else signal, *rest)

    loader = torch.utils.data.DataLoader(Poisoned(), batch_size=2, shuffle=False, collate_fn=clean.collate_fn)
    with pytest.warns(NonFiniteStepWarning, match=r"step \d \(.*train_manifest.json:3\b"):
        trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 3 and trainer.logged_metrics["skipped_steps"] == 1.0
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def test_compat_trainer_stops_after_its_max_consecutive_skips(tmp_path):
    spec = importlib.util.spec_from_file_location("tiny_asr", Path(__file__).parents[1] / "compat" / "tiny_asr.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    from compat import Trainer
    from compat.collections.asr.models import EncDecCTCModel
    from compat.core.config.schemas import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_consecutive_skips"):
        Trainer(max_consecutive_skips=-1, **tiny.QUIET)
    corpus = tiny.small_corpus(tmp_path)
    trainer = Trainer(max_steps=6, max_consecutive_skips=2, **tiny.QUIET)
    model = EncDecCTCModel(tiny.tiny_cfg(corpus["train"], corpus["val"]), trainer=trainer)
    clean = model.train_dataloader().dataset

    class AllNaN(torch.utils.data.Dataset):
        entries = clean.entries

        def __len__(self):
            return len(clean)

        def __getitem__(self, i):
            signal, *rest = clean[i]
            return (torch.full_like(signal, float("nan")), *rest)

    loader = torch.utils.data.DataLoader(AllNaN(), batch_size=2, shuffle=False, collate_fn=clean.collate_fn)
    with pytest.raises(NonFiniteLossError, match=r"steps 1-2; limit max_consecutive_skips=2\).*the initial ones") as info:
        trainer.fit(model, train_dataloaders=loader)
    assert info.value.steps == [1, 2]
    lines = [int(n) for names in info.value.batches.values() for n in re.findall(r"train_manifest.json:(\d+)$",
                                                                                  "\n".join(names), re.M)]
    assert len(set(lines)) == 4 and all(1 <= n <= len(clean) for n in lines)  # 2 steps of 2 distinct samples
