"""ASR throughput on this CPU: train utterances/s (train_step, eager or compiled) and transcribe RTFx.

    python scripts/bench/asr_throughput.py --config configs/asr/quartznet_demo_char.yaml
    python scripts/bench/asr_throughput.py --config configs/asr/fastconformer_demo_bpe.yaml --compile

Uses a synthetic batch (random speech-like noise, fixed seed) of ``--batch`` utterances of ``--seconds`` seconds,
so it needs no corpus; BPE configs get a throwaway tokenizer trained on a few sentences. Prints one table row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nemofn.asr.models.ctc_model import CTCModel
from nemofn.core.state import TrainState
from nemofn.train.step import StepConfig, train_step


def _throwaway_tokenizer(folder: Path, vocab: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from demo_corpus import VOCABULARY
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    gen = torch.Generator().manual_seed(0)
    words = list(VOCABULARY)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (8,), generator=gen).tolist()) for _ in range(2000)]
    text = folder / "text.txt"
    text.write_text("\n".join(lines) + "\n")
    return process_asr_text_tokenizer(data_root=folder, data_file=str(text), vocab_size=vocab, spe_type="bpe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/asr/quartznet_demo_char.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--vocab", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = OmegaConf.load(args.config).model
    with tempfile.TemporaryDirectory() as tmp:
        if "tokenizer" in cfg:
            cfg.tokenizer.dir = str(_throwaway_tokenizer(Path(tmp), args.vocab))
        model = CTCModel.from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    samples = int(args.seconds * model.sample_rate)
    signal = 0.1 * torch.randn(args.batch, samples, generator=gen)
    signal_len = torch.full((args.batch,), samples, dtype=torch.int64)
    tokens = torch.randint(model.network.blank_id, (args.batch, int(args.seconds * 8)), generator=gen)
    tokens_len = torch.full((args.batch,), tokens.shape[1], dtype=torch.int64)
    batch = (signal, signal_len, tokens, tokens_len)

    optimizer, schedule, _ = model.optimization(max_steps=1000)
    step_cfg = StepConfig(objective=model.network.objective, optimizer=optimizer, schedule=schedule,
                          clip_grad_norm=1.0, compile=args.compile)
    state = TrainState.create(model.init_state(0), optimizer, rng=0)
    times = []
    for i in range(args.steps + 2):
        start = time.perf_counter()
        state, metrics = train_step(state, batch, step_cfg)
        float(metrics["loss"])
        if i >= 2:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)

    audio = [signal[i] for i in range(args.batch)]
    model.transcribe(state.model, audio[:2], batch_size=args.batch)
    start = time.perf_counter()
    model.transcribe(state.model, audio, batch_size=args.batch)
    infer_s = time.perf_counter() - start
    name = Path(args.config).stem
    print(f"| {name} | {args.threads} | {'compiled' if args.compile else 'eager'} | {step_s * 1e3:.0f} ms | "
          f"{args.batch / step_s:.1f} utt/s | {args.batch * args.seconds / infer_s:.0f}x |")


if __name__ == "__main__":
    main()
