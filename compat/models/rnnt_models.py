"""``EncDecRNNTModel``: NeMo's char RNNT / TDT model over ``nemofn.asr.models.transducer_model.TransducerModel``.

A TDT model is this class (or the BPE one) with ``loss.loss_name: tdt``, as in NeMo. NeMo-style pieces:

* submodules ``preprocessor``, ``spec_augmentation``, ``encoder``, ``decoder`` (the prediction net:
  ``decoder(targets=, target_length=) -> (g [B, H, U+1], lengths, state)``) and ``joint``
  (``joint(encoder_outputs=[B, D, T], decoder_outputs=[B, H, U+1]) -> [B, T, U+1, V+1(+D)]``), each in its own mode;
  ``model(input_signal=, input_signal_length=) -> (encoded, encoded_len)``; ``model.loss(log_probs=, targets=,
  input_lengths=, target_lengths=)``;
* NeMo's ``training_step`` (``train_loss``, ``learning_rate``, ``global_step``, ``training_batch_wer`` every
  ``log_every_n_steps``) and ``validation_step`` (``val_loss`` when ``compute_eval_loss``, WER counts);
* ``transcribe(audio, batch_size=4, return_hypotheses=False, timestamps=None, ...) -> list[Hypothesis]`` (greedy
  RNNT / TDT; token ids, frame timestamps, TDT durations), ``model.decoding.rnnt_decoder_predictions_tensor``;
* ``change_decoding_strategy(cfg)`` (greedy / greedy_batch) and ``change_vocabulary(new_labels)``.
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
from compat.models.transcribe import transcribe_batches, transcribe_request
from nemofn.asr.data.inference_batches import restore_order
from nemofn.asr.metrics import error_counts
from nemofn.asr.models.transducer_model import TransducerDecoding, TransducerModel
from nemofn.asr.tokenizers import CharTokenizer
from nemofn.asr.transducer_greedy import TransducerHyps
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.core.tree import tree_map

__all__ = ["EncDecRNNTModel", "RNNTDecodingFace"]

log = logging.getLogger("compat.models")

_DS_KEYS = ("train_ds", "validation_ds", "test_ds")
_TRAINING_KEY = RngKey(0)  # marks a training call; dropout draws from torch's global generator
_HEADS = ("decoder", "joint", "ctc_decoder")


def transducer_decoding_defaults() -> DictConfig:
    """NeMo 3.0's ``RNNTDecodingConfig()`` as a DictConfig."""
    from nemofn.asr.configs.transducer import default_transducer_decoding

    return default_transducer_decoding()


def merge_transducer_decoding_config(decoding_cfg: Any, *, unknown: str = "error") -> DictConfig:
    """NeMo's ``OmegaConf.merge(RNNTDecodingConfig(), decoding_cfg)``, every key checked."""
    from nemofn.asr.configs.transducer import merge_transducer_decoding

    return merge_transducer_decoding(decoding_cfg, unknown=unknown)


def hypotheses_from(hyps: TransducerHyps, texts: list[str], *, full: bool) -> list[Hypothesis]:
    """NeMo's ``Hypothesis`` objects of a greedy batch. ``full=False`` gives NeMo's stripped form
    ``Hypothesis(score, y_sequence, text)`` (``transcribe(return_hypotheses=False)``)."""
    out = []
    for i, text in enumerate(texts):
        tokens = torch.tensor(hyps.tokens[i], dtype=torch.long)
        if not full:
            out.append(Hypothesis(score=hyps.scores[i], y_sequence=tokens, text=text))
            continue
        out.append(Hypothesis(score=hyps.scores[i], y_sequence=tokens, text=text,
                              timestamp=torch.tensor(hyps.timestamps[i], dtype=torch.long),
                              token_duration=torch.tensor(hyps.durations[i], dtype=torch.long),
                              alignments=None if hyps.alignments is None else hyps.alignments[i],
                              length=len(hyps.tokens[i])))
    return out


