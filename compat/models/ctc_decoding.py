"""CTC decoding configs: NeMo 3.0's ``CTCDecodingConfig`` defaults, and which settings compat can run.

``EncDecCTCModel`` injects :data:`CTC_DECODING_DEFAULTS` (the schema's defaults, ``nemofn.asr.configs.decoding``) as
``cfg.decoding`` when the config has none (NeMo writes the same block into every ``.nemo``), and
``change_decoding_strategy`` merges a user's partial config onto it.
Only greedy decoding exists here: ``strategy`` ``greedy`` and ``greedy_batch`` (they give the same ids), with an
optional ``temperature`` (the decoder divides its logits by it). Beam search, n-gram LM fusion, boosting trees,
timestamps, alignments and confidence raise ``NotImplementedError`` naming the setting.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from nemofn.asr.configs.decoding import CTC_DECODING_DEFAULTS, CTC_STRATEGIES, default_decoding, merge_decoding

__all__ = ["CTC_DECODING_DEFAULTS", "GREEDY_STRATEGIES", "default_decoding_config", "merge_decoding_config",
           "check_decoding_supported", "ctc_hypotheses"]

GREEDY_STRATEGIES = ("greedy", "greedy_batch")
KNOWN_STRATEGIES = CTC_STRATEGIES


def default_decoding_config() -> DictConfig:
    """A fresh ``DictConfig`` of NeMo 3.0's ``CTCDecodingConfig()`` defaults."""
    return default_decoding()


def merge_decoding_config(decoding_cfg: Any, *, unknown: str = "error") -> DictConfig:
    """NeMo's ``OmegaConf.merge(CTCDecodingConfig(), decoding_cfg)``; a key NeMo does not know raises, naming it
    and the closest known one (``unknown="warn"``: dropped with a warning, for configs restored from a ``.nemo``)."""
    return merge_decoding(decoding_cfg, "model.decoding", unknown=unknown)


def _is_on(value: Any) -> bool:
    return value is not None and value is not False and value != 0


def check_decoding_supported(cfg: Any) -> None:
    """Raises ``NotImplementedError`` for decoding settings compat cannot run (``ValueError`` for a bad strategy)."""
    strategy = cfg.get("strategy", "greedy_batch")
    if strategy not in KNOWN_STRATEGIES:
        raise ValueError(f"decoding.strategy={strategy!r} is not a CTC strategy; use one of {list(KNOWN_STRATEGIES)}")
    if strategy not in GREEDY_STRATEGIES:
        raise NotImplementedError(
            f"decoding.strategy={strategy!r} is not implemented in compat: only greedy CTC decoding exists "
            f"({' / '.join(GREEDY_STRATEGIES)}). Call change_decoding_strategy({{'strategy': 'greedy_batch'}})."
        )
    greedy = cfg.get("greedy") or {}
    checks = {
        "decoding.compute_timestamps": cfg.get("compute_timestamps"),
        "decoding.preserve_alignments": cfg.get("preserve_alignments"),
        "decoding.greedy.compute_timestamps": greedy.get("compute_timestamps"),
        "decoding.greedy.preserve_alignments": greedy.get("preserve_alignments"),
        "decoding.greedy.preserve_frame_confidence": greedy.get("preserve_frame_confidence"),
        "decoding.greedy.ngram_lm_model": greedy.get("ngram_lm_model"),
        "decoding.greedy.boosting_tree.model_path": (greedy.get("boosting_tree") or {}).get("model_path"),
    }
    confidence = cfg.get("confidence_cfg") or {}
    for key in ("preserve_frame_confidence", "preserve_token_confidence", "preserve_word_confidence"):
        checks[f"decoding.confidence_cfg.{key}"] = confidence.get(key)
    for key, value in checks.items():
        if _is_on(value):
            raise NotImplementedError(f"{key}={value!r} is not implemented in compat's greedy CTC decoding; set it "
                                      "to false / null")
    temperature = cfg.get("temperature", 1.0)
    if temperature is None or not temperature > 0:
        raise ValueError(f"decoding.temperature must be > 0, got {temperature!r}")


def ctc_hypotheses(log_probs: Any, lengths: Any, *, blank: int, text_decoder: Any,
                   return_hypotheses: bool) -> list:
    """NeMo's greedy CTC ``Hypothesis`` objects of a batch.

    Args:
        log_probs: ``[B, T, V+1]``; lengths: ``[B]``.
        text_decoder: has ``ids_to_text(ids)``.
        return_hypotheses: ``y_sequence`` (and ``alignments``) hold each utterance's ``[T, V+1]`` log-probs;
            otherwise ``y_sequence`` holds its per-frame arg-max labels ``[T]``.
    """
    from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis
    from nemofn.asr.decoding import ctc_greedy_decode, greedy_scores

    labels = log_probs.argmax(dim=-1)
    scores = greedy_scores(log_probs, lengths, blank).cpu().tolist()
    ids = ctc_greedy_decode(labels, lengths, blank_id=blank)
    log_probs, labels, lengths = log_probs.cpu(), labels.cpu(), lengths.cpu().tolist()
    out = []
    for i, n in enumerate(lengths):
        hyp = Hypothesis(score=scores[i], y_sequence=labels[i, :n].clone(), text=text_decoder.ids_to_text(ids[i]),
                         length=int(n))
        if return_hypotheses:
            hyp.y_sequence = log_probs[i, :n].clone()
            hyp.alignments = hyp.y_sequence
        out.append(hyp)
    return out
