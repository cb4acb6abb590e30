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
import torch.nn.functional as F

__all__ = ["CTC_REDUCTIONS", "ctc_loss", "CTCLoss"]

CTC_REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum", "none")


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
    torch_reduction = reduction if reduction in ("mean", "sum", "none") else "none"
    losses = F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.long(),
        input_lengths.long(),
        target_lengths,
        blank=blank,
        reduction=torch_reduction,
        zero_infinity=zero_infinity,
    )
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
