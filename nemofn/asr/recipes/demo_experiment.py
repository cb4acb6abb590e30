"""The demo experiment's data: build (or reuse) the eSpeak demo corpus and fill a NeMo-layout config with it.

Shared by ``scripts/asr/demo.py`` and ``scripts/bench/wer_vs_time.py``::

    cfg = OmegaConf.load("configs/asr/conformer_demo_bpe.yaml")
    manifests = prepare_demo_experiment(cfg, "demo_run", CorpusSpec())   # fills the *_ds manifests, the tokenizer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemofn.asr.data.demo_corpus import CorpusSpec, make_demo_corpus
from nemofn.asr.tokenizers.builder import process_asr_text_tokenizer

__all__ = ["prepare_demo_experiment"]


def prepare_demo_experiment(cfg: Any, work_dir: str | Path, spec: CorpusSpec, *,
                            vocab_size: int = 128) -> dict[str, Path]:
    """Makes ``work_dir/corpus`` (reused when its parameters match ``spec``), writes its three manifests into
    ``cfg.model.{train,validation,test}_ds.manifest_filepath`` and, when ``cfg.model.tokenizer.dir`` is empty,
    trains a SentencePiece BPE tokenizer of ``vocab_size`` pieces on the training manifest into
    ``work_dir/tokenizer``. ``cfg`` (an OmegaConf experiment config with ``model:``) is changed in place.

    Returns the manifests, ``{"train": path, "validation": path, "test": path}``.
    """
    work = Path(work_dir)
    manifests = make_demo_corpus(work / "corpus", spec)
    cfg.model.train_ds.manifest_filepath = str(manifests["train"])
    cfg.model.validation_ds.manifest_filepath = str(manifests["validation"])
    cfg.model.test_ds.manifest_filepath = str(manifests["test"])
    if "tokenizer" in cfg.model and not cfg.model.tokenizer.get("dir"):
        cfg.model.tokenizer.dir = str(process_asr_text_tokenizer(
            data_root=work / "tokenizer", manifest=str(manifests["train"]), vocab_size=vocab_size))
    return manifests
