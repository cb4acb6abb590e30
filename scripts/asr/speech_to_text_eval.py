"""WER / CER of a manifest of predictions: NeMo's ``speech_to_text_eval.py``, ported.

    python scripts/asr/speech_to_text_eval.py dataset_manifest=predictions.json only_score_manifest=true
    python scripts/asr/speech_to_text_eval.py model_path=model.nemo dataset_manifest=test.json \
        output_filename=predictions.json                     # transcribes first (transcribe_speech.py), then scores
    python scripts/asr/speech_to_text_eval.py ... use_cer=true tolerance=0.25   # fails above 25% CER

The manifest needs the reference (``gt_text_attr_name``, default ``text``) and the prediction (``pred_text``) of
each utterance. ``text_processing`` normalises both sides first, as NeMo's does: ``do_lowercase``,
``rm_punctuation`` (the characters in ``punctuation_marks``), ``separate_punctuation``. Prints the corpus WER or CER;
with ``tolerance`` it exits with an error when the rate is above it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from compat.core.config import hydra_runner
from compat.utils import logging
from nemofn.asr.metrics import error_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the script beside this one

import transcribe_speech  # noqa: E402


@dataclass
class TextProcessingConfig:
    punctuation_marks: str = ".,?"
    separate_punctuation: bool = True
    do_lowercase: bool = False
    rm_punctuation: bool = False


@dataclass
class EvaluationConfig(transcribe_speech.TranscriptionConfig):
    dataset_manifest: Optional[str] = None
    output_filename: Optional[str] = "evaluation_transcripts.json"
    use_cer: bool = False
    use_punct_er: bool = False
    tolerance: Optional[float] = None
    only_score_manifest: bool = False
    scores_per_sample: bool = False
    text_processing: TextProcessingConfig = field(default_factory=TextProcessingConfig)


def normalize(text: str, cfg: TextProcessingConfig) -> str:
    """NeMo's text processing for scoring (see the module doc)."""
    marks = re.escape(cfg.punctuation_marks)
    if cfg.separate_punctuation and marks:
        text = re.sub(f"([{marks}])", r" \1 ", text)
    if cfg.rm_punctuation and marks:
        text = re.sub(f"[{marks}]", " ", text)
    if cfg.do_lowercase:
        text = text.lower()
    return " ".join(text.split())


@hydra_runner(config_name="EvaluationConfig", schema=EvaluationConfig)
def main(cfg: EvaluationConfig) -> float:
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    if cfg.dataset_manifest is None:
        raise ValueError("dataset_manifest is required: a manifest with the reference texts (and pred_text with "
                         "only_score_manifest=true)")
    if cfg.use_punct_er:
        raise NotImplementedError("use_punct_er is not implemented in compat")
    manifest = cfg.dataset_manifest
    if not cfg.only_score_manifest:
        transcribe_speech.main(cfg)  # writes cfg.output_filename
        manifest = cfg.output_filename
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"no manifest at {manifest}")
    refs, hyps = [], []
    with open(manifest, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            for key in (cfg.gt_text_attr_name, "pred_text"):
                if key not in item:
                    raise KeyError(f"{manifest}:{line_no}: no {key!r} entry (the manifest needs the reference "
                                   f"{cfg.gt_text_attr_name!r} and the prediction 'pred_text')")
            refs.append(normalize(item[cfg.gt_text_attr_name], cfg.text_processing))
            hyps.append(normalize(item["pred_text"], cfg.text_processing))
            if cfg.scores_per_sample:
                errors, words = error_counts([hyps[-1]], [refs[-1]], use_cer=cfg.use_cer)
                print(f"{line_no}: {100 * errors / max(words, 1):.1f}%  REF: {refs[-1]}  HYP: {hyps[-1]}")
    errors, words = error_counts(hyps, refs, use_cer=cfg.use_cer)
    rate = errors / max(words, 1)
    name = "CER" if cfg.use_cer else "WER"
    print(f"Dataset {name}: {100 * rate:.2f}% ({errors} errors / {words} reference "
          f"{'characters' if cfg.use_cer else 'words'}, {len(refs)} utterances)")
    if cfg.tolerance is not None and rate > cfg.tolerance:
        raise ValueError(f"{name} {rate:.4f} is above the tolerance {cfg.tolerance}")
    return rate


if __name__ == "__main__":
    main()
