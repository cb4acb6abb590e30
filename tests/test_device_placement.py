"""Device placement and host syncs of the model paths, checked without a GPU.

When a model lives on ``cuda``, a tensor that a path makes without ``device=`` (``torch.arange(n)``,
``torch.tensor(list)``, ``torch.zeros(...)``) lands on the CPU and meets the model's tensors there: an error, or a
copy that synchronises the stream. Three stand-ins for a CUDA run find such tensors here:

* **default device on meta**: each path runs with its inputs and state on the CPU under a mode that makes meta the
  default device (:class:`DefaultDeviceMeta`). A factory call without ``device=`` then makes a *meta* tensor, as it
  makes a CPU tensor next to a ``cuda`` model; mixing it with the CPU inputs raises (or leaves a meta result), so
  each path must give exactly the results of the plain run.
* **host reads**: a ``TorchFunctionMode`` records every call that reads a tensor back to the host (``item``,
  ``int`` / ``float`` / ``bool``, ``tolist``, ``cpu``, ``numpy``, ``nonzero``, boolean-mask indexing). On a GPU each
  one waits for the stream; the training objectives have a budget (CTC: none, transducers: one, for the lattice
  sizes).
* **state on meta**: a compat model moved to ``meta`` (shapes only) stands for a model moved to ``cuda``: what a path
  builds on the host for it (a new decoder) must follow it there.

Not covered (they need a GPU): cuDNN / autocast behaviour of CUDA kernels, the host reads inside torch's CUDA kernels
(``F.ctc_loss`` copies the lengths to the host), timings. ``scripts/bench/gpu_smoke.py`` runs the whole sequence on
a card.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.models.transducer_model import TransducerModel
from nemofn.asr.modules.preprocessor import AudioToMelSpectrogramPreprocessor
from nemofn.asr.modules.spec_augment import SpectrogramAugmentation
from nemofn.asr.transducer_greedy import greedy_batch
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState, TrainState
from nemofn.optim import adamw
from nemofn.train.loop import evaluate
from nemofn.train.step import MicroBatches, StepConfig, eval_step, train_step

TESTS = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


transducer_helpers = _load("transducer_helpers", TESTS / "asr" / "test_transducer_model.py")
tiny_asr = _load("tiny_asr", TESTS / "compat" / "tiny_asr.py")
LABELS = transducer_helpers.LABELS


# ------------------------------------------------------------------------------------------------------ configs
def _preprocessor(**over) -> dict:
    cfg = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "features": 16,
           "dither": 1e-5, "pad_to": 16}
    cfg.update(over)
    return cfg


def _spec_augment(**over) -> dict:
    cfg = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2, "time_masks": 2,
           "freq_width": 4, "time_width": 0.05, "rect_masks": 2, "rect_freq": 5, "rect_time": 3}
    cfg.update(over)
    return cfg


def conformer_ctc(**spec_over) -> dict:
    """A tiny Conformer-CTC (rel-pos attention, dw-striding subsampling) with dither, SpecAugment and cutout."""
    return {
        "labels": LABELS,
        "preprocessor": _preprocessor(),
        "spec_augment": _spec_augment(**spec_over),
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 16, "n_layers": 2,
                    "d_model": 16, "n_heads": 2, "subsampling": "dw_striding", "subsampling_factor": 4,
                    "subsampling_conv_channels": 8, "conv_kernel_size": 5, "stochastic_depth_drop_prob": 0.5},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None, "num_classes": -1,
                    "vocabulary": LABELS},
        "optim": {"name": "adamw", "lr": 0.01},
    }


def conv_ctc() -> dict:
    """The compat tests' tiny ConvASR (Jasper blocks, separable convs, masked convs) CTC model."""
    cfg = tiny_asr.tiny_cfg()
    return {k: v for k, v in cfg.items() if not k.endswith("_ds")}


def transducer(*, tdt: bool = False, hybrid: bool = False, fused: int | None = None, omega: float = 0.0) -> dict:
    cfg = copy.deepcopy(transducer_helpers.tiny_transducer(tdt=tdt, hybrid=hybrid, fused=fused))
    cfg["preprocessor"]["dither"] = 1e-5
    cfg["spec_augment"] = _spec_augment(use_vectorized_spec_augment=False)
    if tdt:
        cfg["loss"]["tdt_kwargs"].update(omega=omega, clamp=0.5)
    return cfg


