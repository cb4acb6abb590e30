"""Every performance figure of nemofn, side by side with NeMo 3.0, from one command.

    python scripts/bench/vs_nemo.py                                       # nemofn's figures alone
    python scripts/bench/vs_nemo.py --vs-nemo ~/nemo-venv/bin/python      # the same work with NeMo, and the ratios
    python scripts/bench/vs_nemo.py --vs-nemo ~/nemo-venv/bin/python --only transcribe,cold --rounds 3

``--vs-nemo`` takes the python of a separate venv with NeMo (``python3 -m venv ~/nemo-venv &&
~/nemo-venv/bin/pip install torch==2.13.0 'nemo_toolkit[asr]==3.0.0'``); without it, or when that python cannot import
NeMo, only nemofn's column is filled. Every measurement is a fresh process (``vs_nemo_worker.py``) running the same
lines for both systems (only the import differs: ``compat`` or ``nemo``), with the same ``.nemo``, audio, config,
batch, threads and steps. Each round runs nemofn then NeMo, the next NeMo then nemofn, and so on; the table gives the
median over rounds and the ratio of the medians, because absolute times on a shared machine drift by 10-20%.

Figures (``--only`` picks some):

* ``transcribe``: RTFx (audio seconds per wall second) of ``transcribe()`` over the demo corpus's test split (200
  utterances, 0.8-4.1 s), batch 16 and batch 1, from the same ``.nemo``: a Conformer-CTC, a QuartzNet and a
  FastConformer-TDT; peak RSS; and whether the transcripts are identical.
* ``train``: training throughput (utterances/s and audio s/s over the timed steps, after warm-up) of the Trainer on
  the demo corpus's training split in file order, for the QuartzNet and Conformer demo configs and a NeMo-sized
  FastConformer (NeMo's ``fast-conformer_ctc_bpe.yaml``, d_model 512, with fewer layers to fit); peak RSS.
* ``long``: one file of 1, 5, 20 and 60 minutes through a Conformer and a FastConformer: wall time and peak RSS.
  nemofn runs with ``change_attention_model("rel_pos_local_attn", [128, 128])``; NeMo runs as restored (full
  attention) and with the same change. A run is stopped when its RSS passes ``--rss-limit-gb`` or it takes longer
  than ``--long-timeout``.
* ``cold``: a fresh process that imports, restores a ``.nemo`` and transcribes one file (wall time).
* ``bf16``: nemofn alone, bf16 against fp32 on this CPU: transcription under bf16 autocast (RTFx and the change of
  test WER, Conformer-CTC and FastConformer-TDT) and ``precision=bf16-mixed`` training (Conformer demo).
* ``footprint``: install footprint (``footprint.py``); ``ceiling``: the matmul ceiling and the useful FLOP/s of a
  training step (``ceiling.py``).

The reference ``.nemo`` files come from ``../shared/reference/nemo3`` (made by NeMo 3.0); where that folder is
missing, the models are built from the demo configs with fresh weights and saved by nemofn (NeMo restores them).
The demo corpus and a BPE tokenizer are built under ``--work-dir`` (reused by later runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "nemo3"
WORKER = Path(__file__).resolve().parent / "vs_nemo_worker.py"
PREFIX = "@@bench "
FIGURES = ("transcribe", "train", "long", "cold", "footprint", "ceiling", "bf16")

sys.path.insert(0, str(ROOT / "scripts" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# name, reference .nemo, fallback config, class
TRANSCRIBE_MODELS = (
    ("Conformer-CTC", "conformer_bpe.nemo", "conformer_demo_bpe.yaml", "EncDecCTCModelBPE"),
    ("QuartzNet", "quartznet_char.nemo", "quartznet_demo_char.yaml", "EncDecCTCModel"),
    ("FastConformer-TDT", "fastconformer_tdt_bpe.nemo", "fastconformer_tdt_demo_bpe.yaml", "EncDecRNNTBPEModel"),
)
LONG_MODELS = (
    ("Conformer", "conformer_bpe.nemo", "conformer_demo_bpe.yaml", "EncDecCTCModelBPE"),
    ("FastConformer", "fastconformer_bpe.nemo", "fastconformer_demo_bpe.yaml", "EncDecCTCModelBPE"),
)
# name, config, class, overrides, batch
TRAIN_CONFIGS = (
    ("QuartzNet demo", "quartznet_demo_char.yaml", "EncDecCTCModel", {}, 16),
    ("Conformer demo", "conformer_demo_bpe.yaml", "EncDecCTCModelBPE", {}, 16),
    ("FastConformer d512 x4 (NeMo's fast-conformer_ctc_bpe, 4 of 17 layers)", "fast-conformer_ctc_bpe.yaml",
     "EncDecCTCModelBPE", {"model.encoder.n_layers": 4}, 8),
)
LOCAL_ATTENTION = ["rel_pos_local_attn", [128, 128]]


# ---------------------------------------------------------------------------------------------- running workers
class Measured:
    """One worker run: its answer (or why there is none), wall seconds and the peak RSS seen from outside."""

    def __init__(self, answer: dict | None, wall_s: float, peak_rss_mb: float, error: str | None = None):
        self.answer, self.wall_s, self.peak_rss_mb, self.error = answer, wall_s, peak_rss_mb, error


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_worker(python: str, task: dict, *, timeout: float = 1800.0, rss_limit_mb: float | None = None) -> Measured:
    """Runs one task in a fresh process; stops it past ``timeout`` seconds or ``rss_limit_mb``."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, str(WORKER), json.dumps(task)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, stopped = 0.0, None
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.extend(s), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    while proc.poll() is None:
        peak = max(peak, _rss_mb(proc.pid))
        if rss_limit_mb and peak > rss_limit_mb:
            stopped = f"stopped: RSS passed {rss_limit_mb / 1024:.0f} GB"
        elif time.perf_counter() - start > timeout:
            stopped = f"stopped: over {timeout:.0f} s"
        if stopped:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    for r in readers:
        r.join()
    wall = time.perf_counter() - start
    if stopped:
        return Measured(None, wall, peak, stopped)
    answers = [line[len(PREFIX):] for line in out if line.startswith(PREFIX)]
    if proc.returncode != 0 or not answers:
        return Measured(None, wall, peak, _failure("".join(err)))
    answer = json.loads(answers[-1])
    return Measured(answer, wall, max(peak, answer.get("peak_rss_mb", 0.0)))


