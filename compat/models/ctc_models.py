"""``EncDecCTCModel``: NeMo's char CTC model over ``nemofn.asr.models.ctc_model.CTCModel``.

The model holds a :class:`~nemofn.asr.models.ctc_model.CTCModel` (network, tokenizer, greedy text decoding) and
its :class:`~nemofn.core.state.ModelState`. NeMo-style pieces on top:

* ``model.preprocessor(input_signal=, length=)``, ``model.encoder(audio_signal=, length=)``,
  ``model.decoder(encoder_output=)`` and ``model(input_signal=, input_signal_length=)`` (``forward``), in the
  model's train / eval mode;
* ``transcribe(audio, batch_size=4, return_hypotheses=False, ...) -> list[Hypothesis]`` (greedy; dither and
  ``pad_to`` off while it runs; the mode is restored afterwards);
* ``change_vocabulary(new_labels)`` (a new decoder, same encoder weights) and ``change_decoding_strategy(cfg)``;
* ``validation_step`` with NeMo's ``val_loss`` / ``val_wer_*`` keys, from one forward (:class:`CTCEvalObjective`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import attrs
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from compat.collections.asr.parts.utils.rnnt_utils import Hypothesis
from compat.models.asr_model import ASRModel
from compat.models.bound_module import BoundModule
from compat.models.ctc_decoding import check_decoding_supported, default_decoding_config, merge_decoding_config
from compat.models.transcribe import collect_sources, count_batches, iterate_batches
from nemofn.asr.ctc import ctc_loss
from nemofn.asr.decoding import ctc_greedy_decode, greedy_scores
from nemofn.asr.metrics import error_counts
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.tokenizers import CharTokenizer
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState

__all__ = ["EncDecCTCModel", "CTCEvalObjective"]

log = logging.getLogger("compat.models")

_DS_KEYS = ("train_ds", "validation_ds", "test_ds")


@attrs.frozen(eq=False)
class CTCEvalObjective:
    """Validation objective: the CTC loss plus greedy WER counts, from one forward.

    Returns ``(loss, {"wer_num": errors, "wer_denom": reference words}, new_buffers)`` (counts as int64 tensors).
    Decoding to text syncs with the host; this objective is for evaluation, not for the compiled training step.
    """

    network: Any
    text_decoder: Any
    tokenizer: Any
    use_cer: bool = False

    def __call__(self, params: Any, buffers: Any, batch: Any, *, train: bool, rng: Any):
        signal, signal_len, tokens, tokens_len = batch[:4]
        (log_probs, encoded_len), new_buffers = self.network.apply(params, buffers, signal, signal_len, train=train,
                                                                   rng=rng)
        loss = ctc_loss(log_probs, tokens, encoded_len, tokens_len, blank=self.network.blank_id,
                        reduction=self.network.ctc_reduction, zero_infinity=True)
        hypotheses = self.text_decoder.decode(log_probs, encoded_len)
        references = [self.tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens, tokens_len)]
        errors, words = error_counts(hypotheses, references, use_cer=self.use_cer)
        return loss, {"wer_num": torch.tensor(errors), "wer_denom": torch.tensor(words)}, new_buffers


class EncDecCTCModel(ASRModel, nemo_target="nemo.collections.asr.models.ctc_models.EncDecCTCModel",
                     nemo_aliases=("nemo.collections.asr.models.EncDecCTCModel",)):
    """NeMo's ``EncDecCTCModel`` (char labels). See the module doc; the functional model is :attr:`fn_model`."""

    # -- construction -------------------------------------------------------------------------------------------

    def _build_tokenizer(self, cfg: DictConfig) -> Any:
        labels = cfg.decoder.get("vocabulary") if cfg.get("decoder") is not None else None
        labels = labels or cfg.get("labels")
        if not labels:
            raise ValueError("a char CTC model needs `labels` (or decoder.vocabulary) in its config")
        return CharTokenizer(list(labels))

    def build_functional(self, cfg: DictConfig) -> CTCModel:
        """Builds the :class:`CTCModel` and fills the config as NeMo does (decoder sizes, default decoding)."""
        unit = CTCModel.from_config(cfg, tokenizer=self._build_tokenizer(cfg))
        with open_dict(cfg):
            decoder = cfg.decoder
            if decoder.get("feat_in") is None:
                decoder.feat_in = unit.network.decoder.feat_in
            if not decoder.get("vocabulary"):
                decoder.vocabulary = list(unit.cfg.decoder.vocabulary)
            if decoder.get("num_classes") is None or decoder.num_classes < 1:
                decoder.num_classes = len(decoder.vocabulary)
            if cfg.get("decoding") is None:
                cfg.decoding = default_decoding_config()
        return unit

    # -- NeMo-style submodule calls -----------------------------------------------------------------------------

    @property
    def preprocessor(self) -> BoundModule:
        """``model.preprocessor(input_signal=[B, T], length=[B]) -> (features [B, F, T'], lengths [B])``."""
        return BoundModule(self, "preprocessor", self.fn_model.network.preprocessor, ("input_signal", "length"))

    @property
    def spec_augmentation(self) -> BoundModule | None:
        spec = self.fn_model.network.spec_augment
        return None if spec is None else BoundModule(self, "spec_augment", spec, ("input_spec", "length"))

    @property
    def encoder(self) -> BoundModule:
        """``model.encoder(audio_signal=[B, F, T'], length=[B]) -> (encoded [B, D, T''], lengths [B])``."""
        return BoundModule(self, "encoder", self.fn_model.network.encoder, ("audio_signal", "length"))

    @property
    def decoder(self) -> BoundModule:
        """``model.decoder(encoder_output=[B, D, T'']) -> log_probs [B, T'', V+1]``."""
        return BoundModule(self, "decoder", self.fn_model.network.decoder, ("encoder_output",))

    @property
    def tokenizer(self) -> Any:
        return self.fn_model.tokenizer

    def forward(self, input_signal: torch.Tensor | None = None, input_signal_length: torch.Tensor | None = None,
                processed_signal: torch.Tensor | None = None, processed_signal_length: torch.Tensor | None = None):
        """NeMo's forward: ``(log_probs [B, T, V+1], encoded_len [B], greedy_predictions [B, T])``.

        Give either the waveform pair or the processed features pair. SpecAugment runs only in training mode.
        """
        has_signal = input_signal is not None and input_signal_length is not None
        has_processed = processed_signal is not None and processed_signal_length is not None
        if has_signal == has_processed:
            raise ValueError(f"{type(self).__name__}.forward: give input_signal and input_signal_length, or "
                             "processed_signal and processed_signal_length (exactly one pair)")
        if not has_processed:
            processed_signal, processed_signal_length = self.preprocessor(input_signal=input_signal,
                                                                          length=input_signal_length)
        spec = self.spec_augmentation
        if spec is not None and self.training:
            processed_signal = spec(input_spec=processed_signal, length=processed_signal_length)
        encoded, encoded_len = self.encoder(audio_signal=processed_signal, length=processed_signal_length)
        log_probs = self.decoder(encoder_output=encoded)
        return log_probs, encoded_len, log_probs.argmax(dim=-1)

    # -- objectives ---------------------------------------------------------------------------------------------

    def eval_objective_fn(self) -> CTCEvalObjective:
        unit = self.fn_model
        return CTCEvalObjective(unit.network, unit.text_decoder, unit.tokenizer, bool(self._cfg.get("use_cer", False)))

    # -- transcription ------------------------------------------------------------------------------------------

    def _hypotheses(self, log_probs: torch.Tensor, lengths: torch.Tensor, return_hypotheses: bool) -> list[Hypothesis]:
        blank = self.fn_model.network.blank_id
        labels = log_probs.argmax(dim=-1)
        scores = greedy_scores(log_probs, lengths, blank).cpu().tolist()
        ids = ctc_greedy_decode(labels, lengths, blank_id=blank)
        decoder = self.fn_model.text_decoder
        log_probs, labels, lengths = log_probs.cpu(), labels.cpu(), lengths.cpu().tolist()
        out = []
        for i, n in enumerate(lengths):
            hyp = Hypothesis(score=scores[i], y_sequence=labels[i, :n].clone(), text=decoder.ids_to_text(ids[i]),
                             length=int(n))
            if return_hypotheses:
                hyp.y_sequence = log_probs[i, :n].clone()
                hyp.alignments = hyp.y_sequence
            out.append(hyp)
        return out

    @torch.inference_mode()
    def transcribe(self, audio: Any, batch_size: int = 4, return_hypotheses: bool = False, num_workers: int = 0,
                   channel_selector: Any = None, augmentor: Any = None, verbose: bool = True,
                   timestamps: bool | None = None, override_config: Any = None,
                   **config_kwargs: Any) -> list[Hypothesis]:
        """Greedy transcription; always a ``list[Hypothesis]`` (NeMo 3.0), one per input, in order.

        Args:
            audio: a path, a list of paths, a ``.json`` / ``.jsonl`` manifest path, numpy arrays / tensors of
                samples at the model's rate (padded to ``pad_min_duration`` seconds, default 1.0), or a DataLoader.
            batch_size: inputs per forward pass.
            return_hypotheses: ``y_sequence`` (and ``alignments``) hold the ``[T', V+1]`` log-probs of each input;
                otherwise ``y_sequence`` holds its per-frame arg-max labels.
            num_workers: accepted for NeMo compatibility (audio is read in this process).
            channel_selector: for multi-channel files (see ``nemofn.asr.data.audio.select_channels``).
            verbose: show a progress bar.
            override_config: an object with NeMo ``TranscribeConfig`` attributes; it replaces the arguments.
            config_kwargs: ``pad_min_duration`` (s) and ``pad_direction`` for array inputs.
        """
        if override_config is not None:
            batch_size = getattr(override_config, "batch_size", batch_size)
            return_hypotheses = getattr(override_config, "return_hypotheses", return_hypotheses)
            channel_selector = getattr(override_config, "channel_selector", channel_selector)
            augmentor = getattr(override_config, "augmentor", augmentor)
            verbose = getattr(override_config, "verbose", verbose)
            timestamps = getattr(override_config, "timestamps", timestamps)
            for key in ("pad_min_duration", "pad_direction"):
                if hasattr(override_config, key):
                    config_kwargs.setdefault(key, getattr(override_config, key))
        unknown = sorted(set(config_kwargs) - {"pad_min_duration", "pad_direction", "use_lhotse"})
        if unknown:
            raise TypeError(f"transcribe: unknown argument(s) {unknown}")
        if augmentor is not None:
            raise NotImplementedError("transcribe(augmentor=...) is not implemented in compat: audio perturbation "
                                      "at inference is not supported")
        if timestamps:
            raise NotImplementedError("transcribe(timestamps=True) is not implemented in compat (no CTC timestamp "
                                      "computation); use return_hypotheses=True and the per-frame log-probs")
        check_decoding_supported(self._cfg.get("decoding") or {})
        if batch_size < 1:
            raise ValueError(f"transcribe: batch_size must be >= 1, got {batch_size}")
        from torch.utils.data import DataLoader

        unit = self.fn_model
        sources = None if isinstance(audio, DataLoader) else collect_sources(
            audio, sample_rate=unit.sample_rate, pad_min_duration=float(config_kwargs.get("pad_min_duration", 1.0)),
            pad_direction=str(config_kwargs.get("pad_direction", "both")))
        batches = iterate_batches(audio, sources, batch_size=batch_size, sample_rate=unit.sample_rate,
                                  channel_selector=channel_selector)
        if verbose:
            from tqdm import tqdm

            batches = tqdm(batches, desc="Transcribing", total=count_batches(audio, sources, batch_size))
        was_training = self.training
        self.eval()
        try:
            results: list[Hypothesis] = []
            device = self.device
            for signal, signal_len in batches:
                log_probs, encoded_len = unit.log_probs(self.fn_state, signal.to(device), signal_len.to(device))
                results.extend(self._hypotheses(log_probs, encoded_len, return_hypotheses))
            return results
        finally:
            self.train(was_training)

    # -- vocabulary and decoding --------------------------------------------------------------------------------

    def _swap_decoder(self, cfg: DictConfig, tokenizer: Any, decoding_cfg: Any) -> None:
        """Rebuilds the unit from ``cfg`` with a fresh decoder; the other weights are kept (same tensors)."""
        decoding = merge_decoding_config(decoding_cfg if decoding_cfg is not None else self._cfg.get("decoding"))
        unit = CTCModel.from_config(cfg, tokenizer=tokenizer)
        old = self.fn_state
        dec_params, dec_buffers = unit.network.decoder.init(RngKey(self._draw_seed()))
        params = {k: v for k, v in old.params.items() if k != "decoder"}
        buffers = {k: v for k, v in old.buffers.items() if k != "decoder"}
        params["decoder"] = dec_params
        if dec_buffers:
            buffers["decoder"] = dec_buffers
        state = ModelState.create(params, buffers)
        with open_dict(self._cfg):
            self._cfg.decoder = copy.deepcopy(cfg.decoder)
            self._cfg.decoding = decoding
        self._replace_functional(unit, state)

    def change_vocabulary(self, new_vocabulary: list[str], decoding_cfg: Any = None) -> None:
        """New output labels: a new (freshly initialised) decoder; preprocessor and encoder weights are kept.

        Also sets ``labels`` of ``train_ds`` / ``validation_ds`` / ``test_ds``. Set up the optimizer again after.
        """
        current = list(self.fn_model.network.decoder.vocabulary or [])
        if new_vocabulary is not None and current == list(new_vocabulary):
            log.warning("old and new vocabulary are the same; nothing changed")
            return
        if not new_vocabulary:
            raise ValueError(f"new_vocabulary must be a non-empty list of labels, got {new_vocabulary!r}")
        cfg = copy.deepcopy(self._cfg)
        with open_dict(cfg):
            cfg.decoder.vocabulary = list(new_vocabulary)
            cfg.decoder.num_classes = len(new_vocabulary)
        self._swap_decoder(cfg, CharTokenizer(list(new_vocabulary)), decoding_cfg)
        with open_dict(self._cfg):
            for key in _DS_KEYS:
                if self._cfg.get(key) is not None:
                    self._cfg[key].labels = ListConfig(list(new_vocabulary))
        log.info("changed the decoder to %d labels", len(new_vocabulary))

    def change_decoding_strategy(self, decoding_cfg: Any = None, verbose: bool = True) -> None:
        """Merges ``decoding_cfg`` onto NeMo's defaults and applies it (greedy only; ``temperature`` honoured).

        Raises:
            NotImplementedError: a beam / LM / timestamp / confidence setting (named in the message).
        """
        cfg = merge_decoding_config(decoding_cfg if decoding_cfg is not None else self._cfg.get("decoding"))
        check_decoding_supported(cfg)
        unit = self.fn_model
        decoder = unit.network.decoder.replace(temperature=float(cfg.get("temperature", 1.0)))
        self._replace_functional(attrs.evolve(unit, network=attrs.evolve(unit.network, decoder=decoder)))
        with open_dict(self._cfg):
            self._cfg.decoding = cfg
        if verbose:
            log.info("changed the decoding strategy to\n%s", OmegaConf.to_yaml(cfg))
