"""Weights that would load silently wrong are refused: NaN / Inf values, non-floating tensors for floating params."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from compat.archive import open_nemo
from compat.collections.asr.models import ASRModel
from compat.errors import NemoArchiveError, NonFiniteWeightsError
from nemofn.core.state import ModelState


def _copy_with_weights(reference: Path, dest: Path, edit) -> Path:
    """``reference`` re-packed with ``edit(state_dict)`` applied to its model_weights.ckpt."""
    with tarfile.open(reference) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_weights.ckpt"):
                state = torch.load(io.BytesIO(data), weights_only=True)
                edit(state)
                buf = io.BytesIO()
                torch.save(state, buf)
                data = buf.getvalue()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_key(nemo3_dir: Path, tmp_path, monkeypatch, value):
    key = "encoder.layers.0.feed_forward1.linear1.weight"

    def poison(state):
        state[key].view(-1)[3] = value

    path = _copy_with_weights(nemo3_dir / "conformer_bpe.nemo", tmp_path / "bad.nemo", poison)
    with pytest.raises(NonFiniteWeightsError, match=f"{key}' has 1 NaN/Inf values") as info:
        ASRModel.restore_from(str(path))
    assert isinstance(info.value, NemoArchiveError) and info.value.key == key
    with open_nemo(str(path)) as archive:  # forensic use: load it anyway
        assert torch.isnan(archive.state_dict(allow_non_finite=True)[key]).any() == (value != value)
    monkeypatch.setenv("NEMOFN_ALLOW_NON_FINITE_WEIGHTS", "1")
    ASRModel.restore_from(str(path))


def test_fp16_weights_that_overflowed_are_refused(nemo3_dir: Path, tmp_path):
    def to_fp16_overflowed(state):
        state["decoder.decoder_layers.0.weight"] = (state["decoder.decoder_layers.0.weight"] * 1e6).half()

    path = _copy_with_weights(nemo3_dir / "conformer_bpe.nemo", tmp_path / "fp16.nemo", to_fp16_overflowed)
    with pytest.raises(NonFiniteWeightsError, match="decoder.decoder_layers.0.weight"):
        ASRModel.restore_from(str(path))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_floating_tensors_do_not_load_into_floating_params(dtype):
    model = ModelState.create({"enc": {"w": torch.zeros(2, 3)}}, {"enc": {"n": torch.tensor(0)}})
    with pytest.raises(TypeError, match=r"'enc.w': the checkpoint holds a torch\.\w+ tensor where the model has a "
                                        r"torch.float32 one"):
        model.load_state_dict({"enc.w": torch.ones(2, 3).to(dtype), "enc.n": torch.tensor(1)})


def test_other_floating_dtypes_are_cast_as_torch_does():
    model = ModelState.create({"w": torch.zeros(2)}, {"n": torch.tensor(0)})
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        model.load_state_dict({"w": torch.full((2,), 1.5, dtype=dtype), "n": torch.tensor(3)})
        assert model.params["w"].dtype == torch.float32 and model.params["w"].tolist() == [1.5, 1.5]


ALL_REFERENCES = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe", "fastconformer_rnnt_bpe",
                  "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe")


@pytest.mark.parametrize("name", ALL_REFERENCES)
def test_every_model_kind_is_planned_on_meta_before_allocating(nemo3_dir: Path, name, monkeypatch, caplog):
    """The shape check needs the unit's init to run on the meta device; a model kind where it cannot would only
    log a warning and lose the check, so every reference kind is checked here."""
    from compat.archive import NemoArchive

    seen = {}
    real = NemoArchive.check_planned_state

    def spy(self, planned, **kwargs):
        seen.update(devices={t.device.type for t in planned.values()}, keys=set(planned))
        return real(self, planned, **kwargs)

    monkeypatch.setattr(NemoArchive, "check_planned_state", spy)
    model = ASRModel.restore_from(str(nemo3_dir / f"{name}.nemo"), map_location="cpu")
    assert "could not plan" not in caplog.text
    assert seen["devices"] == {"meta"} and seen["keys"] == set(model.state_dict())


def test_a_transducer_config_that_does_not_fit_its_weights_is_refused_before_building(nemo3_dir: Path, tmp_path):
    import yaml

    from compat.errors import WeightShapeError

    def wider_prediction_net(cfg):
        cfg["model_defaults"]["pred_hidden"] = 4096
        cfg["decoder"]["prednet"]["pred_hidden"] = 4096
        cfg["joint"]["jointnet"]["pred_hidden"] = 4096
        return yaml.safe_dump(cfg)

    source = nemo3_dir / "fastconformer_rnnt_bpe.nemo"
    path = tmp_path / "wide.nemo"
    with tarfile.open(source) as src, tarfile.open(path, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_config.yaml"):
                data = wider_prediction_net(yaml.safe_load(data)).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(WeightShapeError, match=r"wide\.nemo: size mismatch for decoder\.prediction\.") as info:
        ASRModel.restore_from(str(path), map_location="cpu")
    assert 4096 in info.value.model_shape and 4096 not in info.value.checkpoint_shape


def test_restore_from_takes_allow_non_finite(nemo3_dir: Path, tmp_path, monkeypatch):
    key = "decoder.decoder_layers.0.bias"
    monkeypatch.delenv("NEMOFN_ALLOW_NON_FINITE_WEIGHTS", raising=False)
    path = _copy_with_weights(nemo3_dir / "quartznet_char.nemo", tmp_path / "nan.nemo",
                              lambda state: state[key].fill_(float("nan")))
    with pytest.raises(NonFiniteWeightsError, match="allow_non_finite=True to restore_from"):
        ASRModel.restore_from(str(path), map_location="cpu")
    model = ASRModel.restore_from(str(path), map_location="cpu", allow_non_finite=True)
    assert torch.isnan(model.state_dict()[key]).all()
    monkeypatch.setenv("NEMOFN_ALLOW_NON_FINITE_WEIGHTS", "1")
    with pytest.raises(NonFiniteWeightsError):  # the argument wins over the environment
        ASRModel.restore_from(str(path), map_location="cpu", allow_non_finite=False)
