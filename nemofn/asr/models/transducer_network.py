"""The transducer network: preprocessor -> SpecAugment (training only) -> encoder, then prediction net + joint +
RNNT / TDT loss, and for hybrid models an auxiliary CTC head.

Params and buffers are trees under ``preprocessor``, ``encoder``, ``decoder`` (the prediction net), ``joint`` and,
for hybrids, ``ctc_decoder``: flattened, they are exactly the keys of NeMo's ``EncDecRNNTModel`` /
``EncDecHybridRNNTCTCModel`` state dicts. A TDT model is the same network with ``loss.loss_name: tdt`` and
``joint.num_extra_outputs`` duration logits, as in NeMo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from nemofn.asr.ctc import CTC_REDUCTIONS, ctc_loss
from nemofn.asr.modules.registry import build_module
from nemofn.asr.modules.rnnt_decoder import RNNTDecoder
from nemofn.asr.modules.rnnt_joint import RNNTJoint
from nemofn.asr.rnnt_loss import TRANSDUCER_REDUCTIONS, reduce_transducer_loss, rnnt_loss
from nemofn.asr.tdt_loss import tdt_loss
from nemofn.nn.module import Module, Scope, init_children

__all__ = ["TransducerLoss", "TransducerNetwork", "RNNT_LOSS_NAMES", "resolve_loss_name"]

#: NeMo's ``loss.loss_name`` values -> the lattice they compute. NeMo's RNNT kernels (warp-rnnt, numba, its
#: pure-PyTorch loss) all compute the same RNNT loss; ``tdt`` / ``tdt_pytorch`` the TDT loss.
RNNT_LOSS_NAMES = {"default": "rnnt", "warprnnt_numba": "rnnt", "warprnnt": "rnnt", "pytorch": "rnnt",
                   "tdt": "tdt", "tdt_pytorch": "tdt"}
_NOT_IMPLEMENTED_LOSSES = ("multiblank_rnnt", "multiblank_rnnt_pytorch", "graph_w_transducer", "graph_rnnt")


def resolve_loss_name(loss_cfg: Mapping[str, Any] | None) -> tuple[str, dict]:
    """``(NeMo loss name, its kwargs)`` of a ``loss:`` block: ``default`` is ``warprnnt_numba`` and reads
    ``warprnnt_numba_kwargs``, as NeMo's ``extract_rnnt_loss_cfg``."""
    loss_cfg = loss_cfg or {}
    name = str(loss_cfg.get("loss_name", "default"))
    if name == "default":
        name = "warprnnt_numba"
    kwargs = loss_cfg.get(f"{name}_kwargs") or {}
    return name, dict(kwargs)


