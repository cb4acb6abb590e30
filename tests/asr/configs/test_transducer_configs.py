"""NeMo's transducer example configs and parakeet-tdt-0.6b-v2's architecture in ``configs/asr/``: they load, resolve,
validate, keep NeMo's values, and build NeMo's exact state dict.

The expected numbers were measured with nemo_toolkit 3.0.0: each YAML file here was built with NeMo's own
``EncDecRNNTBPEModel`` (``EncDecHybridRNNTCTCBPEModel`` when it has ``aux_ctc``) with every ``manifest_filepath`` set
to null and a SentencePiece BPE tokenizer (``tokenizer.type=bpe``) of 128 pieces (1024 for parakeet), trained by
``process_asr_text_tokenizer`` on random letter strings (only the vocabulary size matters). We recorded
``len(model.state_dict())``, the number of ``model.named_parameters()``, ``sum(p.numel() for p in
model.parameters())`` and, per top-level module (``preprocessor``, ``encoder``, ``decoder``, ``joint``,
``ctc_decoder``), its state-dict keys and parameters. ``DIGEST`` is the first 16 hex digits of the SHA-256 of the
state dict listed one key a line, sorted, as ``"<key> [<shape>] <dtype>"`` (as in ``test_nemo_configs.py``).

nemofn's side is :class:`~nemofn.asr.models.transducer_network.TransducerNetwork` built from the same YAML, with the
fields NeMo's constructor fills (``decoder.vocab_size``, ``joint.num_classes``, ``joint.jointnet.encoder_hidden /
pred_hidden`` from ``model_defaults``, and the hybrid's ``aux_ctc.decoder.feat_in / num_classes``) filled here;
and, for the 128-piece configs, :class:`~nemofn.asr.models.transducer_model.TransducerModel`, which fills them from a
real tokenizer as the training scripts do.
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

from nemofn.asr.configs import (
    EncDecHybridRNNTCTCBPEConfig,
    EncDecRNNTBPEConfig,
    model_schema,
    validate_model_config,
)
from nemofn.asr.models.transducer_model import TransducerModel
from nemofn.asr.models.transducer_network import TransducerNetwork
from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer
from nemofn.core.tree import flatten

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "asr"

# name: (vocabulary, state-dict keys, parameter tensors, parameters, DIGEST,
#        {module: (state-dict keys, parameters)}), all from NeMo 3.0.0 (see the module docstring).
NEMO = {
    "fastconformer_transducer_bpe": (128, 705, 652, 112_947_841, "f6ea68f80268300a", {
        "preprocessor": (2, 0), "encoder": (692, 108_762_112), "decoder": (5, 3_364_480), "joint": (6, 821_249)}),
    "fastconformer_tdt_bpe": (128, 705, 652, 112_951_046, "4b7122bd4c6dcd3e", {
        "preprocessor": (2, 0), "encoder": (692, 108_762_112), "decoder": (5, 3_364_480), "joint": (6, 824_454)}),
    "fastconformer_hybrid_transducer_ctc_bpe": (128, 707, 654, 113_014_018, "3ae7a8b064cb1742", {
        "preprocessor": (2, 0), "encoder": (692, 108_762_112), "decoder": (5, 3_364_480), "joint": (6, 821_249),
        "ctc_decoder": (2, 66_177)}),
    "fastconformer_hybrid_tdt_ctc_bpe": (128, 707, 654, 113_803_655, "3019e59cb4c19e40", {
        "preprocessor": (2, 0), "encoder": (692, 109_548_544), "decoder": (5, 3_364_480), "joint": (6, 824_454),
        "ctc_decoder": (2, 66_177)}),
    "parakeet_tdt_0.6b": (1024, 989, 915, 618_268_294, "697aba35c56e84f9", {
        "preprocessor": (2, 0), "encoder": (972, 609_321_984), "decoder": (9, 7_219_840), "joint": (6, 1_726_470)}),
}

# A few keys with their shapes in NeMo's state dict, so a failure names a module.
_COMMON = {"preprocessor.featurizer.window": (400,), "joint.pred.weight": (640, 640),
           "decoder.prediction.dec_rnn.lstm.weight_ih_l0": (2560, 640)}
SPOT = {
    "fastconformer_transducer_bpe": {**_COMMON, "preprocessor.featurizer.fb": (1, 80, 257),
                                     "encoder.pre_encode.out.weight": (512, 2560), "joint.enc.weight": (640, 512),
                                     "decoder.prediction.embed.weight": (129, 640),  # V + 1 (blank_as_pad)
                                     "joint.joint_net.2.weight": (129, 640)},  # index 2: jointnet.dropout > 0
    "fastconformer_tdt_bpe": {**_COMMON, "decoder.prediction.embed.weight": (129, 640),
                              "joint.joint_net.2.weight": (134, 640), "joint.joint_net.2.bias": (134,)},  # V+1+5
    "fastconformer_hybrid_transducer_ctc_bpe": {**_COMMON, "joint.joint_net.2.weight": (129, 640),
                                                "ctc_decoder.decoder_layers.0.weight": (129, 512, 1)},
    "fastconformer_hybrid_tdt_ctc_bpe": {**_COMMON, "preprocessor.featurizer.fb": (1, 128, 257),
                                         "encoder.pre_encode.out.weight": (512, 4096),
                                         "joint.joint_net.2.weight": (134, 640),
                                         "ctc_decoder.decoder_layers.0.weight": (129, 512, 1)},
    "parakeet_tdt_0.6b": {**_COMMON, "preprocessor.featurizer.fb": (1, 128, 257),
                          "encoder.pre_encode.out.weight": (1024, 4096),
                          "encoder.layers.23.conv.depthwise_conv.weight": (1024, 1, 9),
                          "encoder.layers.23.self_attn.pos_bias_u": (8, 128),
                          "decoder.prediction.embed.weight": (1025, 640),
                          "decoder.prediction.dec_rnn.lstm.weight_hh_l1": (2560, 640),
                          "joint.enc.weight": (640, 1024), "joint.joint_net.2.weight": (1030, 640)},
}

SCHEMAS = {"fastconformer_transducer_bpe": EncDecRNNTBPEConfig, "fastconformer_tdt_bpe": EncDecRNNTBPEConfig,
           "fastconformer_hybrid_transducer_ctc_bpe": EncDecHybridRNNTCTCBPEConfig,
           "fastconformer_hybrid_tdt_ctc_bpe": EncDecHybridRNNTCTCBPEConfig,
           "parakeet_tdt_0.6b": EncDecRNNTBPEConfig}
NAMES = {"fastconformer_transducer_bpe": "FastConformer-Transducer-BPE",
         "fastconformer_tdt_bpe": "FastConformer-TDT-BPE",
         "fastconformer_hybrid_transducer_ctc_bpe": "FastConformer-Hybrid-Transducer-CTC-BPE",
         "fastconformer_hybrid_tdt_ctc_bpe": "FastConformer-Hybrid-TDT-CTC-BPE",
         "parakeet_tdt_0.6b": "parakeet-tdt-0.6b-v2"}

ABSENT = "<absent>"
_TDT = {"model_defaults.tdt_durations": [0, 1, 2, 3, 4], "model_defaults.num_tdt_durations": 5,
        "joint.num_extra_outputs": 5, "decoding.model_type": "tdt", "decoding.durations": [0, 1, 2, 3, 4],
        "loss.loss_name": "tdt", "loss.tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0,
                                                     "durations": [0, 1, 2, 3, 4], "sigma": 0.02, "omega": 0.1}}
_RNNT = {"loss.loss_name": "default", "loss.warprnnt_numba_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0}}
_AUX = {"aux_ctc": {"ctc_loss_weight": 0.3, "use_cer": False, "ctc_reduction": "mean_batch",
                    "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                                "num_classes": -1, "vocabulary": []},
                    "decoding": {"strategy": "greedy"}},
        "optim.lr": 5.0, "optim.sched.name": "NoamAnnealing", "optim.sched.d_model": 512,
        "optim.sched.warmup_steps": 10000, "optim.sched.min_lr": 1e-6}
_COSINE = {"optim.lr": 5e-3, "optim.sched.name": "CosineAnnealing", "optim.sched.warmup_steps": 15000,
           "optim.sched.min_lr": 5e-4}
# The values of NeMo's files (resolved) that make each model what it is (ABSENT: the key is not in the file).
VALUES = {
    "fastconformer_transducer_bpe": {**_RNNT, **_COSINE, "rnnt_reduction": "mean_volume",
                                     "preprocessor.features": 80, "train_ds.max_duration": 16.7},
    "fastconformer_tdt_bpe": {**_TDT, **_COSINE, "rnnt_reduction": "mean_volume", "preprocessor.features": 80},
    "fastconformer_hybrid_transducer_ctc_bpe": {**_RNNT, **_AUX, "rnnt_reduction": ABSENT, "preprocessor.features": 80,
                                                "encoder.use_bias": True, "train_ds.max_duration": 20},
    "fastconformer_hybrid_tdt_ctc_bpe": {**_TDT, **_AUX, "rnnt_reduction": ABSENT, "preprocessor.features": 128,
                                         "train_ds.max_duration": 40},
    "parakeet_tdt_0.6b": {**_TDT, **_COSINE, "preprocessor.features": 128, "encoder.d_model": 1024,
                          "encoder.n_layers": 24, "encoder.n_heads": 8, "encoder.conv_kernel_size": 9,
                          "encoder.xscaling": True, "encoder.subsampling": "dw_striding",
                          "encoder.subsampling_factor": 8, "encoder.subsampling_conv_channels": 256,
                          "decoder.prednet.pred_rnn_layers": 2, "decoder.prednet.pred_hidden": 640,
                          "joint.jointnet.joint_hidden": 640, "joint.jointnet.activation": "relu",
                          "target": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel"},
}
# Shared by all (NeMo's FastConformer transducer examples).
SHARED = {"sample_rate": 16000, "compute_eval_loss": False, "log_prediction": True, "skip_nan_grad": False,
          "model_defaults.pred_hidden": 640, "model_defaults.joint_hidden": 640, "decoder.blank_as_pad": True,
          "decoder.normalization_mode": None, "decoder.prednet.dropout": 0.2, "decoder.prednet.t_max": None,
          "joint.log_softmax": None, "joint.fuse_loss_wer": True, "joint.fused_batch_size": 4,
          "joint.jointnet.dropout": 0.2, "decoding.strategy": "greedy_batch", "decoding.greedy": {"max_symbols": 10},
          "decoding.beam": {"beam_size": 2, "return_best_hypothesis": False, "score_norm": True,
                            "tsd_max_sym_exp": 50, "alsd_max_target_len": 2.0},
          "encoder.att_context_size": [-1, -1], "spec_augment.freq_masks": 2, "spec_augment.time_masks": 10,
          "optim.name": "adamw", "optim.betas": [0.9, 0.98], "optim.weight_decay": 1e-3}
TRAINER = {"fastconformer_transducer_bpe": (500, 0.0), "fastconformer_tdt_bpe": (500, 0.0),
           "fastconformer_hybrid_transducer_ctc_bpe": (1000, 1.0), "fastconformer_hybrid_tdt_ctc_bpe": (500, 1.0),
           "parakeet_tdt_0.6b": (500, 0.0)}  # (max_epochs, gradient_clip_val)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with a 0.5 s wav, a manifest of random letter strings, and a 128-piece BPE tokenizer."""
    root = tmp_path_factory.mktemp("transducer_configs")
    with wave.open(str(root / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 8000)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz'"
    with open(root / "manifest.json", "w") as f:
        for _ in range(300):
            text = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 8)))
                            for _ in range(rng.randint(4, 12)))
            f.write(json.dumps({"audio_filepath": "a.wav", "duration": 0.5, "text": text}) + "\n")
    process_asr_text_tokenizer(manifest=str(root / "manifest.json"), data_root=root, vocab_size=128)
    return root


