"""RNN-T loss with the semantics of NeMo's ``RNNTLoss`` (``loss_name: default`` = ``warprnnt_numba``, CPU path).

Lattice (per utterance of ``T`` frames and ``U`` target tokens ``y``): nodes ``(t, u)`` with ``0 <= t < T`` and
``0 <= u <= U``; from ``(t, u)`` a blank goes to ``(t + 1, u)`` and the token ``y[u]`` goes to ``(t, u + 1)``. Paths
start at ``(0, 0)`` and end with the blank emitted at ``(T - 1, U)``. The loss is ``-log P(y | x)``, the negative
log of the summed path probabilities, with ``log P`` the log-softmax of the joint output over its ``V + 1`` classes.

What follows NeMo exactly (``losses/rnnt.py``, ``parts/numba/rnnt_loss/rnnt_pytorch.py`` and
``utils/cpu_utils/cpu_rnnt.py`` of NeMo 3.0):

* The joint output is log-softmaxed here, so raw logits and NeMo's CPU joint output (already log-softmaxed) give the
  same loss. Activations are trimmed to ``max(input_lengths)`` frames and targets to ``max(target_lengths)`` tokens.
  (NeMo raises when the ``U + 1`` axis is longer than ``max(target_lengths) + 1``; here it is trimmed too.)
* Half-precision activations are computed in float32 (NeMo forces float32 on the CPU).
* ``fastemit_lambda`` (FastEmit): the per-utterance value is ``-(1 + lambda) * log P``, the gradient with respect to
  each emitted token's log-probability is scaled by ``1 + lambda`` and the blank gradients are not. That is NeMo's
  *training* path (``CPURNNT.cost_and_grad``, used whenever the joint output requires grad) and what its CUDA kernel
  always does. NeMo's CPU ``score_forward`` (acts that do not require grad, e.g. validation under ``no_grad``)
  reports the unscaled ``-log P`` instead; this module always reports the scaled value.
* ``clamp > 0`` clamps the gradient of the loss with respect to the activations to ``[-clamp, clamp]``, after the
  upstream gradient (reduction) is applied, as NeMo's CPU ``LogSoftmaxGradModification`` does; ``clamp <= 0``: off.
* Reductions: see :func:`reduce_transducer_loss`.

How it is computed: the forward variables (alphas) by a loop over frames in which the token chain of a frame,
``alpha(t, u) = logaddexp(c(u), alpha(t, u - 1) + w(u - 1))``, is solved in closed form with ``cumsum`` and
``logcumsumexp``; the backward variables (betas) the same way, only when a gradient is needed. The lattice runs in
float64 (in the activations' dtype on MPS). A custom autograd function returns the analytic gradient with respect to
the activations (through the log-softmax), so backward is not a ``T``-step autograd graph. Memory: the
log-probabilities and the gradient (each the joint's size) plus ``O(B * T * U)`` lattice tensors.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "TRANSDUCER_REDUCTIONS",
    "check_transducer_reduction",
    "prepare_transducer_batch",
    "reduce_transducer_loss",
    "rnnt_loss",
    "rnnt_per_utterance",
    "RNNTLoss",
]

TRANSDUCER_REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum", "none")

_NEG_INF = float("-inf")


def check_transducer_reduction(reduction: str | None) -> str:
    """Returns the reduction's canonical name (NeMo's ``None`` is ``"none"``); raises on unknown names."""
    if reduction is None:
        return "none"
    if reduction not in TRANSDUCER_REDUCTIONS:
        raise ValueError(f"transducer loss reduction {reduction!r} is not one of {list(TRANSDUCER_REDUCTIONS)}; "
                         "NeMo's model config key is `rnnt_reduction` (default 'mean_batch')")
    return reduction


def reduce_transducer_loss(per_utt: torch.Tensor, target_lengths: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """NeMo's ``RNNTLoss.reduce``.

    Args:
        per_utt: ``[B]`` per-utterance losses.
        target_lengths: ``[B]`` target lengths (tokens).
        reduction: ``"mean_batch"`` (mean over utterances), ``"mean_volume"`` (sum of the losses / sum of the target
            lengths), ``"mean"`` (each loss divided by its target length, then the mean; a zero target length gives
            ``inf``/``nan`` as in NeMo), ``"sum"`` or ``"none"`` / ``None`` (the ``[B]`` vector).

    Returns:
        A scalar, or ``[B]`` for ``"none"``.
    """
    reduction = check_transducer_reduction(reduction)
    if reduction == "mean_batch":
        return per_utt.mean()
    if reduction == "mean":
        return torch.div(per_utt, target_lengths).mean()
    if reduction == "sum":
        return per_utt.sum()
    if reduction == "mean_volume":
        return per_utt.sum() / target_lengths.sum()
    return per_utt


# ----------------------------------------------------------------------------------------------- batch preparation
def prepare_transducer_batch(
    acts: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    num_label_classes: int,
    blank: int,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checks and trims a transducer batch the way NeMo's ``RNNTLoss.forward`` does.

    Args:
        acts: ``[B, T, U+1, C]`` joint output.
        targets: ``[B, U]`` padded target ids.
        input_lengths, target_lengths: ``[B]``.
        num_label_classes: classes of the token part of ``acts`` (``V + 1``, blank included).
        blank: blank id; valid targets must be other ids in ``[0, num_label_classes)``.
        name: the calling function, for error messages.

    Returns:
        ``(acts [B, T', U'+1, C], targets [B, U'] int64 with padding set to 0, input_lengths, target_lengths)`` with
        ``T' = max(input_lengths)``, ``U' = max(target_lengths)``; half precision is promoted to float32.
    """
    if acts.dim() != 4:
        raise ValueError(f"{name}: acts must be [B, T, U+1, C], got shape {tuple(acts.shape)}")
    if not acts.is_floating_point():
        raise TypeError(f"{name}: acts must be floating point, got {acts.dtype}")
    batch = acts.shape[0]
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise ValueError(f"{name}: targets must be [B={batch}, U], got shape {tuple(targets.shape)}")
    for key, value in (("input_lengths", input_lengths), ("target_lengths", target_lengths)):
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"{name}: {key} must be [B={batch}], got shape {tuple(value.shape)}")
    if acts.dtype in (torch.float16, torch.bfloat16):
        acts = acts.float()
    targets = targets.long().to(acts.device)
    input_lengths = input_lengths.long().to(acts.device)
    target_lengths = target_lengths.long().to(acts.device)
    if batch == 0:
        raise ValueError(f"{name}: empty batch")
    # Every value the checks and the trimming need comes back to the host in one read (one sync on a GPU).
    valid = torch.arange(targets.shape[1], device=acts.device)[None, :] < target_lengths[:, None]
    bad = valid & ((targets < 0) | (targets >= num_label_classes) | (targets == blank))
    max_t, max_u, min_t, min_u, any_bad = torch.stack([
        input_lengths.max(), target_lengths.max(), input_lengths.min(), target_lengths.min(),
        bad.any().long()]).tolist()
    if min_t < 1:
        raise ValueError(f"{name}: every input length must be >= 1 (a transducer path needs a frame), got "
                         f"{input_lengths.tolist()}")
    if min_u < 0:
        raise ValueError(f"{name}: target lengths must be >= 0, got {target_lengths.tolist()}")
    if max_t > acts.shape[1]:
        raise ValueError(f"{name}: max(input_lengths) = {max_t} exceeds the {acts.shape[1]} frames of acts "
                         f"{tuple(acts.shape)}; pass the encoder's lengths for this joint output")
    if max_u + 1 > acts.shape[2]:
        raise ValueError(f"{name}: max(target_lengths) = {max_u} needs acts with at least {max_u + 1} positions on "
                         f"the U+1 axis, got {tuple(acts.shape)}; the joint takes the decoder output of these targets")
    if max_u > targets.shape[1]:
        raise ValueError(f"{name}: max(target_lengths) = {max_u} exceeds targets.shape[1] = {targets.shape[1]}")
    if acts.shape[-1] < num_label_classes:
        raise ValueError(f"{name}: acts have {acts.shape[-1]} classes, need at least {num_label_classes}")
    if any_bad:
        raise ValueError(f"{name}: target ids must lie in [0, {num_label_classes}) and differ from the blank id "
                         f"{blank}; got {sorted(set(targets[bad].tolist()))}")
    acts = acts[:, :max_t, : max_u + 1]
    targets = targets[:, :max_u]
    targets = torch.where(valid[:, :max_u], targets, torch.zeros_like(targets))
    return acts, targets, input_lengths, target_lengths


