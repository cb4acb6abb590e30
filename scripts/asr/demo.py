"""The main job: build the eSpeak demo corpus, train a small CTC model on the CPU, transcribe the test split.

    python scripts/asr/demo.py                       # defaults: configs/asr/conformer_demo_bpe.yaml (--config for another)
    python scripts/asr/demo.py trainer.max_steps=300 # any key=value override of the config

Everything lands under ``--work-dir`` (default ``./demo_run``): the corpus, logs, and ``model.nemo``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from omegaconf import OmegaConf

from compat.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from nemofn.asr.data.demo_corpus import CorpusSpec
from nemofn.asr.recipes.ctc_training import fit_config_from_trainer, train_ctc
from nemofn.asr.recipes.demo_experiment import prepare_demo_experiment

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/asr/conformer_demo_bpe.yaml"))
    parser.add_argument("--work-dir", default="demo_run")
    parser.add_argument("--num-train", type=int, default=CorpusSpec().num_train)
    parser.add_argument("--num-eval", type=int, default=CorpusSpec().num_test,
                        help="utterances in each of validation and test")
    parser.add_argument("--vocab-size", type=int, default=128, help="BPE pieces when the config needs a tokenizer")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (OmegaConf dot-list)")
    args = parser.parse_args()

    work = Path(args.work_dir)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    fit_config_from_trainer(cfg.trainer)  # a bad trainer key fails now, not after the corpus is built
    spec = CorpusSpec(num_train=args.num_train, num_val=args.num_eval, num_test=args.num_eval)
    prepare_demo_experiment(cfg, work, spec, vocab_size=args.vocab_size)

    start = time.perf_counter()
    model, result = train_ctc(cfg.model, cfg.trainer, log_dir=str(work / "logs"), run_name=cfg.name,
                              loggers=("csv", "tensorboard"))
    train_s = time.perf_counter() - start
    state = result.state.model
    wer, hyps, refs = model.evaluate_wer(state, model.dataloader(cfg.model.test_ds))
    print(f"\ntrained {result.state.step} steps in {train_s / 60:.1f} min; test WER {100 * wer:.1f}% "
          f"on {len(refs)} utterances from held-out voices")
    for hyp, ref in list(zip(hyps, refs))[:5]:
        print(f"  REF: {ref}\n  HYP: {hyp}")
    nemo_path = work / "model.nemo"
    cls = EncDecCTCModelBPE if "tokenizer" in cfg.model else EncDecCTCModel
    cls.from_functional(model, state).save_to(str(nemo_path))
    print(f"saved {nemo_path} (restore it with compat.collections.asr.models.ASRModel.restore_from)")


if __name__ == "__main__":
    main()
