"""GPU smoke test: NeMo's training path on a card, end to end, in a couple of minutes.

    python scripts/bench/gpu_smoke.py                          # cuda, bf16-mixed, 30 steps
    python scripts/bench/gpu_smoke.py --steps 60 model.train_ds.batch_size=32
    python scripts/bench/gpu_smoke.py --device cpu --steps 2   # the same sequence on the CPU (a dry run)

The sequence, each part as a NeMo user runs it:

1. ``scripts/data/demo_corpus.py``: a small synthetic corpus (64 / 16 / 16 utterances) in a temporary folder;
2. a SentencePiece BPE tokenizer of its training texts;
3. ``EncDecCTCModelBPE`` from ``configs/asr/conformer_demo_bpe.yaml`` (``key=value`` overrides of that config are
   accepted) and ``compat.Trainer(accelerator=<device>, devices=1, precision=bf16-mixed)``: ``fit`` for ``--steps``
   steps, validating at the end, then ``trainer.validate``;
4. ``save_to``, ``ASRModel.restore_from(map_location=<device>)``, and ``transcribe`` of the test split with both
   models: the transcripts must be equal;
5. the figures: training throughput (utterances/s over the steps after ``--warmup``), transcription RTFx (audio
   seconds per wall second), and MFU: the FLOPs of one training step (forward and backward, counted by
   ``torch.utils.flop_counter.FlopCounterMode`` on the first training batch) scaled to the padded audio of the timed
   steps, over the card's dense bf16 peak (a table keyed by ``torch.cuda.get_device_name()``; ``--peak-tflops``
   overrides it). The FLOP count covers the matmuls and convolutions, not the STFT or elementwise work, and assumes
   FLOPs grow linearly with the padded samples (attention grows faster), so MFU is an estimate.

Exit status: 0 when everything ran and the transcripts matched, 1 when a check failed, 2 when no GPU is available
(and ``--device cpu`` was not given).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "asr" / "conformer_demo_bpe.yaml"

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, by device-name pattern; the
#: first match wins.
PEAK_BF16_TFLOPS = (
    (r"GH200|H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),  # SXM
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a card from :data:`PEAK_BF16_TFLOPS`, or ``None`` for a card not in the table."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; exits with status 2 where there is none) or cpu (a dry run)")
    parser.add_argument("--precision", default="bf16-mixed", help="compat.Trainer precision (default bf16-mixed)")
    parser.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="steps left out of the throughput (default 5; fewer when --steps is small)")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--num-test", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=128, help="BPE pieces (default 128)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak in TFLOP/s (default: from the table of known cards)")
    parser.add_argument("--work-dir", default=None, help="keep the corpus and the .nemo here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conformer_demo_bpe.yaml")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


class StepTimer:
    """A Lightning-style callback timing the training steps after the warm-up (two device syncs in all)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.utterances = 0
        self.padded_samples = 0
        self.steps = 0
        self.start: float | None = None
        self.end: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, model, batch, batch_idx) -> None:
        if trainer.global_step < self.warmup:
            return
        if self.start is None:
            self._sync()
            self.start = time.perf_counter()
        signal = batch[0]
        self.utterances += signal.shape[0]  # shapes are host values: no sync
        self.padded_samples += signal.shape[0] * signal.shape[1]
        self.steps += 1

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx) -> None:
        if self.start is not None and trainer.global_step >= trainer.max_steps:
            self._sync()
            self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the timed steps did not run (is --steps larger than --warmup?)")
        return self.end - self.start


