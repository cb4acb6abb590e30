"""CTC loss: a brute-force check over all alignments, NeMo's reductions, blank-last, zero_infinity."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nemofn.asr.ctc import CTCLoss, ctc_loss


def _collapse(path, blank):
    out, prev = [], None
    for p in path:
        if p != blank and p != prev:
            out.append(p)
        prev = p
    return out


def _brute_force_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log sum over every frame path that collapses to ``target``. ``log_probs``: ``[T, C]``."""
    t_len, classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=t_len):
        if _collapse(path, blank) == target:
            total += math.exp(sum(log_probs[t, c].item() for t, c in enumerate(path)))
    return -math.log(total)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(3, 5, 4, generator=g, dtype=torch.float64).log_softmax(-1)  # V=3, blank=3
    targets = torch.tensor([[0, 1, 0], [2, 2, 0], [1, 0, 0]])
    input_lengths = torch.tensor([5, 4, 3])
    target_lengths = torch.tensor([3, 2, 1])
    return log_probs, targets, input_lengths, target_lengths


def test_per_utterance_loss_matches_brute_force_with_blank_last():
    log_probs, targets, in_len, tgt_len = _batch()
    losses = ctc_loss(log_probs, targets, in_len, tgt_len, reduction="none")
    assert losses.shape == (3,)
    for b in range(3):
        expected = _brute_force_nll(log_probs[b, : in_len[b]], targets[b, : tgt_len[b]].tolist(), blank=3)
        assert losses[b].item() == pytest.approx(expected, rel=1e-9)


def test_reductions_follow_nemo():
    log_probs, targets, in_len, tgt_len = _batch(1)
    per = ctc_loss(log_probs, targets, in_len, tgt_len, reduction="none")
    assert ctc_loss(log_probs, targets, in_len, tgt_len).item() == pytest.approx(per.mean().item())  # mean_batch
    assert ctc_loss(log_probs, targets, in_len, tgt_len, reduction="sum").item() == pytest.approx(per.sum().item())
    volume = ctc_loss(log_probs, targets, in_len, tgt_len, reduction="mean_volume")
    assert volume.item() == pytest.approx(per.sum().item() / tgt_len.sum().item())
    mean = ctc_loss(log_probs, targets, in_len, tgt_len, reduction="mean")
    assert mean.item() == pytest.approx((per / tgt_len).mean().item())
    assert mean.item() != pytest.approx(per.mean().item())  # the two means really differ here


def test_explicit_blank_and_class_wrapper():
    log_probs, targets, in_len, tgt_len = _batch(2)
    loss = CTCLoss(num_classes=3, zero_infinity=True)
    assert loss.blank == 3
    assert torch.equal(loss(log_probs, targets, in_len, tgt_len),
                       ctc_loss(log_probs, targets, in_len, tgt_len, blank=3))
    # blank 0 treats class 3 as a label, so the value changes
    other = ctc_loss(log_probs, targets + 1, in_len, tgt_len, blank=0, reduction="none")
    assert not torch.allclose(other, ctc_loss(log_probs, targets, in_len, tgt_len, reduction="none"))
    with pytest.raises(ValueError, match="expects log_probs with 5 classes"):
        CTCLoss(num_classes=4)(log_probs, targets, in_len, tgt_len)


def test_zero_infinity_and_bad_reduction():
    log_probs = torch.randn(1, 2, 3).log_softmax(-1)
    targets = torch.tensor([[0, 0, 0]])  # 3 labels with repeats need 5 frames: impossible in 2
    args = (log_probs, targets, torch.tensor([2]), torch.tensor([3]))
    assert ctc_loss(*args).item() == 0.0
    assert math.isinf(ctc_loss(*args, zero_infinity=False).item())
    with pytest.raises(ValueError, match="ctc_reduction"):
        ctc_loss(*args, reduction="average")
    with pytest.raises(ValueError, match="mean_batch"):
        CTCLoss(num_classes=2, reduction="avg")


def test_gradient_flows_and_int32_inputs_are_accepted():
    log_probs, targets, in_len, tgt_len = _batch(3)
    logits = log_probs.clone().float().requires_grad_(True)
    loss = ctc_loss(logits.log_softmax(-1), targets.int(), in_len.int(), tgt_len.int())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", ["mean_batch", "mean_volume", "mean", "sum", "none"])
def test_custom_op_equals_torch_ctc_loss_values_and_gradients(reduction):
    # the loss runs ATen's kernels through an opaque custom op (so torch.compile can trace a train step):
    # bit-equal to F.ctc_loss, including an utterance with no valid alignment (zeroed, zero gradient)
    gen = torch.Generator().manual_seed(0)
    b, t, c, s = 4, 50, 20, 12
    lp = torch.randn(b, t, c, generator=gen).log_softmax(-1).requires_grad_()
    targets = torch.randint(0, c - 1, (b, s), generator=gen)
    in_len, tgt_len = torch.tensor([50, 40, 30, 5]), torch.tensor([12, 10, 7, 9])
    ours = ctc_loss(lp, targets, in_len, tgt_len, reduction=reduction)
    ref = torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, in_len, tgt_len, blank=c - 1,
                                       reduction=reduction if reduction in ("mean", "sum", "none") else "none",
                                       zero_infinity=True)
    ref = {"mean_batch": ref.mean(), "mean_volume": ref.sum() / tgt_len.sum()}.get(reduction, ref)
    assert torch.equal(ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), lp)
    (g_ref,) = torch.autograd.grad(ref.sum(), lp)
    assert torch.equal(g_ours, g_ref)
    assert float(g_ours[3].abs().sum()) == 0.0  # the infeasible utterance


def test_ctc_loss_traces_under_torch_compile_without_graph_breaks():
    gen = torch.Generator().manual_seed(1)
    lp = torch.randn(2, 30, 8, generator=gen).log_softmax(-1)
    targets = torch.randint(0, 7, (2, 6), generator=gen)
    lengths = (torch.tensor([30, 21]), torch.tensor([6, 4]))
    compiled = torch.compile(ctc_loss, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(lp, targets, *lengths), ctc_loss(lp, targets, *lengths))


def test_ctc_loss_of_bf16_log_probs_runs_in_float32_as_under_autocast():
    gen = torch.Generator().manual_seed(2)
    lp = torch.randn(2, 30, 8, generator=gen).log_softmax(-1).bfloat16()
    targets = torch.randint(0, 7, (2, 6), generator=gen)
    lengths = (torch.tensor([30, 21]), torch.tensor([6, 4]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ctc_loss(lp, targets, *lengths)
    assert loss.dtype == torch.float32 and torch.equal(loss, ctc_loss(lp.float(), targets, *lengths))
