"""The compat API against real NeMo 3.0 outputs: every reference ``.nemo`` restores strictly through
``ASRModel.restore_from`` and ``ModelPT.restore_from``; features, log-probs and ``transcribe()`` match NeMo's; the
restore options (``return_config``, ``override_config_path``, ``map_location``) behave as NeMo's; bad archives
fail with clear errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from compat.archive import open_nemo, save_nemo
from compat.collections.asr.models import ASRModel, EncDecCTCModel, EncDecCTCModelBPE
from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis
from compat.core.classes import ModelPT
from compat.errors import CorruptArchiveError, MissingConfigError, UnknownTargetError, UnsafeArchiveError

ATOL = 1e-4
CLASSES = {"quartznet_char": EncDecCTCModel, "citrinet_bpe": EncDecCTCModelBPE, "conformer_bpe": EncDecCTCModelBPE,
           "fastconformer_bpe": EncDecCTCModelBPE}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def restored(request, nemo3_dir: Path):
    name = request.param
    model = ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu", strict=True)
    return name, model.eval()


def test_restores_the_target_class_strictly(restored, nemo3_dir: Path):
    name, model = restored
    assert type(model) is CLASSES[name]
    assert model.device == torch.device("cpu") and model.training is False
    with open_nemo(nemo3_dir / f"{name}.nemo") as archive:
        expected = archive.state_dict()
    ours = model.state_dict()
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) and ours[k].dtype == expected[k].dtype for k in expected)
    again = ModelPT.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu")
    assert type(again) is CLASSES[name]


def test_features_and_log_probs_match_nemo(restored, nemo3_dir: Path, feature_atol: float):
    name, model = restored
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        features, features_len = model.preprocessor(input_signal=ref["signal"], length=ref["signal_len"])
        log_probs, encoded_len, _ = model(input_signal=ref["signal"], input_signal_length=ref["signal_len"])
    assert features.shape == ref["features"].shape and torch.equal(features_len, ref["features_len"])
    assert (features - ref["features"]).abs().max().item() <= feature_atol
    assert torch.equal(encoded_len, ref["encoded_len"])
    assert (log_probs - ref["log_probs"]).abs().max().item() <= ATOL


def test_transcribe_matches_nemo(restored, nemo3_dir: Path):
    name, model = restored
    ref = torch.load(nemo3_dir / f"{name}.transcribe.pt", map_location="cpu", weights_only=True)
    files = [str(nemo3_dir / "audio" / f) for f in ref["files"]]
    hyps = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
    assert all(isinstance(h, Hypothesis) for h in hyps)
    assert [h.text for h in hyps] == ref["texts"]
    for hyp, expected in zip(hyps, ref["log_probs"]):
        assert hyp.y_sequence.shape == expected.shape
        assert (hyp.y_sequence - expected).abs().max().item() <= ATOL
    if name == "quartznet_char":
        plain = model.transcribe(files, verbose=False)
        assert [h.text for h in plain] == ref["texts"]


def test_return_config_override_and_map_location(nemo3_dir: Path, tmp_path: Path):
    path = str(nemo3_dir / "quartznet_char.nemo")
    conf = ASRModel.restore_from(path, return_config=True)
    assert isinstance(conf, DictConfig)
    assert {"sample_rate", "labels", "preprocessor", "spec_augment", "encoder", "decoder", "optim", "target",
            "nemo_version", "decoding"} <= set(conf)
    changed = OmegaConf.to_container(conf)
    changed["decoding"]["strategy"] = "greedy"
    override = tmp_path / "override.yaml"
    OmegaConf.save(OmegaConf.create({"model": changed}), override)  # a top-level `model:` key is stripped
    model = EncDecCTCModel.restore_from(path, override_config_path=str(override), map_location="cpu")
    assert model.cfg.decoding.strategy == "greedy"
    model = ModelPT.restore_from(path, override_config_path=OmegaConf.create(changed),
                                 map_location=torch.device("cpu"))
    assert type(model) is EncDecCTCModel and model.cfg.decoding.strategy == "greedy"
    assert model.restoration_path == path
    bpe_conf = EncDecCTCModel.restore_from(str(nemo3_dir / "citrinet_bpe.nemo"), return_config=True)
    assert bpe_conf.tokenizer.model_path.startswith("nemo:")


# ------------------------------------------------------------------------------------------------ bad archives


def _rewrite(src: Path, dst: Path, *, config=None, state=None, drop=()) -> None:
    """Writes ``dst`` from ``src`` with a changed config / state dict (NeMo's layout, via compat.archive)."""
    with open_nemo(src) as archive:
        cfg = config if config is not None else archive.config()
        sd = state if state is not None else archive.state_dict()
    save_nemo(dst, cfg, {k: v for k, v in sd.items() if k not in drop})


def test_bad_archives_fail_clearly(nemo3_dir: Path, tmp_path: Path):
    good = nemo3_dir / "quartznet_char.nemo"
    data = good.read_bytes()

    truncated = tmp_path / "truncated.nemo"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArchiveError, match="truncated"):
        ASRModel.restore_from(str(truncated))

    no_config = tmp_path / "no_config.nemo"
    with tarfile.open(good) as src, tarfile.open(no_config, "w:") as dst:
        for info in src.getmembers():
            if not info.name.endswith("model_config.yaml"):
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    with pytest.raises(MissingConfigError, match="model_config.yaml"):
        ASRModel.restore_from(str(no_config))

    with open_nemo(good) as archive:
        cfg, sd = archive.config(), archive.state_dict()
    wrong = dict(sd)
    wrong["decoder.decoder_layers.0.weight"] = torch.zeros(5, 256, 1)
    bad_shapes = tmp_path / "bad_shapes.nemo"
    _rewrite(good, bad_shapes, state=wrong)
    with pytest.raises(RuntimeError, match="size mismatch for decoder.decoder_layers.0.weight"):
        ASRModel.restore_from(str(bad_shapes))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ASRModel.restore_from(str(bad_shapes), strict=False)

    missing = tmp_path / "missing_keys.nemo"
    _rewrite(good, missing, drop=("preprocessor.featurizer.window", "preprocessor.featurizer.fb"))
    with pytest.raises(RuntimeError, match="Missing key.*preprocessor.featurizer.fb"):
        ASRModel.restore_from(str(missing))
    model = ASRModel.restore_from(str(missing), strict=False)
    assert torch.equal(model.state_dict()["encoder.encoder.0.mconv.0.conv.weight"],
                       sd["encoder.encoder.0.mconv.0.conv.weight"])

    unknown = tmp_path / "unknown_target.nemo"
    cfg_unknown = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg_unknown.target = "nemo.collections.asr.models.multitask_models.EncDecMultiTaskModel"
    _rewrite(good, unknown, config=cfg_unknown)
    with pytest.raises(UnknownTargetError, match="EncDecMultiTaskModel"):
        ModelPT.restore_from(str(unknown))

    traversal = tmp_path / "traversal.nemo"
    with tarfile.open(good) as src, tarfile.open(traversal, "w:") as dst:
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
        evil = tarfile.TarInfo("../evil.txt")
        evil.size = 4
        dst.addfile(evil, io.BytesIO(b"evil"))
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        ASRModel.restore_from(str(traversal))
    assert not (tmp_path.parent / "evil.txt").exists()

    with pytest.raises(FileNotFoundError, match="no_such.nemo"):
        ASRModel.restore_from(str(tmp_path / "no_such.nemo"))
    assert not ModelPT._is_model_being_restored()  # a failed restore leaves no "restoring" state behind
