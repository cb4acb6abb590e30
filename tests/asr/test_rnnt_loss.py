"""RNN-T loss: an explicit float64 sum over every alignment (values and autograd gradients), NeMo's reductions,
FastEmit and clamp rules, gradcheck, trimming, errors, and the NeMo 3.0 reference losses."""

from __future__ import annotations

import itertools

import pytest
import torch

from nemofn.asr.rnnt_loss import TRANSDUCER_REDUCTIONS, RNNTLoss, reduce_transducer_loss, rnnt_loss

V = 3  # tokens; blank = V


def _alignments(t_len: int, u_len: int):
    """Every RNN-T alignment as a list of (kind, t, u): ``u_len`` tokens and ``t_len - 1`` blanks in any order,
    then the final blank at ``(t_len - 1, u_len)``."""
    slots = t_len - 1 + u_len
    for token_slots in itertools.combinations(range(slots), u_len):
        t = u = 0
        path = []
        for i in range(slots):
            if i in token_slots:
                path.append(("token", t, u))
                u += 1
            else:
                path.append(("blank", t, u))
                t += 1
        path.append(("blank", t, u))
        assert (t, u) == (t_len - 1, u_len)
        yield path


def brute_force_costs(acts, targets, input_lengths, target_lengths, *, blank=V, fastemit_lambda=0.0):
    """Per-utterance ``-(1 + lambda) log P`` by enumeration, differentiable with NeMo's FastEmit gradient: token
    log-prob gradients scaled by ``1 + lambda``, blank ones not."""
    costs = []
    for b in range(acts.shape[0]):
        lp = acts[b].log_softmax(-1)
        t_len, u_len = int(input_lengths[b]), int(target_lengths[b])
        scaled = lp + fastemit_lambda * (lp - lp.detach())  # same value, token gradients scaled below
        totals, plain = [], []
        for path in _alignments(t_len, u_len):
            score = lp.new_zeros(())
            score_plain = lp.new_zeros(())
            for kind, t, u in path:
                if kind == "blank":
                    score = score + lp[t, u, blank]
                    score_plain = score_plain + lp[t, u, blank]
                else:
                    score = score + scaled[t, u, targets[b, u]]
                    score_plain = score_plain + lp[t, u, targets[b, u]]
            totals.append(score)
            plain.append(score_plain)
        ll = torch.logsumexp(torch.stack(totals), 0)
        costs.append(-ll - fastemit_lambda * torch.logsumexp(torch.stack(plain), 0).detach())
    return torch.stack(costs)


def _batch(seed=0, target_lengths=(3, 1, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    input_lengths = torch.tensor([4, 3, 2, 1])
    target_lengths = torch.tensor(target_lengths)
    acts = 2.0 * torch.randn(4, 4, 4, V + 1, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (4, 3), generator=g)
    return acts, targets, input_lengths, target_lengths


def _grad(loss_fn, acts):
    acts = acts.clone().requires_grad_(True)
    value = loss_fn(acts)
    (grad,) = torch.autograd.grad(value.sum(), acts)
    return value.detach(), grad


@pytest.mark.parametrize("reduction", TRANSDUCER_REDUCTIONS)
@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.3])
def test_values_and_gradients_match_brute_force(reduction, fastemit_lambda):
    acts, targets, t_len, u_len = _batch()
    ours, g_ours = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction=reduction,
                                             fastemit_lambda=fastemit_lambda), acts)
    ref, g_ref = _grad(lambda a: reduce_transducer_loss(
        brute_force_costs(a, targets, t_len, u_len, fastemit_lambda=fastemit_lambda), u_len, reduction), acts)
    assert ours.shape == ((4,) if reduction == "none" else ())
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    assert g_ours[1, 3:].abs().max() == 0 and g_ours[2, :, 3:].abs().max() == 0  # padding gets no gradient