def _load(name: str):
    return OmegaConf.load(CONFIG_DIR / f"{name}.yaml")


def _get(block: dict, dotted: str):
    for key in dotted.split("."):
        if key not in block:
            return ABSENT
        block = block[key]
    return block


def _filled(name: str):
    """The ``model:`` block with what NeMo's constructor writes before building the modules."""
    vocab = NEMO[name][0]
    cfg = _load(name).model
    cfg.decoder.vocab_size = vocab
    cfg.joint.num_classes = vocab
    cfg.joint.jointnet.encoder_hidden = cfg.model_defaults.enc_hidden
    cfg.joint.jointnet.pred_hidden = cfg.model_defaults.pred_hidden
    if "aux_ctc" in cfg:
        cfg.aux_ctc.decoder.feat_in = cfg.encoder.d_model
        cfg.aux_ctc.decoder.num_classes = vocab
        cfg.aux_ctc.decoder.vocabulary = None
    return cfg


def _digest(state: dict) -> str:
    lines = [f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in sorted(state.items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _check_against_nemo(name: str, params: dict, buffers: dict) -> None:
    _, n_keys, n_param_tensors, n_params, digest, modules = NEMO[name]
    flat_params, flat_buffers = flatten(params), flatten(buffers)
    state = {**flat_params, **flat_buffers}
    assert len(state) == len(flat_params) + len(flat_buffers)  # a key is a parameter or a buffer, never both
    assert sorted(params) == sorted(m for m, (_, p) in modules.items() if p)  # the preprocessor has no parameters
    for module, (keys, count) in modules.items():
        assert sum(k.split(".")[0] == module for k in state) == keys, module
        assert sum(v.numel() for k, v in flat_params.items() if k.split(".")[0] == module) == count, module
    assert (len(state), len(flat_params), sum(v.numel() for v in flat_params.values())) == (n_keys, n_param_tensors,
                                                                                           n_params)
    for key, shape in SPOT[name].items():
        assert tuple(state[key].shape) == shape, key
    assert _digest(state) == digest, "a key, shape or dtype differs from NeMo's state dict"


@pytest.mark.parametrize("name", list(NEMO))
def test_loads_resolves_and_validates(name):
    raw = _load(name)
    assert list(raw) == ["name", "model", "trainer", "exp_manager"]
    assert model_schema(raw.model) is SCHEMAS[name]
    assert validate_model_config(raw.model) == []
    with pytest.raises(MissingMandatoryValue):
        OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)
    raw.model.train_ds.manifest_filepath = raw.model.validation_ds.manifest_filepath = "m.json"
    raw.model.tokenizer.dir = "tok"
    cfg = OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)  # nothing else is ???
    assert cfg["name"] == NAMES[name] and cfg["exp_manager"]["name"] == NAMES[name]
    model = cfg["model"]
    assert model["model_defaults"]["enc_hidden"] == model["encoder"]["d_model"]
    assert model["encoder"]["feat_in"] == model["preprocessor"]["features"]
    assert model["decoder"]["prednet"]["pred_hidden"] == model["model_defaults"]["pred_hidden"]
    assert model["joint"]["jointnet"]["joint_hidden"] == model["model_defaults"]["joint_hidden"]
    assert model["test_ds"]["manifest_filepath"] is None and model["tokenizer"]["type"] == "bpe"
    expected = {**SHARED, **VALUES[name]}
    for key, value in expected.items():
        assert _get(model, key) == value, key


