"""``TransducerModel``: one cohesive RNNT / TDT (and hybrid RNNT/TDT + CTC) ASR model from a NeMo ``model:`` config.

It bundles what NeMo's ``EncDecRNNTModel`` / ``EncDecRNNTBPEModel`` and the hybrid classes hold, minus all hidden
state: the network (:class:`~nemofn.asr.models.transducer_network.TransducerNetwork`), the tokenizer, greedy
decoding (RNNT or TDT, batched label looping), the data loaders and the optimization. Weights live in an explicit
:class:`~nemofn.core.state.ModelState`::

    model = TransducerModel.from_config(cfg)          # cfg: the `model:` block (DictConfig or dict)
    state = model.init_state(0)                      # ModelState with NeMo state-dict keys
    texts = model.transcribe(state, ["a.wav", "b.wav"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nemofn.asr.configs.models import validate_model_config
from nemofn.asr.configs.transducer import TRANSDUCER_SUPPORTED_STRATEGIES
from nemofn.asr.decoding import CharDecoder, TokenizerDecoder
from nemofn.asr.data.inference_batches import restore_order
from nemofn.asr.metrics import word_error_rate
from nemofn.asr.modules.registry import build_module
from nemofn.asr.models.asr_unit import AudioInput, ASRUnitMixin, tokenizer_from_config
from nemofn.asr.models.transducer_network import TransducerNetwork, resolve_loss_name
from nemofn.asr.tokenizers import SentencePieceTokenizer
from nemofn.asr.transducer_greedy import TransducerHyps, greedy_batch
from nemofn.core.rng import RngKey
from nemofn.core.schema import drop_keys, to_plain
from nemofn.core.state import ModelState

__all__ = ["TransducerModel", "TransducerDecoding", "fill_transducer_config"]



@attrs.frozen
class TransducerDecoding:
    """The greedy decoding a ``decoding:`` block asks for.

    Attributes:
        strategy: ``greedy`` or ``greedy_batch`` (both run the batched label-looping decoder; NeMo's per-utterance
            and batched decoders give the same tokens).
        max_symbols: most tokens emitted on one frame (``greedy.max_symbols`` or ``max_symbols_per_step``).
        durations: the TDT durations, or ``None`` (RNNT).
        temperature: divides the joint logits.
    """

    strategy: str = "greedy_batch"
    max_symbols: int | None = 10
    durations: tuple[int, ...] | None = None
    temperature: float = 1.0

    @classmethod
    def from_config(cls, decoding: Mapping[str, Any] | None, *, durations: Sequence[int] | None) -> TransducerDecoding:
        """From a ``decoding:`` block (``None``: NeMo's defaults); ``durations`` come from the loss (TDT)."""
        decoding = decoding or {}
        strategy = str(decoding.get("strategy", "greedy_batch"))
        if strategy not in TRANSDUCER_SUPPORTED_STRATEGIES:
            raise NotImplementedError(f"decoding.strategy={strategy!r} is not implemented in nemofn (beam searches "
                                      f"come later); use one of {list(TRANSDUCER_SUPPORTED_STRATEGIES)}")
        greedy = decoding.get("greedy") or {}
        max_symbols = greedy.get("max_symbols", None) or greedy.get("max_symbols_per_step", None)
        model_type = decoding.get("model_type", "rnnt")
        if durations is None and model_type == "tdt":
            durations = decoding.get("durations") or None
            if not durations:
                raise ValueError("decoding.model_type is 'tdt' but no durations are set (decoding.durations or "
                                 "loss.tdt_kwargs.durations)")
        return cls(strategy=strategy, max_symbols=None if max_symbols is None else int(max_symbols),
                   durations=None if durations is None else tuple(int(d) for d in durations),
                   temperature=float(decoding.get("temperature", 1.0) or 1.0))


def _vocabulary(cfg: Mapping[str, Any], tokenizer: Any) -> list[str]:
    if isinstance(tokenizer, SentencePieceTokenizer):
        return list(tokenizer.vocabulary)
    labels = cfg.get("labels") or (cfg.get("joint") or {}).get("vocabulary")
    if not labels:
        raise ValueError("a char transducer model needs `labels` in its config")
    return list(labels)


def fill_transducer_config(cfg: Any, tokenizer: Any, unknown: Sequence[str] = ()) -> DictConfig:
    """A resolved copy of ``cfg`` with what NeMo's constructors write into it.

    ``labels`` (BPE: the tokenizer's pieces), ``decoder.vocab_size``, ``joint.num_classes``, ``joint.vocabulary``,
    ``joint.jointnet.encoder_hidden`` / ``pred_hidden`` from ``model_defaults``, ``decoding.durations`` from a TDT
    loss, and for hybrids ``aux_ctc.decoder.{vocabulary, num_classes, feat_in}`` and a default ``aux_ctc.decoding``.
    ``unknown`` full keys (from :func:`validate_model_config` in ``"warn"`` mode) are dropped.
    """
    source = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    conf = OmegaConf.create(OmegaConf.to_container(source, resolve=True, throw_on_missing=False))
    if "model" in conf and "preprocessor" not in conf:
        raise ValueError("pass the `model:` block of the config, not the whole experiment config (use cfg.model)")
    drop_keys(conf, list(unknown), "model")
    vocab = _vocabulary(conf, tokenizer)
    defaults = conf.get("model_defaults") or {}
    for key in ("enc_hidden", "pred_hidden"):
        if defaults.get(key) is None:
            raise ValueError(f"model.model_defaults.{key} is not set; NeMo's transducer models read the joint's "
                             f"{'encoder_hidden' if key == 'enc_hidden' else 'pred_hidden'} from it")
    with open_dict(conf):
        conf.labels = vocab
        conf.decoder.vocab_size = len(vocab)
        conf.joint.num_classes = len(vocab)
        conf.joint.vocabulary = vocab
        conf.joint.jointnet.encoder_hidden = defaults["enc_hidden"]
        conf.joint.jointnet.pred_hidden = defaults["pred_hidden"]
        name, kwargs = resolve_loss_name(conf.get("loss"))
        if name in ("tdt", "tdt_pytorch") and conf.get("decoding") is not None and kwargs.get("durations"):
            conf.decoding.durations = list(kwargs["durations"])
        aux = conf.get("aux_ctc")
        if aux is not None:
            if aux.get("decoder") is None:
                raise ValueError("model.aux_ctc has no `decoder` block; a hybrid model needs the CTC head "
                                 "(_target_: nemo.collections.asr.modules.ConvASRDecoder)")
            aux.decoder.vocabulary = vocab
            aux.decoder.num_classes = len(vocab)
            if aux.decoder.get("feat_in") is None:
                aux.decoder.feat_in = build_module(conf.encoder, where="model.encoder").feat_out
            if aux.get("decoding") is None:
                from nemofn.asr.configs.decoding import default_decoding

                aux.decoding = default_decoding()
    return conf


@attrs.frozen(eq=False)
class TransducerModel(ASRUnitMixin):
    """An RNNT / TDT (or hybrid) ASR model: config, network, tokenizer and greedy decoding (no weights).

    Attributes:
        cfg: the filled ``model:`` config (see :func:`fill_transducer_config`).
        network: the stateless network (its ``objective`` is the training objective).
        tokenizer: :class:`CharTokenizer` or :class:`SentencePieceTokenizer`.
        text_decoder: ids -> text (NeMo's punctuation rule); for hybrids also the CTC head's greedy decoder.
        decoding: the transducer's greedy decoding settings.
    """

    cfg: DictConfig
    network: TransducerNetwork
    tokenizer: Any
    text_decoder: Any
    decoding: TransducerDecoding
    unknown_keys: str = "error"

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None, unknown_keys: str = "error") -> TransducerModel:
        """Builds the model from its ``model:`` config, checked whole first (:func:`validate_model_config`).

        Args:
            cfg: the ``model:`` block (DictConfig, dict, or a transducer config dataclass instance).
            tokenizer: the tokenizer to use; default: built from ``labels`` or ``tokenizer``.
            unknown_keys: ``"error"``, or ``"warn"`` (a ``.nemo`` from another NeMo version).
        """
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = OmegaConf.create(to_plain(cfg))
        unknown = validate_model_config(cfg, unknown_keys=unknown_keys, finetune=False)
        tokenizer = tokenizer if tokenizer is not None else tokenizer_from_config(cfg)
        conf = fill_transducer_config(cfg, tokenizer, unknown)
        network = TransducerNetwork.from_config(conf)
        decoding = TransducerDecoding.from_config(conf.get("decoding"), durations=network.durations)
        if decoding.temperature != 1.0:
            network = attrs.evolve(network, joint=network.joint.replace(temperature=decoding.temperature))
        if isinstance(tokenizer, SentencePieceTokenizer):
            text_decoder = TokenizerDecoder(tokenizer, vocab_size=len(tokenizer.vocabulary))
        else:
            text_decoder = CharDecoder(list(conf.labels))
        return cls(cfg=conf, network=network, tokenizer=tokenizer, text_decoder=text_decoder, decoding=decoding,
                   unknown_keys=unknown_keys)

    def with_decoding(self, decoding: TransducerDecoding) -> TransducerModel:
        """The same model with other decoding settings (the joint's temperature follows)."""
        network = attrs.evolve(self.network, joint=self.network.joint.replace(temperature=decoding.temperature))
        return attrs.evolve(self, network=network, decoding=decoding)

    def init_state(self, rng: RngKey | int = 0) -> ModelState:
        """Fresh weights (NeMo's initialisations) as a :class:`ModelState`."""
        params, buffers = self.network.init(rng)
        return ModelState.create(params, buffers)

    @property
    def blank_id(self) -> int:
        return self.network.blank_id

    # ------------------------------------------------------------------------------------------ inference
    def inference_network(self) -> TransducerNetwork:
        """The network as transcribe runs it: no dither, no ``pad_to`` (NeMo's transcribe does the same)."""
        return attrs.evolve(self.network, preprocessor=self.network.preprocessor.replace(dither=0.0, pad_to=0))

    @torch.inference_mode()
    def encode(self, state: ModelState, signal: torch.Tensor, signal_len: torch.Tensor):
        """``signal [B, T]``, ``signal_len [B]`` -> ``(encoded [B, D, T'], encoded_len [B])`` in eval mode (inputs
        are moved to the state's device)."""
        device = state.device
        (encoded, encoded_len), _ = self.inference_network().apply(state.params, state.buffers, signal.to(device),
                                                                    signal_len.to(device), train=False)
        return encoded, encoded_len

    @torch.inference_mode()
    def greedy(self, state: ModelState, encoded: torch.Tensor, encoded_len: torch.Tensor, *,
               return_alignments: bool = False) -> TransducerHyps:
        """Greedy RNNT / TDT decoding of encoder outputs (batched label looping)."""
        net = self.network
        return greedy_batch(net.decoder, net.joint, state.params["decoder"], state.params["joint"], encoded,
                            encoded_len, max_symbols=self.decoding.max_symbols, durations=self.decoding.durations,
                            return_alignments=return_alignments)

    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Token ids -> text (ids >= V dropped, NeMo's punctuation spacing)."""
        return self.text_decoder.ids_to_text([i for i in ids if i < self.blank_id])

    def transcribe(self, state: ModelState, audio: Sequence[AudioInput], *, batch_size: int = 4,
                   return_hypotheses: bool = False, progress: bool = False, num_workers: int = 0):
        """Texts for a list of audio files / arrays, in input order (batched longest first, see
        :meth:`audio_batches`; ``num_workers`` threads read audio ahead).

        Returns:
            ``list[str]``, or ``(texts, hyps)`` with ``hyps`` a :class:`TransducerHyps` over all inputs when
            ``return_hypotheses``.
        """
        parts = []
        for indices, signal, signal_len in self.audio_batches(audio, batch_size, progress=progress,
                                                              num_workers=num_workers):
            parts.append((indices, self.greedy(state, *self.encode(state, signal, signal_len))))
        texts = restore_order([(i, [self.ids_to_text(t) for t in h.tokens]) for i, h in parts], len(audio))
        if not return_hypotheses:
            return texts

        def field(name: str) -> list:
            return restore_order([(i, getattr(h, name)) for i, h in parts], len(audio))

        merged = TransducerHyps(tokens=field("tokens"), timestamps=field("timestamps"), durations=field("durations"),
                                scores=field("scores"))
        return texts, merged

    def evaluate_wer(self, state: ModelState, loader: torch.utils.data.DataLoader, *, use_cer: bool = False
                     ) -> tuple[float, list[str], list[str]]:
        """Corpus WER of greedy transcripts over a loader: ``(wer, hypotheses, references)``."""
        hyps: list[str] = []
        refs: list[str] = []
        for signal, signal_len, tokens, tokens_len in loader:
            result = self.greedy(state, *self.encode(state, signal, signal_len))
            hyps.extend(self.ids_to_text(t) for t in result.tokens)
            refs.extend(self.tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens, tokens_len))
        return word_error_rate(hyps, refs, use_cer=use_cer), hyps, refs

    # ------------------------------------------------------------------------------------------ hybrid CTC head
    @torch.inference_mode()
    def ctc_log_probs(self, state: ModelState, encoded: torch.Tensor) -> torch.Tensor:
        """The hybrid's CTC head in eval mode: ``encoded [B, D, T]`` -> ``[B, T, V+1]``."""
        return self.network.ctc_log_probs(state.params, encoded)

    def ctc_decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC decoding of the hybrid's CTC head to text."""
        return self.text_decoder.decode(log_probs, lengths)