def build_corpus(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    cmd = [sys.executable, str(ROOT / "scripts" / "data" / "demo_corpus.py"), "--out", str(out),
           "--num-train", str(args.num_train), "--num-val", str(args.num_val), "--num-test", str(args.num_test),
           "--num-workers", str(max(1, min(8, os.cpu_count() or 1)))]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {split: out / f"{split}_manifest.json" for split in ("train", "validation", "test")}


def model_config(args: argparse.Namespace, manifests: dict[str, Path], tokenizer_dir: Path, device: torch.device):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG)
    cfg.model.train_ds.manifest_filepath = str(manifests["train"])
    cfg.model.validation_ds.manifest_filepath = str(manifests["validation"])
    cfg.model.tokenizer.dir = str(tokenizer_dir)
    if device.type == "cuda":  # a GPU waits on the host's audio loading otherwise
        cfg.model.train_ds.num_workers = max(1, min(4, (os.cpu_count() or 2) // 2))
        cfg.model.train_ds.pin_memory = True
    cfg.model.optim.sched.warmup_steps = min(int(cfg.model.optim.sched.warmup_steps), max(1, args.steps // 3))
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(args.overrides)))
    return cfg.model


def read_manifest(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        audio = Path(row["audio_filepath"])
        row["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
    return rows


def timed_transcribe(model, paths: list[str], device: torch.device) -> tuple[list[str], float]:
    model.transcribe(paths[:2], batch_size=16, verbose=False)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    texts = [h.text for h in model.transcribe(paths, batch_size=16, verbose=False)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return texts, time.perf_counter() - start


def step_flops(model, device: torch.device) -> tuple[int, int]:
    """``(FLOPs of one training step, padded samples of its batch)`` on the first training batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from nemofn.core.rng import RngKey
    from nemofn.train.data import to_device

    batch = to_device(next(iter(model.train_dataloader())), device)
    state = model.fn_state
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model.fn_model.network.objective(state.params, state.buffers, batch, train=True,
                                                      rng=RngKey(0))
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return counter.get_total_flops(), batch[0].shape[0] * batch[0].shape[1]


def run(args: argparse.Namespace, work: Path) -> int:
    from compat.collections.asr.models import ASRModel, EncDecCTCModelBPE
    from compat.trainer import Trainer
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_smoke: {name}, torch {torch.__version__}, precision {args.precision}, {args.steps} steps", flush=True)
    t0 = time.perf_counter()
    manifests = build_corpus(work / "corpus", args)
    tokenizer_dir = process_asr_text_tokenizer(data_root=work / "tokenizer", manifest=str(manifests["train"]),
                                               vocab_size=args.vocab_size, spe_type="bpe")
    print(f"corpus and tokenizer: {time.perf_counter() - t0:.1f} s", flush=True)

    warmup = min(args.warmup, args.steps - 1)
    timer = StepTimer(warmup, device)
    trainer = Trainer(accelerator=args.device, devices=1, precision=args.precision, max_steps=args.steps,
                      val_check_interval=args.steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                      log_every_n_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(work), callbacks=[timer])
    model = EncDecCTCModelBPE(cfg=model_config(args, manifests, tokenizer_dir, device), trainer=trainer)
    start = time.perf_counter()
    trainer.fit(model)
    fit_s = time.perf_counter() - start
    failures = []
    if model.device.type != device.type:
        failures.append(f"the trained model is on {model.device}, not {device}")
    fit_val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    values = trainer.validate(model, verbose=False)[0]
    utt_s = timer.utterances / timer.seconds
    print(f"train: {args.steps} steps in {fit_s:.1f} s (start-up and validation included); steps "
          f"{warmup + 1}-{args.steps}: {timer.utterances} utterances in {timer.seconds:.2f} s = {utt_s:.1f} utt/s")
    print(f"validate: during fit {_fmt(fit_val)}; trainer.validate {_fmt(values)}")

    rows = read_manifest(manifests["test"])
    paths = [r["audio_filepath"] for r in rows]
    audio_s = sum(float(r["duration"]) for r in rows)
    texts, infer_s = timed_transcribe(model, paths, device)
    print(f"transcribe: {len(paths)} utterances, {audio_s:.1f} s of audio in {infer_s:.3f} s = RTFx "
          f"{audio_s / infer_s:.0f}")

    nemo_path = work / "smoke.nemo"
    model.save_to(str(nemo_path))
    restored = ASRModel.restore_from(str(nemo_path), map_location=device)
    if restored.device.type != device.type:
        failures.append(f"restore_from(map_location={device}) gave a model on {restored.device}")
    again, _ = timed_transcribe(restored, paths, device)
    same = sum(a == b for a, b in zip(texts, again))
    print(f"save_to / restore_from: {nemo_path.stat().st_size / 1e6:.1f} MB; transcripts equal for {same}/{len(texts)}")
    if same != len(texts):
        failures.append(f"transcripts differ after restore_from for {len(texts) - same} of {len(texts)} files: "
                        f"{next((a, b) for a, b in zip(texts, again) if a != b)}")

    flops, samples = step_flops(model, device)
    achieved = flops / samples * timer.padded_samples / timer.seconds / 1e12
    peak = args.peak_tflops if args.peak_tflops is not None else (peak_tflops(name) if device.type == "cuda" else None)
    line = (f"MFU: one step of the first batch = {flops / 1e9:.1f} GFLOP; {achieved:.3g} TFLOP/s achieved over the "
            "timed steps")
    if peak:
        line += f" / {peak:g} TFLOP/s dense bf16 peak = {100 * achieved / peak:.2f}%"
    else:
        line += f" (no peak known for {name!r}: pass --peak-tflops for the MFU)"
    print(line)
    print(f"total {time.perf_counter() - t0:.1f} s")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _fmt(values: dict[str, float]) -> str:
    shown = {k: v for k, v in values.items() if k in ("val_loss", "val_wer")}
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())) or "(nothing logged)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine, or pass "
              "--device cpu for a dry run on the CPU", file=sys.stderr)
        return 2
    if args.work_dir:
        work = Path(args.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
