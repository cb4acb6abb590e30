"""Writes ``tests/data/nemo3_timestamps.json``: NeMo 3.0's ``transcribe(..., timestamps=True)`` output, and inputs.

Run it with real NeMo (it is a checking tool, never a dependency of the project)::

    ~/nemo-venv/bin/python scripts/dev/make_timestamp_reference.py [--nemo3-dir DIR] [--out PATH]

Two parts go into the JSON:

``models``
    Each reference ``.nemo`` of ``../shared/reference/nemo3`` (4 CTC models, the RNNT and TDT transducers, the
    hybrid through its transducer and, after ``change_decoding_strategy(decoder_type='ctc')``, its CTC head) is
    restored and ``transcribe(sorted audio/*.wav, batch_size=4, timestamps=True)`` is called. Per file it keeps
    the text, the ``Hypothesis.timestamp`` dict, and the inputs that determine it: the per-frame arg-max labels
    ``[T]`` (CTC) or the token ids, token frames and TDT token durations (transducers). Per model it keeps the
    vocabulary, blank id, punctuation set, tokenizer kind, ``window_stride`` and the encoder's subsampling factor.

``synthetic``
    Hand-made hypotheses fed through NeMo's own decoding classes (``CTCDecoding``, ``CTCBPEDecoding``,
    ``RNNTDecoding``, ``RNNTBPEDecoding``) and ``process_timestamp_outputs``: punctuation, segment delimiters,
    repeated labels, words over many pieces, empty hypotheses, TDT durations of 0, a segment gap threshold. The
    reference vocabularies have no punctuation, so these cases use a char vocabulary with ``' . ? ! ,`` and a toy
    SentencePiece-like piece list (see :func:`toy_tokens_to_text`, which the tests repeat).

Numbers: offsets and seconds are stored as JSON numbers (exact: floats round-trip through ``repr``); the Python
types NeMo used (``int`` or numpy ``int64`` offsets, ``float`` or ``float64`` seconds, ``str`` or ``list`` chars)
are recorded under ``types``.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
CTC_MODELS = ("quartznet_char", "citrinet_bpe", "conformer_bpe", "fastconformer_bpe")
TRANSDUCER_MODELS = ("fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe")

CHAR_VOCAB = [" ", *"abcdefghijklmnopqrstuvwxyz", "'", ".", "?", "!", ","]
TOY_PIECES = ["<unk>", "▁the", "▁c", "at", "▁sat", ".", "?", "!", ",", "▁", "s", "▁a", "'", "▁dog", "t", "▁on",
              "▁m", "a", "ve", "r", "y"]


def toy_tokens_to_text(pieces: list[str]) -> str:
    """SentencePiece-like detokenisation of the toy pieces: join, ``▁`` -> space, drop one leading space."""
    text = "".join(pieces).replace("▁", " ")
    return text[1:] if text.startswith(" ") else text


class ToyTokenizer:
    """The slice of NeMo's ``TokenizerSpec`` that the decoding classes use, over :data:`TOY_PIECES`."""

    def __init__(self, pieces: list[str]):
        self.vocab = list(pieces)
        self.tokenizer = SimpleNamespace(vocab_size=len(pieces))

    def ids_to_tokens(self, ids):
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return [self.vocab[i] for i in ids]

    def tokens_to_text(self, tokens):
        return toy_tokens_to_text(list(tokens))


# ----------------------------------------------------------------------------------------------- serialisation


def _type_name(value) -> str:
    if isinstance(value, list):
        inner = sorted({_type_name(v) for v in value})
        return f"list[{'|'.join(inner)}]" if inner else "list"
    return type(value).__name__


