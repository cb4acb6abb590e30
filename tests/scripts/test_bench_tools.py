"""``scripts/bench/footprint.py`` (counting an environment) and ``scripts/bench/ceiling.py`` (FLOP counts, matmul
rate) on the current environment: no venv is created and nothing is timed against a threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import ceiling  # noqa: E402
import footprint  # noqa: E402

QUARTZNET = ROOT / "configs" / "asr" / "quartznet_demo_char.yaml"


# ------------------------------------------------------------------------------------------------ footprint
@pytest.fixture(scope="module")
def environment():
    return footprint.count_environment(sys.executable)


def test_footprint_counts_this_environment(environment):
    env = environment
    assert env["python_version"] == sys.version.split()[0]
    assert env["distributions"] > 10
    assert env["distributions"] == len(env["versions"]) == len(env["bytes"])
    assert {"torch", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec"} <= set(
        env["torch_closure"])
    assert not {"numpy", "omegaconf", "nemofn", "pytest"} & set(env["torch_closure"])  # not torch's requirements
    assert env["torch_closure_mb"] > 100
    assert env["total_bytes"] == sum(env["bytes"].values())  # every file claimed by exactly one distribution
    assert env["beyond_torch_bytes"] == env["total_bytes"] - env["torch_closure_bytes"] > 0
    beyond = sum(b for n, b in env["bytes"].items() if n not in env["torch_closure"])
    assert beyond == env["beyond_torch_bytes"]
    assert env["beyond_torch_distributions"] == env["distributions"] - len(env["torch_closure"])


def test_footprint_torch_size_is_its_record(environment):
    import importlib.metadata as metadata

    dist = metadata.distribution("torch")
    files = {p.resolve() for p in (Path(dist.locate_file(f)) for f in dist.files) if p.exists()}
    assert environment["bytes"]["torch"] == sum(p.stat().st_size for p in files)
    assert environment["versions"]["torch"] == torch.__version__


def test_footprint_closure_follows_requirements_without_extras():
    requires = {"a": ["b", "c"], "b": ["d"], "c": [], "d": ["a"], "e": ["a"]}
    assert footprint.closure("A", requires) == ["a", "b", "c", "d"]
    assert footprint.closure("x", requires) == []

    class Dist:
        requires = ["Jinja2>=3", 'pyyaml; extra == "yaml"', "typing_extensions ; python_version >= '3'",
                    "pywin32; sys_platform == 'nonexistent'"]

    assert footprint.requirement_names(Dist()) == ["jinja2", "typing-extensions"]


def test_footprint_import_module_by_environment():
    assert footprint.default_import_module({"nemo-toolkit": "3.0.0", "torch": "2"}) == "nemo.collections.asr"
    assert footprint.default_import_module({"nemofn": "0.1.0"}) == "compat.collections.asr.models"
    assert footprint.default_import_module({"torch": "2"}) is None


# ---------------------------------------------------------------------------------------------------- ceiling
@pytest.fixture(scope="module")
def quartznet():
    return ceiling.build_model(QUARTZNET)


def test_matmul_ceiling_is_positive_for_tiny_sizes():
    rates = ceiling.matmul_rates(1, torch.float32, sizes=(32, (16, 8, 4)), min_time=0.005, repeats=2)
    assert set(rates) == {(32, 32, 32), (16, 8, 4)} and all(r > 0 for r in rates.values())
    assert ceiling.matmul_ceiling(1, torch.bfloat16, sizes=(32,), min_time=0.005, repeats=1) > 0


def test_conv_backward_counts_grouped_convs_once():
    x = torch.randn(2, 8, 50, requires_grad=True)
    forward = 2 * 2 * 50 * 5  # per output channel of a depthwise k=5 conv: batch * time * k MACs, 2 FLOPs each
    for groups, weight_shape in ((8, (8, 1, 5)), (1, (8, 8, 5))):
        w = torch.randn(*weight_shape, requires_grad=True)
        with ceiling.flop_counter() as counter:
            F.conv1d(x, w, groups=groups, padding=2).sum().backward()
        expected = 3 * forward * 8 * (8 // groups)  # forward, input gradient, weight gradient
        assert counter.get_total_flops() == expected, groups


def test_step_flops_sums_unpadded_utterances(quartznet):
    short, long = ceiling.synthetic_utterances(2, seed=0)
    short = ceiling.Utterance(short.signal[:8000], "one two")
    long = ceiling.Utterance(long.signal[:16000], "one two three")
    model = quartznet
    both = ceiling.step_flops(QUARTZNET, [short, long], model=model)
    assert both["utterances"] == 2 and both["config"] == "quartznet_demo_char"
    assert both["flops"] == sum(both["flops_per_utterance"]) == sum(both["flops_by_op"].values())
    small, big = both["flops_per_utterance"]
    assert 0 < small < big  # grows with length
    alone = ceiling.step_flops(QUARTZNET, [short], model=model)
    assert alone["flops"] == small  # each utterance is counted at its own length, independent of the batch
    assert both["padded_flops"] > both["flops"] and 0 < both["padding_flops_share"] < 1
    assert both["padding_samples_share"] == pytest.approx(1 - 24000 / 32000)
    assert both["audio_s"] == pytest.approx(1.5)


def test_synthetic_utterances_are_drawn_like_the_demo_corpus():
    utts = ceiling.synthetic_utterances(32, seed=1)
    for u in utts:
        words = len(u.text.split())
        assert 3 <= words <= 10
        assert len(u.signal) == pytest.approx(words * ceiling.SECONDS_PER_WORD * 16000, rel=0.16)
    assert [u.text for u in ceiling.synthetic_utterances(32, seed=1)] == [u.text for u in utts]


def test_pad_batch_pads_signals_and_tokens(quartznet):
    model = quartznet
    utts = [ceiling.Utterance(torch.ones(5), "ab"), ceiling.Utterance(torch.ones(3), "abc d")]
    signal, signal_len, tokens, tokens_len = ceiling.pad_batch(model, utts)
    assert signal.shape == (2, 5) and signal_len.tolist() == [5, 3] and signal[1, 3:].abs().sum() == 0
    assert tokens_len.tolist() == [2, 5] and tokens.shape == (2, 5)
    assert tokens[0, :2].tolist() == model.tokenizer.encode("ab")