@pytest.mark.parametrize("name", list(NEMO))
def test_trainer_and_exp_manager_are_nemos(name):
    cfg = OmegaConf.to_container(_load(name), resolve=False)
    trainer, exp = cfg["trainer"], cfg["exp_manager"]
    assert (trainer["max_epochs"], trainer["gradient_clip_val"]) == TRAINER[name]
    assert (trainer["devices"], trainer["num_nodes"], trainer["max_steps"], trainer["precision"]) == (-1, 1, -1, 32)
    assert trainer["strategy"] == {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                   "gradient_as_bucket_view": True}
    assert (trainer["sync_batchnorm"], trainer["enable_checkpointing"], trainer["logger"]) == (True, False, False)
    assert exp["checkpoint_callback_params"] == {"monitor": "val_wer", "mode": "min", "save_top_k": 5,
                                                 "always_save_nemo": True}


@pytest.mark.parametrize("name", list(NEMO))
def test_builds_nemos_state_dict_on_meta(name):
    network = TransducerNetwork.from_config(_filled(name))
    assert network.is_hybrid == ("aux_ctc" in _load(name).model)
    assert network.durations == ((0, 1, 2, 3, 4) if "tdt" in name else None)
    with torch.device("meta"):
        params, buffers = network.init(0)
    assert {t.device.type for t in flatten(params).values()} == {"meta"}
    _check_against_nemo(name, params, buffers)


