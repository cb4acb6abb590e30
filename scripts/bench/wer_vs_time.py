"""Test WER against training time on the demo corpus: train as the demo does, checkpoint every N steps, score each.

    python scripts/bench/wer_vs_time.py --every 600                       # the demo config, as the README's table
    python scripts/bench/wer_vs_time.py --every 1000 --config-name quartznet_demo_char
    python scripts/bench/wer_vs_time.py --every 700 trainer.max_steps=2100    # any Hydra override of the config

Training runs through ``compat.Trainer`` exactly as ``scripts/asr/speech_to_text_ctc_bpe.py`` (or, for a transducer
config, ``speech_to_text_rnnt_bpe.py``) runs it (the corpus and
tokenizer are built, or reused, under ``--work-dir``), with exp_manager's checkpoint callback writing every
``--every`` steps. The time of a checkpoint is the training loop's wall clock when its step ended (recorded by a
callback), so the scoring, done after training, does not count. Prints one line per checkpoint: step, minutes,
test WER.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "data"))
sys.path.insert(0, str(ROOT / "scripts" / "asr"))

from demo import compose  # noqa: E402
from demo_corpus import CorpusSpec, make_demo_corpus  # noqa: E402


class StepClock:
    """Records the wall-clock seconds since training started at the end of every step."""

    def __init__(self) -> None:
        self.start = None
        self.elapsed: dict[int, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.elapsed[trainer.global_step] = time.perf_counter() - self.start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-name", default="conformer_demo_bpe")
    ap.add_argument("--every", type=int, required=True, help="checkpoint (and score) every N steps")
    ap.add_argument("--work-dir", default="wer_vs_time_run")
    ap.add_argument("--num-train", type=int, default=CorpusSpec().num_train)
    ap.add_argument("--num-eval", type=int, default=CorpusSpec().num_test)
    ap.add_argument("--vocab-size", type=int, default=128)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    args = ap.parse_args()
    if args.every <= 0:
        ap.error(f"--every must be a positive number of steps, got {args.every}")
    work = Path(args.work_dir).resolve()
    exp_dir = work / "exp"
    if exp_dir.exists() and any(exp_dir.rglob("*.ckpt")):
        raise SystemExit(f"{exp_dir} already holds checkpoints from an earlier run; pass another --work-dir")
    compose(args.config_name, args.overrides)  # a bad key fails before the corpus is built

    import torch

    from compat import Trainer
    from compat.collections.asr.models import (EncDecCTCModel, EncDecCTCModelBPE, EncDecHybridRNNTCTCBPEModel,
                                               EncDecRNNTBPEModel)
    from compat.utils.exp_manager import exp_manager
    from compat.utils.trainer_utils import resolve_trainer_cfg
    from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer
    from nemofn.train.checkpoint import load_model_state

    manifests = make_demo_corpus(work / "corpus", CorpusSpec(num_train=args.num_train, num_val=args.num_eval,
                                                             num_test=args.num_eval))
    data = [f"model.train_ds.manifest_filepath={manifests['train']}",
            f"model.validation_ds.manifest_filepath={manifests['validation']}"]
    cfg = compose(args.config_name, args.overrides)
    bpe = "tokenizer" in cfg.model
    if bpe and not cfg.model.tokenizer.get("dir"):
        data.append(f"model.tokenizer.dir={process_asr_text_tokenizer(data_root=work / 'tokenizer', manifest=str(manifests['train']), vocab_size=args.vocab_size)}")  # noqa: E501
    cfg = compose(args.config_name, [*data, f"exp_manager.exp_dir={exp_dir}",
                                     f"++exp_manager.checkpoint_callback_params.every_n_train_steps={args.every}",
                                     "++exp_manager.checkpoint_callback_params.save_top_k=-1",
                                     "exp_manager.checkpoint_callback_params.monitor=null",
                                     "++exp_manager.checkpoint_callback_params.filename='{step}'", *args.overrides])
    trainer = Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.exp_manager)
    clock = StepClock()
    trainer.callbacks.append(clock)
    if "joint" in cfg.model:
        model_cls = EncDecHybridRNNTCTCBPEModel if "aux_ctc" in cfg.model else EncDecRNNTBPEModel
    else:
        model_cls = EncDecCTCModelBPE if bpe else EncDecCTCModel
    model = model_cls(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)

    unit, state = model.functional
    test_loader = unit.dataloader(cfg.model.test_ds if cfg.model.test_ds.manifest_filepath else
                                  {**cfg.model.validation_ds, "manifest_filepath": str(manifests["test"])})
    print(f"{cfg.name}: test WER on {len(test_loader.dataset)} utterances from held-out voices")
    checkpoints = [p for p in exp_dir.glob("*/*/checkpoints/step=*.ckpt") if not p.stem.endswith("-last")]
    for path in sorted(checkpoints, key=lambda p: int(p.stem.split("=")[1])):
        step = load_model_state(path, state)
        with torch.inference_mode():
            wer, _, _ = unit.evaluate_wer(state, test_loader)
        print(f"  step {step:6d}  {clock.elapsed.get(step, float('nan')) / 60:5.1f} min  WER {100 * wer:5.1f}%")


if __name__ == "__main__":
    main()
