"""The main job, through NeMo's scripts: build the demo corpus, train with ``speech_to_text_ctc_bpe.py``, transcribe
the test split with ``transcribe_speech.py``, print the test WER.

    python scripts/asr/demo.py                                  # configs/asr/conformer_demo_bpe.yaml
    python scripts/asr/demo.py trainer.max_steps=300            # Hydra overrides of the training config
    python scripts/asr/demo.py --config-name quartznet_demo_char  # a char model (speech_to_text_ctc.py)
    python scripts/asr/demo.py --config-name fastconformer_tdt_demo_bpe  # TDT (speech_to_text_rnnt_bpe.py)

Steps, each a command a NeMo user would run by hand (they are printed as they run):

1. the overrides are checked against the whole config (model, trainer, exp_manager) before anything is built, so a
   misspelt key fails in seconds, naming the key and the closest known one;
2. ``scripts/data/demo_corpus.py``: 6000 / 200 / 200 utterances spoken by eSpeak NG (disjoint voices);
3. ``scripts/tokenizers/process_asr_text_tokenizer.py``: a SentencePiece BPE tokenizer of the training texts;
4. ``scripts/asr/speech_to_text_ctc_bpe.py`` (``speech_to_text_rnnt_bpe.py`` for a transducer config, the hybrid
   script for one with ``aux_ctc``): training, with exp_manager's folder under ``<work-dir>/exp`` and a
   ``.nemo`` at the end;
5. ``scripts/asr/transcribe_speech.py``: the test split, from that ``.nemo``; prints the WER.

Everything lands under ``--work-dir`` (default ``./demo_run``); the trained model is copied to
``<work-dir>/model.nemo``. The run is reproducible: training is seeded with Lightning's ``PL_GLOBAL_SEED``
(``--seed``, default 0), as ``seed_everything`` would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1].parent
sys.path.insert(0, str(ROOT / "scripts" / "data"))

from demo_corpus import CorpusSpec  # noqa: E402


def compose(config_name: str, overrides: list[str]) -> object:
    """The training config as the training script will see it (Hydra's compose API), checked end to end.

    Raises:
        SystemExit: naming a misspelt key of an override and the closest existing one.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from compat.core.config.schemas import validate_experiment_config
    from nemofn.core.schema import closest_key

    placeholders = ["model.train_ds.manifest_filepath=train.json", "model.validation_ds.manifest_filepath=val.json"]
    with initialize_config_dir(config_dir=str(ROOT / "configs" / "asr"), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=placeholders + overrides)
        except ConfigCompositionException as err:
            base = hydra_compose(config_name=config_name)
            for item in overrides:
                key = item.split("=", 1)[0]
                if key[:1] in "+~" or OmegaConf.select(base, key, default="__missing__") != "__missing__":
                    continue
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(base, parent) if parent else base
                near = closest_key(leaf, list(node.keys())) if hasattr(node, "keys") else None
                hint = f"; did you mean {parent + '.' if parent else ''}{near}?" if near else ""
                raise SystemExit(f"unknown key {key} in the override {item!r}{hint} (use +{item} to add a new key)"
                                 ) from err
            raise
    validate_experiment_config(cfg)
    return cfg


def training_script(model_cfg: object) -> str:
    """NeMo's training script for a ``model:`` block: CTC (char / BPE), transducer (RNNT / TDT) or hybrid."""
    bpe = "tokenizer" in model_cfg
    if "joint" in model_cfg:
        if not bpe:
            raise SystemExit("char transducer models have no training script here yet; use a BPE config "
                             "(model.tokenizer)")
        return "speech_to_text_hybrid_rnnt_ctc_bpe.py" if "aux_ctc" in model_cfg else "speech_to_text_rnnt_bpe.py"
    return "speech_to_text_ctc_bpe.py" if bpe else "speech_to_text_ctc.py"


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", default="conformer_demo_bpe", help="a config in configs/asr")
    parser.add_argument("--work-dir", default="demo_run")
    parser.add_argument("--num-train", type=int, default=CorpusSpec().num_train)
    parser.add_argument("--num-eval", type=int, default=CorpusSpec().num_test,
                        help="utterances in each of validation and test")
    parser.add_argument("--vocab-size", type=int, default=128, help="BPE pieces when the config needs a tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (PL_GLOBAL_SEED)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config (key=value, +key=value)")
    args = parser.parse_args()

    cfg = compose(args.config_name, args.overrides)  # fails here, in seconds, on a bad key or value
    bpe = "tokenizer" in cfg.model
    work = Path(args.work_dir).resolve()
    corpus, exp_dir = work / "corpus", work / "exp"
    python = sys.executable
    run([python, str(ROOT / "scripts/data/demo_corpus.py"), "--out", str(corpus), "--num-train", str(args.num_train),
         "--num-val", str(args.num_eval), "--num-test", str(args.num_eval)])
    data = [f"model.train_ds.manifest_filepath={corpus / 'train_manifest.json'}",
            f"model.validation_ds.manifest_filepath={corpus / 'validation_manifest.json'}"]
    if bpe and not cfg.model.tokenizer.get("dir"):
        tokenizer_root = work / "tokenizer"
        run([python, str(ROOT / "scripts/tokenizers/process_asr_text_tokenizer.py"),
             f"--manifest={corpus / 'train_manifest.json'}", f"--data_root={tokenizer_root}",
             f"--vocab_size={args.vocab_size}", "--tokenizer=spe", "--spe_type=bpe"])
        data.append(f"model.tokenizer.dir={tokenizer_root / f'tokenizer_spe_bpe_v{args.vocab_size}'}")

    if exp_dir.exists():
        shutil.rmtree(exp_dir)  # a fresh experiment each time (the corpus and tokenizer are reused)
    script = training_script(cfg.model)
    os.environ["PL_GLOBAL_SEED"] = str(args.seed)  # Lightning's seed_everything, for the training script
    start = time.perf_counter()
    run([python, str(ROOT / "scripts/asr" / script), f"--config-name={args.config_name}", *data,
         f"exp_manager.exp_dir={exp_dir}", *args.overrides])
    train_minutes = (time.perf_counter() - start) / 60
    name = cfg.exp_manager.get("name") or cfg.name
    nemo_files = sorted(exp_dir.glob(f"{name}/*/checkpoints/{name}.nemo"))
    if not nemo_files:
        raise SystemExit(f"training wrote no {name}.nemo under {exp_dir}")
    model_path = work / "model.nemo"
    shutil.copyfile(nemo_files[-1], model_path)

    predictions = work / "test_predictions.json"
    run([python, str(ROOT / "scripts/asr/transcribe_speech.py"), f"model_path={model_path}",
         f"dataset_manifest={corpus / 'test_manifest.json'}", f"output_filename={predictions}", "batch_size=32"])
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    from nemofn.asr.metrics import word_error_rate

    wer = word_error_rate([r["pred_text"] for r in rows], [r["text"] for r in rows])
    print(f"\ntraining took {train_minutes:.1f} min (start-up and validation included); test WER {100 * wer:.1f}% "
          f"on {len(rows)} utterances from held-out voices")
    for row in rows[:5]:
        print(f"  REF: {row['text']}\n  HYP: {row['pred_text']}")
    print(f"saved {model_path} (restore it with compat.collections.asr.models.ASRModel.restore_from)")


if __name__ == "__main__":
    main()