def _plain(value):
    """JSON-ready copy: numpy scalars -> Python numbers, tensors -> lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _types(timestamps: list[dict]) -> dict:
    """For each level (``char``, ``word``, ``segment``) and field, the set of Python type names seen; plus the
    types of the ``timestep`` entries and the key order of the dict and of its entries."""
    out: dict = {"keys": None, "timestep": set()}
    for ts in timestamps:
        keys = list(ts)
        if out["keys"] is None:
            out["keys"] = keys
        elif out["keys"] != keys:
            raise AssertionError(f"timestamp dicts differ in keys: {out['keys']} vs {keys}")
        out["timestep"].update(_type_name(t) for t in ts["timestep"])
        for level in ("char", "word", "segment"):
            for entry in ts.get(level, []):
                slot = out.setdefault(level, {"keys": list(entry), "fields": {}})
                if slot["keys"] != list(entry):
                    raise AssertionError(f"{level} entries differ in keys: {slot['keys']} vs {list(entry)}")
                for k, v in entry.items():
                    slot["fields"].setdefault(k, set()).add(_type_name(v))
    out["timestep"] = sorted(out["timestep"])
    for level in ("char", "word", "segment"):
        if level in out:
            out[level]["fields"] = {k: sorted(v) for k, v in out[level]["fields"].items()}
    return out


# ------------------------------------------------------------------------------------------------ real models


def _vocab_info(model, decoding) -> dict:
    if hasattr(model, "tokenizer") and model.tokenizer is not None:
        vocab = list(model.tokenizer.vocab)
    else:
        vocab = list(model.decoder.vocabulary if hasattr(model.decoder, "vocabulary") else model.joint.vocabulary)
    return {
        "vocabulary": vocab,
        "tokenizer_type": decoding.tokenizer_type,
        "blank_id": int(decoding.blank_id),
        "supported_punctuation": sorted(decoding.supported_punctuation or []),
        "word_separator": decoding.word_seperator,
        "segment_separators": list(decoding.segment_seperators),
        "segment_gap_threshold": decoding.segment_gap_threshold,
    }


def _ctc_record(name: str, model, decoding, files: list[str], root: Path) -> dict:
    hyps = model.transcribe(files, batch_size=4, timestamps=True, verbose=False)
    blank = int(decoding.blank_id)
    per_file = []
    for path, hyp in zip(files, hyps):
        log_probs = hyp.y_sequence  # [T, V+1]: transcribe(timestamps=True) forces return_hypotheses
        labels = log_probs.max(dim=-1)[1].tolist()  # the greedy_batch decoder's arg-max
        nonblank = [t for t, k in enumerate(labels) if k != blank]
        if nonblank != list(hyp.timestamp["timestep"]):
            raise AssertionError(f"{name} {path}: arg-max labels do not give NeMo's timestep list")
        per_file.append({"file": os.path.relpath(path, root), "text": hyp.text, "frame_labels": labels,
                         "timestamp": _plain(hyp.timestamp)})
    return {"kind": "ctc", "files": per_file, "types": _types([h.timestamp for h in hyps])}


def _transducer_record(name: str, model, files: list[str], root: Path) -> dict:
    hyps = model.transcribe(files, batch_size=4, timestamps=True, verbose=False)
    decoding = model.decoding
    is_tdt = bool(decoding._is_tdt)
    per_file = []
    for path, hyp in zip(files, hyps):
        record = {"file": os.path.relpath(path, root), "text": hyp.text, "y_sequence": _plain(hyp.y_sequence),
                  "frames": list(hyp.timestamp["timestep"]), "timestamp": _plain(hyp.timestamp)}
        if is_tdt:
            record["durations"] = _plain(hyp.token_duration)
        per_file.append(record)
    return {"kind": "tdt" if is_tdt else "rnnt", "durations": list(decoding.durations or []), "files": per_file,
            "types": _types([h.timestamp for h in hyps])}


def real_models(nemo3: Path) -> dict:
    from nemo.collections.asr.models import ASRModel

    files = sorted(glob.glob(str(nemo3 / "audio" / "*.wav")))
    if len(files) != 8:
        raise SystemExit(f"expected 8 clips in {nemo3 / 'audio'}, found {len(files)}")
    out = {}
    for name in CTC_MODELS + TRANSDUCER_MODELS:
        model = ASRModel.restore_from(str(nemo3 / f"{name}.nemo"), map_location="cpu")
        model.eval()
        common = {"window_stride": float(model.cfg.preprocessor.window_stride),
                  "subsampling_factor": int(model.encoder.subsampling_factor)}
        if name in CTC_MODELS:
            out[name] = {**common, **_vocab_info(model, model.decoding),
                         **_ctc_record(name, model, model.decoding, files, nemo3)}
        else:
            out[name] = {**common, **_vocab_info(model, model.decoding), **_transducer_record(name, model, files,
                                                                                                nemo3)}
            if name == "fastconformer_hybrid_bpe":
                model.change_decoding_strategy(decoder_type="ctc", verbose=False)
                out[f"{name}:ctc"] = {**common, **_vocab_info(model, model.ctc_decoding),
                                      **_ctc_record(name, model, model.ctc_decoding, files, nemo3)}
        print(f"{name}: {[f['text'] for f in out[name]['files']]}", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------- synthetic cases

# CTC frame strings over CHAR_VOCAB ("_" is the blank); one character per frame.
CTC_CHAR_CASES = [
    "__hh_e_ll_lo__ __wo_rld..__",      # repeats folded, a doubled letter split by a blank, trailing "."
    "a_a aa",                              # the same label twice around a blank, then a run
    "_____",                               # all blank: an empty hypothesis
    "x",                                   # one frame
    "hi. __how are you?  i am!fine,ok",   # several segments, double space, punctuation glued to a word
    " . hi",                               # a leading space and a lone "." at the start
    "it's_ _fine .",                       # apostrophe inside a word, space before "."
    "__a____b____c",                       # widely spaced letters (gap threshold case)
]
# Frame sequences over TOY_PIECES ids (-1 is the blank).
CTC_BPE_CASES = [
    [-1, 1, 1, -1, 2, 3, 3, -1, 4, 5, 5, -1],                   # the cat sat.
    [1, -1, 2, 3, 5, 4, 6, 11, 13, 7, 1, -1, -1],               # segments on . ? !
    [16, 17, 18, 19, -1, 19, 20, 10, 14],                       # one word over many pieces, a repeat split by blank
    [-1, -1, -1],                                               # empty
    [5, 1, 9, 8, 2, 3],                                         # "." first, a lone "▁" before ","
    [13, 12, 10, -1, 15, 1, 16, 17, 14, 5],                     # dog's on the mat.
]
# Transducer cases over TOY_PIECES / CHAR_VOCAB ids: (ids, frames, durations).
TDT_BPE_CASES = [
    ([1, 2, 3, 4, 5], [0, 2, 3, 3, 7], [2, 1, 0, 3, 1]),         # a duration-0 token; "." after a silence
    ([1, 5, 2, 3, 6, 11, 13, 7], [1, 1, 4, 4, 4, 6, 8, 12], [0, 0, 0, 2, 1, 2, 4, 0]),
    ([16, 17, 18, 19, 19, 20], [0, 0, 1, 1, 1, 2], [0, 1, 0, 0, 1, 1]),
    ([], [], []),
    ([5, 1, 9, 8, 2, 3], [0, 1, 2, 2, 3, 3], [1, 1, 0, 1, 0, 2]),
]
RNNT_BPE_CASES = [(ids, frames, None) for ids, frames, _ in TDT_BPE_CASES]
RNNT_CHAR_CASES = [
    ([8, 9, 0, 9, 20, 28, 0, 15, 0, 8, 29], [0, 0, 1, 2, 2, 3, 5, 6, 6, 7, 9], None),
    ([], [], None),
    ([1, 27, 19, 0, 28], [0, 1, 2, 3, 4], None),
]
# NeMo 3.0's char ``RNNTDecoding`` drops ids >= V - D (it subtracts the TDT durations from the blank id in
# ``decode_ids_to_tokens``) and then fails on them, so the char TDT cases use letters and spaces only.
TDT_CHAR_CASES = [
    ([8, 9, 0, 9, 20, 0, 15, 0, 8, 9], [0, 0, 1, 2, 2, 5, 6, 6, 7, 9], [0, 1, 1, 0, 1, 1, 0, 1, 2, 0]),
    ([], [], []),
]
SYNTHETIC_WINDOW_STRIDE = 0.01
SYNTHETIC_SUBSAMPLING = 4


def _ctc_synthetic(decoding, sequences: list[list[int]]) -> dict:
    from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

    out = []
    for labels in sequences:
        hyps = decoding.ctc_decoder_predictions_tensor(torch.tensor([labels], dtype=torch.long),
                                                       decoder_lengths=torch.tensor([len(labels)]),
                                                       return_hypotheses=True)
        hyps = process_timestamp_outputs(hyps, SYNTHETIC_SUBSAMPLING, SYNTHETIC_WINDOW_STRIDE)
        out.append(hyps[0])
    return {"cases": [{"frame_labels": labels, "text": h.text, "timestamp": _plain(h.timestamp)}
                      for labels, h in zip(sequences, out)], "types": _types([h.timestamp for h in out])}


def _transducer_synthetic(decoding, cases) -> dict:
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
    from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

    out, hyps = [], []
    for ids, frames, durations in cases:
        hyp = Hypothesis(score=0.0, y_sequence=torch.tensor(ids, dtype=torch.long),
                         timestamp=torch.tensor(frames, dtype=torch.long),
                         token_duration=None if durations is None else torch.tensor(durations, dtype=torch.long))
        hyp = decoding.decode_hypothesis([hyp])[0]
        hyp = decoding.compute_rnnt_timestamps(hyp, "all")
        hyp = process_timestamp_outputs([hyp], SYNTHETIC_SUBSAMPLING, SYNTHETIC_WINDOW_STRIDE)[0]
        case = {"y_sequence": ids, "frames": frames, "text": hyp.text, "timestamp": _plain(hyp.timestamp)}
        if durations is not None:
            case["durations"] = durations
        out.append(case)
        hyps.append(hyp)
    return {"cases": out, "types": _types([h.timestamp for h in hyps])}


def synthetic(nemo3: Path) -> dict:
    from nemo.collections.asr.models import ASRModel
    from nemo.collections.asr.parts.submodules.ctc_decoding import CTCBPEDecoding, CTCDecoding, CTCDecodingConfig
    from nemo.collections.asr.parts.submodules.rnnt_decoding import (RNNTBPEDecoding, RNNTDecoding,
                                                                      RNNTDecodingConfig)
    from omegaconf import OmegaConf, open_dict

    toy = ToyTokenizer(TOY_PIECES)
    char_blank, toy_blank = len(CHAR_VOCAB), len(TOY_PIECES)
    char_ids = {c: i for i, c in enumerate(CHAR_VOCAB)}
    char_seqs = [[char_blank if c == "_" else char_ids[c] for c in s] for s in CTC_CHAR_CASES]
    bpe_seqs = [[toy_blank if k < 0 else k for k in s] for s in CTC_BPE_CASES]
    cases: dict = {"window_stride": SYNTHETIC_WINDOW_STRIDE, "subsampling_factor": SYNTHETIC_SUBSAMPLING,
                   "char_vocabulary": CHAR_VOCAB, "toy_pieces": TOY_PIECES}

    cfg = OmegaConf.structured(CTCDecodingConfig(compute_timestamps=True))
    ctc_char = CTCDecoding(cfg, vocabulary=CHAR_VOCAB)
    cases["ctc_char"] = {"punctuation": sorted(ctc_char.supported_punctuation), "segment_gap_threshold": None,
                         **_ctc_synthetic(ctc_char, char_seqs)}
    gap_cfg = OmegaConf.structured(CTCDecodingConfig(compute_timestamps=True, segment_gap_threshold=3))
    cases["ctc_char_gap3"] = {"punctuation": sorted(ctc_char.supported_punctuation), "segment_gap_threshold": 3,
                              **_ctc_synthetic(CTCDecoding(gap_cfg, vocabulary=CHAR_VOCAB), char_seqs)}
    ctc_bpe = CTCBPEDecoding(copy.deepcopy(cfg), tokenizer=toy)
    cases["ctc_bpe"] = {"punctuation": sorted(ctc_bpe.supported_punctuation), "tokenizer_type": ctc_bpe.tokenizer_type,
                        "segment_gap_threshold": None, **_ctc_synthetic(ctc_bpe, bpe_seqs)}

    # Transducer decodings need a decoder and joint to build their (unused) greedy search: the reference models'.
    rnnt = ASRModel.restore_from(str(nemo3 / "fastconformer_rnnt_bpe.nemo"), map_location="cpu")
    tdt = ASRModel.restore_from(str(nemo3 / "fastconformer_tdt_bpe.nemo"), map_location="cpu")
    rnnt_cfg = OmegaConf.structured(RNNTDecodingConfig(strategy="greedy_batch", compute_timestamps=True))
    tdt_cfg = copy.deepcopy(tdt.cfg.decoding)
    with open_dict(tdt_cfg):
        tdt_cfg.compute_timestamps = True
    r_bpe = RNNTBPEDecoding(copy.deepcopy(rnnt_cfg), decoder=rnnt.decoder, joint=rnnt.joint, tokenizer=toy)
    t_bpe = RNNTBPEDecoding(copy.deepcopy(tdt_cfg), decoder=tdt.decoder, joint=tdt.joint, tokenizer=toy)
    r_char = RNNTDecoding(copy.deepcopy(rnnt_cfg), decoder=rnnt.decoder, joint=rnnt.joint, vocabulary=CHAR_VOCAB)
    tdt_char_cfg = copy.deepcopy(tdt_cfg)
    with open_dict(tdt_char_cfg):
        tdt_char_cfg.model_type = "tdt"
    t_char = RNNTDecoding(tdt_char_cfg, decoder=tdt.decoder, joint=tdt.joint, vocabulary=CHAR_VOCAB)
    assert t_bpe._is_tdt and t_char._is_tdt and not r_bpe._is_tdt and t_char.blank_id == len(CHAR_VOCAB)
    for key, decoding, items in (("rnnt_bpe", r_bpe, RNNT_BPE_CASES), ("tdt_bpe", t_bpe, TDT_BPE_CASES),
                                 ("rnnt_char", r_char, RNNT_CHAR_CASES), ("tdt_char", t_char, TDT_CHAR_CASES)):
        cases[key] = {"punctuation": sorted(decoding.supported_punctuation), "tokenizer_type": decoding.tokenizer_type,
                      "blank_id": int(decoding.blank_id), "segment_gap_threshold": None,
                      **_transducer_synthetic(decoding, items)}
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nemo3-dir", type=Path, default=REPO.parent / "shared" / "reference" / "nemo3")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "nemo3_timestamps.json")
    args = parser.parse_args()
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    import nemo

    torch.set_grad_enabled(False)
    data = {"nemo_version": nemo.__version__, "made_by": "scripts/dev/make_timestamp_reference.py",
            "models": real_models(args.nemo3_dir), "synthetic": synthetic(args.nemo3_dir)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