def batch(n: int = 3):
    return transducer_helpers.batch(n)


# ------------------------------------------------------------------------------------------------------ helpers
def _leaves(value):
    """Tensors and plain values of a nested result, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _leaves(value[k])]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _leaves(v)]
    if hasattr(value, "__attrs_attrs__"):
        return [x for a in value.__attrs_attrs__ for x in _leaves(getattr(value, a.name))]
    return [value]


def _same(a, b) -> None:
    left, right = _leaves(a), _leaves(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and y.device == x.device, (x.device, getattr(y, "device", y))
            assert torch.equal(x, y)
        else:
            assert x == y or (x != x and y != y)  # nan == nan


def _grads(state) -> list[torch.Tensor]:
    out = [p.grad.clone() if p.grad is not None else None for p in state.param_list]
    for p in state.param_list:
        p.grad = None
    return out


class DefaultDeviceMeta(TorchFunctionMode):
    """``with torch.device("meta")``, except that ``torch.tensor`` / ``as_tensor`` / ``asarray`` of a tensor keep its
    device, as they do under the usual CPU default (``torch.device`` would move it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        data = args[0] if args else kwargs.get("data")
        keeps = func in (torch.tensor, torch.as_tensor, torch.asarray) and isinstance(data, torch.Tensor)
        if func in _device_constructors() and kwargs.get("device") is None and not keeps:
            kwargs["device"] = torch.device("meta")
        return func(*args, **kwargs)


def _run_twice(path):
    """``path()`` as is, then with the default device on meta: same results, all on the CPU."""
    torch.manual_seed(0)
    plain = path()
    torch.manual_seed(0)
    with DefaultDeviceMeta():
        on_meta_default = path()
    _same(plain, on_meta_default)
    assert all(t.device.type == "cpu" for t in _leaves(on_meta_default) if isinstance(t, torch.Tensor))
    return plain


# ------------------------------------------------------------------------------------- default device on meta
def _objective_path(unit):
    state = unit.init_state(0)
    data = batch()

    def path():
        loss, metrics, new_buffers = unit.network.objective(state.params, state.buffers, data, train=True,
                                                            rng=RngKey(0))
        loss.backward()
        return loss.detach(), metrics, new_buffers, _grads(state)

    return path


@pytest.mark.parametrize("make", [
    lambda: CTCModel.from_config(conformer_ctc()),
    lambda: CTCModel.from_config(conformer_ctc(use_vectorized_spec_augment=False)),
    lambda: CTCModel.from_config(conv_ctc()),
    lambda: TransducerModel.from_config(transducer()),
    lambda: TransducerModel.from_config(transducer(tdt=True, hybrid=True)),
    lambda: TransducerModel.from_config(transducer(tdt=True, omega=1.0)),  # the RNN-T branch of the TDT loss
    lambda: TransducerModel.from_config(transducer(fused=2)),  # the fused joint, in sub-batches
], ids=["conformer-ctc", "ctc-legacy-specaug", "conv-ctc", "rnnt", "tdt-hybrid", "tdt-omega", "rnnt-fused"])
def test_training_objectives_make_no_tensor_on_the_default_device(make):
    _run_twice(_objective_path(make()))


@pytest.mark.parametrize("over", [
    {"pad_to": "max"}, {"exact_pad": True, "normalize": "all_features"}, {"window": "none", "frame_splicing": 2},
    {"normalize": {"fixed_mean": [0.5] * 16, "fixed_std": [2.0] * 16}, "log_zero_guard_type": "clamp",
     "log_zero_guard_value": "tiny"},
], ids=["pad-max", "exact-pad", "rect-window", "fixed-stats"])
def test_preprocessor_variants_make_no_tensor_on_the_default_device(over):
    pre = AudioToMelSpectrogramPreprocessor.from_config(_preprocessor(**over))
    params, buffers = pre.init()
    signal, signal_len = batch()[:2]

    def path():
        return pre.apply(params, buffers, signal, signal_len, train=True, rng=RngKey(0))[0]

    _run_twice(path)


def test_eval_decoding_and_metrics_make_no_tensor_on_the_default_device():
    from compat.models.ctc_decoding import ctc_hypotheses
    from nemofn.asr.decoding import greedy_scores

    unit = CTCModel.from_config(conformer_ctc())
    state = unit.init_state(0)
    signal, signal_len, tokens, tokens_len = batch()
    loader = [batch(), batch(2)]

    def path():
        log_probs, lengths = unit.log_probs(state, signal, signal_len)
        hyps = ctc_hypotheses(log_probs, lengths, blank=unit.network.blank_id, text_decoder=unit.text_decoder,
                              return_hypotheses=True)
        wer = unit.evaluate_wer(state, loader)
        return (log_probs, lengths, unit.decode(log_probs, lengths), greedy_scores(log_probs, lengths),
                [(h.text, h.score, h.y_sequence) for h in hyps], wer)

    _run_twice(path)


@pytest.mark.parametrize("tdt", [False, True])
def test_transducer_greedy_decoding_makes_no_tensor_on_the_default_device(tdt):
    unit = TransducerModel.from_config(transducer(tdt=tdt))
    state = unit.init_state(0)
    signal, signal_len = batch()[:2]
    loader = [batch()]
    net = unit.network

    def path():
        encoded, encoded_len = unit.encode(state, signal, signal_len)
        hyps = unit.greedy(state, encoded, encoded_len, return_alignments=True)
        plain = greedy_batch(net.decoder, net.joint, state.params["decoder"], state.params["joint"], encoded,
                             encoded_len, max_symbols=2, durations=unit.decoding.durations, nemo_durations=False)
        return encoded, encoded_len, hyps, plain, unit.evaluate_wer(state, loader)

    _run_twice(path)


def test_train_step_and_evaluate_make_no_tensor_on_the_default_device():
    """A whole step (objective, clipping, AdamW, micro-batches) and the loop's evaluation; the state itself is
    built on the host first, as ``init`` does by design."""
    unit = CTCModel.from_config(conformer_ctc())
    optimizer = adamw()
    cfg = StepConfig(unit.network.objective, optimizer, 1e-3, clip_grad_norm=0.5)
    steps, loader = (batch(), MicroBatches([batch(2), batch(3)])), [batch(), batch(2)]
    runs = []
    for default in ("cpu", "meta"):
        torch.manual_seed(0)
        state = TrainState.create(unit.init_state(0), optimizer, rng=0)
        with DefaultDeviceMeta() if default == "meta" else contextlib.nullcontext():
            for data in steps:
                state, metrics = train_step(state, data, cfg)
            values = evaluate(state, loader, cfg)
        runs.append((metrics, state.model.param_list, values))
    _same(*runs)


def test_compat_steps_log_tensors_on_the_models_device():
    """compat's training / validation steps (what ``compat.Trainer`` calls) on the default-device-on-meta run: every
    logged tensor is on the model's device (a host ``torch.tensor(step)`` among device metrics breaks the loop's
    metric read-back, which stacks them)."""
    from compat.collections.asr.models import EncDecCTCModel, EncDecHybridRNNTCTCModel

    for model in (EncDecCTCModel(conv_ctc()), EncDecHybridRNNTCTCModel(transducer(tdt=True, hybrid=True))):
        data = batch()
        start = {k: v.clone() for k, v in model.state_dict().items()}

        def path(model=model, data=data, start=start):
            model.load_state_dict(start)  # training mode updates BatchNorm statistics: start each run alike
            model.train()
            out = model.training_step(data, 0)
            out["loss"].backward()
            grads = _grads(model.fn_state)
            model.eval()
            values = model.validation_step(data, 0)
            epoch = model.on_validation_epoch_end()
            return out, grads, values, epoch

        result = _run_twice(path)
        logged = dict(result[0]["log"])
        assert {"train_loss", "global_step", "training_batch_wer"} <= set(logged)
        for name, value in [*logged.items(), *result[2].items(), *result[3].items()]:
            if isinstance(value, torch.Tensor):
                assert value.device == model.device, name


# ------------------------------------------------------------------------------------------------- host reads
_READS = frozenset({"tolist", "item", "__int__", "__float__", "__bool__", "__index__", "cpu", "numpy", "nonzero",
                    "masked_select"})


class HostReads(TorchFunctionMode):
    """Records ``(call, file:line)`` of every tensor read back to the host under it (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _READS or (name == "__getitem__" and _has_bool_index(args[1])):
            frames = [f for f in traceback.extract_stack()[:-1] if "/nemofn/" in f.filename
                      or "/compat/" in f.filename]
            self.reads.append((name, f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"))
        return func(*args, **(kwargs or {}))


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _reads(path) -> list[tuple[str, str]]:
    with HostReads() as mode:
        path()
    return mode.reads


@pytest.mark.parametrize("make, budget", [
    (lambda: CTCModel.from_config(conformer_ctc()), 0),
    (lambda: CTCModel.from_config(conformer_ctc(use_vectorized_spec_augment=False)), 0),
    (lambda: CTCModel.from_config(conv_ctc()), 0),
    (lambda: TransducerModel.from_config(transducer()), 1),
    (lambda: TransducerModel.from_config(transducer(tdt=True, hybrid=True)), 1),
], ids=["conformer-ctc", "ctc-legacy-specaug", "conv-ctc", "rnnt", "tdt-hybrid"])
def test_training_objectives_read_back_at_most_their_budget(make, budget):
    """Forward and backward of a training objective: CTC reads nothing back; a transducer loss reads its lattice
    sizes and validity checks once (``prepare_transducer_batch``)."""
    reads = _reads(_objective_path(make()))
    assert len(reads) <= budget, reads


def test_compat_training_step_reads_nothing_back_between_log_steps():
    from compat.collections.asr.models import EncDecCTCModel

    model = EncDecCTCModel(conv_ctc())
    model.train()
    trainer = type("T", (), {"log_every_n_steps": 50})()  # batch 0 is not a log step: no WER, no read
    model.__dict__["_trainer"] = trainer

    def path():
        model.training_step(batch(), 0)["loss"].backward()

    assert _reads(path) == []


def test_the_read_counter_sees_reads():
    """The counter is not blind: each kind of read is recorded."""
    x = torch.arange(4)

    def path():
        x.tolist(), int(x[0]), float(x[1]), bool(x[2]), x.max().item(), x.cpu(), x[x > 1], x.nonzero()

    assert [name for name, _ in _reads(path)] == ["tolist", "__int__", "__float__", "__bool__", "item", "cpu",
                                                  "__getitem__", "nonzero"]


# --------------------------------------------------------------------------------------------- state on meta
def test_host_lengths_meet_a_state_elsewhere():
    """Lengths left on the host, features and state elsewhere (meta, for cuda): SpecAugment (both mask kinds, cutout),
    the Conformer encoder and the decoder take them; the outputs are where the state is, with the plain run's shapes.
    (The preprocessor cannot run on meta: autocast has no meta device. It moves its lengths the same way.)"""
    unit = CTCModel.from_config(conformer_ctc())
    net = unit.network
    state = unit.init_state(0)
    params, buffers = _to_meta(state.params), _to_meta(state.buffers)
    features, lengths = torch.randn(3, 16, 40), torch.tensor([40, 31, 17])
    for spec in (net.spec_augment, net.spec_augment.replace(use_vectorized_spec_augment=False)):
        masked, _ = spec.apply({}, {}, features.to("meta"), lengths, train=True, rng=RngKey(0))
        assert masked.device.type == "meta" and masked.shape == features.shape
    plain, plain_len = net.encoder.apply(state.params["encoder"], state.buffers["encoder"], features, lengths,
                                         train=True, rng=RngKey(0))[0]
    encoded, encoded_len = net.encoder.apply(params["encoder"], buffers["encoder"], features.to("meta"), lengths,
                                             train=True, rng=RngKey(0))[0]
    assert encoded.device.type == encoded_len.device.type == "meta"
    assert encoded.shape == plain.shape and encoded_len.shape == plain_len.shape
    log_probs, _ = net.decoder.apply(params["decoder"], {}, encoded, train=False)
    assert log_probs.device.type == "meta" and log_probs.shape[:2] == (3, plain.shape[-1])


def test_train_and_eval_steps_move_host_batches_to_the_state():
    """``train_step`` / ``eval_step`` without Fabric take batches as a ``DataLoader`` gives them (host tensors, in
    tuples, lists and dicts) for a state elsewhere (meta, for cuda), micro-batches included."""
    from nemofn.nn.linear import Linear
    from nemofn.train.objective import SupervisedObjective

    layer = Linear(4, 2)
    params, _ = layer.init(0)
    state = TrainState.create(ModelState.create(_to_meta(params)), adamw(), rng=0)
    # Meta keeps AdamW's step counters on the host (it is no accelerator), and the non-finite guard would then have
    # to read the flag back, which meta cannot: the guard's device path is tested in test_nonfinite_steps.
    cfg = StepConfig(SupervisedObjective(layer, torch.nn.functional.mse_loss), adamw(), 1e-3, clip_grad_norm=1.0,
                     skip_nonfinite=False)
    data = (torch.randn(3, 4), torch.randn(3, 2))
    state, metrics = train_step(state, data, cfg)
    state, metrics = train_step(state, MicroBatches([data, [data[0], data[1]]]), cfg)
    assert metrics["loss"].device.type == "meta" and state.model.device.type == "meta"
    assert eval_step(state, data, cfg)["loss"].device.type == "meta"

    def objective(params, buffers, batch, *, train, rng):
        return layer.apply(params, buffers, batch["x"], train=train, rng=rng)[0].sum(), {}, {}

    dict_cfg = StepConfig(objective, adamw(), 1e-3, skip_nonfinite=False)
    assert train_step(state, {"x": data[0]}, dict_cfg)[1]["loss"].device.type == "meta"


def _to_meta(tree):
    return {k: _to_meta(v) if isinstance(v, dict) else v.detach().to("meta") for k, v in tree.items()}


@pytest.mark.parametrize("kind", ["ctc", "rnnt"])
def test_a_new_vocabulary_follows_the_model_to_its_device(kind):
    """``change_vocabulary`` builds the new heads with ``init`` (host tensors); on a model moved elsewhere (meta,
    for cuda) they must move there too."""
    from compat.collections.asr.models import EncDecCTCModel, EncDecRNNTModel

    model = EncDecCTCModel(conv_ctc()) if kind == "ctc" else EncDecRNNTModel(transducer())
    model.to("meta")
    model.change_vocabulary([" ", "x", "y"])
    devices = {name: t.device.type for name, t in model.state_dict().items()}
    assert set(devices.values()) == {"meta"}, {k: v for k, v in devices.items() if v != "meta"}
    assert model.fn_state.device.type == "meta"


# ------------------------------------------------------------------------------------------- trainer settings
def test_trainer_settings_reach_fabric_and_the_model(monkeypatch):
    """``trainer.accelerator: gpu`` (NeMo's configs) becomes Fabric's ``cuda``; the model is moved to the launched
    Fabric's device when the trainer attaches it (a meta "device" stands for cuda here)."""
    from compat.collections.asr.models import EncDecCTCModel
    from compat.trainer import Trainer
    from compat.trainer.fabric_setup import fabric_arguments

    args = fabric_arguments("gpu", 1, 1, "ddp", "bf16")
    assert args == {"accelerator": "cuda", "devices": 1, "num_nodes": 1, "strategy": "auto",
                    "precision": "bf16-mixed"}
    assert fabric_arguments("cuda", [0], 1, "auto", 16)["accelerator"] == "cuda"

    trainer = Trainer(**tiny_asr.QUIET)
    monkeypatch.setattr(type(trainer._fabric), "device", property(lambda self: torch.device("meta")))
    model = EncDecCTCModel(conv_ctc())
    trainer._attach(model, "validate")
    assert model.device.type == "meta" and {p.device.type for p in model.parameters()} == {"meta"}


def test_validation_runs_under_the_precision_autocast(tmp_path):
    """Lightning validates under the precision plugin's autocast (bf16-mixed); compat.Trainer does too, on the
    batches Fabric moved. Training a step first checks that the loop reads the logged metrics back."""
    from compat.collections.asr.models import EncDecCTCModel
    from compat.trainer import Trainer

    data = tiny_asr.small_corpus(tmp_path)
    model = EncDecCTCModel(tiny_asr.tiny_cfg(data["train"], data["val"]))
    seen = []
    original = model.validation_pass

    def recording(batch, *args):
        seen.append((torch.is_autocast_enabled("cpu"), batch[0].device))
        return original(batch, *args)

    model.validation_pass = recording
    trainer = Trainer(precision="bf16-mixed", max_steps=2, val_check_interval=2, **tiny_asr.QUIET)
    trainer.fit(model)
    assert seen and all(on and device == model.device for on, device in seen)
    assert {"val_loss", "val_wer"} <= set(trainer.callback_metrics)
    assert "global_step" in trainer.logged_metrics and trainer.logged_metrics["global_step"] == 1.0
    seen.clear()
    Trainer(precision="32-true", **tiny_asr.QUIET).validate(model, verbose=False)
    assert seen and not any(on for on, _ in seen)
