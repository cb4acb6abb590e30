"""``CTCModel``: one cohesive CTC ASR model built from a NeMo-layout ``model:`` config.

It bundles what NeMo's ``EncDecCTCModel`` / ``EncDecCTCModelBPE`` hold, minus all hidden state: the network
(:class:`~nemofn.asr.models.ctc_network.CTCNetwork`), the tokenizer, greedy text decoding, the data loaders of the
config's ``*_ds`` blocks, and the optimizer and schedule of its ``optim`` block. Weights live in an explicit
:class:`~nemofn.core.state.ModelState` that the caller owns::

    model = CTCModel.from_config(cfg)                 # cfg: the `model:` block (DictConfig or dict)
    state = model.init_state(0)                      # ModelState with NeMo state-dict keys
    texts = model.transcribe(state, ["a.wav", "b.wav"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from omegaconf import DictConfig, OmegaConf

from nemofn.asr.configs.models import validate_model_config
from nemofn.asr.data.inference_batches import restore_order
from nemofn.asr.decoding import CharDecoder, TokenizerDecoder
from nemofn.asr.metrics import word_error_rate
from nemofn.asr.models.asr_unit import AudioInput, ASRUnitMixin, pad_signals, tokenizer_from_config
from nemofn.asr.models.ctc_network import CTCNetwork
from nemofn.asr.tokenizers import SentencePieceTokenizer
from nemofn.core.rng import RngKey
from nemofn.core.schema import drop_keys, to_plain
from nemofn.core.state import ModelState

__all__ = ["CTCModel", "tokenizer_from_config", "validate_model_config", "AudioInput", "pad_signals"]


def _filled_config(cfg: Mapping[str, Any], tokenizer: Any, unknown: Sequence[str] = ()) -> DictConfig:
    """A resolved copy of ``cfg`` with the decoder vocabulary taken from the tokenizer, as NeMo does.

    ``unknown`` (full keys under ``model.``, from :func:`validate_model_config` in ``"warn"`` mode) are dropped.
    A decoder ``feat_in`` / ``num_classes`` left ``???`` (a dataclass config) is filled like ``null`` / ``-1``.
    """
    source = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    conf = OmegaConf.create(OmegaConf.to_container(source, resolve=True, throw_on_missing=False))
    if "model" in conf and "preprocessor" not in conf:
        raise ValueError("pass the `model:` block of the config, not the whole experiment config "
                         "(use cfg.model)")
    drop_keys(conf, list(unknown), "model")
    for key, unset in (("feat_in", None), ("num_classes", -1)):
        if conf.get("decoder") is not None and OmegaConf.is_missing(conf.decoder, key):
            conf.decoder[key] = unset
    if isinstance(tokenizer, SentencePieceTokenizer):
        conf.decoder.vocabulary = list(tokenizer.vocabulary)
        conf.decoder.num_classes = len(tokenizer.vocabulary)
    elif conf.decoder.get("vocabulary") in (None, []):
        conf.decoder.vocabulary = list(tokenizer.labels)
    return conf


@attrs.frozen(eq=False)
class CTCModel(ASRUnitMixin):
    """A CTC ASR model: config, network, tokenizer and text decoding (no weights; see :meth:`init_state`).

    Attributes:
        cfg: the resolved ``model:`` config (decoder vocabulary filled in).
        network: the stateless network (its ``objective`` is the training objective).
        tokenizer: :class:`CharTokenizer` or :class:`SentencePieceTokenizer`.
        text_decoder: greedy CTC decoding to text.
    """

    cfg: DictConfig
    network: CTCNetwork
    tokenizer: Any
    text_decoder: Any
    unknown_keys: str = "error"

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None, unknown_keys: str = "error") -> CTCModel:
        """Builds the model from its ``model:`` config, checked whole first (:func:`validate_model_config`).

        Args:
            cfg: the ``model:`` block: a DictConfig, a dict, or an :class:`~nemofn.asr.configs.EncDecCTCConfig` /
                :class:`~nemofn.asr.configs.EncDecCTCBPEConfig` instance.
            tokenizer: the tokenizer to use; default: built from ``labels`` or ``tokenizer``.
            unknown_keys: ``"error"`` (a config you wrote), or ``"warn"`` (a ``.nemo`` from another NeMo version:
                unknown keys are logged once each and left out, here and in this model's data loaders).

        Raises:
            ConfigError: an unknown key, a wrong type or an unsupported value, named by its full key.
        """
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = OmegaConf.create(to_plain(cfg))
        unknown = validate_model_config(cfg, unknown_keys=unknown_keys, finetune=False)
        tokenizer = tokenizer if tokenizer is not None else tokenizer_from_config(cfg)
        conf = _filled_config(cfg, tokenizer, unknown)
        network = CTCNetwork.from_config(conf)
        if isinstance(tokenizer, SentencePieceTokenizer):
            text_decoder = TokenizerDecoder(tokenizer, vocab_size=len(tokenizer.vocabulary))
        else:
            text_decoder = CharDecoder(list(conf.decoder.vocabulary))
        n_vocab = network.decoder.num_classes_with_blank - 1
        if n_vocab != len(conf.decoder.vocabulary):
            raise ValueError(f"model.decoder.num_classes={n_vocab} but the vocabulary has "
                             f"{len(conf.decoder.vocabulary)} entries; set num_classes to -1 to derive it")
        return cls(cfg=conf, network=network, tokenizer=tokenizer, text_decoder=text_decoder,
                   unknown_keys=unknown_keys)

    @property
    def ctc_output_frames(self) -> float | None:
        """Output frames per second of audio: sample rate / hop length / the encoder's subsampling factor (None for
        an encoder that does not say its factor: the too-long-for-CTC count is then left out)."""
        pre = self.network.preprocessor
        factor = getattr(self.network.encoder, "subsampling_factor", None)
        if not factor or not hasattr(pre, "hop_length"):
            return None
        return pre.sample_rate / pre.hop_length / factor

    def init_state(self, rng: RngKey | int = 0) -> ModelState:
        """Fresh weights (NeMo's initialisations) as a :class:`ModelState`."""
        params, buffers = self.network.init(rng)
        return ModelState.create(params, buffers)

    # ------------------------------------------------------------------------------------------ inference
    def inference_network(self) -> CTCNetwork:
        """The network as transcribe runs it: no dither, no ``pad_to`` (NeMo's transcribe does the same)."""
        return attrs.evolve(self.network, preprocessor=self.network.preprocessor.replace(dither=0.0, pad_to=0))

    @torch.inference_mode()
    def log_probs(self, state: ModelState, signal: torch.Tensor, signal_len: torch.Tensor):
        """``signal [B, T]``, ``signal_len [B]`` -> ``(log_probs [B, T', V+1], encoded_len [B])`` (eval mode).

        The inputs are moved to the state's device first."""
        device = state.device
        return self.inference_network().forward_eval(state.params, state.buffers, signal.to(device),
                                                     signal_len.to(device))

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC decoding to text."""
        return self.text_decoder.decode(log_probs, lengths)

    def transcribe(self, state: ModelState, audio: Sequence[AudioInput], *, batch_size: int = 4,
                   return_log_probs: bool = False, progress: bool = False, num_workers: int = 0):
        """Texts for a list of audio files / arrays, in input order (batched longest first, see
        :meth:`audio_batches`; ``num_workers`` threads read audio ahead).

        Returns:
            ``list[str]``, or ``(texts, log_probs)`` with one ``[T', V+1]`` tensor per input when
            ``return_log_probs``.
        """
        texts, all_lp = [], []
        for indices, signal, signal_len in self.audio_batches(audio, batch_size, progress=progress,
                                                              num_workers=num_workers):
            lp, lens = self.log_probs(state, signal, signal_len)
            texts.append((indices, self.decode(lp, lens)))
            if return_log_probs:
                lp = lp.cpu()  # one copy per batch (free on the CPU), as NeMo returns host log-probs
                all_lp.append((indices, [lp[i, : int(n)].clone() for i, n in enumerate(lens.tolist())]))
        texts = restore_order(texts, len(audio))
        return (texts, restore_order(all_lp, len(audio))) if return_log_probs else texts

    def evaluate_wer(self, state: ModelState, loader: torch.utils.data.DataLoader, *, use_cer: bool = False
                     ) -> tuple[float, list[str], list[str]]:
        """Corpus WER of greedy transcripts over a loader: ``(wer, hypotheses, references)``."""
        hyps: list[str] = []
        refs: list[str] = []
        for signal, signal_len, tokens, tokens_len in loader:
            lp, lens = self.log_probs(state, signal, signal_len)
            hyps.extend(self.decode(lp, lens))
            refs.extend(self.tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens, tokens_len))
        return word_error_rate(hyps, refs, use_cer=use_cer), hyps, refs