@pytest.mark.slow  # about 5 s and 2.5 GB: 618M parameters initialised on the CPU
def test_parakeet_builds_for_real():
    params, buffers = TransducerNetwork.from_config(_filled("parakeet_tdt_0.6b")).init(0)
    _check_against_nemo("parakeet_tdt_0.6b", params, buffers)
    embed = params["decoder"]["prediction"]["embed"]["weight"]
    assert embed[1024].abs().sum() == 0 and embed[:1024].abs().sum() > 0  # the blank row is the zero padding row


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # NeMo's num_workers: 8 (not started)
@pytest.mark.parametrize("name", [n for n in NEMO if NEMO[n][0] == 128])
def test_the_model_builds_from_the_yaml_as_the_scripts_do(name, data_dir):
    """Through :class:`TransducerModel` (what ``speech_to_text_rnnt_bpe.py`` / ``..._hybrid_rnnt_ctc_bpe.py`` build):
    the vocabulary comes from the tokenizer, the data blocks build loaders and ``optim`` an optimizer."""
    cfg = _load(name)
    cfg.model.tokenizer.dir = str(data_dir / "tokenizer_spe_bpe_v128")
    for ds in ("train_ds", "validation_ds"):
        cfg.model[ds].manifest_filepath = str(data_dir / "manifest.json")
    model = TransducerModel.from_config(cfg.model)
    assert model.cfg.decoder.vocab_size == model.cfg.joint.num_classes == 128
    assert (model.decoding.strategy, model.decoding.max_symbols) == ("greedy_batch", 10)
    with torch.device("meta"):
        state = model.init_state(0)
    _check_against_nemo(name, state.params, state.buffers)
    for ds in ("train_ds", "validation_ds", "test_ds"):
        ds_cfg = OmegaConf.to_container(cfg.model[ds], resolve=True)
        ds_cfg["manifest_filepath"] = str(data_dir / "manifest.json")
        assert len(model.dataloader(ds_cfg).dataset) == 300
    _, schedule, base_lr = model.optimization(max_steps=100)
    assert base_lr == cfg.model.optim.lr and schedule(50) > 0
