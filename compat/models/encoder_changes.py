"""NeMo's encoder-changing methods of the ASR models, for long audio: ``change_attention_model`` and
``change_subsampling_conv_chunking_factor`` (NeMo's ``ASRModuleMixin`` and ``ConformerEncoder`` methods).

A typical use (NeMo's recipe for hour-long files with a FastConformer / parakeet model)::

    model.change_attention_model("rel_pos_local_attn", [128, 128])  # linear-cost local attention
    model.change_subsampling_conv_chunking_factor(1)                  # auto-chunked conv subsampling

Both rebuild the model's stateless encoder (:class:`~nemofn.asr.modules.conformer.ConformerEncoder`) with the new
settings and keep its weights: the very same tensors, so an optimizer set up before keeps working. NeMo's
attention layers share their keys (``linear_q/k/v/out``, ``linear_pos``, ``pos_bias_u/v``), so switching between
``rel_pos`` and ``rel_pos_local_attn`` changes no key; switching to ``abs_pos`` drops ``linear_pos`` and the
position biases, and switching from it adds fresh ones (``linear_pos`` newly drawn, biases zero), as NeMo's
``load_state_dict(strict=False)`` does. With ``update_config`` the model config's ``encoder`` block gets the new
values, so ``save_to`` and ``restore_from`` give the same model.

Where compat differs from NeMo 3.0 (on purpose):

* The model-level method writes the *effective* values into the config; NeMo writes its arguments, so
  ``change_attention_model(att_context_size=[64, 64])`` there stores ``self_attention_model: null`` and the
  archive no longer restores.
* The new attention layers follow the config (``use_bias``, ``global_tokens*``, ``dropout``); NeMo's
  ``change_attention_model`` builds them with ``use_bias=True`` and no global tokens whatever the config says
  (and so gives a different model after ``save_to`` / ``restore_from``).
* NeMo's ``subsampling_conv_chunking_factor=-1`` fails in NeMo 3.0's own forward; here it means "never chunk".
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from omegaconf import ListConfig, open_dict

from compat.models.modelpt_module import SubModule
from nemofn.asr.modules.conformer import ConformerEncoder
from nemofn.asr.modules.subsampling import ConvSubsampling, check_chunking_factor
from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState

__all__ = ["change_attention_model", "change_subsampling_conv_chunking_factor", "EncoderFace", "install_encoder_face"]

log = logging.getLogger("compat.models")

_ATTENTION_MODELS = ("rel_pos", "rel_pos_local_attn", "abs_pos")


def _conformer(model: Any, what: str) -> ConformerEncoder | None:
    network = getattr(model.fn_model, "network", None)
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, ConformerEncoder):
        log.info("Model encoder (%s) doesn't have a %s method; nothing changed", type(encoder).__name__, what)
        return None
    return encoder


def _merged(fresh: Mapping, old: Mapping) -> dict:
    """``fresh``'s tree with every leaf that ``old`` also has taken from ``old`` (the same tensor object)."""
    out = {}
    for key, value in fresh.items():
        if isinstance(value, Mapping):
            out[key] = _merged(value, old.get(key, {}) if isinstance(old.get(key), Mapping) else {})
        else:
            kept = old.get(key)
            out[key] = kept if isinstance(kept, torch.Tensor) and kept.shape == value.shape else value
    return out


def _same_leaves(a: Mapping, b: Mapping) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, Mapping):
            if not isinstance(other, Mapping) or not _same_leaves(value, other):
                return False
        elif value is not other:
            return False
    return True