def test_fastemit_scales_the_value_and_only_the_token_gradients():
    acts, targets, t_len, u_len = _batch(1)
    plain = rnnt_loss(acts, targets, t_len, u_len, blank=V, reduction="none")
    scaled = rnnt_loss(acts, targets, t_len, u_len, blank=V, reduction="none", fastemit_lambda=0.5)
    torch.testing.assert_close(scaled, 1.5 * plain)
    _, g0 = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V), acts)
    _, g1 = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, fastemit_lambda=0.5), acts)
    assert not torch.allclose(g0, g1) and not torch.allclose(1.5 * g0, g1)


def test_zero_length_targets_and_single_frames():
    acts, targets, t_len, u_len = _batch(2, target_lengths=(0, 1, 0, 2))
    ours, g_ours = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction="none"), acts)
    ref, g_ref = _grad(lambda a: brute_force_costs(a, targets, t_len, u_len), acts)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    empty = torch.zeros(4, 0, dtype=torch.long)
    ours = rnnt_loss(acts[:, :, :1], empty, t_len, torch.zeros(4, dtype=torch.long), blank=V, reduction="none")
    expected = -torch.stack([acts[b, : t_len[b], 0].log_softmax(-1)[:, V].sum() for b in range(4)])
    torch.testing.assert_close(ours, expected)


def test_clamp_clamps_the_final_activation_gradient_like_nemo_cpu():
    acts, targets, t_len, u_len = _batch(3)
    clamp = 0.05
    _, g_ref = _grad(lambda a: reduce_transducer_loss(brute_force_costs(a, targets, t_len, u_len), u_len, "sum"),
                     acts)
    _, g_ours = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction="sum", clamp=clamp), acts)
    assert (g_ref.abs() > clamp).sum() > 10  # the clamp really bites
    torch.testing.assert_close(g_ours, g_ref.clamp(-clamp, clamp), rtol=1e-10, atol=1e-12)
    # NeMo's CPU path clamps after the reduction's scaling: with mean_batch the bound applies to grad / B.
    _, g_mean = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, clamp=clamp), acts)
    torch.testing.assert_close(g_mean, (g_ref / 4).clamp(-clamp, clamp), rtol=1e-10, atol=1e-12)
    _, g_off = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction="sum", clamp=0.0), acts)
    torch.testing.assert_close(g_off, g_ref, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    g = torch.Generator().manual_seed(4)
    acts = torch.randn(2, 3, 3, V + 1, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 2], [1, 1]])
    t_len, u_len = torch.tensor([3, 2]), torch.tensor([2, 1])
    assert torch.autograd.gradcheck(
        lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction="mean_volume"), (acts,), fast_mode=True)


def test_blank_need_not_be_last():
    acts, targets, t_len, u_len = _batch(5)
    targets = targets + 1  # ids 1..V, blank 0
    ours = rnnt_loss(acts, targets, t_len, u_len, blank=0, reduction="none")
    torch.testing.assert_close(ours, brute_force_costs(acts, targets, t_len, u_len, blank=0).detach())


def test_trimming_and_padding_are_ignored():
    acts, targets, t_len, u_len = _batch(6)
    base, g_base = _grad(lambda a: rnnt_loss(a, targets, t_len, u_len, blank=V, reduction="none"), acts)
    padded = 1e4 * torch.randn(4, 7, 6, V + 1, dtype=torch.float64)  # finite garbage outside each lattice
    for b in range(4):
        padded[b, : t_len[b], : u_len[b] + 1] = acts[b, : t_len[b], : u_len[b] + 1]
    long_targets = torch.full((4, 5), -1)
    long_targets[:, :3] = targets
    ours, g_ours = _grad(lambda a: rnnt_loss(a, long_targets, t_len.int(), u_len.int(), blank=V,
                                             reduction="none"), padded)
    torch.testing.assert_close(ours, base)
    torch.testing.assert_close(g_ours[:, :4, :4], g_base)
    assert g_ours[:, 4:].abs().max() == 0 and g_ours[:, :, 4:].abs().max() == 0
    with pytest.raises(ValueError, match="differ from the blank id"):  # padding ids are not checked, valid ones are
        rnnt_loss(padded, torch.full((4, 5), V), t_len, u_len, blank=V)