class RNNTDecodingFace:
    """``model.decoding``: NeMo's ``RNNTDecoding.rnnt_decoder_predictions_tensor`` over the model's greedy decoding."""

    def __init__(self, model: EncDecRNNTModel) -> None:
        self._model = model

    @property
    def cfg(self) -> DictConfig:
        return self._model.cfg.decoding

    @torch.inference_mode()
    def rnnt_decoder_predictions_tensor(self, encoder_output: torch.Tensor, encoded_lengths: torch.Tensor,
                                        return_hypotheses: bool = False, partial_hypotheses: Any = None
                                        ) -> list[Hypothesis]:
        """``encoder_output [B, D, T]``, ``encoded_lengths [B]`` -> one ``Hypothesis`` per utterance (NeMo 3.0
        returns ``Hypothesis`` objects whether ``return_hypotheses`` is set or not)."""
        if partial_hypotheses is not None:
            raise NotImplementedError("partial_hypotheses (streaming continuation) is not implemented in compat")
        model = self._model
        unit = model.fn_model
        hyps = unit.greedy(model.fn_state, encoder_output.to(model.device), encoded_lengths.to(model.device))
        texts = [unit.ids_to_text(t) for t in hyps.tokens]
        return hypotheses_from(hyps, texts, full=True)


class EncDecRNNTModel(ASRModel, nemo_target="nemo.collections.asr.models.rnnt_models.EncDecRNNTModel",
                      nemo_aliases=("nemo.collections.asr.models.EncDecRNNTModel",)):
    """NeMo's ``EncDecRNNTModel`` (char labels; RNNT or TDT). See the module doc."""

    # -- construction -------------------------------------------------------------------------------------------

    def _build_tokenizer(self, cfg: DictConfig) -> Any:
        labels = cfg.get("labels")
        if not labels:
            raise ValueError("a char transducer model (EncDecRNNTModel) needs `labels` in its config")
        return CharTokenizer(list(labels))

    def build_functional(self, cfg: DictConfig) -> TransducerModel:
        """Builds the :class:`TransducerModel` and writes into ``cfg`` what NeMo's constructor writes."""
        unknown = "warn" if self._is_model_being_restored() else "error"
        if cfg.get("decoding") is None:
            with open_dict(cfg):
                cfg.decoding = transducer_decoding_defaults()
        unit = TransducerModel.from_config(cfg, tokenizer=self._build_tokenizer(cfg), unknown_keys=unknown)
        self._write_filled_config(cfg, unit.cfg)
        self.__dict__["cur_decoder"] = "rnnt"
        return unit

    @staticmethod
    def _write_filled_config(cfg: DictConfig, filled: DictConfig) -> None:
        with open_dict(cfg):
            cfg.labels = ListConfig(list(filled.labels))
            cfg.decoder.vocab_size = filled.decoder.vocab_size
            cfg.joint.num_classes = filled.joint.num_classes
            cfg.joint.vocabulary = ListConfig(list(filled.joint.vocabulary))
            cfg.joint.jointnet.encoder_hidden = filled.joint.jointnet.encoder_hidden
            cfg.joint.jointnet.pred_hidden = filled.joint.jointnet.pred_hidden
            if filled.decoding.get("durations") is not None:
                cfg.decoding.durations = ListConfig(list(filled.decoding.durations))
            if filled.get("aux_ctc") is not None:
                for key in ("vocabulary", "num_classes", "feat_in"):
                    cfg.aux_ctc.decoder[key] = copy.deepcopy(filled.aux_ctc.decoder[key])
                if cfg.aux_ctc.get("decoding") is None:
                    cfg.aux_ctc.decoding = copy.deepcopy(filled.aux_ctc.decoding)

    # -- NeMo's submodules ----------------------------------------------------------------------------------------

    def submodule_specs(self) -> list[SubModuleSpec]:
        """``preprocessor``, ``spec_augmentation``, ``encoder`` (as for CTC models), ``decoder`` (``targets [B, U],
        target_length [B]`` -> ``(g [B, H, U+1], target_length, (h, c))``) and ``joint`` (``encoder_outputs
        [B, D, T], decoder_outputs [B, H, U+1]`` -> ``[B, T, U+1, V+1(+D)]``)."""
        net = self.fn_model.network
        return [SubModuleSpec("preprocessor", net.preprocessor, ("input_signal", "length")),
                SubModuleSpec("spec_augmentation", net.spec_augment, ("input_spec", "length")),
                SubModuleSpec("encoder", net.encoder, ("audio_signal", "length")),
                SubModuleSpec("decoder", net.decoder, ("targets", "target_length")),
                SubModuleSpec("joint", net.joint, ("encoder_outputs", "decoder_outputs"))]

    @property
    def tokenizer(self) -> Any:
        return self.fn_model.tokenizer

    @property
    def loss(self) -> Any:
        """NeMo's ``RNNTLoss`` (or TDT), keyword-callable: ``loss(log_probs=, targets=, input_lengths=,
        target_lengths=)``."""
        return self.fn_model.network.loss

    @property
    def decoding(self) -> RNNTDecodingFace:
        return RNNTDecodingFace(self)

    @property
    def blank_id(self) -> int:
        return self.fn_model.blank_id

    def forward(self, input_signal: torch.Tensor | None = None, input_signal_length: torch.Tensor | None = None,
                processed_signal: torch.Tensor | None = None, processed_signal_length: torch.Tensor | None = None):
        """NeMo's forward: ``(encoded [B, D, T], encoded_len [B])``. SpecAugment runs only in training mode."""
        return self._encoder_forward(input_signal, input_signal_length, processed_signal, processed_signal_length)

    # -- losses and metrics -------------------------------------------------------------------------------------

    def _joint_loss(self, encoded: torch.Tensor, encoded_len: torch.Tensor, transcript: torch.Tensor,
                    transcript_len: torch.Tensor) -> torch.Tensor:
        """Prediction net (in ``decoder``'s mode), joint (in ``joint``'s mode) and the transducer loss."""
        decoder_out, _, _ = self.decoder(targets=transcript, target_length=transcript_len)
        train = self.joint.training
        return self.fn_model.network.joint_loss(self.fn_state.params, encoded, encoded_len, decoder_out, transcript,
                                                transcript_len, train=train, rng=_TRAINING_KEY if train else None)

    def _references(self, tokens: torch.Tensor, tokens_len: torch.Tensor) -> list[str]:
        tokenizer = self.fn_model.tokenizer
        return [tokenizer.decode(t[: int(n)].tolist()) for t, n in zip(tokens.cpu(), tokens_len.cpu())]

    def _wer_counts(self, encoded: torch.Tensor, encoded_len: torch.Tensor, tokens: torch.Tensor,
                    tokens_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy-decoded word (``use_cer``: char) errors and reference words, as int64 tensors."""
        unit = self.fn_model
        hyps = unit.greedy(self.fn_state, encoded.detach(), encoded_len)
        texts = [unit.ids_to_text(t) for t in hyps.tokens]
        errors, words = error_counts(texts, self._references(tokens, tokens_len),
                                     use_cer=bool(self._cfg.get("use_cer", False)))
        return torch.tensor(errors, device=encoded.device), torch.tensor(words, device=encoded.device)

    def _learning_rate(self) -> float:
        optimizer = self._optimizer
        return optimizer.param_groups[0]["lr"] if hasattr(optimizer, "param_groups") else float("nan")

    def _log_wer_now(self, batch_nb: int) -> bool:
        every = int(getattr(self._trainer, "log_every_n_steps", 1) or 1)
        return (batch_nb + 1) % every == 0

    def _training_values(self, batch: Any, batch_nb: int) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor,
                                                                     torch.Tensor]:
        """``(loss, logs, encoded, encoded_len)`` of a training batch (subclasses add to the loss)."""
        signal, signal_len, transcript, transcript_len = batch[:4]
        encoded, encoded_len = self.forward(input_signal=signal, input_signal_length=signal_len)
        loss = self._joint_loss(encoded, encoded_len, transcript, transcript_len)
        logs: dict[str, Any] = {"train_loss": loss, "learning_rate": self._learning_rate(),
                                "global_step": float(self.global_step)}
        if self._log_wer_now(batch_nb):
            num, denom = self._wer_counts(encoded, encoded_len, transcript, transcript_len)
            logs["training_batch_wer"] = num.float() / denom.float()
        return loss, logs, encoded, encoded_len

    def training_step(self, batch: Any, batch_nb: int = 0) -> dict[str, Any]:
        """NeMo's: encoder, prediction net, joint and loss (fused in sub-batches with ``fuse_loss_wer``); logs
        ``train_loss``, ``learning_rate``, ``global_step`` and, every ``log_every_n_steps`` batches,
        ``training_batch_wer`` (the backward pass and update are the trainer's)."""
        loss, logs, _, _ = self._training_values(batch, batch_nb)
        return {"loss": loss, "log": logs}

    @torch.no_grad()
    def _validation_values(self, batch: Any) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """``(values, encoded, encoded_len)`` of a validation batch."""
        signal, signal_len, transcript, transcript_len = batch[:4]
        out: dict[str, Any] = {}
        encoded, encoded_len = self.forward(input_signal=signal, input_signal_length=signal_len)
        if self._cfg.get("compute_eval_loss", True):
            out["val_loss"] = self._joint_loss(encoded, encoded_len, transcript, transcript_len)
        num, denom = self._wer_counts(encoded, encoded_len, transcript, transcript_len)
        out.update(val_wer_num=num, val_wer_denom=denom, val_wer=num.float() / denom.float())
        return out, encoded, encoded_len

    def validation_pass(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """``val_loss`` (when ``compute_eval_loss``, default true), ``val_wer_num``, ``val_wer_denom``, ``val_wer``."""
        return self._validation_values(batch)[0]

    # -- transcription ------------------------------------------------------------------------------------------

    def _transcribe_batch(self, signal: torch.Tensor, signal_len: torch.Tensor, request: Any) -> list[Hypothesis]:
        unit = self.fn_model
        encoded, encoded_len = unit.encode(self.fn_state, signal.to(self.device), signal_len.to(self.device))
        hyps = unit.greedy(self.fn_state, encoded, encoded_len)
        texts = [unit.ids_to_text(t) for t in hyps.tokens]
        results = hypotheses_from(hyps, texts, full=request.return_hypotheses or request.timestamps)
        if request.timestamps:
            self._add_timestamps(results, hyps)
        return results

    def _add_timestamps(self, results: list[Hypothesis], hyps: TransducerHyps) -> None:
        """NeMo's ``timestamp`` dict (``timestep``, ``char``, ``word``, ``segment``) on each hypothesis."""
        from compat.models.timestamps import transducer_timestamp_dicts

        for hyp, dicts in zip(results, transducer_timestamp_dicts(self, hyps)):
            hyp.timestamp = dicts

    @torch.inference_mode()
    def transcribe(self, audio: Any, batch_size: int = 4, return_hypotheses: bool = False,
                   partial_hypothesis: Any = None, num_workers: int = 0, channel_selector: Any = None,
                   augmentor: Any = None, verbose: bool = True, timestamps: bool | None = None,
                   override_config: Any = None, **config_kwargs: Any) -> list[Hypothesis]:
        """Greedy transcription: a flat ``list[Hypothesis]``, one per input, in order (NeMo 3.0).

        Args:
            audio: a path, a list of paths, a ``.json`` / ``.jsonl`` manifest path, numpy arrays / tensors of
                samples at the model's rate, or a DataLoader.
            batch_size: inputs per forward pass.
            return_hypotheses: full hypotheses (``timestamp`` frame indices, TDT ``token_duration``); otherwise
                NeMo's stripped ``Hypothesis(score, y_sequence, text)``.
            timestamps: ``timestamp`` becomes NeMo's dict with ``timestep``, ``char``, ``word`` and ``segment``
                offsets (frames) and times (seconds).
            num_workers: threads that read audio ahead of the model (0: one thread).
            override_config: an object with NeMo ``TranscribeConfig`` attributes; it replaces the arguments.
            config_kwargs: ``pad_min_duration`` (s) and ``pad_direction`` for array inputs.
        """
        if partial_hypothesis is not None:
            raise NotImplementedError("transcribe(partial_hypothesis=...) (streaming continuation) is not "
                                      "implemented in compat")
        request = transcribe_request(batch_size=batch_size, return_hypotheses=return_hypotheses,
                                     channel_selector=channel_selector, augmentor=augmentor, verbose=verbose,
                                     timestamps=timestamps, override_config=override_config,
                                     config_kwargs=config_kwargs, num_workers=num_workers)
        if self.fn_model.network.durations is not None and (request.return_hypotheses or request.timestamps):
            # NeMo's greedy TDT reports token durations that depend on the batch (see nemofn.asr.transducer_greedy):
            # keep NeMo's batches (input order) so they match; texts alone are batch-independent and get sorted.
            request = attrs.evolve(request, sort_by_length=False)
        batches = transcribe_batches(audio, request, sample_rate=self.fn_model.sample_rate)
        was_training = self.training
        self.eval()
        try:
            results = [(indices, self._transcribe_batch(signal, signal_len, request))
                       for indices, signal, signal_len in batches]
            return restore_order(results, sum(len(i) for i, _ in results))
        finally:
            self.train(was_training)

    # -- decoding and vocabulary ----------------------------------------------------------------------------------

    def _decoding_config(self, decoding_cfg: Any) -> DictConfig:
        if decoding_cfg is not None:
            return merge_transducer_decoding_config(decoding_cfg)
        return merge_transducer_decoding_config(self._cfg.get("decoding"), unknown="warn")

    def change_decoding_strategy(self, decoding_cfg: Any = None, verbose: bool = True) -> None:
        """Merges ``decoding_cfg`` onto NeMo's ``RNNTDecodingConfig`` defaults and applies it (``greedy`` /
        ``greedy_batch``; ``max_symbols``; ``temperature``). TDT durations come from the loss, as in NeMo.

        Raises:
            NotImplementedError: a beam-search strategy.
        """
        cfg = self._decoding_config(decoding_cfg)
        unit = self.fn_model
        durations = unit.network.durations
        if durations is not None:
            with open_dict(cfg):
                cfg.durations = ListConfig(list(durations))
        self._replace_functional(unit.with_decoding(TransducerDecoding.from_config(cfg, durations=durations)))
        with open_dict(self._cfg):
            self._cfg.decoding = cfg
        if verbose:
            log.info("changed the decoding strategy to\n%s", OmegaConf.to_yaml(cfg))

    def _swap_heads(self, cfg: DictConfig, tokenizer: Any, decoding_cfg: Any) -> None:
        """Rebuilds the unit for a new vocabulary: fresh prediction net, joint (and CTC head); the preprocessor and
        encoder weights are kept (same tensors)."""
        with open_dict(cfg):
            if decoding_cfg is not None:
                cfg.decoding = merge_transducer_decoding_config(decoding_cfg)
        unit = TransducerModel.from_config(cfg, tokenizer=tokenizer, unknown_keys="warn")
        fresh, _ = unit.network.init(RngKey(self._draw_seed()))
        old = self.fn_state
        params = dict(old.params)
        for key in _HEADS:
            if key in fresh:  # the new heads live where the kept weights live (init builds host tensors)
                params[key] = tree_map(lambda t: t.to(old.device), fresh[key])
        state = ModelState.create(params, dict(old.buffers))
        self._write_filled_config(cfg, unit.cfg)
        with open_dict(self._cfg):
            for key in ("labels", "decoder", "joint", "decoding", "aux_ctc"):
                if cfg.get(key) is not None:
                    self._cfg[key] = copy.deepcopy(cfg[key])
        self._replace_functional(unit, state)

    def change_vocabulary(self, new_vocabulary: list[str], decoding_cfg: Any = None) -> None:
        """New output labels: a fresh prediction net and joint; preprocessor and encoder weights are kept.

        Also sets ``labels`` of ``train_ds`` / ``validation_ds`` / ``test_ds``. Set up the optimizer again after.
        """
        if not new_vocabulary:
            raise ValueError(f"new_vocabulary must be a non-empty list of labels, got {new_vocabulary!r}")
        if list(self._cfg.joint.get("vocabulary") or []) == list(new_vocabulary):
            log.warning("old and new vocabulary are the same; nothing changed")
            return
        cfg = copy.deepcopy(self._cfg)
        with open_dict(cfg):
            cfg.labels = ListConfig(list(new_vocabulary))
        self._swap_heads(cfg, CharTokenizer(list(new_vocabulary)), decoding_cfg)
        with open_dict(self._cfg):
            for key in _DS_KEYS:
                if self._cfg.get(key) is not None:
                    self._cfg[key].labels = ListConfig(list(new_vocabulary))
        log.info("changed the prediction net and joint to %d labels", len(new_vocabulary))
