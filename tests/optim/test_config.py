"""``build_optimization`` on NeMo ``optim:`` configs, NeMo's max_steps precedence, and ``compute_max_steps``."""

from __future__ import annotations

import warnings

import pytest
from omegaconf import OmegaConf

from nemofn.optim import CosineAnnealing, NoamAnnealing, NoamHoldAnnealing, build_optimization, compute_max_steps
from nemofn.optim.schedules import Constant

# --- compute_max_steps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,expected", [
    # ceil(1000 / 32) = 32 batches per epoch, 10 epochs
    (dict(max_epochs=10, accumulate_grad_batches=1, limit_train_batches=1.0, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=False), 320),
    # drop_last: floor(1000 / 32) = 31
    (dict(max_epochs=10, accumulate_grad_batches=1, limit_train_batches=1.0, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=True), 310),
    # 4 ranks: ceil(1000 / 4) = 250 samples each, ceil(250 / 32) = 8 batches
    (dict(max_epochs=10, accumulate_grad_batches=1, limit_train_batches=1.0, num_workers=4, num_samples=1000,
          batch_size=32, drop_last=False), 80),
    # accumulation: ceil(32 / 3) = 11 optimizer steps per epoch
    (dict(max_epochs=10, accumulate_grad_batches=3, limit_train_batches=1.0, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=False), 110),
    # an int limit caps the batches: min(32, 5)
    (dict(max_epochs=2, accumulate_grad_batches=1, limit_train_batches=5, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=False), 10),
    # a float limit is a fraction: int(32 * 0.5)
    (dict(max_epochs=2, accumulate_grad_batches=1, limit_train_batches=0.5, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=False), 32),
    # 0.0 means no batches
    (dict(max_epochs=2, accumulate_grad_batches=1, limit_train_batches=0.0, num_workers=1, num_samples=1000,
          batch_size=32, drop_last=False), 0),
    # num_workers 0 counts as 1; None limit is Lightning's default 1.0
    (dict(max_epochs=3, accumulate_grad_batches=2, limit_train_batches=None, num_workers=0, num_samples=100,
          batch_size=16, drop_last=False), 12),
])
def test_compute_max_steps(kwargs, expected):
    assert compute_max_steps(**kwargs) == expected


# --- build_optimization ------------------------------------------------------------------------------------------

QUARTZNET_15X5 = """
name: novograd
lr: .01
betas: [0.8, 0.5]
weight_decay: 0.001
sched:
  name: CosineAnnealing
  warmup_steps: null
  warmup_ratio: null
  min_lr: 0.0
  last_epoch: -1
"""

CONFORMER_CTC_BPE = """
name: adamw
lr: 2.0
betas: [0.9, 0.98]
weight_decay: 1e-3
sched:
  name: NoamAnnealing
  d_model: ${d_model}
  warmup_steps: 10000
  warmup_ratio: null
  min_lr: 1e-6
"""

SQUEEZEFORMER = """
name: adamw
lr: 0.001
betas: [0.9, 0.98]
weight_decay: 4e-5
sched:
  name: NoamHoldAnnealing
  warmup_steps: 5000
  warmup_ratio: null
  hold_steps: 40000
  hold_ratio: null
  decay_rate: 1.0
  min_lr: 1e-5
"""


def test_quartznet_config():
    opt, schedule, lr = build_optimization(OmegaConf.create(QUARTZNET_15X5), max_steps=1000)
    assert opt.name == "novograd" and lr == 0.01
    assert opt.hparams["betas"] == (0.8, 0.5) and opt.hparams["weight_decay"] == 0.001
    assert isinstance(schedule, CosineAnnealing) and schedule.max_steps == 1000 and schedule.warmup_steps == 0
    assert schedule(0) == pytest.approx(0.01) and schedule(1000) == pytest.approx(0.0, abs=1e-15)


def test_conformer_config_with_interpolation():
    cfg = OmegaConf.create({"d_model": 176, "optim": OmegaConf.create(CONFORMER_CTC_BPE)})
    opt, schedule, lr = build_optimization(cfg.optim)  # Noam runs without max_steps
    assert opt.name == "adamw" and opt.hparams["weight_decay"] == 1e-3 and opt.hparams["betas"] == (0.9, 0.98)
    assert isinstance(schedule, NoamAnnealing) and lr == 2.0
    assert schedule(10000) == pytest.approx(2.0 / 176 ** 0.5 / 100)


def test_squeezeformer_config():
    _, schedule, _ = build_optimization(OmegaConf.create(SQUEEZEFORMER), max_steps=100000)
    assert isinstance(schedule, NoamHoldAnnealing)
    assert schedule.hold_steps == 45000 and schedule.decay_rate == 1.0
    assert schedule(46000) == pytest.approx(0.001 * 5000 / (46000 - 40000))


@pytest.mark.parametrize("name", ["quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe"])
def test_reference_configs(nemo3_dir, name):
    cfg = OmegaConf.load(nemo3_dir / "configs" / f"{name}.yaml")
    opt, schedule, lr = build_optimization(cfg.model.optim, max_steps=1000)
    assert opt.name == cfg.model.optim.name
    assert lr == cfg.model.optim.lr
    assert opt.hparams["betas"] == tuple(cfg.model.optim.betas)
    assert opt.hparams["weight_decay"] == cfg.model.optim.weight_decay
    assert isinstance(schedule, CosineAnnealing)
    warmup = cfg.model.optim.sched.warmup_steps
    assert schedule(warmup) == pytest.approx(lr)
    assert schedule(1000) == pytest.approx(cfg.model.optim.sched.min_lr)
    with pytest.raises(ValueError, match="needs max_steps"):
        build_optimization(cfg.model.optim)


