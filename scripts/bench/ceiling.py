"""The hardware ceiling of this CPU (matmul GFLOP/s, fp32 and bf16) and the useful FLOP/s of a training step.

    python scripts/bench/ceiling.py --manifest /tmp/bench_corpus/train_manifest.json
    python scripts/bench/ceiling.py --configs configs/asr/fastconformer_tdt_demo_bpe.yaml --batch 8 --steps 3
    python scripts/bench/ceiling.py --skip-steps          # the matmul ceiling only

Ceiling: ``torch.mm`` GFLOP/s (2*m*k*n per product) for square 1024/2048/4096 and a tall-skinny product typical
of a Conformer step ([16*100, 176] x [176, 704]: batch 16 of 4 s at 40 ms frames, d_model 176, 4x FF), after a
warm-up, the best of ``--repeats`` timed runs of at least 0.2 s each; the ceiling is the best shape. bf16 runs
through oneDNN, which uses AVX512-BF16 / AMX when the CPU has them (the flags are printed).

Training step, per config: the model FLOPs of one step (forward + backward of the training objective) counted on
the unpadded samples only: each utterance of the batch is run alone (batch of 1, its own length) through
``nemofn.train.step.train_step`` under ``torch.utils.flop_counter.FlopCounterMode``, and the counts are summed.
The real padded batch is counted the same way once (what the step computes, padding included) and then timed:
``train_step`` eager, the median of ``--steps`` steps after ``--warmup``. Useful GFLOP/s = unpadded FLOPs / step
time (the MFU numerator), executed GFLOP/s = padded FLOPs / step time; both as a share of the ceilings.
FlopCounterMode counts matmul, convolution and attention FLOPs only: elementwise ops, normalization, the FFT of
the preprocessor, the losses and the optimizer update are not counted, as in the usual MFU definition.

The batch: the first ``--batch`` utterances of ``--manifest`` (real speech, e.g. the demo corpus that
``scripts/data/demo_corpus.py`` writes), padded; without a manifest, synthetic noise whose lengths are drawn like
the demo corpus's (3-10 words of its vocabulary, 0.32 s a word). BPE configs get a throwaway SentencePiece
tokenizer (``--vocab`` pieces) trained on sentences of the demo vocabulary (``asr_throughput.py``'s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from nemofn.asr.configs.models import is_transducer_config
from nemofn.asr.data.audio import load_audio
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.models.transducer_model import TransducerModel
from nemofn.core.state import TrainState
from nemofn.train.step import StepConfig, train_step

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT / "scripts" / "data") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts" / "data"))
from asr_throughput import _throwaway_tokenizer  # noqa: E402
from demo_corpus import VOCABULARY, CorpusSpec  # noqa: E402

DEFAULT_CONFIGS = ("configs/asr/quartznet_demo_char.yaml", "configs/asr/conformer_demo_bpe.yaml")
# (m, k, n): three squares and a Conformer-like tall-skinny product
DEFAULT_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (16 * 100, 176, 704))
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
SECONDS_PER_WORD = 0.32  # the demo corpus's mean duration per word (320 train clips: 2.01 s, 6.4 words)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Utterance(NamedTuple):
    """One utterance: ``signal [S]`` (float32 at the model's rate) and its transcript."""

    signal: torch.Tensor
    text: str


# ----------------------------------------------------------------------------------------------------- the CPU
def cpu_info() -> dict:
    """``model`` (the CPU's name), ``flags`` {flag: present} for :data:`CPU_FLAGS` (``/proc/cpuinfo``, else
    ``lscpu``), ``torch_capability`` (the vector ISA torch's kernels dispatch to) and ``cores`` (logical CPUs)."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        except OSError:
            pass
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    model = model or platform.processor() or "unknown"
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS},
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count()}


def _shape(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return size, size, size
    m, k, n = size
    return int(m), int(k), int(n)


def matmul_rates(threads: int, dtype: torch.dtype = torch.float32, sizes: Sequence = DEFAULT_SHAPES, *,
                 min_time: float = 0.2, repeats: int = 3) -> dict[tuple[int, int, int], float]:
    """GFLOP/s of ``torch.mm`` per shape: ``{(m, k, n): best of repeats}`` (2*m*k*n FLOPs per product).

    Args:
        threads: torch intra-op threads while measuring (restored afterwards).
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        sizes: ints (square) or ``(m, k, n)`` triples.
        min_time: each timed run repeats the product until it takes at least this many seconds.
        repeats: timed runs per shape (the best counts).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rates = {}
    try:
        for size in sizes:
            m, k, n = _shape(size)
            a = torch.randn(m, k, generator=gen).to(dtype)
            b = torch.randn(k, n, generator=gen).to(dtype)
            out = torch.empty(m, n, dtype=dtype)
            torch.mm(a, b, out=out)  # warm-up: oneDNN primitive creation, page faults
            iters, elapsed = 1, 0.0
            while True:  # calibrate the repetitions to min_time
                start = time.perf_counter()
                for _ in range(iters):
                    torch.mm(a, b, out=out)
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
                iters = max(iters * 2, int(iters * min_time / max(elapsed, 1e-6) * 1.2))
            best = elapsed
            for _ in range(repeats - 1):
                start = time.perf_counter()
                for _ in range(iters):
                    torch.mm(a, b, out=out)
                best = min(best, time.perf_counter() - start)
            rates[(m, k, n)] = 2.0 * m * k * n * iters / best / 1e9
    finally:
        torch.set_num_threads(previous)
    return rates


def matmul_ceiling(threads: int, dtype: torch.dtype = torch.float32, sizes: Sequence = DEFAULT_SHAPES, *,
                   min_time: float = 0.2, repeats: int = 3) -> float:
    """The best ``torch.mm`` GFLOP/s over ``sizes`` (see :func:`matmul_rates`)."""
    return max(matmul_rates(threads, dtype, sizes, min_time=min_time, repeats=repeats).values())


# --------------------------------------------------------------------------------------------------- the batch
def synthetic_utterances(n: int, *, sample_rate: int = 16000, seed: int = 0) -> list[Utterance]:
    """``n`` utterances of noise whose lengths are drawn like the demo corpus's: 3-10 words of its vocabulary,
    :data:`SECONDS_PER_WORD` a word (+-15%)."""
    spec = CorpusSpec()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        words = [VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=rng.integers(spec.min_words,
                                                                                            spec.max_words + 1))]
        seconds = len(words) * SECONDS_PER_WORD * rng.uniform(0.85, 1.15)
        out.append(Utterance(0.1 * torch.randn(int(seconds * sample_rate), generator=gen), " ".join(words)))
    return out