def _swap_encoder(model: Any, encoder: ConformerEncoder, cfg_changes: dict[str, Any] | None) -> None:
    """Puts ``encoder`` into the model's unit, keeping every weight the new encoder shares with the old one;
    ``cfg_changes`` (or None) are written into ``model.cfg.encoder`` and the unit's config."""
    unit = model.fn_model
    state = model.fn_state
    old_params = state.params.get("encoder", {})
    old_buffers = state.buffers.get("encoder", {})
    fresh_params, fresh_buffers = encoder.init(RngKey(model._draw_seed()))
    device = state.device
    dtype = next((p.dtype for p in state.param_list if p.is_floating_point()), torch.float32)

    def place(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    params = encoder.tie_shared_params(_placed(_merged(fresh_params, old_params), old_params, place))
    buffers = _placed(_merged(fresh_buffers, old_buffers), old_buffers, place)
    new_unit = attrs.evolve(unit, network=attrs.evolve(unit.network, encoder=encoder))
    if cfg_changes is not None:
        configs = [model._cfg]
        if getattr(unit, "cfg", None) is not None:  # the unit's resolved copy of the model config
            new_unit = attrs.evolve(new_unit, cfg=copy.deepcopy(unit.cfg))
            configs.append(new_unit.cfg)
        for cfg in configs:
            with open_dict(cfg):
                for key, value in cfg_changes.items():
                    cfg.encoder[key] = ListConfig(list(value)) if isinstance(value, (list, tuple)) else value
    if _same_leaves(params, old_params) and _same_leaves(buffers, old_buffers):
        model._replace_functional(new_unit)  # same tensors: the submodules keep them
        return
    new_params = dict(state.params)
    new_params["encoder"] = params
    new_buffers = dict(state.buffers)
    if buffers:
        new_buffers["encoder"] = buffers
    else:
        new_buffers.pop("encoder", None)
    model._replace_functional(new_unit, ModelState.create(new_params, new_buffers))


def _placed(tree: Mapping, old: Mapping, place) -> dict:
    """Moves the leaves that are not ``old``'s own tensors to the model's device and dtype."""
    out = {}
    for key, value in tree.items():
        sub_old = old.get(key) if isinstance(old, Mapping) else None
        if isinstance(value, Mapping):
            out[key] = _placed(value, sub_old if isinstance(sub_old, Mapping) else {}, place)
        else:
            out[key] = value if value is sub_old else place(value)
    return out


def change_attention_model(model: Any, self_attention_model: str | None = None, att_context_size: Any = None,
                           update_config: bool = True) -> None:
    """Switches the encoder's self-attention (NeMo's ``ConformerEncoder.change_attention_model``).

    Args:
        model: a compat ASR model whose encoder is a ``ConformerEncoder`` (others: logged, nothing changes).
        self_attention_model: ``"rel_pos"``, ``"rel_pos_local_attn"`` or ``"abs_pos"``; None keeps the current one.
        att_context_size: ``[left, right]`` frames after subsampling; None keeps the current one.
        update_config: also write ``self_attention_model`` and ``att_context_size`` into ``model.cfg.encoder``.

    Raises:
        ValueError: an unknown attention model, or local attention without a positive context.
    """
    encoder = _conformer(model, "change_attention_model")
    if encoder is None:
        return
    context = list(att_context_size) if att_context_size else list(encoder.att_context)
    name = encoder.self_attention_model if self_attention_model is None else self_attention_model
    if name not in _ATTENTION_MODELS:
        raise ValueError(f"Not valid self_attention_model: '{name}'! Use one of {list(_ATTENTION_MODELS)}")
    if name == "rel_pos_local_attn" and max(context) <= 0:
        raise ValueError(f"When using local attention, context size must be set > 0: give att_context_size "
                         f"[left, right] in frames after subsampling (e.g. [128, 128]), got {context}")
    new_encoder = encoder.replace(self_attention_model=name, att_context_size=tuple(int(c) for c in context))
    changes = {"self_attention_model": name, "att_context_size": [int(c) for c in context]}
    _swap_encoder(model, new_encoder, changes if update_config else None)
    log.info("changed the encoder's self-attention to %s with att_context_size %s", name, context)


def change_subsampling_conv_chunking_factor(model: Any, subsampling_conv_chunking_factor: int,
                                            update_config: bool = True) -> None:
    """Sets how the encoder's conv subsampling chunks long inputs (NeMo's method of the same name).

    ``1``: auto (chunk in time when the activations would pass 128 MiB, outside training); ``-1``: never; a power
    of 2: always, into that many time chunks. The outputs do not change, only the peak memory (see
    :mod:`nemofn.asr.modules.subsampling`). Encoders without conv subsampling: logged, nothing changes.

    Raises:
        ValueError: a value other than -1, 1 or a power of 2.
    """
    check_chunking_factor(subsampling_conv_chunking_factor)
    encoder = _conformer(model, "change_subsampling_conv_chunking_factor")
    if encoder is None:
        return
    if not isinstance(encoder._derived["pre_encode"], ConvSubsampling):
        log.info("Model pre_encoder doesn't have a change_subsampling_conv_chunking_factor method; nothing changed")
        return
    factor = int(subsampling_conv_chunking_factor)
    new_encoder = encoder.replace(subsampling_conv_chunking_factor=factor)
    _swap_encoder(model, new_encoder, {"subsampling_conv_chunking_factor": factor} if update_config else None)


class EncoderFace(SubModule):
    """``model.encoder`` of a Conformer model: a :class:`SubModule` with NeMo's ``ConformerEncoder`` methods
    ``change_attention_model`` and ``change_subsampling_conv_chunking_factor``, which change the owning model."""

    def change_attention_model(self, self_attention_model: str | None = None, att_context_size: Any = None,
                               update_config: bool = True, device: Any = None) -> None:
        """NeMo's ``ConformerEncoder.change_attention_model`` (``device``: accepted; the new layers go to the
        model's device)."""
        change_attention_model(self._owner, self_attention_model, att_context_size, update_config)

    def change_subsampling_conv_chunking_factor(self, subsampling_conv_chunking_factor: int) -> None:
        """NeMo's ``ConformerEncoder.change_subsampling_conv_chunking_factor`` (the config is not updated, as in
        NeMo; the model-level method updates it)."""
        change_subsampling_conv_chunking_factor(self._owner, subsampling_conv_chunking_factor, update_config=False)


def install_encoder_face(model: Any) -> None:
    """Gives ``model.encoder`` the :class:`EncoderFace` methods when the encoder is a ``ConformerEncoder``."""
    sub = model._modules.get("encoder")
    if type(sub) is SubModule and isinstance(sub.spec.module, ConformerEncoder):
        sub.__class__ = EncoderFace  # same layout, two more methods
