"""``RNNTDecoder``: a transducer's prediction network, an embedding followed by a (stacked) LSTM.

Mirrors ``RNNTDecoder`` of ``nemo/collections/asr/modules/rnnt.py`` with ``normalization_mode: null`` (NeMo's
``LSTMDropout`` from ``nemo/collections/common/parts/rnn.py``). Params, with NeMo's state-dict names under the
model prefix ``decoder``::

    prediction.embed.weight                 [V + 1, H] with blank_as_pad (row V, the blank, is the zero padding row)
                                            [V, H] without
    prediction.dec_rnn.lstm.weight_ih_l{k}  [4 R, H]          H = pred_hidden; R = the cell size: rnn_hidden_size
    prediction.dec_rnn.lstm.weight_hh_l{k}  [4 R, H]          when it exceeds pred_hidden, else H
    prediction.dec_rnn.lstm.bias_ih_l{k}    [4 R]
    prediction.dec_rnn.lstm.bias_hh_l{k}    [4 R]
    prediction.dec_rnn.lstm.weight_hr_l{k}  [H, R]            only with a projection (R > H): the LSTM's
                                                              output (and h) is projected back to H

The gates are PyTorch's (i, f, g, o). The blank id is ``V`` (the last class). The start-of-sequence input is a zero
vector, not an embedding lookup. The LSTM runs time-major through PyTorch's fused op (one call for all steps and
layers), as ``torch.nn.LSTM`` does inside NeMo's module.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nemofn.asr.configs.modules import RNNTDecoderConfig, RNNTPredNetConfig
from nemofn.core.rng import RngKey, as_key
from nemofn.core.schema import ConfigError, join_key, module_kwargs
from nemofn.core.schema_fields import is_required
from nemofn.nn.module import Module

__all__ = ["RNNTDecoder", "LSTMState"]

#: ``(h [L, B, H], c [L, B, R])``: the LSTM's hidden and cell states (``R == H`` without a projection).
LSTMState = tuple[torch.Tensor, torch.Tensor]

_PREDNET_KEYS = ("pred_hidden", "pred_rnn_layers", "t_max", "dropout", "forget_gate_bias", "weights_init_scale",
                 "hidden_hidden_bias_scale", "rnn_hidden_size")


def _unsupported(t_max: int | None, normalization_mode: str | None, path: str) -> None:
    """Raises NotImplementedError naming the key of a prediction-net variant nemofn does not implement."""
    if t_max is not None:
        key = join_key(path, "prednet.t_max")
        raise NotImplementedError(f"{key}={t_max}: chrono LSTM initialisation is not implemented in nemofn; set "
                                  f"{key}: null (NeMo's default)")
    if normalization_mode is not None:
        key = join_key(path, "normalization_mode")
        if normalization_mode in ("batch", "layer"):
            raise NotImplementedError(f"{key}={normalization_mode!r}: NeMo's batch-/layer-normalised LSTM prediction "
                                      f"networks are not implemented in nemofn; set {key}: null")
        raise ValueError(f"{key}={normalization_mode!r}: expected null, 'batch' or 'layer'")


@attrs.frozen
class RNNTDecoder(Module):
    """The LSTM prediction network of RNN-T / TDT models.

    Args:
        vocab_size: ``V``, the vocabulary size without the blank; the blank id is ``V``.
        pred_hidden: ``H``, the embedding size and the size of the network's output.
        pred_rnn_layers: ``L``, stacked LSTM layers.
        dropout: between LSTM layers and on the output, in training only (NeMo's ``prednet.dropout``).
        blank_as_pad: give the blank an embedding row (``V + 1`` rows, row ``V`` zero and never updated).
        forget_gate_bias: the value the forget-gate slice of every ``bias_ih`` starts at (``None``: leave
            PyTorch's init, and do not rescale ``bias_hh`` either, as NeMo).
        hidden_hidden_bias_scale: factor on the forget-gate slice of every ``bias_hh`` at init (0 zeroes it).
        weights_init_scale: factor on every LSTM weight and bias at init (not on the embedding).
        rnn_hidden_size: LSTM cell size ``R``; when larger than ``pred_hidden`` the LSTM projects its output
            back to ``pred_hidden`` (``weight_hr_l{k}``); otherwise ``R = pred_hidden``.
        t_max: chrono init; only ``None`` is implemented.
        normalization_mode: only ``None`` is implemented.
        random_state_sampling: in training, start from an N(0, 1) LSTM state instead of zeros.
    """

    vocab_size: int
    pred_hidden: int
    pred_rnn_layers: int = 1
    dropout: float = 0.0
    blank_as_pad: bool = True
    forget_gate_bias: float | None = 1.0
    hidden_hidden_bias_scale: float = 0.0
    weights_init_scale: float = 1.0
    rnn_hidden_size: int = -1
    t_max: int | None = None
    normalization_mode: str | None = None
    random_state_sampling: bool = False

    def __attrs_post_init__(self) -> None:
        _unsupported(self.t_max, self.normalization_mode, "")
        if self.vocab_size <= 0 or self.pred_hidden <= 0 or self.pred_rnn_layers <= 0:
            raise ValueError(f"RNNTDecoder: vocab_size={self.vocab_size}, pred_hidden={self.pred_hidden} and "
                             f"pred_rnn_layers={self.pred_rnn_layers} must all be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RNNTDecoder: prednet.dropout={self.dropout} must be in [0, 1)")

    @classmethod
    def from_config(cls, cfg: Any, *, path: str = "decoder") -> RNNTDecoder:
        """Builds from NeMo's ``decoder:`` block (``prednet: {...}``, ``vocab_size``, ``blank_as_pad``, ...; a dict,
        DictConfig or :class:`~nemofn.asr.configs.modules.RNNTDecoderConfig`), checked against that schema so that
        errors name the full key (``decoder.prednet.pred_hiden``)."""
        kwargs = module_kwargs(cfg, RNNTDecoderConfig, path)
        prednet = dict(kwargs.pop("prednet", None) or {})
        prednet_path = join_key(path, "prednet")
        absent = [k for k in _PREDNET_KEYS if k not in prednet and is_required(RNNTPredNetConfig, k)]
        if absent:
            key = join_key(prednet_path, absent[0])
            raise ConfigError(f"{prednet_path}: missing required key(s) {', '.join(absent)}", key=key)
        _unsupported(prednet.get("t_max"), kwargs.get("normalization_mode"), path)
        return cls(**kwargs, **prednet)

    # ------------------------------------------------------------------------------------------------ sizes
    @property
    def blank_idx(self) -> int:
        """The blank id, ``V`` (the last class)."""
        return self.vocab_size

    @property
    def cell_size(self) -> int:
        """``R``: the LSTM's cell size (``rnn_hidden_size`` when it projects, else ``pred_hidden``)."""
        return self.rnn_hidden_size if self.rnn_hidden_size > 0 else self.pred_hidden

    @property
    def proj_size(self) -> int:
        """The LSTM's projection size (``pred_hidden`` when ``rnn_hidden_size > pred_hidden``, else 0), as NeMo."""
        return self.pred_hidden if self.pred_hidden < self.rnn_hidden_size else 0

    @property
    def num_embeddings(self) -> int:
        return self.vocab_size + 1 if self.blank_as_pad else self.vocab_size

    # ------------------------------------------------------------------------------------------------- init
    def init(self, rng: RngKey | int) -> tuple[dict, dict]:
        """NeMo's init: embedding N(0, 1) with the blank (padding) row zeroed; LSTM uniform(+-1/sqrt(R)) (PyTorch's),
        then the forget-gate slice ``[R:2R]`` of every ``bias_ih`` set to ``forget_gate_bias`` and that of every
        ``bias_hh`` scaled by ``hidden_hidden_bias_scale``, then every LSTM tensor times ``weights_init_scale``."""
        key = as_key(rng).fold_in("prediction")
        embed = torch.randn(self.num_embeddings, self.pred_hidden, generator=key.fold_in("embed").generator())
        if self.blank_as_pad:
            embed[self.blank_idx] = 0.0
        r, h = self.cell_size, self.pred_hidden
        out_size = self.proj_size or r
        bound = 1.0 / math.sqrt(r)
        lstm: dict[str, torch.Tensor] = {}
        for layer in range(self.pred_rnn_layers):
            g = key.fold_in("dec_rnn").fold_in("lstm").fold_in(layer).generator()
            shapes = {f"weight_ih_l{layer}": (4 * r, h if layer == 0 else out_size),
                      f"weight_hh_l{layer}": (4 * r, out_size),
                      f"bias_ih_l{layer}": (4 * r,), f"bias_hh_l{layer}": (4 * r,)}
            if self.proj_size:
                shapes[f"weight_hr_l{layer}"] = (self.proj_size, r)
            for name, shape in shapes.items():
                lstm[name] = torch.empty(shape).uniform_(-bound, bound, generator=g)
            if self.forget_gate_bias is not None:
                lstm[f"bias_ih_l{layer}"][r:2 * r] = float(self.forget_gate_bias)
                lstm[f"bias_hh_l{layer}"][r:2 * r] *= float(self.hidden_hidden_bias_scale)
        if self.weights_init_scale != 1.0:
            lstm = {name: t * float(self.weights_init_scale) for name, t in lstm.items()}
        return {"prediction": {"embed": {"weight": embed}, "dec_rnn": {"lstm": lstm}}}, {}

    # ---------------------------------------------------------------------------------------------- helpers
    def initial_state(self, batch: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> LSTMState:
        """Zero state ``(h [L, B, H], c [L, B, R])`` (``R == H`` without a projection)."""
        h = torch.zeros(self.pred_rnn_layers, batch, self.proj_size or self.cell_size, device=device, dtype=dtype)
        c = torch.zeros(self.pred_rnn_layers, batch, self.cell_size, device=device, dtype=dtype)
        return h, c

    def _flat_weights(self, params: dict) -> list[torch.Tensor]:
        lstm = params["prediction"]["dec_rnn"]["lstm"]
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (("weight_hr",) if self.proj_size else ())
        return [lstm[f"{n}_l{layer}"] for layer in range(self.pred_rnn_layers) for n in names]

    def embed(self, params: dict, labels: torch.Tensor) -> torch.Tensor:
        """labels ``[...]`` int -> ``[..., H]``. With ``blank_as_pad`` this is the table lookup (the blank row is
        zero); without it, the blank id (which has no row) gives the zero vector."""
        weight = params["prediction"]["embed"]["weight"]
        labels = labels.long()
        if self.blank_as_pad:
            return F.embedding(labels, weight, self.blank_idx)
        blank = labels == self.blank_idx
        out = F.embedding(labels.masked_fill(blank, 0), weight)
        return out.masked_fill(blank.unsqueeze(-1), 0.0)

    def _run_lstm(self, params: dict, x: torch.Tensor, state: LSTMState | None, *, train: bool,
                  rng: RngKey | None) -> tuple[torch.Tensor, LSTMState]:
        """x ``[U, B, H]`` (time-major) -> (out ``[U, B, H]``, final state); dropout between layers and on the
        output while training."""
        drop = train and self.dropout > 0.0
        if (drop or (train and self.random_state_sampling and state is None)) and rng is None:
            raise ValueError("RNNTDecoder in training with dropout or random_state_sampling needs a random key: pass "
                             "rng=RngKey(...) (or train=False for inference)")
        if state is None:
            batch = x.shape[1]
            if train and self.random_state_sampling:
                h0, c0 = self.initial_state(batch, device=x.device, dtype=x.dtype)
                state = (torch.randn_like(h0), torch.randn_like(c0))
            else:
                state = self.initial_state(batch, device=x.device, dtype=x.dtype)
        out, h, c = torch.lstm(x, tuple(state), self._flat_weights(params), True, self.pred_rnn_layers,
                               float(self.dropout), bool(drop), False, False)
        if drop:
            out = F.dropout(out, self.dropout, training=True)
        return out, (h, c)

    # ------------------------------------------------------------------------------------------------ calls
    def predict(self, params: dict, labels: torch.Tensor | None, state: LSTMState | None = None, *,
                add_sos: bool = True, batch_size: int | None = None, train: bool = False,
                rng: RngKey | None = None) -> tuple[torch.Tensor, LSTMState]:
        """NeMo's ``predict``.

        Args:
            labels: ``[B, U]`` token ids, or None for one zero input step (``[B, 1, H]``; ``B`` from
                ``batch_size``, else from ``state``, else 1).
            state: ``(h, c)`` or None (zeros; N(0, 1) with ``random_state_sampling`` in training).
            add_sos: prepend the zero start-of-sequence input (``U + 1`` output steps).

        Returns:
            ``(g [B, U', H], (h [L, B, H], c [L, B, R]))`` with ``U' = U (+1 with add_sos)``.
        """
        weight = params["prediction"]["embed"]["weight"]
        if labels is not None:
            y = self.embed(params, labels.to(weight.device))
        else:
            batch = batch_size if batch_size is not None else (1 if state is None else state[0].shape[1])
            y = weight.new_zeros(batch, 1, self.pred_hidden)
        if add_sos:
            y = F.pad(y, (0, 0, 1, 0))
        g, state = self._run_lstm(params, y.transpose(0, 1), state, train=train, rng=rng)
        return g.transpose(0, 1), state

    def apply(self, params, buffers, targets, target_length, *, states: LSTMState | None = None, train=False,
              rng=None):
        """NeMo's ``forward``: targets ``[B, U]`` (int), target_length ``[B]`` ->
        ``((g [B, H, U + 1], target_length, (h, c)), buffers)``. Position 0 of ``g`` is the start of sequence;
        positions past ``target_length + 1`` are computed on the padding."""
        g, state = self.predict(params, targets.long(), states, add_sos=True, train=train, rng=rng)
        return (g.transpose(1, 2), target_length, state), buffers

    def step(self, params: dict, labels: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """One eval-mode step for decoding: labels ``[B]`` (the blank id gives the zero start input), state
        ``(h, c)`` or None (zeros) -> ``(g [B, H], (h, c))``."""
        x = self.embed(params, labels).unsqueeze(0)
        g, state = self._run_lstm(params, x, state, train=False, rng=None)
        return g[0], state
