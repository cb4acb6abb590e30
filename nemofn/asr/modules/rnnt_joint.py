"""``RNNTJoint``: a transducer's joint network, which combines encoder frames and prediction-net steps.

Mirrors ``RNNTJoint`` of ``nemo/collections/asr/modules/rnnt.py``. Params, with NeMo's state-dict names under the model
prefix ``joint``::

    enc.weight [J, enc_hidden]     enc.bias [J]
    pred.weight [J, pred_hidden]   pred.bias [J]
    joint_net.{2|1}.weight [V + 1 + D, J]   joint_net.{2|1}.bias [V + 1 + D]

``joint_net`` is NeMo's ``Sequential(activation, [Dropout], Linear)``: the output layer is slot 2 when
``dropout > 0`` and slot 1 when ``dropout == 0`` (no Dropout module then). All three Linears keep PyTorch's default
init, as in NeMo. The last dim of the output is laid out as tokens ``0 .. V-1``, blank ``V``, then the ``D`` TDT
duration logits.

The joint's output is log-softmaxed over the whole last dim when ``log_softmax`` is true, or, with
``log_softmax=None`` (NeMo's default), only when the tensor is not on a CUDA device; ``temperature`` divides the logits
before that log-softmax (and only then, as in NeMo).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nemofn.asr.configs.modules import RNNT_JOINT_ACTIVATIONS, RNNTJointConfig, RNNTJointNetConfig
from nemofn.core.rng import RngKey, as_key
from nemofn.core.schema import ConfigError, join_key, module_kwargs
from nemofn.core.schema_fields import is_required
from nemofn.nn.linear import Linear
from nemofn.nn.module import Module

__all__ = ["RNNTJoint"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
_JOINTNET_KEYS = ("encoder_hidden", "pred_hidden", "joint_hidden", "activation", "dropout")


def _vocab(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class RNNTJoint(Module):
    """The joint network of RNN-T / TDT models.

    Args:
        num_classes: ``V``, the vocabulary size without the blank; the blank id is ``V``.
        encoder_hidden: encoder output size.
        pred_hidden: prediction-network output size.
        joint_hidden: ``J``, the joint's hidden size.
        activation: ``relu``, ``tanh`` or ``sigmoid`` (after adding the two projections).
        dropout: after the activation, in training only.
        num_extra_outputs: ``D``, the TDT duration logits appended after the blank.
        log_softmax: ``None``: log-softmax the output iff it is not on CUDA (NeMo); true/false force it.
        vocabulary: the labels (informational, as in NeMo).
        fuse_loss_wer: NeMo's fused joint + loss over sub-batches of ``fused_batch_size`` (the model runs it;
            this module always returns the joint output).
        fused_batch_size: required with ``fuse_loss_wer``.
        preserve_memory: empty the CUDA cache after each joint, as NeMo (slow; no effect on the CPU).
        temperature: divides the logits before the log-softmax (NeMo sets it from the decoding config; change it
            with ``joint.replace(temperature=t)``).
        masking_prob: HAINAN: in training, zero each prediction-net step's projection with this probability
            (``<= 0``: off).
    """

    num_classes: int
    encoder_hidden: int
    pred_hidden: int
    joint_hidden: int
    activation: str = "relu"
    dropout: float = 0.0
    num_extra_outputs: int = 0
    log_softmax: bool | None = None
    vocabulary: tuple[str, ...] | None = attrs.field(default=None, converter=_vocab)
    fuse_loss_wer: bool = False
    fused_batch_size: int | None = None
    preserve_memory: bool = False
    temperature: float = 1.0
    masking_prob: float = -1.0

    def __attrs_post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"RNNTJoint: jointnet.activation={self.activation!r} is not supported; use one of "
                             f"{list(RNNT_JOINT_ACTIVATIONS)}")
        if self.fuse_loss_wer and self.fused_batch_size is None:
            raise ValueError("RNNTJoint: fuse_loss_wer is set, so fused_batch_size cannot be null; set "
                             "fused_batch_size (e.g. 4) or fuse_loss_wer: false")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RNNTJoint: jointnet.dropout={self.dropout} must be in [0, 1)")
        if self.masking_prob >= 1.0:
            raise ValueError(f"RNNTJoint: masking_prob={self.masking_prob} must be below 1")
        if self.num_classes <= 0 or self.num_extra_outputs < 0:
            raise ValueError(f"RNNTJoint: num_classes={self.num_classes} must be positive and "
                             f"num_extra_outputs={self.num_extra_outputs} non-negative")

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "joint") -> RNNTJoint:
        """Builds from NeMo's ``joint:`` block (``jointnet: {...}``, ``num_classes``, ``log_softmax``, ...; a dict,
        DictConfig or :class:`~nemofn.asr.configs.modules.RNNTJointConfig`), checked against that schema so that
        errors name the full key (``joint.jointnet.activation``)."""
        kwargs = module_kwargs(cfg, RNNTJointConfig, path)
        jointnet = dict(kwargs.pop("jointnet", None) or {})
        jointnet_path = join_key(path, "jointnet")
        absent = [k for k in _JOINTNET_KEYS if k not in jointnet and is_required(RNNTJointNetConfig, k)]
        if absent:
            key = join_key(jointnet_path, absent[0])
            raise ConfigError(f"{jointnet_path}: missing required key(s) {', '.join(absent)}", key=key)
        experimental = kwargs.pop("experimental_fuse_loss_wer", None)
        if experimental is not None:
            kwargs["fuse_loss_wer"] = experimental
        if kwargs.get("fuse_loss_wer") and kwargs.get("fused_batch_size") is None:
            key = join_key(path, "fused_batch_size")
            raise ConfigError(f"{join_key(path, 'fuse_loss_wer')} is true, so {key} cannot be null; set {key} "
                              f"(the sub-batch size, e.g. 4) or {join_key(path, 'fuse_loss_wer')}: false", key=key)
        return cls(**kwargs, **jointnet)

    # ------------------------------------------------------------------------------------------------ sizes
    @property
    def num_classes_with_blank(self) -> int:
        """Output width ``V + 1 + D``."""
        return self.num_classes + 1 + self.num_extra_outputs

    @property
    def blank_id(self) -> int:
        """The blank id, ``V``."""
        return self.num_classes

    @property
    def output_slot(self) -> str:
        """The output Linear's index in NeMo's ``joint_net`` Sequential: ``"2"`` with dropout, else ``"1"``."""
        return "2" if self.dropout else "1"

    def init(self, rng: RngKey | int) -> tuple[dict, dict]:
        """PyTorch's default Linear init for ``pred``, ``enc`` and the output layer (NeMo applies no other)."""
        key = as_key(rng)
        pred, _ = Linear(self.pred_hidden, self.joint_hidden).init(key.fold_in("pred"))
        enc, _ = Linear(self.encoder_hidden, self.joint_hidden).init(key.fold_in("enc"))
        out, _ = Linear(self.joint_hidden, self.num_classes_with_blank).init(
            key.fold_in("joint_net").fold_in(self.output_slot))
        return {"pred": pred, "enc": enc, "joint_net": {self.output_slot: out}}, {}

    # ------------------------------------------------------------------------------------------------ calls
    def project_encoder(self, params: dict, f: torch.Tensor) -> torch.Tensor:
        """f ``[..., encoder_hidden]`` (e.g. ``[B, T, enc]``) -> ``[..., J]``."""
        return F.linear(f, params["enc"]["weight"], params["enc"].get("bias"))

    def project_prednet(self, params: dict, g: torch.Tensor) -> torch.Tensor:
        """g ``[..., pred_hidden]`` (e.g. ``[B, U + 1, pred]``) -> ``[..., J]``."""
        return F.linear(g, params["pred"]["weight"], params["pred"].get("bias"))

    def joint_after_projection(self, params: dict, f: torch.Tensor, g: torch.Tensor, *, train: bool = False,
                               rng: RngKey | None = None) -> torch.Tensor:
        """Joins projected encoder and prediction-net outputs.

        Args:
            f: ``[B, T, J]`` and g ``[B, U, J]`` -> output ``[B, T, U, V + 1 + D]`` (NeMo's broadcast); any other
                ranks are added as they broadcast, e.g. single decoding steps f ``[B, J]``, g ``[B, J]`` ->
                ``[B, V + 1 + D]``.
            train: dropout (and HAINAN masking) on; needs ``rng`` when one of them is active.

        Returns:
            Logits, or log-probs under the log-softmax rule (see the module doc).
        """
        if f.dim() == 3 and g.dim() == 3:
            f, g = f.unsqueeze(2), g.unsqueeze(1)
        masking = train and self.masking_prob > 0.0
        if (masking or (train and self.dropout > 0.0)) and rng is None:
            raise ValueError(f"RNNTJoint in training with dropout={self.dropout} / masking_prob={self.masking_prob} "
                             "needs a random key: pass rng=RngKey(...) (or train=False for inference)")
        if masking:
            keep = torch.rand(g.shape[:-1] + (1,), device=g.device) > self.masking_prob
            g = g * keep
        hidden = _ACTIVATIONS[self.activation](f + g)
        if train and self.dropout > 0.0:
            hidden = F.dropout(hidden, self.dropout, training=True)
        out = params["joint_net"][self.output_slot]
        res = F.linear(hidden, out["weight"], out.get("bias"))
        if self.preserve_memory and res.is_cuda:
            torch.cuda.empty_cache()
        if self.log_softmax if self.log_softmax is not None else not res.is_cuda:
            if self.temperature != 1.0:
                res = res / self.temperature
            res = res.log_softmax(dim=-1)
        return res

    def joint(self, params: dict, f: torch.Tensor, g: torch.Tensor, *, train: bool = False,
              rng: RngKey | None = None) -> torch.Tensor:
        """f ``[B, T, encoder_hidden]``, g ``[B, U, pred_hidden]`` -> ``[B, T, U, V + 1 + D]``."""
        return self.joint_after_projection(params, self.project_encoder(params, f), self.project_prednet(params, g),
                                           train=train, rng=rng)

    def apply(self, params, buffers, encoder_outputs, decoder_outputs, *, train=False, rng=None):
        """NeMo's unfused ``forward``: encoder_outputs ``[B, encoder_hidden, T]``, decoder_outputs
        ``[B, pred_hidden, U]`` -> ``(joint_out [B, T, U, V + 1 + D], buffers)``."""
        out = self.joint(params, encoder_outputs.transpose(1, 2), decoder_outputs.transpose(1, 2), train=train,
                         rng=rng)
        return out, buffers
