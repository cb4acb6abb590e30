"""NeMo's own CTC example configs in ``configs/asr/`` load, resolve and build with NeMo's exact state dict.

The expected numbers were measured with nemo_toolkit 3.0.0: each of NeMo's original files
(``examples/asr/conf/...``) and each of our copies was built with ``EncDecCTCModel`` (char) or
``EncDecCTCModelBPE`` (BPE, tokenizer: a 128-piece SentencePiece BPE model, ``tokenizer.type=bpe``) with every
``manifest_filepath`` set to null, and we recorded ``len(model.state_dict())``, the number of
``model.named_parameters()`` and ``sum(p.numel() for p in model.parameters())``. Both files gave the same numbers.
``DIGEST`` is the first 16 hex digits of the SHA-256 of NeMo's state dict listed one key a line, sorted by key, as
``"<key> [<shape>] <dtype>"`` (e.g. ``"decoder.decoder_layers.0.bias [29] float32"``): it pins every key, shape and
dtype. The decoder of a BPE model depends only on the vocabulary size, so any 128-piece tokenizer gives the same
state dict.

The models are built under ``torch.device("meta")`` (shapes only: Jasper 10x5 has 333M parameters); the small ones
are also built for real, to show that meta and real builds agree.
"""

from __future__ import annotations

import hashlib
import json
import random
import wave
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "asr"
VOCAB_SIZE = 128  # BPE pieces of the tokenizer used with NeMo and here

# name: (state-dict keys, parameter tensors, parameters, DIGEST), all from NeMo 3.0.0 (see the module docstring).
NEMO = {
    "quartznet_15x5": (639, 358, 18_924_381, "7924f9b444cd2397"),
    "jasper_10x5dr": (652, 326, 332_632_349, "7d9ca0ada4b88426"),
    "citrinet_384": (925, 539, 20_898_193, "172865397483dbee"),
    "conformer_ctc_char": (650, 600, 27_334_941, "5dd217673265ec66"),
    "conformer_ctc_bpe": (730, 674, 121_501_313, "7fe5758e84cd451d"),
    "fast-conformer_ctc_bpe": (736, 680, 115_140_737, "53bb02ebfc362351"),
}

# A few keys with their shapes in NeMo's state dict, so a failure names a module.
SPOT = {
    "quartznet_15x5": {
        "preprocessor.featurizer.fb": (1, 64, 257),
        "preprocessor.featurizer.window": (320,),
        "encoder.encoder.0.mconv.0.conv.weight": (64, 1, 33),  # depthwise prologue, stride 2
        "encoder.encoder.7.res.0.0.conv.weight": (512, 256, 1),
        "encoder.encoder.16.mconv.0.conv.weight": (512, 1, 87),
        "encoder.encoder.17.mconv.0.conv.weight": (1024, 512, 1),  # not separable
        "encoder.encoder.17.mconv.1.num_batches_tracked": (),
        "decoder.decoder_layers.0.weight": (29, 1024, 1),
    },
    "jasper_10x5dr": {
        "encoder.encoder.0.mconv.0.conv.weight": (256, 64, 11),
        "encoder.encoder.10.mconv.0.conv.weight": (768, 768, 25),
        "encoder.encoder.10.res.9.0.conv.weight": (768, 768, 1),  # dense residual from block 9
        "encoder.encoder.10.res.0.0.conv.weight": (768, 256, 1),  # ... and from the prologue
        "encoder.encoder.12.mconv.0.conv.weight": (1024, 896, 1),
        "decoder.decoder_layers.0.weight": (29, 1024, 1),
    },
    "citrinet_384": {
        "preprocessor.featurizer.fb": (1, 80, 257),
        "encoder.encoder.1.mconv.0.conv.weight": (384, 1, 11),
        "encoder.encoder.1.mconv.23.fc.0.weight": (48, 384),  # squeeze-and-excitation, reduction 8
        "encoder.encoder.1.res.0.0.conv.weight": (384, 384, 1),
        "encoder.encoder.22.mconv.1.conv.weight": (640, 384, 1),
        "encoder.encoder.22.mconv.3.fc.2.weight": (640, 80),
        "decoder.decoder_layers.0.weight": (VOCAB_SIZE + 1, 640, 1),
    },
    "conformer_ctc_char": {
        "preprocessor.featurizer.window": (400,),
        "encoder.pre_encode.conv.0.weight": (256, 1, 3, 3),
        "encoder.pre_encode.out.weight": (256, 5120),
        "encoder.layers.15.self_attn.pos_bias_u": (8, 32),
        "encoder.layers.15.self_attn.linear_pos.weight": (256, 256),
        "encoder.layers.15.conv.depthwise_conv.weight": (256, 1, 31),
        "encoder.layers.15.conv.batch_norm.running_mean": (256,),
        "decoder.decoder_layers.0.weight": (29, 256, 1),
    },
    "conformer_ctc_bpe": {
        "encoder.pre_encode.out.weight": (512, 10240),
        "encoder.pre_encode.conv.2.weight": (512, 512, 3, 3),
        "encoder.layers.17.feed_forward1.linear1.weight": (2048, 512),
        "encoder.layers.17.self_attn.pos_bias_u": (8, 64),
        "decoder.decoder_layers.0.weight": (VOCAB_SIZE + 1, 512, 1),
    },
    "fast-conformer_ctc_bpe": {
        "encoder.pre_encode.conv.0.weight": (256, 1, 3, 3),
        "encoder.pre_encode.conv.5.weight": (256, 1, 3, 3),  # third (depthwise) stage: 8x
        "encoder.pre_encode.conv.6.weight": (256, 256, 1, 1),
        "encoder.pre_encode.out.weight": (512, 2560),
        "encoder.layers.17.conv.depthwise_conv.weight": (512, 1, 9),
        "decoder.decoder_layers.0.weight": (VOCAB_SIZE + 1, 512, 1),
    },
}

