"""Token-and-Duration Transducer (TDT) loss with the semantics of NeMo's ``TDTLossNumba`` CUDA kernel
(``loss_name: tdt``; NeMo 3.0 has no CPU TDT loss).

The joint output ``[B, T, U+1, V+1+D]`` holds the token logits (tokens ``0..V-1``, blank ``V``) and then ``D``
duration logits. ``lp = log_softmax`` over the ``V+1`` token classes, ``ld = log_softmax`` over the ``D`` durations,
and every arc scores ``lp - sigma + ld`` (``sigma``: logit under-normalisation). From node ``(t, u)``:

* a blank with duration ``d >= 1`` goes to ``(t + d, u)`` (duration 0 is never used by blanks);
* the token ``y[u]`` with any duration ``d`` (0 included) goes to ``(t + d, u + 1)``.

Paths start at ``(0, 0)``, stay at frames ``< T`` and end with a blank from ``(T - d, U)`` landing exactly on
``T``. The per-utterance value is ``-(1 + fastemit_lambda) * log P``.

Gradients follow the kernel (``compute_tdt_grad_kernel``): with FastEmit the token log-probability gradients are
scaled by ``1 + fastemit_lambda``, the blank and duration gradients are not; ``clamp > 0`` clamps each utterance's
gradient with respect to the token logits to ``[-clamp, clamp]`` *before* the upstream (reduction) scaling, and
leaves the duration gradients alone.

``omega``: NeMo draws ``r = random.uniform(0, 1)`` once per loss call and, when ``r < omega``, computes the whole
call as the plain RNN-T loss of the token logits (no sigma, no durations; duration gradients zero), with the CUDA
kernel's FastEmit and clamp rules. Here the draw is the ``coin`` argument (the caller's own RNG), or, when it is
``None`` and ``omega > 0``, one draw from torch's global generator.

Computation: one loop over frames. A frame's alphas take the blank and duration>=1 token arcs from earlier frames
(one gather over the durations), then solve the frame's duration-0 token chain with ``cumsum`` + ``logcumsumexp``;
betas mirror it backwards. The analytic gradient with respect to the joint output is returned by a custom autograd
function. Memory: the joint-sized log-probabilities and gradient plus ``O(B * T * U * D)`` lattice tensors.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import attrs
import torch
from torch.autograd.function import once_differentiable

from nemofn.asr.rnnt_loss import (
    check_transducer_reduction,
    exclusive_cumsum,
    gather_emissions,
    lattice_dtype,
    prepare_transducer_batch,
    reduce_transducer_loss,
    reverse_logcumsumexp,
    rnnt_per_utterance,
    scaled_logits_grad,
    valid_masks,
)

__all__ = ["check_durations", "tdt_loss", "tdt_per_utterance", "TDTLoss"]

_NEG_INF = float("-inf")


def check_durations(durations: Sequence[int]) -> tuple[int, ...]:
    """Validates TDT durations (NeMo's ``loss.tdt_kwargs.durations``): integers, strictly ascending, starting with
    0 and 1 (NeMo's kernels assume both). Returns them as a tuple."""
    durs = tuple(durations)
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in durs):
        raise ValueError(f"TDT durations must be integers, got {list(durations)} (config key "
                         "`model.loss.tdt_kwargs.durations`)")
    if len(durs) < 2 or durs[0] != 0 or durs[1] != 1 or any(b <= a for a, b in zip(durs, durs[1:])):
        raise ValueError(f"TDT durations must be strictly ascending and start with 0 and 1 (e.g. [0, 1, 2, 3, 4]), "
                         f"got {list(durations)} (config key `model.loss.tdt_kwargs.durations`)")
    return tuple(int(d) for d in durs)


def _logsumexp0(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dim 0 in place on ``x`` (fewer ops than ``torch.logsumexp``); all ``-inf`` gives ``-inf``."""
    m = x.amax(0).clamp_(min=torch.finfo(x.dtype).min)
    return x.sub_(m).exp_().sum(0).log_().add_(m)


def _frame_rows(max_t: int, offsets: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """``max_t`` index rows ``[t + o for o in offsets]`` (``[len(offsets)]`` int64 each), made on ``device``.

    Built from ``arange`` on the device: a host tensor copied there would cost a stream sync per call on CUDA.
    """
    return torch.stack([torch.arange(o, o + max_t, device=device) for o in offsets], dim=1).unbind(0)


# --------------------------------------------------------------------------------------------------- the lattice
# Shifted variables as in rnnt_loss: with S(t, u) the exclusive cumsum over u of the duration-0 token arc weights,
# a(t, u) = alpha(t, u) - S(t, u) and b(t, u) = beta(t, u) + S(t, u). An arc from (t, u) to (t + d, u') then has
# the shifted weight S(t, u) + w - S(t + d, u'), and inside a frame the duration-0 chain is a (reverse)
# logcumsumexp. Lattice weights are zero outside each utterance, so S is 0 on frames >= T_b and the final node
# (T_b, U_b) has b = 0.
def _tdt_weights(lp_blank, lp_token, ld, node, arc, sigma, durations):
    """Returns ``K [T, n, 2, B, U+1]``: the shifted weights of the blank (slot 0) and token (slot 1) arcs of the
    ``n`` non-zero durations, indexed by the source node (frame-major, so a frame's terms reduce over the leading
    dims)."""
    batch, max_t, u1 = lp_blank.shape
    max_u = u1 - 1
    nonzero = durations[1:]
    max_d = nonzero[-1]
    w0 = torch.where(arc, lp_token - sigma + ld[:, :, :max_u, 0], 0.0)
    s = exclusive_cumsum(w0)
    s_ext = torch.cat([s, s.new_zeros(batch, max_d, u1)], 1)
    k = lp_blank.new_zeros(max_t, len(nonzero), 2, batch, u1)
    for i, d in enumerate(nonzero):
        w_blank = torch.where(node, lp_blank - sigma + ld[..., 1 + i], 0.0)
        k[:, i, 0] = (s + w_blank - s_ext[:, d: d + max_t]).transpose(0, 1)
        w_token = torch.where(arc, lp_token - sigma + ld[:, :, :max_u, 1 + i], 0.0)
        k[:, i, 1, :, :max_u] = (s[..., :max_u] + w_token - s_ext[:, d: d + max_t, 1:]).transpose(0, 1)
    return k


def _tdt_forward(k, input_lengths, target_lengths, durations):
    """Alphas. Returns ``(ll [B], a [T, B, U+1])``."""
    max_t, n, _, batch, u1 = k.shape
    nonzero = durations[1:]
    max_d = nonzero[-1]
    # The same weights indexed by the destination frame (token slot shifted to the destination u + 1).
    k_dest = k.new_zeros(k.shape)
    for i, d in enumerate(nonzero):
        if d < max_t:
            k_dest[d:, i, 0] = k[: max_t - d, i, 0]
            k_dest[d:, i, 1, :, 1:] = k[: max_t - d, i, 1, :, :-1]
    # aa[max_d + t] holds a(t) (slot 0) and a(t) shifted right by one token (slot 1); rows before max_d are -inf.
    aa = k.new_full((max_d + max_t, 2, batch, u1), _NEG_INF)
    aa[max_d, 0] = 0.0
    aa[max_d, 1, :, 1:] = 0.0
    rows = _frame_rows(max_t, [max_d - d for d in nonzero], k.device)
    k_dest = k_dest.view(max_t, 2 * n, batch, u1).unbind(0)
    for t in range(1, max_t):
        x = aa.index_select(0, rows[t]).view(2 * n, batch, u1).add_(k_dest[t])
        row = aa[max_d + t]
        torch.logcumsumexp(_logsumexp0(x), -1, out=row[0])
        row[1, :, 1:] = row[0, :, :-1]
    a = aa[max_d:, 0]
    # The final blank lands exactly on T_b from (T_b - d, U_b).
    batch_idx = torch.arange(batch, device=k.device)
    finals = []
    for i, d in enumerate(nonzero):
        src = input_lengths - d
        ok = src >= 0
        src = src.clamp(min=0)
        value = a[src, batch_idx, target_lengths] + k[src, i, 0, batch_idx, target_lengths]
        finals.append(torch.where(ok, value, _NEG_INF))
    ll = torch.logsumexp(torch.stack(finals), 0)
    return ll, a


def _tdt_occupancies(a, k, ll, input_lengths, target_lengths, durations, fastemit_lambda):
    """Betas, then the gradients of ``-log P`` with respect to the token log-probs (token ones scaled by
    ``1 + fastemit_lambda``) and duration log-probs: ``(g_blank [B,T,U+1], g_token [B,T,U], g_dur [B,T,U+1,D])``."""
    max_t, n, _, batch, u1 = k.shape
    max_u = u1 - 1
    nonzero = durations[1:]
    max_d = nonzero[-1]
    batch_idx = torch.arange(batch, device=a.device)
    # bb[t] holds b(t) (slot 0, with the final node b(T_b, U_b) = 0 for blank arcs) and b(t) shifted left by one
    # token (slot 1: the target of token arcs, without the final node).
    final = a.new_full((max_t + max_d, batch, u1), _NEG_INF)
    final[input_lengths, batch_idx, target_lengths] = 0.0
    bb = a.new_full((max_t + max_d, 2, batch, u1), _NEG_INF)
    bb[:, 0] = final
    rows = _frame_rows(max_t, list(nonzero), a.device)
    k_src = k.view(max_t, 2 * n, batch, u1).unbind(0)
    for t in range(max_t - 1, -1, -1):
        x = bb.index_select(0, rows[t]).view(2 * n, batch, u1).add_(k_src[t])
        b_t = reverse_logcumsumexp(_logsumexp0(x))
        row = bb[t]
        torch.maximum(b_t, final[t], out=row[0])
        row[1, :, :-1] = b_t[:, 1:]
    ll = ll[None, :, None]
    g_dur = a.new_zeros(max_t, batch, u1, len(durations))
    occ0 = torch.exp(a[..., :max_u] + bb[:max_t, 1, :, :max_u] - ll)
    g_dur[:, :, :max_u, 0] = -occ0
    g_blank = torch.zeros_like(a)
    g_token = occ0
    for i, d in enumerate(nonzero):
        occ_blank = torch.exp(a + k[:, i, 0] + bb[d: d + max_t, 0] - ll)
        occ_token = torch.exp(a[..., :max_u] + k[:, i, 1, :, :max_u] + bb[d: d + max_t, 1, :, :max_u] - ll)
        g_blank -= occ_blank
        g_token += occ_token
        g_dur[..., 1 + i] = -occ_blank
        g_dur[:, :, :max_u, 1 + i] -= occ_token
    g_token = g_token * -(1.0 + fastemit_lambda)
    return g_blank.transpose(0, 1), g_token.transpose(0, 1), g_dur.transpose(0, 1)


class _TDTFunction(torch.autograd.Function):
    """Per-utterance TDT cost of a joint output ``[B, T, U+1, V+1+D]``; analytic backward."""

    @staticmethod
    def forward(ctx, acts, targets, input_lengths, target_lengths, blank, durations, sigma, fastemit_lambda, clamp):
        num_labels = blank + 1
        log_probs = torch.log_softmax(acts[..., :num_labels], -1)
        dur_acts = acts[..., num_labels:]
        log_durs = dur_acts - torch.logsumexp(dur_acts, -1, keepdim=True)  # faster than log_softmax for small D
        node, arc = valid_masks(input_lengths, target_lengths, acts.shape[1], acts.shape[2] - 1)
        dtype = lattice_dtype(acts.device)
        lp_blank, lp_token = gather_emissions(log_probs, targets, blank)
        k = _tdt_weights(lp_blank.to(dtype), lp_token.to(dtype), log_durs.to(dtype), node, arc, sigma, durations)
        ll, a = _tdt_forward(k, input_lengths, target_lengths, durations)
        ctx.settings = (blank, durations, fastemit_lambda, clamp)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(log_probs, log_durs, targets, input_lengths, target_lengths, a, k, ll)
        return (-(1.0 + fastemit_lambda) * ll).to(acts.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cost):
        blank, durations, fastemit_lambda, clamp = ctx.settings
        log_probs, log_durs, targets, input_lengths, target_lengths, a, k, ll = ctx.saved_tensors
        g_blank, g_token, g_dur = _tdt_occupancies(a, k, ll, input_lengths, target_lengths, durations,
                                                   fastemit_lambda)
        dtype = log_probs.dtype
        num_labels = log_probs.shape[-1]
        grad = log_probs.new_empty(log_probs.shape[:-1] + (num_labels + log_durs.shape[-1],))
        scaled_logits_grad(log_probs, g_blank.to(dtype), g_token.to(dtype), targets, blank, grad_cost, clamp,
                           clamp_after_scale=False, out=grad[..., :num_labels])
        g_dur = g_dur.to(dtype).mul_(grad_cost.to(dtype)[:, None, None, None])  # durations: never clamped
        torch.exp(log_durs, out=grad[..., num_labels:]).mul_(g_dur.sum(-1, keepdim=True).neg_()).add_(g_dur)
        return grad, None, None, None, None, None, None, None, None


def tdt_per_utterance(acts: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                      target_lengths: torch.Tensor, *, blank: int, durations: Sequence[int], sigma: float = 0.0,
                      fastemit_lambda: float = 0.0, clamp: float = -1.0) -> torch.Tensor:
    """Per-utterance TDT costs (the TDT branch only) of an already prepared batch; ``[B]`` in ``acts.dtype``."""
    durations = check_durations(durations)
    return _TDTFunction.apply(acts, targets, input_lengths, target_lengths, blank, durations, float(sigma),
                              float(fastemit_lambda), float(clamp))


def tdt_loss(
    acts: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int,
    durations: Sequence[int],
    sigma: float = 0.0,
    omega: float = 0.0,
    reduction: str | None = "mean_batch",
    fastemit_lambda: float = 0.0,
    clamp: float = -1.0,
    coin: float | None = None,
) -> torch.Tensor:
    """TDT loss (NeMo ``RNNTLoss(loss_name='tdt')``; see the module docstring).

    Args:
        acts: ``[B, T, U+1, V+1+D]`` joint output (logits, or NeMo's CPU joint output log-softmaxed over the whole
            last dim: both log-softmax to the same token and duration log-probs).
        targets: ``[B, U]`` padded target ids.
        input_lengths: ``[B]`` encoder frames (``>= 1``); target_lengths: ``[B]``.
        blank: blank id, which must be ``V`` (the last token class, ``acts.shape[-1] - D - 1``).
        durations: e.g. ``[0, 1, 2, 3, 4]`` (see :func:`check_durations`).
        sigma: logit under-normalisation subtracted from every arc's log-probability.
        omega: probability of computing the call as the plain RNN-T loss instead.
        reduction: one of ``TRANSDUCER_REDUCTIONS``.
        fastemit_lambda: FastEmit weight; clamp: token-logit gradient clamp (``<= 0`` = off).
        coin: a uniform draw in ``[0, 1)`` from the caller's RNG; ``coin < omega`` takes the RNN-T branch.

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``, in the activations' dtype (float32 for half inputs).
    """
    reduction = check_transducer_reduction(reduction)
    durations = check_durations(durations)
    if blank != acts.shape[-1] - len(durations) - 1:
        raise ValueError(f"tdt_loss: with {len(durations)} durations and {acts.shape[-1]} joint outputs the blank "
                         f"id must be {acts.shape[-1] - len(durations) - 1} (the last token class), got {blank}; "
                         "the joint needs `num_extra_outputs` = len(durations)")
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"tdt_loss: omega must lie in [0, 1], got {omega} (`model.loss.tdt_kwargs.omega`)")
    acts, targets, input_lengths, target_lengths = prepare_transducer_batch(
        acts, targets, input_lengths, target_lengths, num_label_classes=blank + 1, blank=blank, name="tdt_loss")
    if coin is None and omega > 0.0:
        coin = float(torch.rand((), device="cpu"))  # a host draw (CPU generator): no device sync
    if coin is not None and coin < omega:
        per_utt = rnnt_per_utterance(acts[..., : blank + 1], targets, input_lengths, target_lengths, blank=blank,
                                     fastemit_lambda=fastemit_lambda, clamp=clamp, clamp_after_scale=False)
    else:
        per_utt = tdt_per_utterance(acts, targets, input_lengths, target_lengths, blank=blank, durations=durations,
                                    sigma=sigma, fastemit_lambda=fastemit_lambda, clamp=clamp)
    return reduce_transducer_loss(per_utt, target_lengths, reduction)


def _check_reduction_attr(instance, attribute, value) -> None:
    check_transducer_reduction(value)


@attrs.frozen
class TDTLoss:
    """NeMo's ``RNNTLoss(num_classes, reduction, loss_name='tdt', loss_kwargs=tdt_kwargs)`` as a value; calling it
    runs :func:`tdt_loss`.

    Attributes:
        num_classes: tokens without the blank (``V``); the blank id is ``num_classes``, durations follow it.
        durations: NeMo's ``tdt_kwargs.durations`` (validated by :func:`check_durations`).
        sigma, omega, fastemit_lambda, clamp: NeMo's ``tdt_kwargs``.
        reduction: one of ``TRANSDUCER_REDUCTIONS`` (NeMo config: ``rnnt_reduction``).
    """

    num_classes: int
    durations: tuple[int, ...] = attrs.field(converter=check_durations)
    sigma: float = 0.0
    omega: float = 0.0
    reduction: str | None = attrs.field(default="mean_batch", validator=_check_reduction_attr)
    fastemit_lambda: float = 0.0
    clamp: float = -1.0

    @property
    def blank(self) -> int:
        return self.num_classes

    def __call__(self, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                 target_lengths: torch.Tensor, *, coin: float | None = None) -> torch.Tensor:
        """``log_probs [B, T, U+1, V+1+D]`` (joint output), ``targets [B, U]``, lengths ``[B]`` -> the reduced loss.
        ``coin``: the omega draw (see :func:`tdt_loss`)."""
        expected = self.num_classes + 1 + len(self.durations)
        if log_probs.shape[-1] != expected:
            raise ValueError(f"TDTLoss(num_classes={self.num_classes}, {len(self.durations)} durations) expects a "
                             f"joint output with {expected} classes, got {log_probs.shape[-1]}")
        return tdt_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                        durations=self.durations, sigma=self.sigma, omega=self.omega, reduction=self.reduction,
                        fastemit_lambda=self.fastemit_lambda, clamp=self.clamp, coin=coin)