def test_logits_and_log_probs_give_the_same_loss_and_half_precision_runs_in_float32():
    acts, targets, t_len, u_len = _batch(7)
    acts = acts.float()
    a = rnnt_loss(acts, targets, t_len, u_len, blank=V)
    b = rnnt_loss(acts.log_softmax(-1), targets, t_len, u_len, blank=V)
    torch.testing.assert_close(a, b)
    half = rnnt_loss(acts.half(), targets, t_len, u_len, blank=V)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, a, rtol=2e-3, atol=2e-3)


def test_reductions_follow_nemo_reduce():
    per = torch.tensor([2.0, 6.0, 3.0])
    lengths = torch.tensor([1, 3, 2])
    assert reduce_transducer_loss(per, lengths, "mean_batch").item() == pytest.approx(11 / 3)
    assert reduce_transducer_loss(per, lengths, "mean_volume").item() == pytest.approx(11 / 6)
    assert reduce_transducer_loss(per, lengths, "mean").item() == pytest.approx((2 + 2 + 1.5) / 3)
    assert reduce_transducer_loss(per, lengths, "sum").item() == pytest.approx(11)
    assert reduce_transducer_loss(per, lengths, None) is per
    assert torch.isinf(reduce_transducer_loss(per, torch.tensor([0, 3, 2]), "mean"))  # NeMo divides as is
    with pytest.raises(ValueError, match="rnnt_reduction"):
        reduce_transducer_loss(per, lengths, "average")


def test_rnnt_loss_class_is_keyword_callable_and_checks_its_inputs():
    acts, targets, t_len, u_len = _batch(8)
    loss = RNNTLoss(num_classes=V, reduction="mean_volume", fastemit_lambda=0.1, clamp=1.0)
    value = loss(log_probs=acts, targets=targets, input_lengths=t_len, target_lengths=u_len)
    expected = rnnt_loss(acts, targets, t_len, u_len, blank=V, reduction="mean_volume", fastemit_lambda=0.1)
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="expects a joint output with 5 classes"):
        RNNTLoss(num_classes=4)(acts, targets, t_len, u_len)
    with pytest.raises(ValueError, match="rnnt_reduction"):
        RNNTLoss(num_classes=V, reduction="avg")
    with pytest.raises(ValueError, match="input length must be >= 1"):
        rnnt_loss(acts, targets, torch.tensor([4, 0, 2, 1]), u_len, blank=V)
    with pytest.raises(ValueError, match="exceeds the 4 frames"):
        rnnt_loss(acts, targets, torch.tensor([5, 1, 2, 1]), u_len, blank=V)
    with pytest.raises(ValueError, match="differ from the blank id"):
        rnnt_loss(acts, torch.full_like(targets, V), t_len, u_len, blank=V)


@pytest.mark.parametrize("name", ["fastconformer_rnnt_bpe", "fastconformer_hybrid_bpe"])
def test_matches_nemo_reference_losses(nemo3_dir, name):
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
    expected = ref["loss"] if "rnnt_loss" not in ref else ref["rnnt_loss"]  # hybrid: the transducer part
    args = (ref["targets"], ref["encoded_len"], ref["targets_len"])
    loss = RNNTLoss(num_classes=ref["blank_id"], reduction=ref["loss_reduction"])
    for key in ("joint_out", "joint_logits"):  # NeMo's CPU joint output is log-softmaxed; both give the loss
        torch.testing.assert_close(loss(ref[key], *args), expected, rtol=1e-4, atol=0)
        per_utt = rnnt_loss(ref[key], *args, blank=ref["blank_id"], reduction="none")
        torch.testing.assert_close(per_utt, ref["loss_per_utt"], rtol=1e-4, atol=0)