def manifest_utterances(manifest: str | Path, n: int, *, sample_rate: int = 16000) -> list[Utterance]:
    """The first ``n`` utterances of a NeMo manifest (audio paths relative to the manifest's folder allowed)."""
    manifest = Path(manifest)
    out = []
    with manifest.open() as f:
        for line in f:
            if len(out) == n:
                break
            if not line.strip():
                continue
            entry = json.loads(line)
            path = Path(entry["audio_filepath"])
            path = path if path.is_absolute() else manifest.parent / path
            out.append(Utterance(torch.from_numpy(load_audio(path, sample_rate=sample_rate)), entry["text"]))
    if len(out) < n:
        raise ValueError(f"{manifest} holds {len(out)} utterances, fewer than the {n} asked for (--batch)")
    return out


def pad_batch(model: Any, utterances: Sequence[Utterance]) -> tuple[torch.Tensor, ...]:
    """``(signal [B, S_max], signal_len [B], tokens [B, U_max], tokens_len [B])``, right-padded with zeros."""
    ids = [model.tokenizer.encode(u.text) for u in utterances]
    signal_len = torch.tensor([len(u.signal) for u in utterances], dtype=torch.int64)
    tokens_len = torch.tensor([len(t) for t in ids], dtype=torch.int64)
    signal = torch.zeros(len(utterances), int(signal_len.max()))
    tokens = torch.zeros(len(utterances), max(int(tokens_len.max()), 1), dtype=torch.int64)
    for i, (u, t) in enumerate(zip(utterances, ids)):
        signal[i, : len(u.signal)] = u.signal
        tokens[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    return signal, signal_len, tokens, tokens_len


# --------------------------------------------------------------------------------------------------- the model
def build_model(config_path: str | Path, *, vocab: int = 128) -> CTCModel | TransducerModel:
    """The model of a config file (``model:`` block): a transducer's when it has a ``joint``, else CTC; a BPE
    config gets a throwaway tokenizer of ``vocab`` pieces."""
    cfg = OmegaConf.load(config_path).model
    with tempfile.TemporaryDirectory() as tmp:
        if "tokenizer" in cfg:
            cfg.tokenizer.dir = str(_throwaway_tokenizer(Path(tmp), vocab))
        cls = TransducerModel if is_transducer_config(cfg) else CTCModel
        return cls.from_config(cfg)


def _fresh(model: Any, seed: int) -> tuple[TrainState, StepConfig]:
    optimizer, schedule, _ = model.optimization(max_steps=1000)
    cfg = StepConfig(objective=model.network.objective, optimizer=optimizer, schedule=schedule, clip_grad_norm=1.0)
    return TrainState.create(model.init_state(seed), optimizer, rng=seed), cfg


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each gradient asked for (input, weight) costs what the forward costs,
    ``2 * batch * prod(spatial) * prod(weight shape)`` (spatial: the output's, the input's for a transposed conv).

    Replaces torch 2.13's formula, whose weight-gradient term forgets the groups: it counts a depthwise conv's
    weight gradient ``channels`` times over (pytorch/pytorch PR #183405 proposes the division); with it the
    QuartzNet demo's step counted about 8x its true FLOPs.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * grad_out_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flops}


def flop_counter() -> FlopCounterMode:
    """A quiet ``FlopCounterMode`` with :func:`conv_backward_flops` for grouped convs."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def _counted_step(state: TrainState, batch: tuple, cfg: StepConfig) -> tuple[TrainState, int, dict[str, int]]:
    with flop_counter() as counter:
        state, metrics = train_step(state, batch, cfg)
        float(metrics["loss"])
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): int(v)
             for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return state, int(counter.get_total_flops()), by_op


def step_flops(config_path: str | Path, batch: Sequence[Utterance], *, model: Any = None, seed: int = 0) -> dict:
    """Model FLOPs of one training step (forward + backward) of a config on a batch, unpadded and padded.

    Args:
        config_path: a config file with a ``model:`` block.
        batch: the utterances (see :func:`synthetic_utterances`, :func:`manifest_utterances`).
        model: the model of ``config_path`` when already built (:func:`build_model`).
        seed: weights and step rng.

    Returns:
        ``flops`` (the sum of the per-utterance counts: each utterance alone, at its own length),
        ``flops_per_utterance``, ``flops_by_op`` (of the unpadded sum), ``padded_flops`` (the padded batch as one
        step), ``padding_flops_share`` (1 - flops / padded_flops), ``padding_samples_share`` (padding in the
        signal batch), ``utterances``, ``audio_s``.
    """
    model = model if model is not None else build_model(config_path)
    state, cfg = _fresh(model, seed)
    per_utt, by_op = [], {}
    for u in batch:
        state, flops, ops = _counted_step(state, pad_batch(model, [u]), cfg)
        per_utt.append(flops)
        for op, v in ops.items():
            by_op[op] = by_op.get(op, 0) + v
    padded = pad_batch(model, batch)
    state, padded_flops, _ = _counted_step(state, padded, cfg)
    total = sum(per_utt)
    samples = int(padded[1].sum())
    return {"config": Path(config_path).stem, "utterances": len(batch), "audio_s": samples / model.sample_rate,
            "flops": total, "flops_per_utterance": per_utt, "flops_by_op": by_op, "padded_flops": padded_flops,
            "padding_flops_share": 1.0 - total / padded_flops if padded_flops else float("nan"),
            "padding_samples_share": 1.0 - samples / padded[0].numel()}


def time_step(config_path: str | Path, batch: Sequence[Utterance], *, model: Any = None, steps: int = 5,
              warmup: int = 2, seed: int = 0) -> dict:
    """Seconds per eager ``train_step`` on the padded batch: ``step_s`` (median of ``steps`` after ``warmup``),
    ``step_s_min``, ``step_s_all``. Runs on torch's current thread count."""
    model = model if model is not None else build_model(config_path)
    state, cfg = _fresh(model, seed)
    padded = pad_batch(model, batch)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = train_step(state, padded, cfg)
        float(metrics["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "step_s_min": min(times), "step_s_all": times}


def measure_config(config_path: str | Path, batch: Sequence[Utterance], *, ceilings: dict[str, float],
                   steps: int = 5, warmup: int = 2, vocab: int = 128, seed: int = 0) -> dict:
    """:func:`step_flops` and :func:`time_step` of one config, with ``useful_gflops`` (unpadded FLOPs / median
    step time), ``executed_gflops`` (padded FLOPs / step time) and, per ceiling name in ``ceilings``
    ({"fp32": GFLOP/s, ...}), ``useful_share_<name>`` and ``executed_share_<name>``."""
    model = build_model(config_path, vocab=vocab)
    out = step_flops(config_path, batch, model=model, seed=seed)
    out.update(time_step(config_path, batch, model=model, steps=steps, warmup=warmup, seed=seed))
    out["useful_gflops"] = out["flops"] / out["step_s"] / 1e9
    out["executed_gflops"] = out["padded_flops"] / out["step_s"] / 1e9
    for name, ceiling in ceilings.items():
        out[f"useful_share_{name}"] = out["useful_gflops"] / ceiling
        out[f"executed_share_{name}"] = out["executed_gflops"] / ceiling
    return out


# ---------------------------------------------------------------------------------------------------- output
def _shape_label(shape: tuple[int, int, int]) -> str:
    m, k, n = shape
    return f"{m}^3" if m == k == n else f"[{m}, {k}] x [{k}, {n}]"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--manifest", help="real speech: the first --batch utterances of this manifest")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per matmul shape (best)")
    ap.add_argument("--vocab", type=int, default=128, help="BPE pieces of the throwaway tokenizer")
    ap.add_argument("--skip-steps", action="store_true", help="the matmul ceiling only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    info = cpu_info()
    flags = ", ".join(f"{f} {'yes' if ok else 'no'}" for f, ok in info["flags"].items())
    print(f"CPU: {info['model']} ({info['cores']} logical CPUs); {flags}; torch {torch.__version__} dispatches to "
          f"{info['torch_capability']}; threads {args.threads}; load average {_load()}\n")

    rates = {name: matmul_rates(args.threads, dtype, repeats=args.repeats) for name, dtype in DTYPES.items()}
    ceilings = {name: max(r.values()) for name, r in rates.items()}
    print("| torch.mm (m x k x n) | fp32 GFLOP/s | bf16 GFLOP/s |\n|---|---|---|")
    for shape in rates["fp32"]:
        print(f"| {_shape_label(shape)} | {rates['fp32'][shape]:.0f} | {rates['bf16'][shape]:.0f} |")
    print(f"| **ceiling** (best) | **{ceilings['fp32']:.0f}** | **{ceilings['bf16']:.0f}** |\n")
    if args.skip_steps:
        return

    source = f"the first {args.batch} utterances of {args.manifest}" if args.manifest else \
        f"{args.batch} synthetic utterances (lengths drawn like the demo corpus)"
    print(f"Training step (train_step eager, fp32, median of {args.steps} after {args.warmup} warm-up), batch: "
          f"{source}\n")
    print("| config | audio | padding (samples / FLOPs) | GFLOP/step unpadded | GFLOP/step padded | step time (min) | "
          "useful GFLOP/s | % fp32 ceiling | % bf16 ceiling | executed GFLOP/s (% fp32) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for config in args.configs:
        model_rate = int(OmegaConf.load(config).model.get("sample_rate", 16000))
        batch = (manifest_utterances(args.manifest, args.batch, sample_rate=model_rate) if args.manifest
                 else synthetic_utterances(args.batch, sample_rate=model_rate))
        r = measure_config(config, batch, ceilings=ceilings, steps=args.steps, warmup=args.warmup, vocab=args.vocab)
        results.append(r)
        print(f"| {r['config']} | {r['utterances']} utt, {r['audio_s']:.1f} s | {r['padding_samples_share']:.0%} / "
              f"{r['padding_flops_share']:.0%} | {r['flops'] / 1e9:.1f} | {r['padded_flops'] / 1e9:.1f} | "
              f"{r['step_s'] * 1e3:.0f} ms ({r['step_s_min'] * 1e3:.0f}) | {r['useful_gflops']:.1f} | {r['useful_share_fp32']:.1%} | "
              f"{r['useful_share_bf16']:.1%} | {r['executed_gflops']:.1f} ({r['executed_share_fp32']:.1%}) |",
              flush=True)
    print(f"\nload average at the end: {_load()} (other processes on a shared machine slow the step down)")
    for r in results:
        ops = sorted(r["flops_by_op"].items(), key=lambda kv: -kv[1])
        print(f"{r['config']}: counted FLOPs by op: " + ", ".join(f"{op} {v / r['flops']:.0%}" for op, v in ops))
    print("\nFLOPs: torch.utils.flop_counter.FlopCounterMode, forward + backward; it counts matmul, convolution and "
          "attention only (elementwise ops, normalization, the FFT, the losses and the optimizer are not counted, "
          "as in the usual MFU definition). Unpadded = each utterance alone at its own length, summed.")


if __name__ == "__main__":
    main()
