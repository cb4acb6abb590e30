"""Tests for nemofn/asr/modules/preprocessor.py: NeMo-exact mel features."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
import yaml

from nemofn.asr.modules.features import FixedStats
from nemofn.asr.modules.preprocessor import AudioToMelSpectrogramPreprocessor
from nemofn.core.rng import RngKey
from nemofn.core.schema import ConfigError

REFERENCES = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe")


def _read_nemo(path) -> tuple[dict, dict]:
    """``(model_config, state_dict)`` of a ``.nemo`` archive."""
    with tarfile.open(path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        config = yaml.safe_load(tar.extractfile(members["model_config.yaml"]).read())
        state = torch.load(io.BytesIO(tar.extractfile(members["model_weights.ckpt"]).read()), weights_only=True)
    return config, state


@pytest.fixture(scope="module")
def references(nemo3_dir):
    out = {}
    for name in REFERENCES:
        config, state = _read_nemo(nemo3_dir / f"{name}.nemo")
        ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
        out[name] = (config, state, ref)
    return out


def _speechlike(batch: int = 3, samples: int = 8000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t) * 0.3
    signal = tone + 0.05 * torch.randn(batch, samples, generator=g)
    lengths = torch.tensor([samples, samples * 3 // 4, samples // 2 + 7])[:batch]
    return signal.float(), lengths


# ------------------------------------------------------------------------------------------- NeMo parity
@pytest.mark.parametrize("name", REFERENCES)
def test_parity_with_nemo_features(references, name, feature_atol):
    config, state, ref = references[name]
    pre = AudioToMelSpectrogramPreprocessor.from_config(config["preprocessor"])
    buffers = {
        "featurizer": {
            "window": state["preprocessor.featurizer.window"],
            "fb": state["preprocessor.featurizer.fb"],
        }
    }
    (features, lengths), new_buffers = pre.apply({}, buffers, ref["signal"], ref["signal_len"], train=False)
    assert new_buffers is buffers
    assert features.shape == ref["features"].shape
    assert torch.equal(lengths, ref["features_len"])
    assert (features - ref["features"]).abs().max().item() <= feature_atol


@pytest.mark.parametrize("name", REFERENCES)
def test_init_buffers_match_checkpoint(references, name):
    config, state, _ = references[name]
    params, buffers = AudioToMelSpectrogramPreprocessor.from_config(config["preprocessor"]).init(0)
    assert params == {}
    assert set(buffers["featurizer"]) == {"window", "fb"}
    for key in ("window", "fb"):
        expected = state[f"preprocessor.featurizer.{key}"]
        ours = buffers["featurizer"][key]
        assert ours.shape == expected.shape and ours.dtype == expected.dtype
        assert (ours - expected).abs().max().item() <= 1e-6


# ----------------------------------------------------------------------------------- construction
def test_defaults_and_sizes():
    pre = AudioToMelSpectrogramPreprocessor()
    assert (pre.win_length, pre.hop_length, pre.fft_size, pre.num_features) == (320, 160, 512, 64)
    assert (pre.dither, pre.pad_to, pre.normalize, pre.preemph) == (1e-5, 16, "per_feature", 0.97)
    _, buffers = pre.init(0)
    assert buffers["featurizer"]["window"].shape == (320,)
    assert buffers["featurizer"]["fb"].shape == (1, 64, 257)
    torch.testing.assert_close(buffers["featurizer"]["window"], torch.hann_window(320, periodic=False))
    samples = AudioToMelSpectrogramPreprocessor(window_size=None, n_window_size=400, window_stride=None,
                                                n_window_stride=128)
    assert (samples.win_length, samples.hop_length, samples.fft_size) == (400, 128, 512)
    assert pre.get_seq_len(torch.tensor([0, 159, 160, 16000])).tolist() == [0, 0, 1, 100]
    assert pre.max_length == 1670


def test_from_config_and_unknown_keys():
    cfg = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "features": 80}
    assert AudioToMelSpectrogramPreprocessor.from_config(cfg).features == 80
    from omegaconf import OmegaConf

    assert AudioToMelSpectrogramPreprocessor.from_config(OmegaConf.create(cfg)).features == 80
    with pytest.raises(ConfigError, match="unknown key preprocessor.n_melz") as info:
        AudioToMelSpectrogramPreprocessor.from_config({"n_melz": 80})
    assert info.value.key == "preprocessor.n_melz"
    with pytest.raises(ConfigError, match=r"model.preprocessor.features: wrong type: got 'sixtyfour' \(str\), "
                                          "expected int"):
        AudioToMelSpectrogramPreprocessor.from_config({"features": "sixtyfour"}, path="model.preprocessor")
    with pytest.raises(TypeError, match="n_melz"):
        AudioToMelSpectrogramPreprocessor(n_melz=80)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_window_size": 400}, "not both"),
        ({"window": "kaiser"}, "kaiser"),
        ({"log_zero_guard_type": "max"}, "log_zero_guard_type"),
        ({"log_zero_guard_value": "huge"}, "log_zero_guard_value"),
        ({"pad_to": -1}, "pad_to"),
        ({"nb_augmentation_prob": 0.5}, "nb_augmentation_prob"),
        ({"exact_pad": True, "window_stride": None, "n_window_stride": 161}, "even hop"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AudioToMelSpectrogramPreprocessor(**kwargs)


def test_nb_augmentation_allowed_when_nemo_disables_it():
    AudioToMelSpectrogramPreprocessor(nb_augmentation_prob=0.5, nb_max_freq=8000)


# ------------------------------------------------------------------------------------------- behaviour
def test_dither_only_in_train_mode():
    pre = AudioToMelSpectrogramPreprocessor(dither=1e-2)
    _, buffers = pre.init(0)
    signal, lengths = _speechlike()
    before = signal.clone()
    (eval1, len1), _ = pre.apply({}, buffers, signal, lengths, train=False)
    (eval2, _), _ = pre.apply({}, buffers, signal, lengths)
    (no_dither, _), _ = pre.replace(dither=0.0).apply({}, buffers, signal, lengths, train=True)
    assert torch.equal(eval1, eval2) and torch.equal(eval1, no_dither)

    key = RngKey(3)
    key.seed_global()
    (train1, len_t), _ = pre.apply({}, buffers, signal, lengths, train=True, rng=key)
    key.seed_global()
    (train2, _), _ = pre.apply({}, buffers, signal, lengths, train=True, rng=key)
    assert torch.equal(train1, train2)
    assert not torch.allclose(train1, eval1, atol=1e-3)
    assert torch.equal(len1, len_t)
    assert torch.equal(signal, before)  # the input is never modified
    with pytest.raises(ValueError, match="rng"):
        pre.apply({}, buffers, signal, lengths, train=True)


def test_pad_to_and_transcribe_settings():
    signal, lengths = _speechlike(samples=8000)
    pre = AudioToMelSpectrogramPreprocessor(pad_value=-3.0)
    _, buffers = pre.init(0)
    (x16, n), _ = pre.apply({}, buffers, signal, lengths)
    assert x16.shape[-1] == 64  # 1 + 8000 // 160 = 51 frames, padded to 64
    assert n.tolist() == [50, 37, 25]
    assert torch.all(x16[:, :, 51:] == -3.0)
    for b, length in enumerate(n.tolist()):
        assert torch.all(x16[b, :, length:] == -3.0)
        assert torch.all(x16[b, :, :length] != -3.0)

    plain = pre.replace(dither=0.0, pad_to=0)
    assert (plain.dither, plain.pad_to) == (0.0, 0)
    (x0, n0), _ = plain.apply({}, buffers, signal, lengths)
    assert x0.shape[-1] == 51 and torch.equal(n0, n)
    torch.testing.assert_close(x0, x16[..., :51], rtol=0, atol=0)

    (xmax, _), _ = pre.replace(pad_to="max").apply({}, buffers, signal, lengths)
    assert xmax.shape[-1] == pre.max_length == 1670
    with pytest.raises(ValueError, match="pad_to"):
        pre.replace(pad_to="max").apply({}, buffers, torch.zeros(1, 17 * 16000), torch.tensor([17 * 16000]))


def _reference_norm(x, lengths, per_feature):
    """NeMo's loop formulation of the normalisation, for comparison."""
    out = torch.empty_like(x)
    for b, n in enumerate(lengths.tolist()):
        valid = x[b, :, :n]
        if per_feature:
            mean, std = valid.mean(dim=1, keepdim=True), valid.std(dim=1, keepdim=True) + 1e-5
        else:
            mean, std = valid.mean(), valid.std() + 1e-5
        out[b] = (x[b] - mean) / std
    return out