def _failure(stderr: str) -> str:
    """A short reason from a failed worker's stderr (an allocation failure becomes "out of memory")."""
    oom = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", stderr)
    if oom:
        return f"out of memory (one allocation of {int(oom.group(1)) / 1e9:.1f} GB)"
    tail = stderr[-1500:].strip().splitlines()
    reason = next((line for line in reversed(tail) if "Error" in line or "error" in line), tail[-1] if tail else "")
    return f"failed: {reason[:200]}"


def nemo_available(python: str | None) -> str | None:
    """``python`` when it imports NeMo's ASR collection; else None (with a note on stderr)."""
    if not python:
        return None
    probe = subprocess.run([python, "-c", "import nemo, nemo.collections.asr; print(nemo.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"--vs-nemo {python}: cannot import nemo.collections.asr; NeMo's column is left empty", file=sys.stderr)
        return None
    print(f"NeMo {probe.stdout.strip().splitlines()[-1]} from {python}", file=sys.stderr)
    return python


def alternate(systems: dict[str, str], rounds: int, make_task: Callable[[str], dict], **kw) -> dict[str, list]:
    """Runs the task ``rounds`` times per system, alternating the order each round."""
    runs: dict[str, list[Measured]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            m = run_worker(systems[name], make_task(name), **kw)
            runs[name].append(m)
            if m.error:
                print(f"  {name}: {m.error}", file=sys.stderr)
    return runs


def median_of(runs: list[Measured], key: str) -> float | None:
    values = [m.answer[key] for m in runs if m.answer is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------------- the inputs
class Inputs:
    """The corpus, tokenizer and ``.nemo`` files shared by every figure (built once under ``work``)."""

    def __init__(self, work: Path, threads: int):
        self.work, self.threads = work, threads
        work.mkdir(parents=True, exist_ok=True)
        from demo_corpus import CorpusSpec, make_demo_corpus

        self.corpus = work / "corpus"
        make_demo_corpus(self.corpus, CorpusSpec(num_train=320, num_val=16, num_test=200))
        self.test = [json.loads(line) for line in (self.corpus / "test_manifest.json").read_text().splitlines()]
        self.test_files = [str(self.corpus / e["audio_filepath"]) for e in self.test]
        self.test_seconds = sum(e["duration"] for e in self.test)
        self.train_manifest = str(self.corpus / "train_manifest.json")
        self.tokenizer_dir = self._tokenizer()

    def _tokenizer(self) -> str:
        folder = self.work / "tokenizer" / "tokenizer_spe_bpe_v128"
        if not (folder / "tokenizer.model").is_file():
            subprocess.run([sys.executable, str(ROOT / "scripts/tokenizers/process_asr_text_tokenizer.py"),
                            f"--manifest={self.train_manifest}", f"--data_root={self.work / 'tokenizer'}",
                            "--vocab_size=128", "--tokenizer=spe", "--spe_type=bpe"], check=True,
                           capture_output=True)
        return str(folder)

    def nemo_file(self, reference: str, config: str, model_class: str) -> str:
        """The reference ``.nemo`` when ``../shared`` has it; else one built from ``config`` and saved by nemofn."""
        if (REFERENCE / reference).is_file():
            return str(REFERENCE / reference)
        path = self.work / "models" / reference
        if not path.is_file():
            from omegaconf import OmegaConf, open_dict

            import compat.collections.asr.models as models

            cfg = OmegaConf.load(ROOT / "configs" / "asr" / config).model
            with open_dict(cfg):
                for key in ("train_ds", "validation_ds", "test_ds"):
                    cfg[key] = None
                if "tokenizer" in cfg:
                    cfg.tokenizer.dir = self.tokenizer_dir
            path.parent.mkdir(parents=True, exist_ok=True)
            getattr(models, model_class)(cfg=cfg).save_to(str(path))
        return str(path)

    def long_file(self, minutes: int) -> str:
        """One WAV of ``minutes`` minutes: the test clips one after another (0.3 s apart), repeated."""
        import numpy as np
        import soundfile as sf

        path = self.work / "long" / f"long_{minutes}min.wav"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            clips = [sf.read(f, dtype="float32")[0] for f in self.test_files]
            gap = np.zeros(int(0.3 * 16000), dtype=np.float32)
            need, parts, have, i = minutes * 60 * 16000, [], 0, 0
            while have < need:
                parts += [clips[i % len(clips)], gap]
                have += len(clips[i % len(clips)]) + len(gap)
                i += 1
            sf.write(path, np.concatenate(parts)[:need], 16000, subtype="PCM_16")
        return str(path)


# ---------------------------------------------------------------------------------------------------- figures
class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, figure: str, ours: float | None, nemo: float | None, fmt: str, *, higher_is_better: bool,
            target: str = "", note: str = "") -> None:
        ratio = ""
        if ours is not None and nemo is not None and nemo > 0 and ours > 0:
            ratio = f"{ours / nemo:.2f}x" + (" faster" if higher_is_better else "")
        show = (lambda v: "—" if v is None else fmt.format(v))
        self.rows.append((figure, show(ours) + note, show(nemo), ratio, target))

    def add_text(self, figure: str, ours: str, nemo: str, ratio: str = "", target: str = "") -> None:
        self.rows.append((figure, ours, nemo, ratio, target))

    def markdown(self) -> str:
        lines = ["| figure | nemofn | NeMo 3.0 | nemofn / NeMo | target |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def figure_transcribe(inputs: Inputs, systems: dict[str, str], rounds: int, table: Table) -> None:
    for name, reference, config, model_class in TRANSCRIBE_MODELS:
        nemo_path = inputs.nemo_file(reference, config, model_class)
        for batch in (16, 1):
            print(f"transcribe {name} batch {batch}", file=sys.stderr)
            runs = alternate(systems, rounds, lambda s: {
                "task": "transcribe", "system": s, "nemo": nemo_path, "files": inputs.test_files,
                "seconds": inputs.test_seconds, "batch": batch, "threads": inputs.threads})
            texts = {s: next((m.answer["texts"] for m in runs[s] if m.answer), None) for s in systems}
            same = ""
            if texts.get("nemo") is not None and texts.get("nemofn") is not None:
                diff = sum(a != b for a, b in zip(texts["nemofn"], texts["nemo"]))
                same = " (transcripts identical)" if diff == 0 else f" ({diff} of {len(texts['nemo'])} transcripts differ)"
            target = ">= 2.5x" if batch == 16 else ">= 3x"
            table.add(f"transcribe RTFx, {name}, batch {batch}{same}", median_of(runs["nemofn"], "rtfx"),
                      median_of(runs.get("nemo", []), "rtfx"), "{:.0f}", higher_is_better=True, target=target)
            if batch == 16:
                table.add(f"peak RSS transcribing, {name}, batch 16 (MB)", _peak(runs["nemofn"]),
                          _peak(runs.get("nemo", [])), "{:.0f}", higher_is_better=False, target="<= 0.5x")


def _peak(runs: list[Measured]) -> float | None:
    values = [m.peak_rss_mb for m in runs if m.answer is not None]
    return statistics.median(values) if values else None


def figure_train(inputs: Inputs, systems: dict[str, str], rounds: int, table: Table, steps: int) -> None:
    for name, config, model_class, overrides, batch in TRAIN_CONFIGS:
        print(f"train {name}", file=sys.stderr)
        runs = alternate(systems, rounds, lambda s: {
            "task": "train", "system": s, "config": str(ROOT / "configs" / "asr" / config),
            "model_class": model_class, "train_manifest": inputs.train_manifest,
            "tokenizer_dir": inputs.tokenizer_dir, "batch": batch, "warmup": 3, "steps": steps,
            "overrides": overrides, "threads": inputs.threads})
        table.add(f"train throughput, {name}, batch {batch} (utt/s)", median_of(runs["nemofn"], "utt_per_s"),
                  median_of(runs.get("nemo", []), "utt_per_s"), "{:.1f}", higher_is_better=True, target=">= 3x")
        table.add(f"peak RSS training, {name} (MB)", _peak(runs["nemofn"]), _peak(runs.get("nemo", [])),
                  "{:.0f}", higher_is_better=False, target="<= 0.5x")


def figure_cold(inputs: Inputs, systems: dict[str, str], rounds: int, table: Table) -> None:
    nemo_path = inputs.nemo_file(*TRANSCRIBE_MODELS[0][1:])
    print("cold start", file=sys.stderr)
    runs = alternate(systems, max(rounds, 3), lambda s: {
        "task": "cold", "system": s, "nemo": nemo_path, "files": inputs.test_files[:1], "threads": inputs.threads})
    walls = {s: statistics.median([m.wall_s for m in r if m.answer]) if any(m.answer for m in r) else None
             for s, r in runs.items()}
    table.add("cold start: new process, import + restore Conformer-CTC + transcribe 1 file (s)", walls["nemofn"],
              walls.get("nemo"), "{:.2f}", higher_is_better=False, target="<= 0.15x")


def figure_long(inputs: Inputs, systems: dict[str, str], table: Table, minutes: list[int], rss_limit_gb: float,
                timeout: float) -> None:
    for name, reference, config, model_class in LONG_MODELS:
        nemo_path = inputs.nemo_file(reference, config, model_class)
        for m in minutes:
            path = inputs.long_file(m)
            print(f"long audio {name} {m} min", file=sys.stderr)
            cells = {}
            variants = [("nemofn", "nemofn", LOCAL_ATTENTION)]
            if "nemo" in systems:
                variants += [("nemo", "nemo full attention", None), ("nemo", "nemo local attention", LOCAL_ATTENTION)]
            for system, label, attention in variants:
                r = run_worker(systems[system], {"task": "transcribe", "system": system, "nemo": nemo_path,
                                                 "files": [path], "seconds": m * 60.0, "batch": 1, "warmup": False,
                                                 "attention": attention, "threads": inputs.threads},
                               timeout=timeout, rss_limit_mb=rss_limit_gb * 1024)
                cells[label] = (f"{r.answer['seconds']:.1f} s, {r.peak_rss_mb / 1024:.2f} GB" if r.answer
                                else f"{r.error} ({r.wall_s:.0f} s, {r.peak_rss_mb / 1024:.1f} GB)")
            nemo_cell = "; ".join(f"{k[5:]}: {v}" for k, v in cells.items() if k.startswith("nemo "))
            table.add_text(f"long audio, {name}, one {m}-min file: wall, peak RSS", cells["nemofn"] +
                           " (local attention [128, 128])", nemo_cell or "—", "",
                           "bounded memory, linear in length")


def figure_footprint(systems: dict[str, str], table: Table) -> None:
    import tempfile

    import footprint

    print("install footprint (a fresh nemofn venv)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="nemofn-footprint-") as tmp:
        ours = footprint.measure_environment(str(footprint.fresh_nemofn_venv(Path(tmp) / "venv")))
    nemo = footprint.measure_environment(systems["nemo"]) if "nemo" in systems else {}
    for label, key, fmt in (("installed distributions (fresh venv; NeMo's as installed)", "distributions", "{:.0f}"),
                            ("install size, MB", "total_mb", "{:.0f}"),
                            ("install size beyond torch and its dependencies, MB", "beyond_torch_mb", "{:.0f}"),
                            ("import time of the ASR package, s (`compat.collections.asr.models` / "
                             "`nemo.collections.asr`)", "import_s", "{:.2f}")):
        table.add(label, ours.get(key), nemo.get(key), fmt, higher_is_better=False)


def figure_ceiling(inputs: Inputs, table: Table, threads: int) -> None:
    import ceiling
    import torch

    print("hardware ceiling", file=sys.stderr)
    torch.set_num_threads(threads)
    ceilings = {name: ceiling.matmul_ceiling(threads, dtype) for name, dtype in ceiling.DTYPES.items()}
    table.add_text("matmul ceiling (torch.mm, best shape), GFLOP/s", f"fp32 {ceilings['fp32']:.0f}, "
                   f"bf16 {ceilings['bf16']:.0f}", "", "", "")
    for config in ("quartznet_demo_char.yaml", "conformer_demo_bpe.yaml"):
        batch = ceiling.manifest_utterances(inputs.train_manifest, 16)
        r = ceiling.measure_config(ROOT / "configs" / "asr" / config, batch, ceilings=ceilings)
        table.add_text(f"train step useful FLOP/s, {Path(config).stem} (16 real clips, eager fp32; FLOPs of the "
                       "unpadded clips, matmul/conv only)",
                       f"{r['useful_gflops']:.1f} GFLOP/s = {r['useful_share_fp32']:.0%} of the fp32 ceiling "
                       f"({r['flops'] / 1e9:.1f} GFLOP in {r['step_s'] * 1e3:.0f} ms)", "", "", ">= 60%")


def figure_bf16(inputs: Inputs, rounds: int, table: Table, steps: int) -> None:
    from nemofn.asr.metrics import word_error_rate

    python = sys.executable
    refs = [e["text"] for e in inputs.test]
    for name, reference, config, model_class in (TRANSCRIBE_MODELS[0], TRANSCRIBE_MODELS[2]):
        nemo_path = inputs.nemo_file(reference, config, model_class)
        print(f"bf16 transcribe {name}", file=sys.stderr)
        runs = alternate({"fp32": python, "bf16": python}, rounds, lambda s: {
            "task": "transcribe", "system": "nemofn", "nemo": nemo_path, "files": inputs.test_files,
            "seconds": inputs.test_seconds, "batch": 16, "threads": inputs.threads,
            "autocast": "bfloat16" if s == "bf16" else None})
        wer = {s: next((100 * word_error_rate(m.answer["texts"], refs) for m in r if m.answer), None)
               for s, r in runs.items()}
        note = "" if None in wer.values() else f" (test WER {wer['bf16']:.2f}% vs {wer['fp32']:.2f}%)"
        table.add(f"nemofn bf16 autocast vs fp32: transcribe RTFx, {name}, batch 16{note}",
                  median_of(runs["bf16"], "rtfx"), median_of(runs["fp32"], "rtfx"), "{:.0f}",
                  higher_is_better=True, target="(NeMo column: nemofn fp32)")
    print("bf16 train", file=sys.stderr)
    name, config, model_class, overrides, batch = TRAIN_CONFIGS[1]
    runs = alternate({"fp32": python, "bf16": python}, rounds, lambda s: {
        "task": "train", "system": "nemofn", "config": str(ROOT / "configs" / "asr" / config),
        "model_class": model_class, "train_manifest": inputs.train_manifest, "tokenizer_dir": inputs.tokenizer_dir,
        "batch": batch, "warmup": 3, "steps": steps, "overrides": overrides, "threads": inputs.threads,
        "precision": "bf16-mixed" if s == "bf16" else 32})
    table.add(f"nemofn bf16-mixed vs fp32: train throughput, {name} (utt/s)", median_of(runs["bf16"], "utt_per_s"),
              median_of(runs["fp32"], "utt_per_s"), "{:.1f}", higher_is_better=True,
              target="(NeMo column: nemofn fp32)")


def machine_line(threads: int) -> str:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    import os

    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores ({threads} torch threads), flags: {' '.join(wanted) or 'none of note'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-nemo", metavar="PYTHON", help="python of a venv with nemo_toolkit[asr]==3.0.0")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument("--rounds", type=int, default=2, help="runs per system of each measurement (alternated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=10, help="timed training steps (after 3 warm-up steps)")
    ap.add_argument("--minutes", default="1,5,20,60", help="long-audio file lengths")
    ap.add_argument("--rss-limit-gb", type=float, default=16.0)
    ap.add_argument("--long-timeout", type=float, default=900.0)
    ap.add_argument("--work-dir", default=str(Path.home() / ".cache" / "nemofn-bench"))
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    bad = sorted(set(only) - set(FIGURES))
    if bad:
        ap.error(f"--only: unknown figure(s) {bad}; choose from {', '.join(FIGURES)}")

    systems = {"nemofn": sys.executable}
    nemo_python = nemo_available(args.vs_nemo)
    if nemo_python:
        systems["nemo"] = nemo_python
    inputs = Inputs(Path(args.work_dir), args.threads)
    table = Table()
    started = time.strftime("%Y-%m-%d %H:%M")
    if "transcribe" in only:
        figure_transcribe(inputs, systems, args.rounds, table)
    if "train" in only:
        figure_train(inputs, systems, args.rounds, table, args.train_steps)
    if "cold" in only:
        figure_cold(inputs, systems, args.rounds, table)
    if "long" in only:
        figure_long(inputs, systems, table, [int(m) for m in args.minutes.split(",")], args.rss_limit_gb,
                    args.long_timeout)
    if "footprint" in only:
        figure_footprint(systems, table)
    if "ceiling" in only:
        figure_ceiling(inputs, table, args.threads)
    if "bf16" in only:
        figure_bf16(inputs, args.rounds, table, args.train_steps)
    text = (f"{started}, {machine_line(args.threads)}, torch threads {args.threads}, {args.rounds} rounds\n"
            f"command: python scripts/bench/vs_nemo.py {' '.join(sys.argv[1:])}\n\n{table.markdown()}\n")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