# NeMo's trainer / exp_manager values that differ between the files (the rest are checked for all).
TRAINER = {
    "quartznet_15x5": dict(devices=1, accelerator="gpu", max_epochs=5, log_every_n_steps=1),
    "jasper_10x5dr": dict(devices=1, accelerator="gpu", max_epochs=5, log_every_n_steps=1),
    "citrinet_384": dict(devices=1, accelerator="gpu", max_epochs=100, log_every_n_steps=100, precision=32),
    "conformer_ctc_char": dict(devices=-1, accelerator="auto", max_epochs=1000, log_every_n_steps=10,
                               precision=32, sync_batchnorm=True, gradient_clip_val=0.0, num_sanity_val_steps=0),
    "conformer_ctc_bpe": dict(devices=-1, accelerator="auto", max_epochs=1000, log_every_n_steps=10, precision=32,
                              sync_batchnorm=True, gradient_clip_val=0.0, num_sanity_val_steps=0),
    "fast-conformer_ctc_bpe": dict(devices=-1, accelerator="auto", max_epochs=1000, log_every_n_steps=10,
                                   precision=32, sync_batchnorm=True, gradient_clip_val=0.0, num_sanity_val_steps=0),
}
NAMES = {"quartznet_15x5": "QuartzNet15x5", "jasper_10x5dr": "Jasper10x5", "citrinet_384": "Citrinet-384-8x-Stride",
         "conformer_ctc_char": "Conformer-CTC-Char", "conformer_ctc_bpe": "Conformer-CTC-BPE",
         "fast-conformer_ctc_bpe": "FastConformer-CTC-BPE"}
SMALL = ("quartznet_15x5", "citrinet_384", "conformer_ctc_char")  # also built for real (< 0.3 s each)


def _words(rng: random.Random, n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz'"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(n))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with a 0.5 s wav, a manifest of random letter strings, and a 128-piece BPE tokenizer."""
    root = tmp_path_factory.mktemp("nemo_configs")
    with wave.open(str(root / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 8000)
    rng = random.Random(0)
    with open(root / "manifest.json", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"audio_filepath": "a.wav", "duration": 0.5, "text": _words(rng, rng.randint(4, 12))})
                    + "\n")
    process_asr_text_tokenizer(manifest=str(root / "manifest.json"), data_root=root, vocab_size=VOCAB_SIZE)
    return root