def test_max_steps_argument_overrides_sched_max_steps():
    cfg = {"name": "adam", "lr": 0.1, "sched": {"name": "CosineAnnealing", "max_steps": 50}}
    assert build_optimization(cfg)[1].max_steps == 50
    assert build_optimization(cfg, max_steps=80)[1].max_steps == 80
    assert build_optimization(cfg, max_steps=-1)[1].max_steps == 50  # a trainer's "unset" value


def test_sched_max_steps_minus_one_means_constant_lr():
    cfg = {"name": "adam", "lr": 0.1, "sched": {"name": "CosineAnnealing", "max_steps": -1}}
    with pytest.warns(UserWarning, match="-1"):
        _, schedule, _ = build_optimization(cfg)
    assert isinstance(schedule, Constant) and schedule(123) == 0.1
    # A trainer max_steps wins over the -1 (NeMo's setup_optimization writes it into sched.max_steps).
    assert isinstance(build_optimization(cfg, max_steps=10)[1], CosineAnnealing)


def test_no_sched_means_constant_lr():
    opt, schedule, lr = build_optimization({"lr": 0.5})
    assert opt.name == "adam"  # NeMo's default optimizer
    assert isinstance(schedule, Constant) and schedule(7) == 0.5 and lr == 0.5


def test_missing_max_steps_error_says_how_to_fix():
    cfg = {"name": "adamw", "lr": 1e-3, "sched": {"name": "CosineAnnealing", "warmup_steps": 10}}
    with pytest.raises(ValueError, match=r"optim.sched.max_steps.*max_steps="):
        build_optimization(cfg)
    ratio_cfg = {"name": "adamw", "lr": 1e-3, "sched": {"name": "WarmupPolicy", "warmup_ratio": 0.1}}
    with pytest.raises(ValueError, match="max_steps"):
        build_optimization(ratio_cfg)


def test_trainer_keys_are_not_schedule_arguments():
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "sched": {
        "name": "WarmupAnnealing", "warmup_ratio": 0.1, "monitor": "val_loss", "reduce_on_plateau": False,
        "t_max_epochs": 3, "t_accumulate_grad_batches": 1, "t_limit_train_batches": 1.0, "t_num_workers": 1}}
    opt, schedule, _ = build_optimization(cfg, max_steps=100)
    assert opt.hparams["momentum"] == 0.9 and schedule.warmup_steps == 10


def test_target_class_paths():
    opt, _, _ = build_optimization({"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.98]})
    assert opt.name == "adamw" and opt.hparams["betas"] == (0.9, 0.98)
    opt, _, _ = build_optimization({"_target_": "nemo.core.optim.novograd.Novograd", "lr": 1e-3})
    assert opt.name == "novograd"
    _, schedule, _ = build_optimization({"lr": 1e-3, "sched": {
        "args": {"_target_": "nemo.core.config.schedulers.CosineAnnealingParams", "min_lr": 1e-5},
        "max_steps": 10}})
    assert isinstance(schedule, CosineAnnealing) and schedule.min_lr == 1e-5


def test_old_style_args():
    cfg = {"name": "adamw", "lr": 1e-3, "betas": [0.1, 0.1],  # top-level keys are ignored when `args` is given
           "args": {"name": "auto", "params": {"betas": [0.8, 0.5]}},
           "sched": {"name": "CosineAnnealing", "max_steps": 10,
                     "args": {"name": "auto", "params": {"warmup_steps": 2, "min_lr": 1e-4}}}}
    opt, schedule, _ = build_optimization(cfg)
    # NeMo's AdamWParams dataclass supplies weight_decay=0 (torch's AdamW default would be 1e-2).
    assert opt.hparams["betas"] == (0.8, 0.5) and opt.hparams["weight_decay"] == 0.0
    assert schedule.warmup_steps == 2 and schedule.min_lr == 1e-4 and schedule.max_steps == 10
    opt, _, _ = build_optimization({"name": "novograd", "lr": 1e-3, "args": {"weight_decay": 1e-3}})
    assert opt.hparams["weight_decay"] == 1e-3 and opt.hparams["betas"] == (0.95, 0.98)


def test_errors_name_the_bad_key():
    with pytest.raises(TypeError, match=r"optim \(name='novograd'\).*'momentum'"):
        build_optimization({"name": "novograd", "lr": 0.1, "momentum": 0.9})
    with pytest.raises(TypeError, match=r"optim.sched \(name='CosineAnnealing'\).*'iters_per_batch'"):
        build_optimization({"name": "adam", "lr": 0.1,
                            "sched": {"name": "CosineAnnealing", "iters_per_batch": 3, "max_steps": 9}})
    with pytest.raises(ValueError, match="optim.lr is missing"):
        build_optimization({"name": "adam"})
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        build_optimization({"name": "adamx", "lr": 0.1})
    with pytest.raises(ValueError, match="unknown schedule 'Cosine'"):
        build_optimization({"name": "adam", "lr": 0.1, "sched": {"name": "Cosine", "max_steps": 9}})
    with pytest.raises(ValueError, match="mutually exclusive"):
        build_optimization({"name": "adam", "lr": 0.1, "sched": {
            "name": "CosineAnnealing", "warmup_steps": 3, "warmup_ratio": 0.1, "max_steps": 9}})
    with pytest.raises(ValueError, match="no `name`"):
        build_optimization({"name": "adam", "lr": 0.1, "sched": {"max_steps": 9}})


def test_does_not_modify_the_config():
    cfg = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "sched": {"name": "CosineAnnealing"}}
    snapshot = repr(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_optimization(cfg, max_steps=10)
    assert repr(cfg) == snapshot
