"""Test WER against training time on the demo corpus: train with checkpoints every N steps, then score each one.

    python scripts/bench/wer_vs_time.py --every 600                       # the demo config, as the README's table
    python scripts/bench/wer_vs_time.py --every 1000 --config configs/asr/quartznet_demo_char.yaml
    python scripts/bench/wer_vs_time.py --every 700 trainer.max_steps=2100    # any key=value config override

The corpus and tokenizer are built (or reused) under ``--work-dir`` as by ``scripts/asr/demo.py``. The time of a
checkpoint is the training loop's wall clock when it was written (``elapsed_s`` of that step's log row), so the
scoring, done after training, does not count. Prints one line per checkpoint: step, minutes, test WER.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from omegaconf import OmegaConf

from nemofn.asr.data.demo_corpus import CorpusSpec
from nemofn.asr.recipes.ctc_training import fit_config_from_trainer, train_ctc
from nemofn.asr.recipes.demo_experiment import prepare_demo_experiment
from nemofn.train.checkpoint import load_model_state

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/asr/conformer_demo_bpe.yaml"))
    ap.add_argument("--every", type=int, required=True, help="checkpoint (and score) every N steps")
    ap.add_argument("--work-dir", default="wer_vs_time_run")
    ap.add_argument("--num-train", type=int, default=CorpusSpec().num_train)
    ap.add_argument("--num-eval", type=int, default=CorpusSpec().num_test)
    ap.add_argument("--vocab-size", type=int, default=128)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (OmegaConf dot-list)")
    args = ap.parse_args()
    if args.every <= 0:
        ap.error(f"--every must be a positive number of steps, got {args.every}")

    work = Path(args.work_dir)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    # log at every checkpoint step too, so that each checkpoint has its elapsed time
    cfg.trainer.log_every_n_steps = math.gcd(int(cfg.trainer.get("log_every_n_steps", 50) or 50), args.every)
    fit_config_from_trainer(cfg.trainer)
    prepare_demo_experiment(cfg, work, CorpusSpec(num_train=args.num_train, num_val=args.num_eval,
                                                  num_test=args.num_eval), vocab_size=args.vocab_size)
    ckpt_dir = work / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise SystemExit(f"{ckpt_dir} already holds checkpoints from an earlier run; pass another --work-dir")
    model, result = train_ctc(cfg.model, cfg.trainer, log_dir=str(work / "logs"), run_name=cfg.name,
                              loggers=("csv",), checkpoint_dir=str(ckpt_dir), checkpoint_every_n_steps=args.every)
    elapsed = {row["step"]: row["elapsed_s"] for row in result.history if "loss" in row}
    test_loader = model.dataloader(cfg.model.test_ds)
    print(f"{cfg.name}: test WER on {len(test_loader.dataset)} utterances from held-out voices")
    state = model.init_state(0)
    for path in sorted(ckpt_dir.glob("step=*.ckpt")):
        step = load_model_state(path, state)
        wer, _, _ = model.evaluate_wer(state, test_loader)
        minutes = elapsed[step] / 60 if step in elapsed else float("nan")
        print(f"  step {step:6d}  {minutes:5.1f} min  WER {100 * wer:5.1f}%")


if __name__ == "__main__":
    main()
