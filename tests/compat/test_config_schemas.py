"""compat.core.config.schemas: the ``trainer:`` and ``exp_manager:`` blocks of NeMo training scripts."""

from __future__ import annotations

import re
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
    defaults = defaults_of(TrainerConfig)
    assert defaults.pop("max_consecutive_skips") == 10  # nemofn's own key (non-finite steps in a row)
    assert defaults == LIGHTNING_DEFAULTS


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


def _repo_config(name: str = "conformer_demo_bpe"):
    return OmegaConf.load(CONFIG_DIR / f"{name}.yaml")


@pytest.mark.parametrize("key,near", [("trainr", "trainer"), ("modle", "model"), ("exp_manger", "exp_manager"),
                                      ("init_from_nemo_modl", "init_from_nemo_model")])
def test_top_level_near_misses_are_errors(key, near):
    cfg = _repo_config()
    cfg[key] = {"max_steps": 3}
    with pytest.raises(ConfigError) as info:
        validate_experiment_config(cfg)
    assert str(info.value) == f"unknown key {key}; did you mean {near}?"
    assert (info.value.key, info.value.suggestion) == (key, near)
    assert validate_experiment_config(cfg, unknown_keys="warn") == [key]


def test_top_level_values_for_anchors_and_interpolations_load(caplog):
    # NeMo's examples/asr/conf/config.yaml keeps values at the top that YAML anchors use
    text = (CONFIG_DIR / "conformer_demo_bpe.yaml").read_text().replace(
        "model:\n  sample_rate: 16000\n",
        "sample_rate: &sample_rate 16000\nrepeat: &repeat 1\ndropout: &dropout 0.0\nseparable: &separable true\n"
        "labels: &labels [a, b]\nmodel_name: demo\nmodel:\n  sample_rate: *sample_rate\n")
    cfg = OmegaConf.create(text)
    assert cfg.model.sample_rate == 16000 and "labels" in cfg
    cfg.names = "run"  # a near-miss of `name`, but interpolated: a value, not a typo
    cfg.exp_manager.name = "${names}"
    with caplog.at_level("INFO", logger="compat.core.config.schemas"):
        assert validate_experiment_config(cfg) == []
    logged = {r.getMessage().split()[3]: r.levelname for r in caplog.records}
    assert logged == dict.fromkeys(["sample_rate", "repeat", "dropout", "separable", "labels", "model_name"], "INFO")


def test_top_level_trainer_key_is_a_warning_naming_its_section(caplog):
    cfg = _repo_config()
    cfg.max_steps = 3
    with caplog.at_level("INFO", logger="compat.core.config.schemas"):
        assert validate_experiment_config(cfg) == []
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "top-level config key max_steps is read by nothing; did you mean trainer.max_steps?")]


def test_top_level_known_keys_are_typed():
    for key, value, message in (("init_from_nemo_model", 3, "init_from_nemo_model: wrong type: got 3 (int)"),
                                ("init_strict", "yes", "init_strict: wrong type: got 'yes' (str), expected bool"),
                                ("trainer", [1], "trainer: wrong type")):
        cfg = _repo_config()
        cfg[key] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_experiment_config(cfg)
    cfg = _repo_config()
    cfg.init_from_nemo_model = {"encoder": {"path": "a.nemo", "include": ["encoder"]}}
    assert validate_experiment_config(cfg) == []


def test_skip_nan_grad_takes_either_value():
    for name in ("conformer_ctc_bpe", "fastconformer_transducer_bpe", "fastconformer_hybrid_transducer_ctc_bpe"):
        for value in (True, False):
            cfg = _repo_config(name)
            cfg.model.skip_nan_grad = value
            assert validate_experiment_config(cfg) == [], (name, value)


@pytest.mark.parametrize("key,good,bad,message", [
    ("max_steps", [-1, 0, 5], [-2, -100], "must be >= 0, or -1 for no limit"),
    ("max_epochs", [None, -1, 0, 3], [-5], "must be >= 0, or -1 for no limit"),
    ("limit_val_batches", [None, 0, 0.0, 0.25, 1, 1.0, 10, 10.0], [1.5, -0.1, -3], "must be a fraction in [0.0, 1.0]"),
    ("val_check_interval", [None, 0.5, 1.0, 500], [2.5, -1], "must be a fraction in [0.0, 1.0]"),
    ("overfit_batches", [0, 0.0, 0.1, 4], [1.5], "must be a fraction in [0.0, 1.0]"),
    ("fast_dev_run", [True, False, 0, 5], [-1], "must be true, false or a number of batches >= 0"),
    ("accumulate_grad_batches", [1, 4], [0, -1], "must be >= 1"),
    ("num_sanity_val_steps", [None, -1, 0, 2], [-2], "must be >= -1"),
    ("check_val_every_n_epoch", [None, 1, 5], [0], "must be >= 1"),
    ("num_nodes", [1, 2], [0], "must be >= 1"),
])  # fmt: skip
def test_trainer_values_follow_lightnings_checks(key, good, bad, message):
    for value in good:
        validate_section({key: value}, TrainerConfig, "trainer")
    for value in bad:
        with pytest.raises(ConfigError, match=re.escape(f"trainer.{key}: invalid value {value!r}: {message}")):
            validate_section({key: value}, TrainerConfig, "trainer")


def test_declared_keys_of_the_blocks_hydra_can_refuse():
    from compat.core.config.schemas import declared_keys

    assert "init_from_nemo_model" in declared_keys("") and "max_steps" in declared_keys("trainer")
    assert "every_n_train_steps" in declared_keys("exp_manager.checkpoint_callback_params")
    model = _repo_config().model
    assert "log_prediction" in declared_keys("model", model) and "labels" not in declared_keys("model", model)
    assert "labels" in declared_keys("model", _repo_config("quartznet_15x5").model)
    assert declared_keys("exp_manager.name") is None and declared_keys("model.encoder", model.encoder) is None


def test_resolve_trainer_cfg_checks_before_it_resolves_or_instantiates():
    from compat.utils.trainer_utils import resolve_trainer_cfg

    with pytest.raises(ConfigError, match=re.escape("trainer.max_steps: wrong type: got 'abc' (str), expected int")):
        resolve_trainer_cfg(OmegaConf.create({"max_steps": "abc"}))
    # the typo is named, not the failure to import a callback class or to resolve an interpolation
    with pytest.raises(ConfigError, match="unknown key trainer.max_stepz; did you mean trainer.max_steps"):
        resolve_trainer_cfg({"max_stepz": 3, "callbacks": [{"_target_": "no.such.Callback"}]})
    with pytest.raises(ConfigError, match="unknown key trainer.max_epoch;"):
        resolve_trainer_cfg(OmegaConf.create({"max_epoch": "${missing}"}))
    # what an interpolation gives is checked too
    cfg = OmegaConf.create({"steps": "many", "trainer": {"max_steps": "${steps}"}})
    with pytest.raises(ConfigError, match="trainer.max_steps: wrong type: got 'many'"):
        resolve_trainer_cfg(cfg.trainer)
    assert resolve_trainer_cfg(OmegaConf.create({"n": 7, "t": {"max_steps": "${n}"}}).t) == {"max_steps": 7}