@pytest.mark.parametrize("normalize", ["per_feature", "all_features"])
def test_normalisation_uses_valid_frames_only(normalize):
    signal, lengths = _speechlike()
    raw_pre = AudioToMelSpectrogramPreprocessor(normalize=None, pad_to=0)
    _, buffers = raw_pre.init(0)
    (raw, n), _ = raw_pre.apply({}, buffers, signal, lengths)
    (normed, n2), _ = raw_pre.replace(normalize=normalize).apply({}, buffers, signal, lengths)
    expected = _reference_norm(raw, n, per_feature=normalize == "per_feature")
    assert torch.equal(n, n2)
    for b, length in enumerate(n.tolist()):
        torch.testing.assert_close(normed[b, :, :length], expected[b, :, :length], rtol=1e-5, atol=1e-5)
        assert torch.all(normed[b, :, length:] == 0.0)


def test_fixed_normalisation_and_unknown_string():
    signal, lengths = _speechlike()
    raw_pre = AudioToMelSpectrogramPreprocessor(normalize=None, features=4, pad_to=0)
    _, buffers = raw_pre.init(0)
    (raw, n), _ = raw_pre.apply({}, buffers, signal, lengths)
    fixed = raw_pre.replace(normalize={"fixed_mean": [1.0, 2.0, 3.0, 4.0], "fixed_std": [2.0, 2.0, 4.0, 4.0]})
    assert isinstance(fixed.normalize, FixedStats)
    (x, _), _ = fixed.apply({}, buffers, signal, lengths)
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0])[None, :, None]
    std = torch.tensor([2.0, 2.0, 4.0, 4.0])[None, :, None]
    expected = ((raw - mean) / std).masked_fill(raw == 0.0, 0.0)
    torch.testing.assert_close(x, expected)
    with pytest.warns(UserWarning, match="NA"):
        na = raw_pre.replace(normalize="NA")
    (x_na, _), _ = na.apply({}, buffers, signal, lengths)
    assert torch.equal(x_na, raw)


