"""Transcribe audio with a ``.nemo`` model: NeMo's ``transcribe_speech.py``, ported.

    python scripts/asr/transcribe_speech.py model_path=model.nemo audio_dir=wavs/
    python scripts/asr/transcribe_speech.py model_path=model.nemo dataset_manifest=test.json \
        output_filename=predictions.json batch_size=16

The output is NeMo's JSON lines: for a manifest, each of its lines plus ``pred_text`` (``pred_text_<postfix>`` with
``append_pred``); for a folder, ``{"audio_filepath", "pred_text"}`` per file. When the manifest has reference texts
(``gt_text_attr_name``, default ``text``), the WER (or CER with ``use_cer``) is printed. ``cuda``: a GPU index, or a
negative value for the CPU (default: GPU 0 when there is one). ``compute_dtype: bfloat16`` runs the model under
bf16 autocast. CTC, transducer (RNNT / TDT) and hybrid models: ``ctc_decoding`` / ``rnnt_decoding`` change the
decoding as in NeMo, and ``decoder_type=ctc`` decodes a hybrid's CTC head (``rnnt``, the default, its transducer).
The options NeMo has for other model families (multitask decoding, prompts, language ids) are accepted at their
defaults and refused otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from compat.collections.asr.models import ASRModel, EncDecHybridRNNTCTCModel, EncDecRNNTModel
from compat.core.config import hydra_runner
from compat.utils import logging
from nemofn.asr.metrics import error_counts


@dataclass
class TranscriptionConfig:
    """NeMo's ``TranscriptionConfig`` fields (see the module doc for what applies to CTC models)."""

    model_path: Optional[str] = None  # a .nemo file
    pretrained_name: Optional[str] = None  # a name for ASRModel.from_pretrained (local files and caches)
    audio_dir: Optional[str] = None  # a folder of audio files
    dataset_manifest: Optional[str] = None  # a NeMo manifest
    channel_selector: Optional[Any] = None
    audio_key: str = "audio_filepath"
    eval_config_yaml: Optional[str] = None
    presort_manifest: bool = True
    output_filename: Optional[str] = None
    batch_size: int = 32
    num_workers: int = 0
    append_pred: bool = False
    pred_name_postfix: Optional[str] = None
    random_seed: Optional[int] = None
    timestamps: Optional[bool] = None
    return_hypotheses: bool = False
    compute_langs: bool = False
    cuda: Optional[int] = None
    allow_mps: bool = False
    amp: bool = False
    amp_dtype: str = "float16"
    compute_dtype: Optional[str] = None
    matmul_precision: str = "high"
    audio_type: str = "wav"
    overwrite_transcripts: bool = True
    ctc_decoding: Any = field(default_factory=dict)
    rnnt_decoding: Any = field(default_factory=dict)
    multitask_decoding: Any = field(default_factory=dict)
    prompt: Any = field(default_factory=dict)
    decoder_type: Optional[str] = None
    att_context_size: Optional[Any] = None
    model_change: Any = field(default_factory=dict)
    calculate_wer: bool = True
    clean_groundtruth_text: bool = False
    langid: str = "en"
    use_cer: bool = False
    return_transcriptions: bool = False
    gt_text_attr_name: str = "text"
    gt_lang_attr_name: str = "lang"
    extract_nbest: bool = False
    calculate_rtfx: bool = False
    warmup_steps: int = 0
    run_steps: int = 1


def _refuse_unsupported(cfg: Any) -> None:
    if (cfg.model_path is None) == (cfg.pretrained_name is None):
        raise ValueError("give exactly one of model_path (a .nemo file) or pretrained_name")
    for key in ("multitask_decoding", "prompt", "model_change"):
        if cfg[key]:
            raise NotImplementedError(f"{key} is for multitask models, which compat does not have yet")
    for key in ("compute_langs", "extract_nbest", "clean_groundtruth_text", "timestamps", "eval_config_yaml",
                "att_context_size"):
        if cfg[key]:
            raise NotImplementedError(f"{key}={cfg[key]!r} is not implemented in compat's transcribe_speech")
    if cfg.decoder_type not in (None, "ctc", "rnnt"):
        raise ValueError(f"decoder_type={cfg.decoder_type!r}; use ctc, rnnt or leave it null")


def _plain(block: Any) -> Any:
    return OmegaConf.to_container(block) if OmegaConf.is_config(block) else block


def _apply_decoding(model: ASRModel, cfg: Any) -> None:
    """NeMo's choice of decoding: hybrids take ``decoder_type`` (default ``rnnt``) with the matching block,
    transducers ``rnnt_decoding``, CTC models ``ctc_decoding``."""
    if isinstance(model, EncDecHybridRNNTCTCModel):
        decoder_type = cfg.decoder_type or "rnnt"
        block = cfg.ctc_decoding if decoder_type == "ctc" else cfg.rnnt_decoding
        model.change_decoding_strategy(_plain(block) or None, decoder_type=decoder_type, verbose=False)
        return
    transducer = isinstance(model, EncDecRNNTModel)
    if cfg.decoder_type is not None and cfg.decoder_type != ("rnnt" if transducer else "ctc"):
        raise ValueError(f"decoder_type={cfg.decoder_type!r} but {type(model).__name__} has only a "
                         f"{'transducer' if transducer else 'CTC'} decoder (decoder_type applies to hybrid models)")
    block = cfg.rnnt_decoding if transducer else cfg.ctc_decoding
    other = cfg.ctc_decoding if transducer else cfg.rnnt_decoding
    if other:
        raise ValueError(f"{'ctc' if transducer else 'rnnt'}_decoding is set but {type(model).__name__} is a "
                         f"{'transducer' if transducer else 'CTC'} model; use {'rnnt' if transducer else 'ctc'}"
                         "_decoding")
    if block:
        model.change_decoding_strategy(_plain(block), verbose=False)


