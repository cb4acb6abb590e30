"""nemofn.asr.configs.optim: the valid ``optim`` / ``sched`` keys follow the optimizer and schedule names."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from nemofn.asr.configs.optim import optimizer_schema, schedule_schema, validate_optim
from nemofn.core.schema import ConfigError, schema_fields
from nemofn.optim.config import build_optimization


def _error(cfg: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_optim(cfg)
    return info.value


def test_keys_depend_on_the_optimizer():
    assert str(_error({"name": "adamw", "lrr": 0.1})) == "unknown key model.optim.lrr; did you mean model.optim.lr?"
    assert _error({"name": "sgd", "lr": 0.1, "betas": [0.9, 0.98]}).key == "model.optim.betas"
    assert _error({"name": "adam", "lr": 0.1, "momentum": 0.9}).key == "model.optim.momentum"
    assert validate_optim({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}) == []
    assert validate_optim({"name": "novograd", "lr": 0.01, "betas": [0.8, 0.5], "luc": False}) == []
    assert validate_optim({"lr": 0.01, "betas": [0.8, 0.5]}) == []  # no name: adam, as NeMo
    err = _error({"_target_": "torch.optim.AdamW", "lr": 1e-3, "momentum": 0.9})  # the name from the class path
    assert err.key == "model.optim.momentum"
    assert validate_optim({"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.98]}) == []


def test_schemas_come_from_the_registry_signatures():
    fields = schema_fields(optimizer_schema("AdamW"))
    assert {"name", "lr", "sched", "args", "_target_", "betas", "eps", "weight_decay", "amsgrad"} <= set(fields)
    assert fields["weight_decay"].default == 1e-2
    noam = schema_fields(schedule_schema("NoamAnnealing"))
    assert {"d_model", "warmup_steps", "warmup_ratio", "min_lr", "max_steps", "monitor"} <= set(noam)
    assert "d_model" not in schema_fields(schedule_schema("CosineAnnealing"))


def test_names_and_types():
    assert str(_error({"name": "lion", "lr": 1})) == ("model.optim.name: unknown optimizer 'lion'; available: adam, "
                                                      "adamw, novograd, sgd")
    assert "did you mean adamw?" in str(_error({"name": "adam_w", "lr": 1}))
    assert "is not implemented in nemofn" in str(_error({"name": "adafactor", "lr": 1}))
    err = _error({"name": "adamw", "lr": 1, "sched": {"name": "Cosine"}})
    assert err.key == "model.optim.sched.name" and "did you mean CosineAnnealing?" in str(err)
    assert "model.optim.lr: wrong type: got 'fast' (str), expected float" in str(_error({"lr": "fast"}))
    assert "expected a list of float" in str(_error({"name": "adamw", "lr": 1, "betas": 0.9}))


def test_sched_keys_depend_on_the_schedule():
    cosine = {"name": "CosineAnnealing", "warmup_steps": 10, "warmup_ratio": None, "min_lr": 1e-5, "last_epoch": -1,
              "monitor": "val_loss", "reduce_on_plateau": False, "t_max_epochs": 3, "max_steps": 100}
    assert validate_optim({"name": "adamw", "lr": 1e-3, "sched": cosine}) == []
    err = _error({"name": "adamw", "lr": 1e-3, "sched": {**cosine, "d_model": 256}})
    assert err.key == "model.optim.sched.d_model"
    noam = {"name": "NoamAnnealing", "d_model": 256, "warmup_steps": 10, "warmup_ratio": None, "min_lr": 1e-6}
    assert validate_optim({"name": "adamw", "lr": 2.0, "sched": noam}) == []
    err = _error({"name": "adamw", "lr": 1e-3, "sched": {"name": "CosineAnnealing", "warmup_stpes": 10}})
    assert err.suggestion == "model.optim.sched.warmup_steps"


def test_nemo_args_params_target_and_cls_forms():
    forms = [
        {"name": "novograd", "lr": 0.01, "args": {"name": "auto", "params": {"betas": [0.8, 0.5],
                                                                            "weight_decay": 0.001}}},
        {"name": "novograd", "lr": 0.01, "args": {"_target_": "nemo.core.config.NovogradParams", "betas": [0.8, 0.5]}},
        {"name": "adam", "lr": 0.01, "args": {"cls": "nemo.core.config.AdamParams", "params": {"eps": 1e-8}}},
        {"name": "adam", "lr": 0.01, "cls": "torch.optim.Adam"},
        {"name": "adamw", "lr": 0.01, "sched": {"name": "CosineAnnealing", "max_steps": 10,
                                                "args": {"name": "auto", "params": {"warmup_steps": 2}}}},
        {"name": "adamw", "lr": 0.01, "sched": {"max_steps": 10, "args": {
            "_target_": "nemo.core.config.CosineAnnealingParams", "warmup_steps": 2}}},
    ]
    for cfg in forms:
        assert validate_optim(cfg) == [], cfg
        build_optimization(cfg)  # and nemofn builds each of them
    err = _error({"name": "novograd", "lr": 0.01, "args": {"name": "auto", "params": {"betaz": [0.8, 0.5]}}})
    assert err.suggestion == "model.optim.args.params.betas"
    err = _error({"name": "adamw", "lr": 0.01, "sched": {"name": "NoamAnnealing", "args": {"d_modle": 4}}})
    assert err.suggestion == "model.optim.sched.args.d_model"


def test_names_that_cannot_be_looked_up_accept_any_key():
    cfg = OmegaConf.create({"opt": "adamw", "optim": {"name": "${opt}", "lr": "???", "whatever": 1,
                                                      "sched": {"name": "???", "anything": 2}}})
    assert validate_optim(cfg.optim) == []
