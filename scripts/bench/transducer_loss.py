"""Forward + backward time of nemofn's RNN-T and TDT losses on the CPU, optionally against NeMo's CPU RNN-T loss.

    python scripts/bench/transducer_loss.py [--configs small,large] [--rounds 3] [--reps 3] [--threads 1]
    python scripts/bench/transducer_loss.py --vs-nemo ~/nemo-venv/bin/python [--nemo-configs small]

Batches (random joint logits, fixed seed, variable lengths whose maxima fill the tensors):
``small`` B=16, T=35, U=21, V=97 (the size of the reference models' training batches) and ``large`` B=16, T=100,
U=40, V=129. TDT batches add 5 duration logits (durations [0, 1, 2, 3, 4], sigma 0.02).

``--vs-nemo PYTHON`` starts ``PYTHON`` (an interpreter with NeMo installed) on this same file as a worker that
times ``nemo.collections.asr.losses.rnnt.RNNTLoss(num_classes=V, reduction='mean_batch', loss_name='default')``
(``RNNTLossNumba``'s CPU path) on the very inputs nemofn gets, saved to a temporary folder. The two systems take
turns, round by round, so background load on a shared machine hits both alike. NeMo's CPU loss is a Python loop
(seconds per batch), so by default it runs only on the ``small`` batch, once per round. Each system's first call is
a warm-up and not timed. The table gives the median and minimum milliseconds per forward + backward call, and
NeMo's median divided by nemofn's. The losses of both are printed too, as a parity check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {"small": dict(B=16, T=35, U=21, V=97), "large": dict(B=16, T=100, U=40, V=129)}
DURATIONS = (0, 1, 2, 3, 4)
SIGMA = 0.02


def make_batch(B: int, T: int, U: int, V: int, *, extra: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random joint logits ``[B, T, U+1, V+1+extra]``, targets and lengths (the longest utterance fills T and U)."""
    g = torch.Generator().manual_seed(seed)
    input_lengths = torch.randint(int(0.7 * T), T + 1, (B,), generator=g)
    target_lengths = torch.randint(int(0.6 * U), U + 1, (B,), generator=g)
    input_lengths[0], target_lengths[0] = T, U
    return {
        "acts": torch.randn(B, T, U + 1, V + 1 + extra, generator=g),
        "targets": torch.randint(0, V, (B, U), generator=g),
        "input_lengths": input_lengths,
        "target_lengths": target_lengths,
    }


def time_calls(step, reps: int) -> tuple[list[float], float]:
    """``reps`` timed calls of ``step() -> loss`` (milliseconds each) and the last loss."""
    times, value = [], float("nan")
    for _ in range(reps):
        t0 = time.perf_counter()
        value = step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, value


def fwd_bwd(loss_fn, batch: dict[str, torch.Tensor]):
    """A callable running ``loss_fn`` forward and backward on a fresh leaf copy of the batch's activations."""
    acts = batch["acts"].clone().requires_grad_(True)

    def step() -> float:
        acts.grad = None
        loss = loss_fn(log_probs=acts, targets=batch["targets"], input_lengths=batch["input_lengths"],
                       target_lengths=batch["target_lengths"])
        loss.backward()
        return float(loss.detach())

    return step


# ----------------------------------------------------------------------------------------- NeMo worker (subprocess)
def nemo_worker(threads: int) -> None:
    """Runs under NeMo's interpreter: reads ``{"path": ..., "reps": n}`` lines from stdin, answers with JSON times."""
    torch.set_num_threads(threads)
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    steps = {}
    print(json.dumps({"ready": True, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        path = request["path"]
        if path not in steps:
            batch = torch.load(path, weights_only=True)
            V = batch["acts"].shape[-1] - 1
            steps[path] = fwd_bwd(RNNTLoss(num_classes=V, reduction="mean_batch", loss_name="default"), batch)
            steps[path]()  # warm-up
        times, value = time_calls(steps[path], request["reps"])
        print(json.dumps({"times": times, "loss": value}), flush=True)


class NemoProcess:
    def __init__(self, python: str, threads: int) -> None:
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--nemo-worker", "--threads",
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # NeMo's import takes a while; wait for it before timing anything

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the NeMo worker exited (code {self.proc.wait()}); run it by hand to see why")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, path: Path, reps: int) -> tuple[list[float], float]:
        self.proc.stdin.write(json.dumps({"path": str(path), "reps": reps}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["times"], answer["loss"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,large", help=f"comma-separated, from {sorted(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="nemofn calls per round and loss")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both systems")
    parser.add_argument("--vs-nemo", metavar="PYTHON", help="an interpreter with NeMo installed")
    parser.add_argument("--nemo-configs", default="small", help="batches NeMo runs on (it takes seconds per call)")
    parser.add_argument("--nemo-reps", type=int, default=1, help="NeMo calls per round")
    parser.add_argument("--nemo-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nemo_worker:
        nemo_worker(args.threads)
        return
    torch.set_num_threads(args.threads)
    from nemofn.asr.rnnt_loss import RNNTLoss
    from nemofn.asr.tdt_loss import TDTLoss

    names = [n for n in args.configs.split(",") if n]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    nemo_names = set(args.nemo_configs.split(",")) & set(names) if args.vs_nemo else set()

    tmp = tempfile.TemporaryDirectory()
    rows = []  # (config, system, steps/path)
    for name in names:
        c = CONFIGS[name]
        rnnt_batch = make_batch(**c)
        tdt_batch = make_batch(**c, extra=len(DURATIONS), seed=1)
        path = Path(tmp.name) / f"{name}.pt"
        torch.save(rnnt_batch, path)
        rows.append((name, "nemofn RNNT", fwd_bwd(RNNTLoss(num_classes=c["V"]), rnnt_batch)))
        rows.append((name, "nemofn TDT", fwd_bwd(TDTLoss(num_classes=c["V"], durations=DURATIONS, sigma=SIGMA),
                                                tdt_batch)))
        if name in nemo_names:
            rows.append((name, "NeMo RNNT (CPU)", path))

    nemo = NemoProcess(args.vs_nemo, args.threads) if nemo_names else None
    times: dict[tuple[str, str], list[float]] = {(n, s): [] for n, s, _ in rows}
    losses: dict[tuple[str, str], float] = {}
    for _, _, step in rows:
        if callable(step):
            step()  # warm-up
    try:
        for _ in range(args.rounds):
            for name, system, step in rows:
                if callable(step):
                    t, value = time_calls(step, args.reps)
                else:
                    t, value = nemo.run(step, args.nemo_reps)
                times[(name, system)] += t
                losses[(name, system)] = value
    finally:
        if nemo is not None:
            nemo.close()
        tmp.cleanup()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.rounds} rounds; "
          f"forward + backward, mean_batch")
    print(f"{'batch':28s} {'system':18s} {'median ms':>10s} {'min ms':>8s} {'calls':>6s} {'loss':>10s} "
          f"{'NeMo / this':>12s}")
    for name, system, _ in rows:
        t = times[(name, system)]
        c = CONFIGS[name]
        label = f"{name} B{c['B']} T{c['T']} U{c['U']} V{c['V']}"
        ratio = ""
        if (name, "NeMo RNNT (CPU)") in times and system == "nemofn RNNT":
            ratio = f"{statistics.median(times[(name, 'NeMo RNNT (CPU)')]) / statistics.median(t):11.0f}x"
        print(f"{label:28s} {system:18s} {statistics.median(t):10.1f} {min(t):8.1f} {len(t):6d} "
              f"{losses[(name, system)]:10.4f} {ratio:>12s}")


if __name__ == "__main__":
    main()