def lattice_dtype(device: torch.device) -> torch.dtype:
    """dtype of the alpha/beta recursions: float64, except on MPS (no float64), where float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def valid_masks(input_lengths: torch.Tensor, target_lengths: torch.Tensor, max_t: int, max_u: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node [B, T, U+1], token_arc [B, T, U])`` booleans: lattice nodes, and nodes with a token arc, of each
    utterance."""
    device = input_lengths.device
    t_ok = torch.arange(max_t, device=device)[None, :, None] < input_lengths[:, None, None]
    u_idx = torch.arange(max_u + 1, device=device)[None, None, :]
    node = t_ok & (u_idx <= target_lengths[:, None, None])
    arc = t_ok & (u_idx[..., :max_u] < target_lengths[:, None, None])
    return node, arc


def gather_emissions(log_probs: torch.Tensor, targets: torch.Tensor, blank: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_probs [B, T, U+1, C]`` -> ``(blank [B, T, U+1], token [B, T, U])``: the blank's and the next target
    token's log-probabilities at every node."""
    b, t, u1, _ = log_probs.shape
    lp_blank = log_probs[..., blank]
    index = targets[:, None, :, None].expand(b, t, u1 - 1, 1)
    lp_token = log_probs[:, :, : u1 - 1].gather(-1, index).squeeze(-1)
    return lp_blank, lp_token


def exclusive_cumsum(w: torch.Tensor) -> torch.Tensor:
    """``w [..., U]`` -> ``[..., U+1]``: ``out[..., u] = sum(w[..., :u])``."""
    return F.pad(torch.cumsum(w, -1), (1, 0))


def reverse_logcumsumexp(x: torch.Tensor) -> torch.Tensor:
    """``out[..., j] = logsumexp(x[..., j:])``."""
    return torch.logcumsumexp(x.flip(-1), -1).flip(-1)


def log_softmax_backward(log_probs: torch.Tensor, g_blank: torch.Tensor, g_token: torch.Tensor,
                         targets: torch.Tensor, blank: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient with respect to the logits of a loss whose gradient with respect to ``log_softmax(logits)`` is
    ``g_blank`` at the blank and ``g_token`` at each node's target token (zero elsewhere).

    Args:
        log_probs: ``[B, T, U+1, C]`` log-softmax of the logits.
        g_blank: ``[B, T, U+1]``; g_token: ``[B, T, U]`` (same dtype as ``log_probs``).
        out: optional ``[B, T, U+1, C]`` tensor (or view) to write into.

    Returns:
        ``[B, T, U+1, C]``: ``g[v] - softmax[v] * sum(g)``.
    """
    total = g_blank.clone()
    total[:, :, :-1] += g_token
    grad = torch.exp(log_probs, out=out) if out is not None else torch.exp(log_probs)
    grad.mul_(total.neg_().unsqueeze(-1))
    grad[..., blank] += g_blank
    b, t, u1, _ = log_probs.shape
    index = targets[:, None, :, None].expand(b, t, u1 - 1, 1)
    grad[:, :, :-1].scatter_add_(-1, index, g_token.unsqueeze(-1))
    return grad


def scaled_logits_grad(log_probs: torch.Tensor, g_blank: torch.Tensor, g_token: torch.Tensor, targets: torch.Tensor,
                       blank: int, scale: torch.Tensor, clamp: float, clamp_after_scale: bool, *,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`log_softmax_backward` of per-utterance gradients, multiplied by the upstream ``scale [B]`` and
    clamped to ``[-clamp, clamp]`` when ``clamp > 0``: after the scaling (NeMo's CPU RNNT,
    ``LogSoftmaxGradModification``) or before it, per utterance (NeMo's CUDA kernels)."""
    scale = scale.to(log_probs.dtype)
    clamp_first = clamp > 0 and not clamp_after_scale
    if not clamp_first:  # scale the small per-node gradients, not the joint-sized one
        g_blank = g_blank * scale[:, None, None]
        g_token = g_token * scale[:, None, None]
    grad = log_softmax_backward(log_probs, g_blank, g_token, targets, blank, out=out)
    if clamp_first:
        grad.clamp_(-clamp, clamp).mul_(scale[:, None, None, None])
    elif clamp > 0:
        grad.clamp_(-clamp, clamp)
    return grad


# --------------------------------------------------------------------------------------------------- the lattice
# Shifted variables keep the per-frame recursion to two tensor ops. With S(t, u) = sum of the token log-probs of
# frame t before u (``exclusive_cumsum``), a(t, u) = alpha(t, u) - S(t, u) and b(t, u) = beta(t, u) + S(t, u) obey
#   a(t) = logcumsumexp(a(t-1) + K(t-1)),       b(t) = reverse_logcumsumexp(b(t+1) + K(t))
# with K(t, u) = S(t, u) + blank(t, u) - S(t+1, u), the blank arc (t, u) -> (t+1, u) in shifted form.
def _rnnt_forward(lp_blank: torch.Tensor, lp_token: torch.Tensor, input_lengths: torch.Tensor,
                  target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alphas of a batch. ``lp_blank [B, T, U+1]``, ``lp_token [B, T, U]`` (lattice dtype, zero outside each
    utterance). Returns ``(ll [B], a [T, B, U+1], K [T-1, B, U+1], final [B])`` where ``final`` is the shifted
    weight of the last blank, ``S(T-1, U) + blank(T-1, U)`` per utterance."""
    batch, max_t, u1 = lp_blank.shape
    s = exclusive_cumsum(lp_token)
    k = (s[:, :-1] + lp_blank[:, :-1] - s[:, 1:]).transpose(0, 1).contiguous()
    a = lp_blank.new_empty(max_t, batch, u1)
    a[0] = 0.0
    step = lp_blank.new_empty(batch, u1)
    for t in range(1, max_t):
        torch.add(a[t - 1], k[t - 1], out=step)
        torch.logcumsumexp(step, -1, out=a[t])
    rows = torch.arange(batch, device=lp_blank.device)
    last_t = input_lengths - 1
    final = s[rows, last_t, target_lengths] + lp_blank[rows, last_t, target_lengths]
    ll = a[last_t, rows, target_lengths] + final
    return ll, a, k, final


def _rnnt_occupancies(a: torch.Tensor, k: torch.Tensor, final: torch.Tensor, ll: torch.Tensor,
                      input_lengths: torch.Tensor, target_lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Betas, then the posterior occupancy of every arc: ``(blank [B, T, U+1], token [B, T, U])``."""
    max_t, batch, u1 = a.shape
    rows = torch.arange(batch, device=a.device)
    inject = a.new_full((max_t, batch, u1), _NEG_INF)
    inject[input_lengths - 1, rows, target_lengths] = final
    x = a.new_empty(max_t, batch, u1)  # shifted (beta(t+1) + blank(t)), with the final blank injected
    b = a.new_empty(max_t, batch, u1)
    x[max_t - 1] = inject[max_t - 1]
    b[max_t - 1] = reverse_logcumsumexp(x[max_t - 1])
    for t in range(max_t - 2, -1, -1):
        torch.add(b[t + 1], k[t], out=x[t])
        torch.maximum(x[t], inject[t], out=x[t])  # the injected node has -inf from above
        b[t] = reverse_logcumsumexp(x[t])
    ll = ll[None, :, None]
    occ_blank = torch.exp(a + x - ll)
    occ_token = torch.exp(a[..., :-1] + b[..., 1:] - ll)
    return occ_blank.transpose(0, 1), occ_token.transpose(0, 1)


class _RNNTFunction(torch.autograd.Function):
    """Per-utterance RNN-T cost ``-(1 + fastemit) * log P(y|x)`` of logits ``[B, T, U+1, C]``; analytic backward."""

    @staticmethod
    def forward(ctx, acts, targets, input_lengths, target_lengths, blank, fastemit_lambda, clamp,
                clamp_after_scale):
        log_probs = torch.log_softmax(acts, -1)
        node, arc = valid_masks(input_lengths, target_lengths, acts.shape[1], acts.shape[2] - 1)
        dtype = lattice_dtype(acts.device)
        lp_blank, lp_token = gather_emissions(log_probs, targets, blank)
        lp_blank = torch.where(node, lp_blank.to(dtype), 0.0)
        lp_token = torch.where(arc, lp_token.to(dtype), 0.0)
        ll, a, k, final = _rnnt_forward(lp_blank, lp_token, input_lengths, target_lengths)
        ctx.settings = (blank, fastemit_lambda, clamp, clamp_after_scale)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(log_probs, targets, input_lengths, target_lengths, a, k, final, ll)
        return (-(1.0 + fastemit_lambda) * ll).to(acts.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cost):
        blank, fastemit_lambda, clamp, clamp_after_scale = ctx.settings
        log_probs, targets, input_lengths, target_lengths, a, k, final, ll = ctx.saved_tensors
        occ_blank, occ_token = _rnnt_occupancies(a, k, final, ll, input_lengths, target_lengths)
        g_blank = occ_blank.neg().to(log_probs.dtype)
        g_token = occ_token.mul(-(1.0 + fastemit_lambda)).to(log_probs.dtype)
        grad = scaled_logits_grad(log_probs, g_blank, g_token, targets, blank, grad_cost, clamp, clamp_after_scale)
        return grad, None, None, None, None, None, None, None


def rnnt_per_utterance(acts: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                       target_lengths: torch.Tensor, *, blank: int, fastemit_lambda: float = 0.0,
                       clamp: float = -1.0, clamp_after_scale: bool = True) -> torch.Tensor:
    """Per-utterance RNN-T costs of an already prepared batch (see :func:`prepare_transducer_batch`).

    ``clamp_after_scale``: True clamps the gradient after the upstream scaling (NeMo's CPU path, used by
    :func:`rnnt_loss`); False clamps each utterance's own gradient before it (NeMo's CUDA kernels, used by the TDT
    loss's omega branch). Returns ``[B]`` in ``acts.dtype``.
    """
    return _RNNTFunction.apply(acts, targets, input_lengths, target_lengths, blank, float(fastemit_lambda),
                               float(clamp), clamp_after_scale)


def rnnt_loss(
    acts: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int,
    reduction: str | None = "mean_batch",
    fastemit_lambda: float = 0.0,
    clamp: float = -1.0,
) -> torch.Tensor:
    """RNN-T loss (NeMo ``RNNTLoss(loss_name='default')`` on the CPU; see the module docstring).

    Args:
        acts: ``[B, T, U+1, V+1]`` joint output, logits or log-probs (log-softmaxed here either way).
        targets: ``[B, U]`` padded target ids (entries past a row's length are ignored).
        input_lengths: ``[B]`` encoder frames per utterance (``>= 1``).
        target_lengths: ``[B]`` target tokens per utterance.
        blank: blank id (NeMo: ``V``, the last class).
        reduction: one of :data:`TRANSDUCER_REDUCTIONS` (see :func:`reduce_transducer_loss`).
        fastemit_lambda: FastEmit regularisation weight (0 = off).
        clamp: gradient clamp (``<= 0`` = off).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``, in the activations' dtype (float32 for half inputs).
    """
    reduction = check_transducer_reduction(reduction)
    if not 0 <= blank < acts.shape[-1]:
        raise ValueError(f"rnnt_loss: blank id {blank} is outside the {acts.shape[-1]} classes of acts")
    acts, targets, input_lengths, target_lengths = prepare_transducer_batch(
        acts, targets, input_lengths, target_lengths, num_label_classes=acts.shape[-1], blank=blank,
        name="rnnt_loss")
    per_utt = rnnt_per_utterance(acts, targets, input_lengths, target_lengths, blank=blank,
                                 fastemit_lambda=fastemit_lambda, clamp=clamp, clamp_after_scale=True)
    return reduce_transducer_loss(per_utt, target_lengths, reduction)


def _check_reduction_attr(instance, attribute, value) -> None:
    check_transducer_reduction(value)


@attrs.frozen
class RNNTLoss:
    """NeMo's ``RNNTLoss(num_classes, reduction, loss_name='default', loss_kwargs={fastemit_lambda, clamp})`` as a
    value; calling it runs :func:`rnnt_loss`.

    Attributes:
        num_classes: tokens without the blank (``V``); the blank id is ``num_classes``.
        reduction: one of :data:`TRANSDUCER_REDUCTIONS` (NeMo config: ``rnnt_reduction``).
        fastemit_lambda, clamp: NeMo's ``warprnnt_numba_kwargs``.
    """

    num_classes: int
    reduction: str | None = attrs.field(default="mean_batch", validator=_check_reduction_attr)
    fastemit_lambda: float = 0.0
    clamp: float = -1.0

    @property
    def blank(self) -> int:
        return self.num_classes

    def __call__(self, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """``log_probs [B, T, U+1, V+1]`` (joint output), ``targets [B, U]``, lengths ``[B]`` -> the reduced loss."""
        if log_probs.shape[-1] != self.num_classes + 1:
            raise ValueError(f"RNNTLoss(num_classes={self.num_classes}) expects a joint output with "
                             f"{self.num_classes + 1} classes (blank last), got {log_probs.shape[-1]}")
        return rnnt_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                         reduction=self.reduction, fastemit_lambda=self.fastemit_lambda, clamp=self.clamp)
