"""nemofn.core.schema: unknown keys with suggestions, types, values, MISSING and interpolations, warn mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pytest
from omegaconf import MISSING, OmegaConf

from nemofn.core.schema import (
    ConfigError,
    closest_key,
    default_only,
    defaults_of,
    drop_keys,
    ignored,
    module_kwargs,
    option,
    reset_logged_keys,
    validate,
    validate_section,
)


@dataclass
class Block:
    filters: int = MISSING
    kernel: Any = option(MISSING, types=(List[int], int))
    dropout: float = 0.0
    name: Optional[str] = None


class BlockError(ConfigError):
    pass


@dataclass
class Data:
    __config_error__ = BlockError

    path: Any = option(None, types=(str, List[str], None))
    shuffle_n: int = ignored(0, reason="tarred only")
    is_tarred: bool = default_only(False, reason="tarred datasets are not supported")
    augmentor: Optional[Dict[str, Any]] = default_only(None, reason="no augmentation")


@dataclass
class Small:
    _target_: str = "x.Small"
    width: int = 4


@dataclass
class Big:
    _target_: str = "x.Big"
    width: int = 4
    depth: int = 2


def _select(block, path):
    return {"x.Small": Small, "x.Big": Big}[block["_target_"]]


@dataclass
class Model:
    sample_rate: int = 16000
    lr: float = 0.001
    strict: bool = True
    devices: Any = option("auto", types=(int, str, List[int]))
    mode: str = option("min", choices=("min", "max"))
    kind: str = option("bpe", choices=("bpe", "wpe"), supported=("bpe",), reason="only bpe is implemented")
    odd: int = option(1, check=lambda v: None if v % 2 else "must be odd")
    labels: Optional[List[str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    blocks: List[Block] = field(default_factory=list)
    data: Optional[Data] = None
    net: Any = option(default_factory=Small, select=_select)


def _err(cfg, schema=Model, path="model", **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(cfg, schema, path, **kw)
    return info.value


def test_unknown_keys_name_the_full_path_and_the_closest_key():
    err = _err({"lrr": 0.1})
    assert str(err) == "unknown key model.lrr; did you mean model.lr?"
    assert err.key == "model.lrr" and err.suggestion == "model.lr"
    err = _err({"blocks": [{"filters": 1, "kernel": [3]}, {"filters": 1, "kernel": 3, "dropuot": 0.1}]})
    assert str(err) == "unknown key model.blocks[1].dropuot; did you mean model.blocks[1].dropout?"
    err = _err({"net": {"_target_": "x.Big", "dpeth": 3}})
    assert err.suggestion == "model.net.depth"
    err = _err({"zzzzzzzz": 1})  # nothing close: the known keys are listed instead
    assert err.suggestion is None and "Model keys: anything, blocks" in str(err)
    assert isinstance(err, ValueError)
    assert str(_err({"lrr": 1}, path="")) == "unknown key lrr; did you mean lr?"


def test_wrong_types_say_the_value_and_the_expected_type():
    assert str(_err({"sample_rate": "sixteen"})) == ("model.sample_rate: wrong type: got 'sixteen' (str), "
                                                     "expected int")
    assert "expected int, str or a list of int" in str(_err({"devices": 1.5}))
    assert "model.labels[1]: wrong type: got 3 (int), expected str" in str(_err({"labels": ["a", 3]}))
    assert "expected bool" in str(_err({"strict": "yes"}))
    assert "expected int" in str(_err({"sample_rate": True}))  # a bool is not a number
    assert "expected float" in str(_err({"lr": False}))
    assert "expected a mapping (Data)" in str(_err({"data": [1]}))
    err = _err({"blocks": [{"filters": "many"}]})
    assert err.key == "model.blocks[0].filters"


def test_accepted_values():
    cfg = {"sample_rate": 8000, "lr": 1, "devices": [0, 1], "labels": None, "extra": {"a": [1, {"b": 2}]},
           "anything": object(), "blocks": [{"filters": 8, "kernel": [3], "dropout": 0}], "data": None,
           "net": {"_target_": "x.Big", "depth": 3}, "mode": "max", "odd": 3}
    assert validate(cfg, Model, "model") == []  # an int where a float belongs is fine
    for devices in (1, "auto", "0,1", [0]):
        validate({"devices": devices}, Model)


def test_missing_values_and_interpolations_pass_unresolved():
    cfg = OmegaConf.create({"model": {"sample_rate": "${rate}", "lr": "???", "labels": "${nowhere.labels}",
                                      "blocks": [{"filters": "???", "kernel": "???"}],
                                      "data": {"path": "???"}, "net": {"_target_": "x.Small", "width": "${w}"}}})
    assert validate(cfg.model, Model, "model") == []
    assert OmegaConf.is_missing(cfg.model, "lr")  # nothing was resolved or filled in


def test_choices_supported_and_checks():
    assert str(_err({"mode": "mean"})) == "model.mode: invalid value 'mean'; expected one of ['min', 'max']"
    assert str(_err({"kind": "wpe"})) == "model.kind: 'wpe' is not supported in nemofn: only bpe is implemented"
    assert str(_err({"odd": 2})) == "model.odd: invalid value 2: must be odd"


def test_default_only_and_ignored_keys(caplog):
    for ok in ({"is_tarred": False}, {"is_tarred": None}, {"augmentor": None}, {"augmentor": {}}):
        validate({"data": ok}, Model, "model")
    err = _err({"data": {"is_tarred": True}})
    assert isinstance(err, BlockError)  # the schema's own error type
    assert str(err) == ("model.data.is_tarred: True is not supported in nemofn: tarred datasets are not supported "
                        "(remove the key or set it to False)")
    assert "no augmentation" in str(_err({"data": {"augmentor": {"speed": 1}}}))
    reset_logged_keys()
    with caplog.at_level(logging.INFO, logger="nemofn.core.schema"):
        validate({"data": {"shuffle_n": 2048}}, Model, "model")
        validate({"data": {"shuffle_n": 4096}}, Model, "model")
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "model.data.shuffle_n has no effect in nemofn: tarred only" in infos[0].getMessage()
    assert "wrong type" in str(_err({"data": {"shuffle_n": "lots"}}))  # ignored keys are still type-checked


def test_warn_mode_logs_each_unknown_key_once_and_returns_it(caplog):
    reset_logged_keys()
    cfg = {"lrr": 0.1, "net": {"_target_": "x.Small", "widht": 2}, "sample_rate": 8000}
    with caplog.at_level(logging.WARNING, logger="nemofn.core.schema"):
        for _ in range(3):
            assert validate(cfg, Model, "model", unknown="warn") == ["model.lrr", "model.net.widht"]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["unknown config key model.lrr is ignored; did you mean model.lr?",
                        "unknown config key model.net.widht is ignored; did you mean model.net.width?"]
    with pytest.raises(ConfigError, match="wrong type"):  # warn mode only forgives unknown keys
        validate({"lrr": 1, "sample_rate": "x"}, Model, unknown="warn")
    with pytest.raises(ValueError, match="unknown='silent'"):
        validate({}, Model, unknown="silent")


def test_select_picks_the_schema_from_the_block():
    validate({"net": {"_target_": "x.Big", "depth": 3}}, Model)
    err = _err({"net": {"_target_": "x.Small", "depth": 3}})
    assert err.key == "model.net.depth"
    assert "expected a mapping" in str(_err({"net": 3}))


def test_dataclass_instances_and_structured_configs_validate():
    cfg = Model(blocks=[Block(filters=2, kernel=[3])], net=Big(depth=5), data=Data(path=["a", "b"]))
    assert validate(cfg, Model, "model") == []
    structured = OmegaConf.structured(Model)  # the schemas follow OmegaConf's structured-config rules
    assert validate(structured, Model) == []
    assert defaults_of(Model)["net"] == {"_target_": "x.Small", "width": 4}
    assert defaults_of(Block)["filters"] == MISSING


def test_validate_section_keeps_the_node_or_a_pruned_copy_with_its_parent():
    root = OmegaConf.create({"name": "exp", "section": {"sample_rate": 8000, "lrr": 1, "extra": {"n": "${name}"}}})
    with pytest.raises(ConfigError, match="model.lrr"):
        validate_section(root.section, Model, "model")
    pruned = validate_section(root.section, Model, "model", unknown="warn")
    assert "lrr" not in pruned and "lrr" in root.section  # the caller's config is untouched
    assert pruned.extra.n == "exp"  # interpolations still resolve against the root
    same = OmegaConf.create({"sample_rate": 1})
    assert validate_section(same, Model, "model") is same
    assert OmegaConf.to_container(validate_section({"lr": 2}, Model, "m")) == {"lr": 2}


def test_module_kwargs_resolves_and_refuses_unset_values():
    root = OmegaConf.create({"w": 7, "net": {"_target_": "x.Big", "width": "${w}"}})
    assert module_kwargs(root.net, Big, "model.net") == {"width": 7}
    with pytest.raises(ConfigError, match=r"model.blocks\[0\].filters is \?\?\?") as info:
        module_kwargs({"filters": "???", "kernel": 3}, Block, "model.blocks[0]")
    assert info.value.key == "model.blocks[0].filters"
    with pytest.raises(ConfigError, match="missing required key\\(s\\) kernel"):
        module_kwargs({"filters": 3}, Block, "blk")
    with pytest.raises(ConfigError, match="unknown key blk.kernle"):  # a typo is reported before a bad interpolation
        module_kwargs(OmegaConf.create({"filters": "${nope}", "kernle": 3}), Block, "blk")
    with pytest.raises(ConfigError, match="blk.*cannot resolve"):
        module_kwargs(OmegaConf.create({"filters": "${nope}", "kernel": 3}), Block, "blk")
    with pytest.raises(ConfigError, match="blk.filters: wrong type: got 'x'"):  # checked after resolution too
        module_kwargs(OmegaConf.create({"f": "x", "blk": {"filters": "${f}", "kernel": 3}}).blk, Block, "blk")


def test_drop_keys_and_closest_key():
    cfg = {"a": {"b": 1, "c": [{"d": 1, "e": 2}]}, "f": 3}
    drop_keys(cfg, ["model.a.b", "model.a.c[0].e", "model.zz.y"], "model")
    assert cfg == {"a": {"c": [{"d": 1}]}, "f": 3}
    assert closest_key("spec_augmnt", ["spec_augment", "preprocessor"]) == "spec_augment"
    assert closest_key("Cosine", ["CosineAnnealing", "NoamAnnealing"], partial=True) == "CosineAnnealing"
    assert closest_key("qqq", ["encoder", "decoder"]) is None
