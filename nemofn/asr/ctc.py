"""CTC loss with NeMo's ``CTCLoss`` semantics (``nemo/collections/asr/losses/ctc.py``).

The blank is the **last** class: with a vocabulary of ``V`` labels, log-probs have ``V + 1`` classes and the
blank id is ``V``. The per-utterance losses come from :func:`torch.nn.functional.ctc_loss` and are then reduced
the way NeMo names it:

* ``"mean_batch"`` (NeMo's default): mean over the batch of the per-utterance losses.
* ``"mean_volume"``: sum of the losses divided by the total number of target tokens.
* ``"mean"``: torch's ``mean``: each loss divided by its target length (at least 1), then the batch mean.
* ``"sum"``: sum over the batch.
* ``"none"``: the per-utterance losses ``[B]``.
"""

from __future__ import annotations

import attrs
import torch

__all__ = ["CTC_REDUCTIONS", "ctc_loss", "CTCLoss"]

CTC_REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum", "none")


# torch.compile cannot trace F.ctc_loss (its ATen kernel's output shape depends on the data), which broke compiling
# a whole CTC train step. The same two ATen kernels, wrapped as one opaque custom op with their own backward, trace
# fine; eager results are the same kernels' (the tests compare values and gradients with F.ctc_loss).
@torch.library.custom_op("nemofn::ctc_losses", mutates_args=())
def _ctc_losses(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                target_lengths: torch.Tensor, blank: int, zero_infinity: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance CTC losses of time-first ``log_probs [T, B, C]`` (``inf`` where no alignment exists; the
    caller zeroes them with ``zero_infinity``, the backward then gives those rows zero gradients) and ATen's
    ``log_alpha`` (for backward)."""
    nll, log_alpha = torch.ops.aten._ctc_loss.Tensor(log_probs, targets, input_lengths, target_lengths, blank,
                                                     zero_infinity)
    return nll, log_alpha


@_ctc_losses.register_fake
def _(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity):
    t, b = log_probs.shape[:2]
    return log_probs.new_empty(b), log_probs.new_empty(b, t, 2 * targets.shape[-1] + 1)


def _ctc_losses_setup(ctx, inputs, output):
    log_probs, targets, input_lengths, target_lengths, blank, zero_infinity = inputs
    ctx.save_for_backward(log_probs, targets, input_lengths, target_lengths, *output)
    ctx.blank, ctx.zero_infinity = blank, zero_infinity


def _ctc_losses_backward(ctx, grad_nll, _grad_alpha):
    log_probs, targets, input_lengths, target_lengths, nll, log_alpha = ctx.saved_tensors
    grad = torch.ops.aten._ctc_loss_backward.Tensor(grad_nll, log_probs, targets, input_lengths, target_lengths, nll,
                                                    log_alpha, ctx.blank, ctx.zero_infinity)
    return grad, None, None, None, None, None


_ctc_losses.register_autograd(_ctc_losses_backward, setup_context=_ctc_losses_setup)


def _check_reduction(reduction: str) -> None:
    if reduction not in CTC_REDUCTIONS:
        raise ValueError(f"CTC reduction {reduction!r} is not one of {list(CTC_REDUCTIONS)}; "
                         "NeMo's config key is `ctc_reduction` (default 'mean_batch')")


def ctc_loss(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int | None = None,
    reduction: str = "mean_batch",
    zero_infinity: bool = True,
) -> torch.Tensor:
    """CTC loss of batch-first log-probs.

    Args:
        log_probs: ``[B, T, V+1]`` log-softmax outputs (the decoder's output).
        targets: ``[B, S]`` padded target ids (any integer dtype; values beyond a row's length are ignored).
        input_lengths: ``[B]`` valid frames per utterance.
        target_lengths: ``[B]`` valid target tokens per utterance.
        blank: blank id; defaults to the last class, ``log_probs.shape[-1] - 1``.
        reduction: one of :data:`CTC_REDUCTIONS` (see the module docstring).
        zero_infinity: zero infinite losses (and their gradients), as NeMo's CTC models do.

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if blank is None:
        blank = log_probs.shape[-1] - 1
    target_lengths = target_lengths.long()
    if log_probs.dtype not in (torch.float32, torch.float64):
        log_probs = log_probs.float()  # as autocast runs F.ctc_loss: in float32 (no bf16/fp16 CTC kernels)
    losses, _ = _ctc_losses(log_probs.transpose(0, 1), targets.long(), input_lengths.long(), target_lengths, blank,
                            zero_infinity)
    if zero_infinity:
        losses = torch.where(torch.isposinf(losses), torch.zeros_like(losses), losses)
    if reduction == "mean":  # torch's: each loss over its target length (at least 1), then the batch mean
        return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean_batch":
        return losses.mean()
    if reduction == "mean_volume":
        return losses.sum() / target_lengths.sum()
    return losses


@attrs.frozen
class CTCLoss:
    """NeMo's ``CTCLoss(num_classes, zero_infinity, reduction)`` as a value; calling it runs :func:`ctc_loss`.

    Attributes:
        num_classes: labels without the blank (``V``); the blank id is ``num_classes``.
        zero_infinity: NeMo's class default is ``False``; its CTC models construct it with ``True``.
        reduction: one of :data:`CTC_REDUCTIONS`.
    """

    num_classes: int
    zero_infinity: bool = False
    reduction: str = "mean_batch"

    def __attrs_post_init__(self) -> None:
        _check_reduction(self.reduction)

    @property
    def blank(self) -> int:
        return self.num_classes

    def __call__(self, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """``log_probs [B, T, V+1]``, ``targets [B, S]``, lengths ``[B]`` -> the reduced loss."""
        if log_probs.shape[-1] != self.num_classes + 1:
            raise ValueError(f"CTCLoss(num_classes={self.num_classes}) expects log_probs with "
                             f"{self.num_classes + 1} classes (blank last), got {log_probs.shape[-1]}")
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                        reduction=self.reduction, zero_infinity=self.zero_infinity)
