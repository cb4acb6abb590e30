"""compat.registry: NeMo class paths -> nemofn / compat builders, the reverse map, and the writer's target check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from compat import registry
from nemofn.core import registry as core_registry
from compat.errors import TargetImportError, UnknownTargetError, UnsafeTargetError

MODULES = "nemo.collections.asr.modules"
MODELS = "nemo.collections.asr.models"

EXPECTED_MODULES = {
    # canonical target: (alias, builder)
    f"{MODULES}.AudioToMelSpectrogramPreprocessor": (
        f"{MODULES}.audio_preprocessing.AudioToMelSpectrogramPreprocessor",
        "nemofn.asr.modules.preprocessor:AudioToMelSpectrogramPreprocessor",
    ),
    f"{MODULES}.SpectrogramAugmentation": (
        f"{MODULES}.audio_preprocessing.SpectrogramAugmentation",
        "nemofn.asr.modules.spec_augment:SpectrogramAugmentation",
    ),
    f"{MODULES}.ConvASREncoder": (f"{MODULES}.conv_asr.ConvASREncoder", "nemofn.asr.modules.conv_asr:ConvASREncoder"),
    f"{MODULES}.ConformerEncoder": (
        f"{MODULES}.conformer_encoder.ConformerEncoder",
        "nemofn.asr.modules.conformer:ConformerEncoder",
    ),
    f"{MODULES}.ConvASRDecoder": (f"{MODULES}.conv_asr.ConvASRDecoder", "nemofn.asr.modules.decoder:ConvASRDecoder"),
}


@pytest.fixture
def clean_registry():
    """Restores the registry's tables after a test that registers its own targets."""
    tables = [core_registry._CANONICAL, core_registry._BUILDER, core_registry._KIND, core_registry._REVERSE,
              core_registry._RESOLVED]
    saved = [dict(t) for t in tables]
    yield registry
    for table, copy in zip(tables, saved):
        table.clear()
        table.update(copy)


@pytest.mark.parametrize("canonical", sorted(EXPECTED_MODULES))
def test_module_targets_and_aliases(canonical: str) -> None:
    alias, builder = EXPECTED_MODULES[canonical]
    for name in (canonical, alias):
        assert registry.canonical_target(name) == canonical
        assert registry.builder_path(name) == builder
    assert registry.nemo_target_for(builder) == canonical
    assert canonical in registry.supported_targets("module") and alias in registry.supported_targets("module")


def test_model_targets() -> None:
    for short, long, builder in [
        (
            f"{MODELS}.EncDecCTCModel",
            f"{MODELS}.ctc_models.EncDecCTCModel",
            "compat.collections.asr.models:EncDecCTCModel",
        ),
        (
            f"{MODELS}.EncDecCTCModelBPE",
            f"{MODELS}.ctc_bpe_models.EncDecCTCModelBPE",
            "compat.collections.asr.models:EncDecCTCModelBPE",
        ),
    ]:
        # The long form is what NeMo's ModelPT writes into `target`, so it is the canonical spelling.
        assert registry.canonical_target(short) == registry.canonical_target(long) == long
        assert registry.builder_path(short) == builder
        assert registry.nemo_target_for(builder) == long
        assert long in registry.supported_targets("model") and long not in registry.supported_targets("module")


def test_reference_configs_use_registered_targets(nemo3_dir: Path) -> None:
    for yaml in sorted((nemo3_dir / "configs").glob("*.yaml")):
        cfg = OmegaConf.load(yaml)
        model = cfg.model if "model" in cfg else cfg
        for section in ("preprocessor", "spec_augment", "encoder", "decoder"):
            assert registry.canonical_target(model[section]._target_) in EXPECTED_MODULES, (yaml.name, section)
        registry.check_config_targets(OmegaConf.to_container(model))


def test_registered_modules_resolve_to_classes_with_from_config() -> None:
    for canonical, (_, builder) in EXPECTED_MODULES.items():
        cls = registry.resolve_target(canonical, kind="module")
        assert cls.__name__ == builder.split(":")[1] and callable(cls.from_config)
        assert registry.nemo_target_for(cls) == canonical