@pytest.mark.parametrize("value", [2**-24, "tiny", "eps"])
def test_log_zero_guards(value):
    signal, lengths = _speechlike()
    signal[:, 1000:1400] = 0.0  # silent stretch: some mel energies are exactly zero
    lengths = torch.full((3,), signal.shape[1])
    base = AudioToMelSpectrogramPreprocessor(normalize=None, pad_to=0, preemph=None, log_zero_guard_value=value)
    _, buffers = base.init(0)
    (power, _), _ = base.replace(log=False).apply({}, buffers, signal, lengths)
    guard = {"tiny": torch.finfo(torch.float32).tiny, "eps": torch.finfo(torch.float32).eps}.get(value, value)
    (added, _), _ = base.apply({}, buffers, signal, lengths)
    (clamped, _), _ = base.replace(log_zero_guard_type="clamp").apply({}, buffers, signal, lengths)
    valid = slice(0, power.shape[-1] - 1)  # the last frame is masked (len // hop frames are valid)
    torch.testing.assert_close(added[..., valid], torch.log(power[..., valid] + guard))
    torch.testing.assert_close(clamped[..., valid], torch.log(torch.clamp(power[..., valid], min=guard)))
    assert torch.isfinite(clamped).all()


def test_exact_pad_frames_and_lengths():
    pre = AudioToMelSpectrogramPreprocessor(exact_pad=True, pad_to=0)
    _, buffers = pre.init(0)
    signal, lengths = _speechlike(samples=8000)
    (x, n), _ = pre.apply({}, buffers, signal, lengths)
    assert x.shape[-1] == 8000 // 160  # centre=False over (n_fft - hop) // 2 = 176 samples of padding per side
    # NeMo's length formula counts one frame fewer than the frames that cover the audio: (len + 352 - 512) // 160.
    assert n.tolist() == [(length + 2 * 176 - 512) // 160 for length in lengths.tolist()] == [49, 36, 24]


def test_frame_splicing_and_rectangular_window():
    signal, lengths = _speechlike()
    pre = AudioToMelSpectrogramPreprocessor(normalize=None)
    _, buffers = pre.init(0)
    (x, _), _ = pre.apply({}, buffers, signal, lengths)
    spliced = pre.replace(frame_splicing=3)
    assert spliced.num_features == 192
    (x3, _), _ = spliced.apply({}, buffers, signal, lengths)
    assert torch.equal(x3, torch.cat([x, x, x], dim=1))

    rect = AudioToMelSpectrogramPreprocessor(window="none")
    _, rect_buffers = rect.init(0)
    assert set(rect_buffers["featurizer"]) == {"fb"}
    (xr, _), _ = rect.apply({}, rect_buffers, signal, lengths)
    assert torch.isfinite(xr).all() and not torch.allclose(xr, x)


def test_compile_fullgraph_matches_eager():
    pre = AudioToMelSpectrogramPreprocessor()
    _, buffers = pre.init(0)
    signal, lengths = _speechlike()
    key = RngKey(0)

    def run(signal, lengths, train):
        (x, n), _ = pre.apply({}, buffers, signal, lengths, train=train, rng=key)
        return x, n

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    for train in (False, True):
        torch.manual_seed(5)
        eager_x, eager_n = run(signal, lengths, train)
        torch.manual_seed(5)
        comp_x, comp_n = compiled(signal, lengths, train)
        torch.testing.assert_close(comp_x, eager_x, rtol=1e-5, atol=1e-5)
        assert torch.equal(comp_n, eager_n)


@pytest.mark.parametrize("normalize", ["per_feature", "all_features"])
def test_empty_and_one_frame_utterances_stay_finite(normalize):
    pre = AudioToMelSpectrogramPreprocessor(normalize=normalize)
    _, buffers = pre.init(0)
    signal = torch.randn(3, 4000)
    (x, n), _ = pre.apply({}, buffers, signal, torch.tensor([4000, 0, 170]))
    assert n.tolist() == [25, 0, 1]
    assert torch.isfinite(x).all()
    assert torch.all(x[1] == 0.0)  # nothing valid: all pad_value
    if normalize == "per_feature":
        assert torch.all(x[2, :, 0] == 0.0)  # one frame: (x - mean) / (0 + 1e-5) = 0, as NeMo


@pytest.mark.parametrize("kwargs", [{}, {"exact_pad": True}, {"n_window_size": 320, "window_size": None},
                                    {"normalize": "all_features"}, {"frame_splicing": 3, "mag_power": 1.0},
                                    {"log": False, "features": 80, "pad_to": 0}, {"window": "hamming", "dither": 0.0}])
def test_long_inputs_are_featurised_in_chunks_with_the_same_result(kwargs, monkeypatch):
    pre = AudioToMelSpectrogramPreprocessor(**kwargs)
    params, buffers = pre.init()
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(3, 16000 * 7 + 77, generator=gen)
    lengths = torch.tensor([x.shape[1], 16000 * 5 + 123, 16000 * 2])
    (whole, whole_len), _ = pre.apply(params, buffers, x, lengths)
    calls = []
    original = AudioToMelSpectrogramPreprocessor._mel

    def counting(self, chunk, featurizer, *, center):
        calls.append(chunk.shape[-1])
        return original(self, chunk, featurizer, center=center)

    monkeypatch.setattr(AudioToMelSpectrogramPreprocessor, "_mel", counting)
    monkeypatch.setattr(AudioToMelSpectrogramPreprocessor, "chunk_frames", 100)
    (chunked, chunked_len), _ = pre.apply(params, buffers, x, lengths)
    assert len(calls) > 10  # it did run in chunks (of 33 frames here)
    assert torch.equal(chunked, whole) and torch.equal(chunked_len, whole_len)
    calls.clear()
    pre.apply(params, buffers, x, lengths, train=True, rng=RngKey(0))  # never in training
    assert len(calls) == 1