@attrs.frozen
class TransducerLoss:
    """The transducer loss of a model config, callable on a joint output.

    Attributes:
        kind: ``"rnnt"`` or ``"tdt"``.
        blank: the blank id (``V``).
        reduction: NeMo's ``rnnt_reduction``.
        fastemit_lambda, clamp: FastEmit regularisation and gradient clamp (``clamp <= 0``: off).
        durations, sigma, omega: TDT only.
    """

    kind: str
    blank: int
    reduction: str = "mean_batch"
    fastemit_lambda: float = 0.0
    clamp: float = -1.0
    durations: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    sigma: float = 0.0
    omega: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, blank: int) -> TransducerLoss:
        """From a model config: its ``loss`` block and ``rnnt_reduction`` (default ``mean_batch``)."""
        name, kwargs = resolve_loss_name(cfg.get("loss"))
        if name in _NOT_IMPLEMENTED_LOSSES:
            raise NotImplementedError(f"model.loss.loss_name={name!r} is not implemented in nemofn; use 'default' "
                                      "(RNNT) or 'tdt'")
        if name not in RNNT_LOSS_NAMES:
            raise ValueError(f"model.loss.loss_name={name!r} is not a NeMo transducer loss; use one of "
                             f"{sorted(RNNT_LOSS_NAMES)}")
        reduction = cfg.get("rnnt_reduction", "mean_batch") or "none"
        if reduction not in TRANSDUCER_REDUCTIONS:
            raise ValueError(f"model.rnnt_reduction={reduction!r}; expected one of {list(TRANSDUCER_REDUCTIONS)}")
        kind = RNNT_LOSS_NAMES[name]
        if name == "tdt_pytorch":  # NeMo's pure-PyTorch TDT loss takes only durations and sigma
            kwargs = {k: kwargs[k] for k in ("durations", "sigma") if k in kwargs}
        durations = tuple(int(d) for d in kwargs.get("durations") or ())
        if kind == "tdt" and not durations:
            raise ValueError(f"model.loss.{name}_kwargs.durations is not set; a TDT loss needs its durations "
                             "(e.g. [0, 1, 2, 3, 4])")
        return cls(kind=kind, blank=blank, reduction=reduction,
                   fastemit_lambda=float(kwargs.get("fastemit_lambda", 0.0) or 0.0),
                   clamp=float(kwargs.get("clamp", -1.0) if kwargs.get("clamp") is not None else -1.0),
                   durations=durations if kind == "tdt" else (),
                   sigma=float(kwargs.get("sigma", 0.0) or 0.0) if kind == "tdt" else 0.0,
                   omega=float(kwargs.get("omega", 0.0) or 0.0) if kind == "tdt" else 0.0)

    def __call__(self, acts: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                 input_lengths: torch.Tensor | None = None, target_lengths: torch.Tensor | None = None, *,
                 log_probs: torch.Tensor | None = None, reduction: str | None = None) -> torch.Tensor:
        """acts ``[B, T, U+1, V+1(+D)]`` -> the loss (``reduction`` overrides the configured one).

        Also callable as NeMo's ``RNNTLoss``: ``loss(log_probs=, targets=, input_lengths=, target_lengths=)``.
        """
        acts = log_probs if acts is None else acts
        if acts is None or targets is None or input_lengths is None or target_lengths is None:
            raise TypeError("the transducer loss needs log_probs (the joint output), targets, input_lengths and "
                            "target_lengths")
        reduction = self.reduction if reduction is None else reduction
        if self.kind == "tdt":
            return tdt_loss(acts, targets, input_lengths, target_lengths, blank=self.blank, durations=self.durations,
                            sigma=self.sigma, omega=self.omega, reduction=reduction,
                            fastemit_lambda=self.fastemit_lambda, clamp=self.clamp)
        return rnnt_loss(acts, targets, input_lengths, target_lengths, blank=self.blank, reduction=reduction,
                         fastemit_lambda=self.fastemit_lambda, clamp=self.clamp)


