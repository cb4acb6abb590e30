"""``EncDecCTCModel``: NeMo's char CTC model over ``nemofn.asr.models.ctc_model.CTCModel``.

The model holds a :class:`~nemofn.asr.models.ctc_model.CTCModel` (network, tokenizer, greedy text decoding) and
its :class:`~nemofn.core.state.ModelState`, registered as the tensors of NeMo's submodules. NeMo-style pieces:

* ``model.preprocessor(input_signal=, length=)``, ``model.spec_augmentation(input_spec=, length=)``,
  ``model.encoder(audio_signal=, length=)``, ``model.decoder(encoder_output=)``, ``model.loss(log_probs=, ...)``
  and ``model(input_signal=, input_signal_length=)`` (NeMo's ``forward``), each submodule in its own mode;
* NeMo's ``training_step`` (``train_loss``, ``learning_rate``, ``global_step``, ``training_batch_wer`` every
  ``log_every_n_steps``) and ``validation_step`` / ``test_step`` (loss and WER counts from one forward pass);
* ``transcribe(audio, batch_size=4, return_hypotheses=False, ...) -> list[Hypothesis]`` (greedy; dither and
  ``pad_to`` off while it runs; the mode is restored afterwards);
* ``change_vocabulary(new_labels)`` (a new decoder, same encoder weights) and ``change_decoding_strategy(cfg)``.
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
from compat.models.modelpt_module import SubModuleSpec
from compat.models.ctc_decoding import (
    check_decoding_supported,
    ctc_hypotheses,
    default_decoding_config,
    merge_decoding_config,
)
from compat.models.timestamps import ctc_timestamp_dicts
from compat.models.transcribe import transcribe_batches, transcribe_request
from nemofn.asr.data.inference_batches import restore_order
from nemofn.asr.ctc import CTCLoss
from nemofn.asr.metrics import error_counts
from nemofn.asr.models.ctc_model import CTCModel
from nemofn.asr.tokenizers import CharTokenizer
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.core.tree import tree_map
from nemofn.nn.module import Module

__all__ = ["EncDecCTCModel"]

log = logging.getLogger("compat.models")

_DS_KEYS = ("train_ds", "validation_ds", "test_ds")


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
        # A config from a .nemo may carry keys of other NeMo versions: warned about and dropped, not refused
        unknown = "warn" if self._is_model_being_restored() else "error"
        unit = CTCModel.from_config(cfg, tokenizer=self._build_tokenizer(cfg), unknown_keys=unknown)
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

    # -- NeMo's submodules ----------------------------------------------------------------------------------------

    def submodule_specs(self) -> list[SubModuleSpec]:
        """``preprocessor`` (``input_signal [B, T], length [B]`` -> features ``[B, F, T']``, lengths),
        ``spec_augmentation`` (``input_spec, length``; ``None`` without ``spec_augment`` in the config),
        ``encoder`` (``audio_signal [B, F, T'], length`` -> ``[B, D, T'']``, lengths) and ``decoder``
        (``encoder_output [B, D, T'']`` -> log-probs ``[B, T'', V+1]``)."""
        net = self.fn_model.network
        return [SubModuleSpec("preprocessor", net.preprocessor, ("input_signal", "length")),
                SubModuleSpec("spec_augmentation", net.spec_augment, ("input_spec", "length")),
                SubModuleSpec("encoder", net.encoder, ("audio_signal", "length")),
                SubModuleSpec("decoder", net.decoder, ("encoder_output",))]

    @property
    def tokenizer(self) -> Any:
        return self.fn_model.tokenizer

    @property
    def loss(self) -> CTCLoss:
        """NeMo's ``CTCLoss`` (blank last, ``zero_infinity``, the config's ``ctc_reduction``), keyword-callable."""
        net = self.fn_model.network
        return CTCLoss(num_classes=net.blank_id, zero_infinity=True, reduction=net.ctc_reduction)

    def forward(self, input_signal: torch.Tensor | None = None, input_signal_length: torch.Tensor | None = None,
                processed_signal: torch.Tensor | None = None, processed_signal_length: torch.Tensor | None = None):
        """NeMo's forward: ``(log_probs [B, T, V+1], encoded_len [B], greedy_predictions [B, T])``.

        Give either the waveform pair or the processed features pair. SpecAugment runs only in training mode.
        """
        encoded, encoded_len = self._encoder_forward(input_signal, input_signal_length, processed_signal,
                                                     processed_signal_length)
        log_probs = self.decoder(encoder_output=encoded)
        return log_probs, encoded_len, log_probs.argmax(dim=-1)

    # -- NeMo's steps ---------------------------------------------------------------------------------------------

    def _wer_counts(self, log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor,
                    tokens_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy-decoded word (or char, with ``use_cer``) errors and reference words, as int64 tensors."""
        unit = self.fn_model
        hypotheses = unit.text_decoder.decode(log_probs, lengths)
        references = [unit.tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens.cpu(), tokens_len.cpu())]
        errors, words = error_counts(hypotheses, references, use_cer=bool(self._cfg.get("use_cer", False)))
        return torch.tensor(errors, device=log_probs.device), torch.tensor(words, device=log_probs.device)

    def training_step(self, batch: Any, batch_nb: int = 0) -> dict[str, Any]:
        """NeMo's: forward, CTC loss; logs ``train_loss``, ``learning_rate``, ``global_step`` and, every
        ``log_every_n_steps`` batches, ``training_batch_wer`` (the backward pass and update are the trainer's)."""
        signal, signal_len, transcript, transcript_len = batch[:4]
        log_probs, encoded_len, _ = self.forward(input_signal=signal, input_signal_length=signal_len)
        loss = self.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len,
                         target_lengths=transcript_len)
        optimizer = self._optimizer
        lr = optimizer.param_groups[0]["lr"] if hasattr(optimizer, "param_groups") else float("nan")
        logs: dict[str, Any] = {"train_loss": loss, "learning_rate": lr,
                                "global_step": float(self.global_step)}
        every = int(getattr(self._trainer, "log_every_n_steps", 1) or 1)
        if (batch_nb + 1) % every == 0:
            with torch.no_grad():
                num, denom = self._wer_counts(log_probs.detach(), encoded_len, transcript, transcript_len)
            logs["training_batch_wer"] = num.float() / denom.float()
        return {"loss": loss, "log": logs}

    def validation_pass(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """Loss and WER counts of a batch from one forward: ``val_loss``, ``val_wer_num``, ``val_wer_denom``,
        ``val_wer``."""
        signal, signal_len, transcript, transcript_len = batch[:4]
        with torch.no_grad():
            log_probs, encoded_len, _ = self.forward(input_signal=signal, input_signal_length=signal_len)
            loss = self.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len,
                             target_lengths=transcript_len)
            num, denom = self._wer_counts(log_probs, encoded_len, transcript, transcript_len)
        return {"val_loss": loss, "val_wer_num": num, "val_wer_denom": denom, "val_wer": num.float() / denom.float()}

    # -- transcription ------------------------------------------------------------------------------------------

    def _hypotheses(self, log_probs: torch.Tensor, lengths: torch.Tensor, return_hypotheses: bool) -> list[Hypothesis]:
        unit = self.fn_model
        return ctc_hypotheses(log_probs, lengths, blank=unit.network.blank_id, text_decoder=unit.text_decoder,
                              return_hypotheses=return_hypotheses)

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
            num_workers: threads that read audio ahead of the model (0: one thread).
            channel_selector: for multi-channel files (see ``nemofn.asr.data.audio.select_channels``).
            verbose: show a progress bar.
            timestamps: also fill each ``Hypothesis.timestamp`` with NeMo's dict (``timestep``, ``char``, ``word``,
                ``segment``; frame offsets and seconds, see :mod:`nemofn.asr.timestamps`); implies
                ``return_hypotheses=True``, as in NeMo. The separators and timestamp type come from
                ``cfg.decoding`` (``word_seperator``, ``segment_seperators``, ``segment_gap_threshold``,
                ``ctc_timestamp_type``).
            override_config: an object with NeMo ``TranscribeConfig`` attributes; it replaces the arguments.
            config_kwargs: ``pad_min_duration`` (s) and ``pad_direction`` for array inputs.
        """
        request = transcribe_request(batch_size=batch_size, return_hypotheses=return_hypotheses,
                                     channel_selector=channel_selector, augmentor=augmentor, verbose=verbose,
                                     timestamps=timestamps, override_config=override_config,
                                     config_kwargs=config_kwargs, num_workers=num_workers)
        check_decoding_supported(self._cfg.get("decoding") or {})
        unit = self.fn_model
        batches = transcribe_batches(audio, request, sample_rate=unit.sample_rate)
        full = request.return_hypotheses or request.timestamps  # NeMo: timestamps come with full hypotheses
        was_training = self.training
        self.eval()
        try:
            results: list[tuple[list[int], list[Hypothesis]]] = []
            device = self.device
            for indices, signal, signal_len in batches:
                log_probs, encoded_len = unit.log_probs(self.fn_state, signal.to(device), signal_len.to(device))
                hypotheses = self._hypotheses(log_probs, encoded_len, full)
                if request.timestamps:
                    dicts = ctc_timestamp_dicts(self, log_probs, encoded_len, self._cfg.get("decoding"))
                    for hyp, stamp in zip(hypotheses, dicts):
                        hyp.timestamp = stamp
                results.append((indices, hypotheses))
            return restore_order(results, sum(len(i) for i, _ in results))
        finally:
            self.train(was_training)

    # -- vocabulary and decoding --------------------------------------------------------------------------------

    def _decoding_config(self, decoding_cfg: Any) -> DictConfig:
        """A user's decoding config, checked strictly; else the model's own (from a .nemo: lenient)."""
        if decoding_cfg is not None:
            return merge_decoding_config(decoding_cfg)
        return merge_decoding_config(self._cfg.get("decoding"), unknown="warn")

    def _swap_decoder(self, cfg: DictConfig, tokenizer: Any, decoding_cfg: Any) -> None:
        """Rebuilds the unit from ``cfg`` with a fresh decoder; the other weights are kept (same tensors)."""
        decoding = self._decoding_config(decoding_cfg)
        unit = CTCModel.from_config(cfg, tokenizer=tokenizer, unknown_keys="warn")  # cfg: validated when built
        old = self.fn_state
        dec_params, dec_buffers = unit.network.decoder.init(RngKey(self._draw_seed()))
        # the new decoder lives where the kept weights live (init builds host tensors)
        dec_params, dec_buffers = (tree_map(lambda t: t.to(old.device), tree) for tree in (dec_params, dec_buffers))
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
        cfg = self._decoding_config(decoding_cfg)
        check_decoding_supported(cfg)
        unit = self.fn_model
        decoder = unit.network.decoder.replace(temperature=float(cfg.get("temperature", 1.0)))
        self._replace_functional(attrs.evolve(unit, network=attrs.evolve(unit.network, decoder=decoder)))
        with open_dict(self._cfg):
            self._cfg.decoding = cfg
        if verbose:
            log.info("changed the decoding strategy to\n%s", OmegaConf.to_yaml(cfg))