def test_import_is_cheap() -> None:
    code = (
        "import sys, compat.registry, compat.archive, compat.artifacts, compat.errors\n"
        "heavy = [m for m in ('torch', 'nemofn.nn', 'nemofn.asr.modules.registry', 'lightning', 'lightning_fabric') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_unknown_target_lists_the_supported_ones() -> None:
    with pytest.raises(UnknownTargetError) as info:
        registry.resolve_target("nemo.collections.asr.modules.StatelessTransducerDecoder")
    message = str(info.value)
    assert "'nemo.collections.asr.modules.StatelessTransducerDecoder'" in message
    assert f"{MODULES}.ConvASREncoder" in message and f"{MODELS}.ctc_models.EncDecCTCModel" in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownTargetError):
        registry.canonical_target(None)
    with pytest.raises(UnknownTargetError, match="registered as a model"):
        registry.resolve_target(f"{MODELS}.EncDecCTCModel", kind="module")


def test_register_model_target_for_user_models(clean_registry) -> None:
    class MyModel:
        @classmethod
        def from_config_dict(cls, cfg, trainer=None):
            return cls()

    class MyChild(MyModel):
        pass

    target = "nemo.collections.asr.models.my_models.MyModel"
    registry.register_model_target(target, MyModel, aliases=["nemo.collections.asr.models.MyModel"])
    assert registry.resolve_target("nemo.collections.asr.models.MyModel", kind="model") is MyModel
    assert registry.nemo_target_for(MyModel) == target
    assert registry.nemo_target_for(MyModel()) == target
    with pytest.raises(UnknownTargetError, match="search_bases"):
        registry.nemo_target_for(MyChild)
    assert registry.nemo_target_for(MyChild, search_bases=True) == target
    registry.register_model_target(target, MyModel)  # the same registration again is a no-op
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model_target(target, MyChild)
    registry.register_model_target(target, MyChild, overwrite=True)
    assert registry.resolve_target(target) is MyChild


def test_build_module_calls_from_config(clean_registry) -> None:
    class Builder:
        seen = None

        @classmethod
        def from_config(cls, cfg):
            cls.seen = cfg
            return ("built", cfg["width"])

    registry.register_target("nemo.collections.asr.modules.MyBlock", Builder)
    cfg = OmegaConf.create({"_target_": "nemo.collections.asr.modules.MyBlock", "width": 3})
    assert registry.build_module(cfg) == ("built", 3) and Builder.seen is cfg
    with pytest.raises(UnknownTargetError, match="no '_target_' key"):
        registry.build_module({"width": 3})


def test_bad_builder_paths(clean_registry) -> None:
    registry.register_target("nemo.collections.asr.modules.Ghost", "nemofn.does_not_exist:Ghost")
    with pytest.raises(TargetImportError, match="nemofn.does_not_exist:Ghost"):
        registry.resolve_target("nemo.collections.asr.modules.Ghost")
    with pytest.raises(ValueError, match="package.module:QualName"):
        registry.register_target("nemo.collections.asr.modules.Bad", "no_colon_here")
    with pytest.raises(ValueError, match="dotted class path"):
        registry.register_target("NoDots", "a.b:C")


def test_check_config_targets() -> None:
    good = {
        "target": f"{MODELS}.ctc_models.EncDecCTCModel",
        "encoder": {"_target_": f"{MODULES}.ConvASREncoder", "target": 0.5},  # a nested `target` is a hyperparameter
        "optim": {"sched": {"_target_": "torch.optim.lr_scheduler.StepLR"}},
    }
    registry.check_config_targets(good)
    registry.check_config_targets(OmegaConf.create(good))
    cases = [
        ({"target": "compat.collections.asr.models.EncDecCTCModel"}, "target"),
        ({"a": {"b": [{"c": 1}, {"_target_": "subprocess.call"}]}}, "a.b.1._target_"),
        ({"x": {"cls": "os.system", "params": {"command": "ls"}}}, "x.cls"),
        ({"x": {"_target_": 42}}, "x._target_"),
    ]
    for cfg, key in cases:
        with pytest.raises(UnsafeTargetError) as info:
            registry.check_config_targets(cfg)
        assert info.value.key == key and repr(key) in str(info.value)
    registry.check_config_targets({"x": {"cls": "os.system"}})  # `cls` without `params` is not a Hydra 0.x target
    registry.check_config_targets(cases[1][0], extra_prefixes=("subprocess.",))