def _load_model(cfg: Any, device: torch.device) -> ASRModel:
    if cfg.model_path is not None:
        return ASRModel.restore_from(cfg.model_path, map_location=device)
    return ASRModel.from_pretrained(cfg.pretrained_name, map_location=device)


def _device(cfg: Any) -> torch.device:
    if cfg.cuda is not None and cfg.cuda < 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", cfg.cuda or 0)
    if cfg.cuda is not None:
        raise ValueError(f"cuda={cfg.cuda} but no CUDA device is available; use cuda=-1 (CPU)")
    return torch.device("cpu")


def _inputs(cfg: Any) -> tuple[Any, list[dict]]:
    """``(what to transcribe, manifest items)``: the manifest path (its offsets and durations are honoured) or the
    folder's file paths (items ``{audio_key: path}``)."""
    if (cfg.audio_dir is None) == (cfg.dataset_manifest is None):
        raise ValueError("give exactly one of audio_dir (a folder of audio files) or dataset_manifest")
    if cfg.audio_dir is not None:
        paths = sorted(glob.glob(os.path.join(cfg.audio_dir, f"**/*.{cfg.audio_type}"), recursive=True))
        if not paths:
            raise FileNotFoundError(f"no *.{cfg.audio_type} files in audio_dir={cfg.audio_dir}")
        return paths, [{cfg.audio_key: p} for p in paths]
    items = []
    with open(cfg.dataset_manifest, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{cfg.dataset_manifest}:{line_no}: not a JSON line ({err.msg})") from err
    if cfg.audio_key != "audio_filepath":
        paths = [item[cfg.audio_key] for item in items]
        base = os.path.dirname(os.path.abspath(cfg.dataset_manifest))
        return [p if os.path.isabs(p) or os.path.exists(p) else os.path.join(base, p) for p in paths], items
    return cfg.dataset_manifest, items


def _output_path(cfg: Any, model_name: str) -> str:
    if cfg.output_filename:
        return cfg.output_filename
    if cfg.dataset_manifest:
        stem, _ = os.path.splitext(cfg.dataset_manifest)
        return f"{stem}_{model_name}.json"
    return os.path.join(os.path.abspath(cfg.audio_dir).rstrip(os.sep) + f"_{model_name}.json")


@hydra_runner(config_name="TranscriptionConfig", schema=TranscriptionConfig)
def main(cfg: TranscriptionConfig) -> list[str]:
    logging.info(f"Hydra config: {OmegaConf.to_yaml(cfg)}")
    _refuse_unsupported(cfg)
    if cfg.random_seed is not None:
        torch.manual_seed(cfg.random_seed)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    device = _device(cfg)
    audio, items = _inputs(cfg)
    model_name = os.path.splitext(os.path.basename(cfg.model_path or cfg.pretrained_name))[0]
    out_path = _output_path(cfg, model_name)
    if os.path.exists(out_path) and not cfg.overwrite_transcripts:
        logging.info(f"{out_path} exists and overwrite_transcripts is false: nothing to do")
        return []
    model = _load_model(cfg, device).eval()
    _apply_decoding(model, cfg)
    dtype = cfg.compute_dtype or ("float32" if not cfg.amp else cfg.amp_dtype)
    autocast = torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32" else None
    start = time.perf_counter()
    if autocast is not None:
        with autocast:
            hyps = model.transcribe(audio, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                    channel_selector=cfg.channel_selector, verbose=True)
    else:
        hyps = model.transcribe(audio, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                channel_selector=cfg.channel_selector, verbose=True)
    if len(hyps) != len(items):
        raise RuntimeError(f"{len(hyps)} transcripts for {len(items)} inputs")
    elapsed = time.perf_counter() - start
    texts = [h.text for h in hyps]

    key = f"pred_text_{cfg.pred_name_postfix or model_name}" if cfg.append_pred else "pred_text"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for item, text in zip(items, texts):
            f.write(json.dumps({**item, key: text}, ensure_ascii=False) + "\n")
    print(f"wrote {len(texts)} transcripts to {out_path}")
    if cfg.calculate_rtfx:
        seconds = sum(float(item.get("duration", 0.0)) for item in items)
        print(f"RTFx {seconds / elapsed:.1f} ({seconds:.1f} s of audio in {elapsed:.2f} s)")
    references = [item.get(cfg.gt_text_attr_name) for item in items]
    if cfg.calculate_wer and all(isinstance(r, str) for r in references):
        errors, words = error_counts(texts, references, use_cer=cfg.use_cer)
        name = "CER" if cfg.use_cer else "WER"
        print(f"{name} {100 * errors / max(words, 1):.2f}% on {len(texts)} utterances "
              f"({errors} errors / {words} reference {'characters' if cfg.use_cer else 'words'})")
    return texts


if __name__ == "__main__":
    main()