def _load(name: str, data_dir: Path | None = None):
    """The experiment config; with ``data_dir``, its ``???`` filled (manifests, BPE tokenizer) as a user would."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    if data_dir is not None:
        for ds in ("train_ds", "validation_ds"):
            cfg.model[ds].manifest_filepath = str(data_dir / "manifest.json")
        if "tokenizer" in cfg.model:
            cfg.model.tokenizer.dir = str(data_dir / f"tokenizer_spe_bpe_v{VOCAB_SIZE}")
            cfg.model.tokenizer.type = "bpe"
    return cfg


def _missing_paths(node, path: str = ""):
    """Dotted paths of the ``???`` (mandatory, unset) values in a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _missing_paths(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _missing_paths(value, f"{path}[{i}]")
    elif node == "???":
        yield path


def _digest(state_dict) -> str:
    lines = [f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in sorted(state_dict.items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _check_state(name: str, state) -> None:
    n_keys, n_param_tensors, n_params, digest = NEMO[name]
    sd = state.state_dict()
    assert len(sd) == n_keys
    assert len(state.param_names) == n_param_tensors
    assert state.num_params() == n_params
    for key, shape in SPOT[name].items():
        assert tuple(sd[key].shape) == shape, key
    assert _digest(sd) == digest, "a key, shape or dtype differs from NeMo's state dict"


@pytest.mark.parametrize("name", list(NEMO))
def test_loads_and_resolves(name, data_dir):
    raw = _load(name)
    expected_blocks = ["name", "model", "trainer", "exp_manager"] + (["hydra"] if name == "jasper_10x5dr" else [])
    assert list(raw) == expected_blocks
    expected_missing = {"model.train_ds.manifest_filepath", "model.validation_ds.manifest_filepath"}
    if "tokenizer" in raw.model:
        expected_missing |= {"model.tokenizer.dir"} | ({"model.tokenizer.type"} if name == "citrinet_384" else set())
    assert set(_missing_paths(OmegaConf.to_container(raw, resolve=False))) == expected_missing
    with pytest.raises(MissingMandatoryValue):
        OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)

    cfg = OmegaConf.to_container(_load(name, data_dir), resolve=True, throw_on_missing=True)
    assert cfg["name"] == NAMES[name]
    model = cfg["model"]
    assert ("test_ds" in model) == (name != "jasper_10x5dr")  # NeMo's Jasper file has no test_ds
    assert model.get("test_ds", {}).get("manifest_filepath") is None
    assert model["sample_rate"] == model["preprocessor"]["sample_rate"] == 16000
    if name == "citrinet_384":  # ${model.model_defaults.*} interpolations
        assert [b["repeat"] for b in model["encoder"]["jasper"]] == [1] + [5] * 21 + [1]
        assert all(b["se"] is True and b["separable"] is True for b in model["encoder"]["jasper"])
        assert model["encoder"]["jasper"][-1]["filters"] == 640 == model["decoder"]["feat_in"]
    if name.startswith(("conformer", "fast")):  # ${model.preprocessor.features}, ${model.encoder.d_model}, ${name}
        assert model["encoder"]["feat_in"] == 80
        assert model["optim"]["sched"].get("d_model", model["encoder"]["d_model"]) == model["encoder"]["d_model"]
        assert cfg["exp_manager"]["name"] == NAMES[name]
    if name in ("quartznet_15x5", "jasper_10x5dr"):  # YAML anchors
        assert model["train_ds"]["labels"] == model["decoder"]["vocabulary"] == model["labels"]
        assert model["train_ds"]["trim_silence"] is False  # NeMo's file has True; see the comment in the YAML


@pytest.mark.parametrize("name", list(NEMO))
def test_trainer_and_exp_manager_are_nemos(name):
    cfg = OmegaConf.to_container(_load(name), resolve=False)
    trainer, exp = cfg["trainer"], cfg["exp_manager"]
    for key, value in TRAINER[name].items():
        assert trainer[key] == value, key
    assert (trainer["num_nodes"], trainer["max_steps"], trainer["accumulate_grad_batches"]) == (1, -1, 1)
    assert (trainer["enable_checkpointing"], trainer["logger"], trainer["benchmark"]) == (False, False, False)
    assert trainer["val_check_interval"] == 1.0
    if name == "fast-conformer_ctc_bpe":
        assert trainer["strategy"] == {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                       "gradient_as_bucket_view": True}
    else:
        assert trainer["strategy"] == "ddp"
    exp_cfg = OmegaConf.to_container(_load(name), resolve=True)["exp_manager"]
    assert exp_cfg["name"] == NAMES[name] and exp["exp_dir"] is None
    assert exp["create_tensorboard_logger"] is True and exp["create_checkpoint_callback"] is True
    assert exp["create_wandb_logger"] is False
    if name != "jasper_10x5dr":
        assert exp["checkpoint_callback_params"]["monitor"] == "val_wer"
        assert exp["checkpoint_callback_params"]["mode"] == "min"


@pytest.mark.parametrize("name", list(NEMO))
def test_builds_nemos_state_dict_on_meta(name, data_dir):
    model = CTCModel.from_config(_load(name, data_dir).model)
    if "tokenizer" in model.cfg:
        assert len(model.tokenizer.vocabulary) == VOCAB_SIZE
    with torch.device("meta"):
        state = model.init_state(0)
    assert {t.device.type for t in state.state_dict().values()} == {"meta"}
    _check_state(name, state)


@pytest.mark.parametrize("name", [*SMALL, *(pytest.param(n, marks=pytest.mark.slow) for n in NEMO if n not in SMALL)])
def test_builds_nemos_state_dict(name, data_dir):
    state = CTCModel.from_config(_load(name, data_dir).model).init_state(0)
    assert {t.device.type for t in state.state_dict().values()} == {"cpu"}
    _check_state(name, state)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # NeMo's num_workers: 8 (not started)
@pytest.mark.parametrize("name", list(NEMO))
def test_data_and_optim_blocks_are_accepted(name, data_dir):
    """Every ``*_ds`` block builds a loader (unsupported NeMo options are at values nemofn accepts), and the
    ``optim`` block builds an optimizer and schedule."""
    cfg = _load(name, data_dir)
    model = CTCModel.from_config(cfg.model)
    for ds in ("train_ds", "validation_ds", "test_ds"):
        if ds not in cfg.model:
            continue
        ds_cfg = OmegaConf.to_container(cfg.model[ds], resolve=True)
        ds_cfg["manifest_filepath"] = str(data_dir / "manifest.json")
        loader = model.dataloader(ds_cfg)
        assert len(loader.dataset) == 300
    _, schedule, base_lr = model.optimization(max_steps=100)
    assert base_lr == cfg.model.optim.lr
    assert schedule(50) > 0
