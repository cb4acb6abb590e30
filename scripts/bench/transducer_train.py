"""Transducer training throughput on this CPU: one optimizer step of an RNNT model, nemofn against real NeMo 3.0.

    python scripts/bench/transducer_train.py [--rounds 3] [--steps 3] [--warmup 1] [--threads 2]
    python scripts/bench/transducer_train.py --vs-nemo ~/nemo-venv/bin/python [--nemo PATH] [--tdt-nemo PATH]

One step is what a trainer does per batch: forward (preprocessor, SpecAugment, encoder, prediction net, joint),
the transducer loss, backward, gradient clipping to global norm 1.0 and an AdamW update (lr 0.002, betas
(0.9, 0.98), weight decay 0.001: the reference models' optim block; constant lr). Models are restored from a
``.nemo`` archive and run in training mode, with dropout and SpecAugment as configured.

The batch is real speech: the 8 clips of ``<nemo dir>/audio``, twice (16 utterances), as stored in the archive's
``<name>.ref.pt`` (``signal``, ``signal_len``) with the token ids NeMo's own data loader made for them (``targets``,
``targets_len``). It is saved to a temporary file that both systems load, so they train on the very same batch.

Rows:

* ``NeMo training_step``: ``nemo.collections.asr.models.ASRModel.restore_from(path)``, ``model.train()``, then NeMo's
  own ``training_step(batch, i)`` (its default RNNT loss, ``warprnnt_numba``, whose CPU path is a Python loop),
  ``loss.backward()``, ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW.step()``. It runs under the
  ``--vs-nemo`` interpreter in a persistent subprocess.
* ``compat training_step``: the same loop, line for line (the same function), over
  ``compat.collections.asr.models.ASRModel.restore_from(path)``: only the model and the loss differ.
* ``functional train_step``: ``fn, state = model.functional`` and ``nemofn.train.step.train_step`` with
  ``StepConfig(fn.network.objective, nemofn.optim.adamw(...), lr, clip_grad_norm=1.0)``.
* The same two nemofn rows for a TDT model (``--tdt-nemo``). NeMo 3.0 has no CPU TDT loss; the NeMo worker calls
  the TDT model's ``training_step`` once and the exception it raises is printed (not assumed).

Outside a Lightning loop a ``training_step`` reads a few trainer attributes; both systems get the same stand-in
(``global_step`` 0, ``log_every_n_steps`` huge so neither decodes a training WER, Lightning's ``self.log`` off).

Each round, each system runs ``--warmup`` untimed steps and then ``--steps`` timed ones; the systems take turns
round by round, so background load on a shared machine hits them alike. The table gives the median and minimum
seconds per step, utterances per second at the median, NeMo's median divided by this row's (and NeMo's minimum by
this row's minimum, the less load-sensitive figure on a busy machine), and two losses: the eval-mode loss of the
batch before any step (a parity check: it is the same model and batch, so it should agree across systems and with
the reference file's ``loss``) and the training loss of the last timed step. A TDT loss
with ``omega > 0`` (the reference TDT model: 0.1) is stochastic: each call, per fused sub-batch, takes the plain
RNNT branch with probability omega, as NeMo's does; the eval losses draw after ``torch.manual_seed(0)``, the same
draw for both nemofn rows, so the TDT eval loss need not equal the reference file's ``loss``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REFERENCE_DIR = Path("/work/shared/reference/nemo3")
LR, BETAS, WEIGHT_DECAY, CLIP = 0.002, (0.9, 0.98), 1e-3, 1.0
BATCH_KEYS = ("signal", "signal_len", "targets", "targets_len")
PREFIX = "@@transducer_train "  # marks the worker's answers among NeMo's log lines


# ------------------------------------------------------------------------ shared by both interpreters (torch only)
def make_batch(ref_path: Path, copies: int) -> dict[str, torch.Tensor]:
    """``copies`` copies of a reference file's padded batch: signal ``[B, S]``, signal_len, targets ``[B, U]``,
    targets_len (``B = copies * 8``)."""
    ref = torch.load(ref_path, weights_only=True)
    missing = [k for k in BATCH_KEYS if k not in ref]
    if missing:
        raise KeyError(f"{ref_path} has no {missing}; pass --ref a transducer <name>.ref.pt (see the README beside it)")
    return {k: torch.cat([ref[k]] * copies).contiguous() for k in BATCH_KEYS}


def load_batch(path: str) -> tuple[torch.Tensor, ...]:
    batch = torch.load(path, weights_only=True)
    return tuple(batch[k] for k in BATCH_KEYS)


class LoopTrainer:
    """What a ``training_step`` reads from its trainer when it runs outside a Lightning loop (both systems)."""

    global_step = 0
    log_every_n_steps = 10**9  # no training-batch WER (NeMo decodes it every log_every_n_steps steps)
    barebones = True  # Lightning's LightningModule.log returns at once
    num_devices = 1
    num_nodes = 1


def prepare_nemo_style(model, batch: tuple[torch.Tensor, ...]):
    """Puts a NeMo-API model (NeMo's or compat's) in training mode with a torch AdamW, and returns
    ``(step() -> loss, eval_loss)``: ``step`` is one full optimizer step through ``model.training_step``."""
    model._trainer = LoopTrainer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    model._optimizer = optimizer  # training_step logs its lr
    model.eval()
    torch.manual_seed(0)  # a TDT loss with omega > 0 draws its branch (per fused sub-batch) even in eval mode
    with torch.no_grad():
        eval_loss = float(model.training_step(batch, 0)["loss"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    counter = [0]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step(batch, counter[0])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        counter[0] += 1
        return float(loss.detach())

    return step, eval_loss


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], float]:
    """``warmup`` untimed then ``steps`` timed calls of ``step() -> loss``: (seconds each, the last loss)."""
    value = float("nan")
    for _ in range(warmup):
        value = step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - t0)
    return times, value


# ----------------------------------------------------------------------------------------- NeMo worker (subprocess)
def nemo_worker(threads: int) -> None:
    """Runs under NeMo's interpreter; answers JSON requests read from stdin, one per line:
    ``setup`` (restore, eval loss), ``train`` (timed steps), ``tdt`` (try one TDT training_step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    from nemo.collections.asr.models import ASRModel

    def answer(obj: dict) -> None:
        print(PREFIX + json.dumps(obj), flush=True)

    answer({"ready": True, "torch": torch.__version__})
    step = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "setup":
            model = ASRModel.restore_from(request["nemo"], map_location="cpu")
            step, eval_loss = prepare_nemo_style(model, load_batch(request["batch"]))
            loss_cfg = model.cfg.get("loss") or {}
            answer({"class": type(model).__name__, "eval_loss": eval_loss,
                    "loss_name": str(loss_cfg.get("loss_name", "default")), "loss_module": type(model.loss).__name__,
                    "loss_kernel": type(getattr(model.loss, "_loss", None)).__name__})
        elif op == "train":
            times, value = time_steps(step, request["warmup"], request["steps"])
            answer({"times": times, "loss": value})
        elif op == "tdt":
            tdt = ASRModel.restore_from(request["nemo"], map_location="cpu")
            tdt._trainer = LoopTrainer()
            tdt._optimizer = torch.optim.AdamW(tdt.parameters(), lr=LR)
            tdt.train()
            try:
                loss = tdt.training_step(load_batch(request["batch"]), 0)["loss"]
                loss.backward()
                answer({"error": None, "loss": float(loss.detach())})
            except Exception as err:  # noqa: BLE001 - reporting whatever NeMo raises is the point
                answer({"error": f"{type(err).__name__}: {err}".strip()})
            del tdt
        else:
            raise ValueError(f"unknown request {op!r}")


class NemoProcess:
    """The NeMo worker: this file under ``python`` (an interpreter with NeMo installed)."""

    def __init__(self, python: str, threads: int) -> None:
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--nemo-worker", "--threads",
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()  # NeMo's import takes a while; wait for it before timing anything

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the NeMo worker exited (code {self.proc.wait()}); its stderr above says why")
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------------------------------- nemofn
def functional_step(model, batch: tuple[torch.Tensor, ...]):
    """``(step() -> loss, eval_loss)`` through ``nemofn.train.step.train_step`` on ``model.functional``."""
    from nemofn.core.state import TrainState
    from nemofn.optim import adamw
    from nemofn.train.step import StepConfig, train_step

    fn, state = model.functional
    network = fn.network
    torch.manual_seed(0)  # the same draw as prepare_nemo_style's (TDT omega)
    with torch.no_grad():
        eval_loss = float(network.objective(state.params, state.buffers, batch, train=False)[0])
    optimizer = adamw(betas=BETAS, weight_decay=WEIGHT_DECAY)
    cfg = StepConfig(network.objective, optimizer, LR, clip_grad_norm=CLIP)
    holder = [TrainState.create(state, optimizer, rng=0)]

    def step() -> float:
        holder[0], metrics = train_step(holder[0], batch, cfg)
        return float(metrics["loss"])

    return step, eval_loss


def nemofn_rows(label: str, nemo_path: Path, batch_path: Path) -> list[tuple[str, str, object, float]]:
    """The compat and functional rows of one archive: ``(model, system, step, eval_loss)``, each over its own
    restored copy (so the two never share parameters or optimizer state)."""
    from compat.collections.asr.models import ASRModel

    batch = load_batch(str(batch_path))
    rows = []
    compat_step, compat_eval = prepare_nemo_style(ASRModel.restore_from(str(nemo_path)), batch)
    rows.append((label, "nemofn compat training_step", compat_step, compat_eval))
    model = ASRModel.restore_from(str(nemo_path))
    fn_step, fn_eval = functional_step(model, batch)
    rows.append((label, "nemofn functional train_step", fn_step, fn_eval))
    return rows


def _ref_of(nemo_path: Path) -> Path:
    return nemo_path.with_name(nemo_path.name.removesuffix(".nemo") + ".ref.pt")


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nemo", type=Path, default=REFERENCE_DIR / "fastconformer_rnnt_bpe.nemo",
                        help="the RNNT archive (both systems restore it)")
    parser.add_argument("--ref", type=Path, help="its batch (default: <nemo without .nemo>.ref.pt)")
    parser.add_argument("--tdt-nemo", type=Path, default=REFERENCE_DIR / "fastconformer_tdt_bpe.nemo",
                        help="a TDT archive for the nemofn TDT rows and NeMo's CPU TDT check; '' to skip")
    parser.add_argument("--tdt-ref", type=Path, help="its batch (default: <tdt-nemo without .nemo>.ref.pt)")
    parser.add_argument("--copies", type=int, default=2, help="copies of the 8-clip batch (2: batch 16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per system before each round's")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both systems")
    parser.add_argument("--vs-nemo", metavar="PYTHON", help="an interpreter with NeMo installed")
    parser.add_argument("--nemo-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nemo_worker:
        nemo_worker(args.threads)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tdt_path = args.tdt_nemo if args.tdt_nemo and str(args.tdt_nemo) else None

    tmp = tempfile.TemporaryDirectory()
    rnnt_batch = make_batch(args.ref or _ref_of(args.nemo), args.copies)
    rnnt_file = Path(tmp.name) / "rnnt_batch.pt"
    torch.save(rnnt_batch, rnnt_file)
    B, U = rnnt_batch["targets"].shape
    seconds = rnnt_batch["signal_len"].float() / 16000
    rnnt_label = f"RNNT {args.nemo.stem}"
    rows = nemofn_rows(rnnt_label, args.nemo, rnnt_file)
    tdt_file = None
    if tdt_path is not None:
        tdt_file = Path(tmp.name) / "tdt_batch.pt"
        torch.save(make_batch(args.tdt_ref or _ref_of(tdt_path), args.copies), tdt_file)
        rows += nemofn_rows(f"TDT {tdt_path.stem}", tdt_path, tdt_file)

    nemo = NemoProcess(args.vs_nemo, args.threads) if args.vs_nemo else None
    nemo_info: dict = {}
    tdt_check = None
    times: dict[tuple[str, str], list[float]] = {(m, s): [] for m, s, _, _ in rows}
    last: dict[tuple[str, str], float] = {}
    evals = {(m, s): e for m, s, _, e in rows}
    try:
        if nemo is not None:
            nemo_info = nemo.ask(op="setup", nemo=str(args.nemo), batch=str(rnnt_file))
            key = (rnnt_label, "NeMo training_step")
            rows.insert(0, (rnnt_label, "NeMo training_step", None, nemo_info["eval_loss"]))
            times[key], evals[key] = [], nemo_info["eval_loss"]
        for _ in range(args.rounds):
            for label, system, step, _ in rows:
                if step is None:
                    answer = nemo.ask(op="train", warmup=args.warmup, steps=args.steps)
                    t, value = answer["times"], answer["loss"]
                else:
                    t, value = time_steps(step, args.warmup, args.steps)
                times[(label, system)] += t
                last[(label, system)] = value
        if nemo is not None and tdt_path is not None:
            tdt_check = nemo.ask(op="tdt", nemo=str(tdt_path), batch=str(tdt_file))
    finally:
        if nemo is not None:
            nemo.close()
        tmp.cleanup()

    print(f"torch {torch.__version__}, {args.threads} thread(s); batch {B} utterances ({args.copies} x the 8 clips, "
          f"{seconds.min():.2f}-{seconds.max():.2f} s, {seconds.sum():.1f} s of audio, RNNT U max {U}); "
          f"{args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed) steps per system")
    print("step = training forward + loss + backward + clip 1.0 + AdamW (lr 0.002, betas 0.9/0.98, wd 0.001)")
    if nemo_info:
        print(f"NeMo {nemo_info['class']} (torch {nemo.info['torch']}): loss_name {nemo_info['loss_name']!r} -> "
              f"{nemo_info['loss_module']} / {nemo_info['loss_kernel']}")
    header = (f"{'model':34s} {'system':30s} {'median s':>9s} {'min s':>7s} {'steps':>6s} {'utt/s':>7s} "
              f"{'NeMo/this med':>13s} {'min':>6s} {'eval loss':>10s} {'last loss':>10s}")
    print(header)
    nemo_key = (rnnt_label, "NeMo training_step")
    nemo_t = times.get(nemo_key)
    for label, system, _, _ in rows:
        t = times[(label, system)]
        med = statistics.median(t)
        ratio = ratio_min = ""
        if nemo_t and label == rnnt_label:
            ratio, ratio_min = f"{statistics.median(nemo_t) / med:.2f}x", f"{min(nemo_t) / min(t):.2f}x"
        print(f"{label:34s} {system:30s} {med:9.3f} {min(t):7.3f} {len(t):6d} {B / med:7.2f} {ratio:>13s} "
              f"{ratio_min:>6s} {evals[(label, system)]:10.4f} {last[(label, system)]:10.4f}")
    if tdt_path is not None:
        if tdt_check is None:
            print("NeMo TDT on the CPU: not checked (no --vs-nemo)")
        elif tdt_check["error"]:
            print(f"NeMo TDT {tdt_path.stem}: cannot train on the CPU; its training_step raised {tdt_check['error']}")
        else:
            print(f"NeMo TDT {tdt_path.stem}: training_step + backward ran on the CPU (loss {tdt_check['loss']:.4f})")


if __name__ == "__main__":
    main()
