"""compat.core.config.schemas: the ``trainer:`` and ``exp_manager:`` blocks of NeMo training scripts."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from compat.core.config import CallbackParams, ExpManagerConfig, TrainerConfig
from compat.core.config.schemas import validate_experiment_config, validate_section
from nemofn.core.schema import ConfigError, defaults_of

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "asr"

# Lightning 2.4.0's Trainer.__init__ defaults (read with inspect.signature in NeMo 3.0's environment).
LIGHTNING_DEFAULTS = {
    "accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1, "precision": None, "logger": None,
    "callbacks": None, "fast_dev_run": False, "max_epochs": None, "min_epochs": None, "max_steps": -1,
    "min_steps": None, "max_time": None, "limit_train_batches": None, "limit_val_batches": None,
    "limit_test_batches": None, "limit_predict_batches": None, "overfit_batches": 0.0, "val_check_interval": None,
    "check_val_every_n_epoch": 1, "num_sanity_val_steps": None, "log_every_n_steps": None,
    "enable_checkpointing": None, "enable_progress_bar": None, "enable_model_summary": None,
    "accumulate_grad_batches": 1, "gradient_clip_val": None, "gradient_clip_algorithm": None, "deterministic": None,
    "benchmark": None, "inference_mode": True, "use_distributed_sampler": True, "profiler": None,
    "detect_anomaly": False, "barebones": False, "plugins": None, "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0, "default_root_dir": None,
}


def test_trainer_defaults_are_lightnings():
    assert defaults_of(TrainerConfig) == LIGHTNING_DEFAULTS


def test_exp_manager_defaults_are_nemos():
    d = defaults_of(ExpManagerConfig)
    assert d["create_tensorboard_logger"] is True and d["use_datetime_version"] is True and d["seconds_to_sleep"] == 5
    assert d["checkpoint_callback_params"] == defaults_of(CallbackParams)
    cb = d["checkpoint_callback_params"]
    assert (cb["monitor"], cb["mode"], cb["save_top_k"], cb["postfix"], cb["save_last"]) == ("val_loss", "min", 3,
                                                                                              ".nemo", True)
    assert d["early_stopping_callback_params"]["patience"] == 10 and d["ema"]["decay"] == 0.999
    assert d["mlflow_logger_kwargs"]["save_dir"] == "./mlruns"
    assert OmegaConf.structured(ExpManagerConfig).checkpoint_callback_params.always_save_nemo is False


def test_typos_name_the_key_and_the_closest_one():
    with pytest.raises(ConfigError) as info:
        validate_section(OmegaConf.create({"max_stepz": 10}), TrainerConfig, "trainer")
    assert str(info.value) == "unknown key trainer.max_stepz; did you mean trainer.max_steps?"
    assert info.value.suggestion == "trainer.max_steps"
    with pytest.raises(ConfigError) as info:
        validate_section({"checkpoint_callback_params": {"monitr": "val_wer"}}, ExpManagerConfig, "exp_manager")
    assert info.value.key == "exp_manager.checkpoint_callback_params.monitr"
    assert info.value.suggestion == "exp_manager.checkpoint_callback_params.monitor"


def test_trainer_union_values():
    for good in ({"devices": -1}, {"devices": "auto"}, {"devices": [0, 1]}, {"precision": 32},
                 {"precision": "bf16-mixed"}, {"val_check_interval": 1.0}, {"val_check_interval": 500},
                 {"strategy": "ddp"}, {"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                                    "gradient_as_bucket_view": True}},
                 {"logger": False}, {"max_time": "00:12:00:00"}, {"limit_train_batches": 0.5},
                 {"gradient_clip_val": 1}):
        validate_section(good, TrainerConfig, "trainer")
    for bad, message in (({"devices": 1.5}, "trainer.devices: wrong type"),
                         ({"precision": "bf17"}, "trainer.precision: invalid value 'bf17'"),
                         ({"gradient_clip_algorithm": "clip"}, "invalid value 'clip'"),
                         ({"max_steps": "many"}, "trainer.max_steps: wrong type")):
        with pytest.raises(ConfigError, match=message):
            validate_section(bad, TrainerConfig, "trainer")


def test_warn_mode_drops_unknown_keys_and_keeps_interpolations():
    cfg = OmegaConf.create({"name": "Exp", "exp_manager": {"name": "${name}", "create_wandb_loger": True}})
    section = validate_section(cfg.exp_manager, ExpManagerConfig, "exp_manager", unknown="warn")
    assert "create_wandb_loger" not in section and section.name == "Exp"


def test_repo_experiment_configs_validate():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert paths
    for path in paths:
        assert validate_experiment_config(OmegaConf.load(path)) == [], path.name
    cfg = OmegaConf.load(paths[0])
    cfg.trainer.max_stepz = 3
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        validate_experiment_config(cfg)


def test_reference_experiment_configs_validate(nemo3_dir):
    for path in sorted((nemo3_dir / "configs").glob("*.yaml")):
        assert validate_experiment_config(OmegaConf.load(path)) == [], path.name