@attrs.frozen
class TransducerNetwork(Module):
    """NeMo's ``EncDecRNNTModel`` (and hybrid RNNT/TDT + CTC) forward and loss as a stateless module.

    Attributes:
        preprocessor: waveform -> features ``[B, F, T]``.
        encoder: features -> ``[B, D, T']``.
        decoder: the prediction net (:class:`RNNTDecoder`).
        joint: :class:`RNNTJoint` (``V + 1 + D`` outputs).
        loss: the :class:`TransducerLoss`.
        spec_augment: optional; applied only while training.
        ctc_decoder: the hybrid's CTC head (``ConvASRDecoder``), or ``None``.
        ctc_loss_weight: ``w`` of ``(1 - w) * transducer + w * ctc`` (hybrid).
        ctc_reduction: the CTC loss reduction (hybrid).
    """

    preprocessor: Module
    encoder: Module
    decoder: RNNTDecoder
    joint: RNNTJoint
    loss: TransducerLoss
    spec_augment: Module | None = None
    ctc_decoder: Module | None = None
    ctc_loss_weight: float = 0.5
    ctc_reduction: str = "mean_batch"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TransducerNetwork:
        """Builds from a filled NeMo model config (``decoder.vocab_size``, ``joint.num_classes`` and
        ``joint.jointnet.{encoder_hidden, pred_hidden}`` set, as NeMo's constructor writes them)."""
        for key in ("preprocessor", "encoder", "decoder", "joint"):
            if cfg.get(key) is None:
                raise ValueError(f"model config has no `{key}` block; a transducer model needs preprocessor, "
                                 "encoder, decoder (prediction net) and joint")
        preprocessor = build_module(cfg["preprocessor"], where="model.preprocessor")
        encoder = build_module(cfg["encoder"], where="model.encoder")
        decoder = build_module(cfg["decoder"], where="model.decoder")
        joint = build_module(cfg["joint"], where="model.joint")
        spec = cfg.get("spec_augment")
        spec_augment = build_module(spec, where="model.spec_augment") if spec else None
        loss = TransducerLoss.from_config(cfg, blank=joint.num_classes)
        extra = joint.num_extra_outputs
        if loss.kind == "tdt" and extra != len(loss.durations):
            raise ValueError(f"model.joint.num_extra_outputs={extra} but the TDT loss has {len(loss.durations)} "
                             f"durations {list(loss.durations)}; they must be equal")
        if loss.kind == "rnnt" and extra:
            raise ValueError(f"model.joint.num_extra_outputs={extra} but model.loss is an RNNT loss; set "
                             "loss.loss_name: tdt (with tdt_kwargs.durations) or num_extra_outputs: 0")
        if joint.encoder_hidden != encoder.feat_out:
            raise ValueError(f"model.joint.jointnet.encoder_hidden={joint.encoder_hidden} (NeMo takes it from "
                             f"model.model_defaults.enc_hidden) but the encoder outputs {encoder.feat_out} channels; "
                             "set model_defaults.enc_hidden to the encoder's d_model (e.g. ${model.encoder.d_model})")
        if joint.pred_hidden != decoder.pred_hidden:
            raise ValueError(f"model.joint.jointnet.pred_hidden={joint.pred_hidden} (from "
                             f"model.model_defaults.pred_hidden) but the prediction net outputs {decoder.pred_hidden}; "
                             "set decoder.prednet.pred_hidden: ${model.model_defaults.pred_hidden}")
        if decoder.vocab_size != joint.num_classes:
            raise ValueError(f"model.decoder.vocab_size={decoder.vocab_size} but model.joint.num_classes="
                             f"{joint.num_classes}; both must be the vocabulary size")
        ctc_decoder, weight, reduction = None, 0.5, "mean_batch"
        aux = cfg.get("aux_ctc")
        if aux is not None:
            ctc_decoder = build_module(aux["decoder"], where="model.aux_ctc.decoder")
            weight = float(aux.get("ctc_loss_weight", 0.5))
            reduction = str(aux.get("ctc_reduction", "mean_batch") or "mean_batch")
            if reduction not in CTC_REDUCTIONS:
                raise ValueError(f"model.aux_ctc.ctc_reduction={reduction!r}; expected one of {list(CTC_REDUCTIONS)}")
        return cls(preprocessor=preprocessor, encoder=encoder, decoder=decoder, joint=joint, loss=loss,
                   spec_augment=spec_augment, ctc_decoder=ctc_decoder, ctc_loss_weight=weight,
                   ctc_reduction=reduction)

    @property
    def blank_id(self) -> int:
        return self.joint.num_classes

    @property
    def durations(self) -> tuple[int, ...] | None:
        """The TDT durations, or ``None`` for an RNNT model."""
        return self.loss.durations if self.loss.kind == "tdt" else None

    @property
    def is_hybrid(self) -> bool:
        return self.ctc_decoder is not None

    def init(self, rng):
        return init_children(rng, {"preprocessor": self.preprocessor, "encoder": self.encoder,
                                   "decoder": self.decoder, "joint": self.joint, "ctc_decoder": self.ctc_decoder})

    def apply(self, params, buffers, signal, signal_len, *, train=False, rng=None):
        """Waveforms -> encoder output (NeMo's ``EncDecRNNTModel.forward``).

        Args:
            signal: ``[B, T]`` float waveforms; signal_len: ``[B]`` int64.

        Returns:
            ``((encoded [B, D, T'], encoded_len [B]), new_buffers)``.
        """
        s = Scope(params, buffers, train=train, rng=rng)
        features, feat_len = s(self.preprocessor, "preprocessor", signal, signal_len)
        if train and self.spec_augment is not None:
            features = s(self.spec_augment, "spec_augment", features, feat_len)
        encoded, encoded_len = s(self.encoder, "encoder", features, feat_len)
        return (encoded, encoded_len), s.new_buffers

    def joint_output(self, params, encoded, decoder_out, *, train=False, rng=None, logits=False) -> torch.Tensor:
        """``encoded [B, D, T]``, ``decoder_out [B, H, U+1]`` -> joint ``[B, T, U+1, V+1(+D)]`` (NeMo's output: on
        the CPU log-softmaxed; ``logits=True``: the raw logits)."""
        # NeMo divides by the decoding temperature only where it log-softmaxes: keep its path then
        joint = self.joint.replace(log_softmax=False) if logits and self.joint.temperature == 1.0 else self.joint
        out, _ = joint.apply(params["joint"], {}, encoded, decoder_out, train=train, rng=rng)
        return out

    def transducer_loss(self, params, encoded, encoded_len, targets, targets_len, *, train=False, rng=None,
                        reduction: str | None = None) -> torch.Tensor:
        """Prediction net, joint and transducer loss of a batch (see :meth:`joint_loss`).

        Args:
            encoded: ``[B, D, T]``; encoded_len, targets_len: ``[B]``; targets: ``[B, U]`` token ids.
        """
        (dec_out, _, _), _ = self.decoder.apply(params["decoder"], {}, targets, targets_len, train=train, rng=rng)
        return self.joint_loss(params, encoded, encoded_len, dec_out, targets, targets_len, train=train, rng=rng,
                               reduction=reduction)

    def joint_loss(self, params, encoded, encoded_len, decoder_out, targets, targets_len, *, train=False, rng=None,
                   reduction: str | None = None) -> torch.Tensor:
        """Joint and transducer loss from the encoder and prediction-net outputs.

        With the joint's ``fuse_loss_wer`` the joint and the per-utterance losses are computed in sub-batches of
        ``fused_batch_size`` utterances, each trimmed to its own longest ``T`` and ``U`` (NeMo's fused joint), so
        the largest joint tensor is ``[fused_batch_size, T, U+1, V+1+D]``; the losses are reduced together at the
        end, which gives the same value as the unfused path. The loss gets the joint's raw logits: it normalises the
        token (and duration) parts itself, so NeMo's extra log-softmax of the joint would change nothing but the time.

        Args:
            encoded: ``[B, D, T]``; decoder_out: ``[B, H, U+1]``; targets: ``[B, U]``; lengths ``[B]``.
            reduction: overrides the configured ``rnnt_reduction``.
        """
        reduction = self.loss.reduction if reduction is None else reduction
        sub = self.joint.fused_batch_size if self.joint.fuse_loss_wer else None
        if not sub or sub >= encoded.shape[0]:
            acts = self.joint_output(params, encoded, decoder_out, train=train, rng=rng, logits=True)
            return self.loss(acts, targets, encoded_len, targets_len, reduction=reduction)
        losses = []
        for start in range(0, encoded.shape[0], sub):
            end = start + sub
            t_max = int(encoded_len[start:end].max())
            u_max = int(targets_len[start:end].max())
            acts = self.joint_output(params, encoded[start:end, :, :t_max], decoder_out[start:end, :, : u_max + 1],
                                     train=train, rng=rng, logits=True)
            losses.append(self.loss(acts, targets[start:end, :u_max], encoded_len[start:end],
                                    targets_len[start:end], reduction="none"))
        return reduce_transducer_loss(torch.cat(losses), targets_len, reduction)

    def ctc_log_probs(self, params, encoded, *, train=False, rng=None) -> torch.Tensor:
        """The hybrid's CTC head: ``encoded [B, D, T]`` -> log-probs ``[B, T, V+1]``."""
        if self.ctc_decoder is None:
            raise ValueError("this transducer has no CTC head (model.aux_ctc); only hybrid models do")
        out, _ = self.ctc_decoder.apply(params["ctc_decoder"], {}, encoded, train=train, rng=rng)
        return out

    def losses(self, params, buffers, batch: Sequence[torch.Tensor], *, train=False, rng=None):
        """Every loss of a batch: ``({"loss", "rnnt_loss"[, "ctc_loss"]}, encoded, encoded_len, new_buffers)``.

        ``loss`` is the transducer loss, or ``(1 - w) * transducer + w * ctc`` for a hybrid with ``w > 0``.
        """
        signal, signal_len, tokens, tokens_len = batch[:4]
        (encoded, encoded_len), new_buffers = self.apply(params, buffers, signal, signal_len, train=train, rng=rng)
        transducer = self.transducer_loss(params, encoded, encoded_len, tokens, tokens_len, train=train, rng=rng)
        out = {"loss": transducer, "rnnt_loss": transducer}
        if self.ctc_decoder is not None and self.ctc_loss_weight > 0:
            log_probs = self.ctc_log_probs(params, encoded, train=train, rng=rng)
            ctc = ctc_loss(log_probs, tokens, encoded_len, tokens_len, blank=self.blank_id,
                           reduction=self.ctc_reduction, zero_infinity=True)
            out["ctc_loss"] = ctc
            out["loss"] = (1.0 - self.ctc_loss_weight) * transducer + self.ctc_loss_weight * ctc
        return out, encoded, encoded_len, new_buffers

    def objective(self, params, buffers, batch, *, train=False, rng=None):
        """The training objective (``nemofn.train`` protocol).

        Args:
            batch: ``(signal [B, T], signal_len [B], tokens [B, U], tokens_len [B])``.

        Returns:
            ``(loss, metrics, new_buffers)``; metrics hold detached tensors (hybrids add ``rnnt_loss`` and
            ``ctc_loss``).
        """
        values, _, _, new_buffers = self.losses(params, buffers, batch, train=train, rng=rng)
        metrics = {"loss": values["loss"].detach()}
        if "ctc_loss" in values:
            metrics.update(rnnt_loss=values["rnnt_loss"].detach(), ctc_loss=values["ctc_loss"].detach())
        return values["loss"], metrics, new_buffers
