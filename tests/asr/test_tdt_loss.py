"""TDT loss: an explicit float64 sum over every path of the token-and-duration lattice (values and autograd
gradients) with sigma, FastEmit, clamp and omega as NeMo's CUDA kernel has them, gradcheck, duration checks, and
the NeMo 3.0 reference losses."""

from __future__ import annotations

import pytest
import torch

from nemofn.asr.rnnt_loss import TRANSDUCER_REDUCTIONS, reduce_transducer_loss, rnnt_loss
from nemofn.asr.tdt_loss import TDTLoss, check_durations, tdt_loss

V = 3  # tokens; blank = V, durations follow


def _paths(t_len: int, u_len: int, durations):
    """Every TDT path from (0, 0) as a list of (kind, t, u, duration index): blanks take durations >= 1, tokens any
    duration; frames stay < t_len and the last blank lands exactly on t_len with all tokens emitted."""
    out = []

    def walk(t, u, path):
        for i, d in enumerate(durations):
            if d >= 1:
                if t + d < t_len:
                    walk(t + d, u, path + [("blank", t, u, i)])
                elif t + d == t_len and u == u_len:
                    out.append(path + [("blank", t, u, i)])
            if u < u_len and t + d < t_len:
                walk(t + d, u + 1, path + [("token", t, u, i)])

    walk(0, 0, [])
    return out


def brute_force_costs(acts, targets, input_lengths, target_lengths, durations, *, sigma=0.0, fastemit_lambda=0.0):
    """Per-utterance ``-(1 + lambda) log P`` by enumeration; token log-prob gradients scaled by ``1 + lambda``
    (blank and duration ones not), as NeMo's kernel does."""
    costs = []
    for b in range(acts.shape[0]):
        lp = acts[b, ..., : V + 1].log_softmax(-1)
        ld = acts[b, ..., V + 1:].log_softmax(-1)
        scaled = lp + fastemit_lambda * (lp - lp.detach())
        totals, plain = [], []
        for path in _paths(int(input_lengths[b]), int(target_lengths[b]), durations):
            score = lp.new_zeros(())
            score_plain = lp.new_zeros(())
            for kind, t, u, i in path:
                if kind == "blank":
                    arc = lp[t, u, V] - sigma + ld[t, u, i]
                    score, score_plain = score + arc, score_plain + arc
                else:
                    y = targets[b, u]
                    score = score + scaled[t, u, y] - sigma + ld[t, u, i]
                    score_plain = score_plain + lp[t, u, y] - sigma + ld[t, u, i]
            totals.append(score)
            plain.append(score_plain)
        ll = torch.logsumexp(torch.stack(totals), 0)
        costs.append(-ll - fastemit_lambda * torch.logsumexp(torch.stack(plain), 0).detach())
    return torch.stack(costs)


def _batch(seed=0, durations=(0, 1, 2), target_lengths=(3, 1, 2, 0)):
    g = torch.Generator().manual_seed(seed)
    input_lengths = torch.tensor([4, 3, 2, 1])
    acts = 2.0 * torch.randn(4, 4, 4, V + 1 + len(durations), generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (4, 3), generator=g)
    return acts, targets, input_lengths, torch.tensor(target_lengths)


def _grad(loss_fn, acts):
    acts = acts.clone().requires_grad_(True)
    value = loss_fn(acts)
    (grad,) = torch.autograd.grad(value.sum(), acts)
    return value.detach(), grad


@pytest.mark.parametrize("durations", [(0, 1, 2), (0, 1, 3)])
@pytest.mark.parametrize("sigma", [0.0, 0.05])
@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.2])
def test_values_and_gradients_match_brute_force(durations, sigma, fastemit_lambda):
    acts, targets, t_len, u_len = _batch(durations=durations)
    kw = dict(sigma=sigma, fastemit_lambda=fastemit_lambda)
    ours, g_ours = _grad(lambda a: tdt_loss(a, targets, t_len, u_len, blank=V, durations=durations,
                                            reduction="none", **kw), acts)
    ref, g_ref = _grad(lambda a: brute_force_costs(a, targets, t_len, u_len, durations, **kw), acts)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    assert g_ours[1, 3:].abs().max() == 0 and g_ours[3, :, 1:].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("reduction", TRANSDUCER_REDUCTIONS)
def test_reductions(reduction):
    acts, targets, t_len, u_len = _batch(1, target_lengths=(3, 1, 2, 1))
    ours, g_ours = _grad(lambda a: tdt_loss(a, targets, t_len, u_len, blank=V, durations=(0, 1, 2), sigma=0.02,
                                            reduction=reduction), acts)
    ref, g_ref = _grad(lambda a: reduce_transducer_loss(
        brute_force_costs(a, targets, t_len, u_len, (0, 1, 2), sigma=0.02), u_len, reduction), acts)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_clamp_clamps_each_utterances_token_logit_gradient_before_the_reduction():
    acts, targets, t_len, u_len = _batch(2)
    clamp, durations = 0.05, (0, 1, 2)
    weights = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)  # upstream gradient of each utterance
    expected = torch.zeros_like(acts)
    for b in range(4):
        _, g = _grad(lambda a: brute_force_costs(a[b: b + 1], targets[b: b + 1], t_len[b: b + 1],
                                                 u_len[b: b + 1], durations, fastemit_lambda=0.1), acts)
        g[..., : V + 1].clamp_(-clamp, clamp)  # token logits only; durations are never clamped
        expected += weights[b] * g
    _, g_ours = _grad(lambda a: (weights * tdt_loss(a, targets, t_len, u_len, blank=V, durations=durations,
                                                    reduction="none", fastemit_lambda=0.1, clamp=clamp)), acts)
    torch.testing.assert_close(g_ours, expected, rtol=1e-10, atol=1e-12)
    _, g_free = _grad(lambda a: tdt_loss(a, targets, t_len, u_len, blank=V, durations=durations), acts)
    assert (g_free[..., : V + 1].abs() > clamp / 4).any()  # so the clamp really bites
    assert (g_ours[..., V + 1:].abs() > 2 * clamp).any()


def test_omega_branch_is_the_rnnt_loss_of_the_token_logits():
    acts, targets, t_len, u_len = _batch(3)
    kw = dict(blank=V, durations=(0, 1, 2), sigma=0.05, omega=0.3, reduction="none")
    tdt_value = tdt_loss(acts, targets, t_len, u_len, coin=0.3, **kw)  # coin >= omega: TDT
    torch.testing.assert_close(tdt_value, tdt_loss(acts, targets, t_len, u_len, **dict(kw, omega=0.0)))
    value, grad = _grad(lambda a: tdt_loss(a, targets, t_len, u_len, coin=0.29, fastemit_lambda=0.1, **kw), acts)
    rnnt_value, rnnt_grad = _grad(lambda a: rnnt_loss(a[..., : V + 1], targets, t_len, u_len, blank=V,
                                                      reduction="none", fastemit_lambda=0.1), acts)
    torch.testing.assert_close(value, rnnt_value)
    torch.testing.assert_close(grad, rnnt_grad)
    assert grad[..., V + 1:].abs().max() == 0
    # NeMo's CUDA clamp rule in this branch too: per utterance, before the reduction's scaling
    _, g_clamp = _grad(lambda a: tdt_loss(a, targets, t_len, u_len, coin=0.0, clamp=0.05,
                                          **dict(kw, reduction="mean_batch")), acts)
    _, g_utt = _grad(lambda a: rnnt_loss(a[..., : V + 1], targets, t_len, u_len, blank=V, reduction="sum"), acts)
    torch.testing.assert_close(g_clamp, g_utt.clamp(-0.05, 0.05) / 4)
    # no coin: one draw from torch's global generator (omega 1 always takes the RNN-T branch)
    torch.testing.assert_close(tdt_loss(acts, targets, t_len, u_len, **dict(kw, omega=1.0)), rnnt_value / 1.1)


def test_gradcheck():
    g = torch.Generator().manual_seed(4)
    acts = torch.randn(2, 4, 3, V + 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 2], [1, 1]])
    t_len, u_len = torch.tensor([4, 3]), torch.tensor([2, 1])
    assert torch.autograd.gradcheck(
        lambda a: tdt_loss(a, targets, t_len, u_len, blank=V, durations=[0, 1, 2], sigma=0.1, reduction="mean"),
        (acts,), fast_mode=True)


def test_trimming_and_logits_versus_log_probs():
    acts, targets, t_len, u_len = _batch(5)
    base = tdt_loss(acts, targets, t_len, u_len, blank=V, durations=(0, 1, 2), reduction="none")
    whole = tdt_loss(acts.log_softmax(-1), targets, t_len, u_len, blank=V, durations=(0, 1, 2), reduction="none")
    torch.testing.assert_close(whole, base)  # NeMo's CPU joint log-softmaxes over tokens and durations together
    padded = 1e4 * torch.randn(4, 6, 5, acts.shape[-1], dtype=torch.float64)
    for b in range(4):
        padded[b, : t_len[b], : u_len[b] + 1] = acts[b, : t_len[b], : u_len[b] + 1]
    torch.testing.assert_close(
        tdt_loss(padded, targets, t_len, u_len, blank=V, durations=(0, 1, 2), reduction="none"), base)


def test_durations_and_shapes_are_checked():
    assert check_durations([0, 1, 2, 4]) == (0, 1, 2, 4)
    for bad in ([1, 2], [0, 2, 3], [0, 1, 1, 2], [0, 1, 3, 2], [0], [0, 1.0, 2]):
        with pytest.raises(ValueError, match="tdt_kwargs.durations"):
            check_durations(bad)
    acts, targets, t_len, u_len = _batch(6)
    with pytest.raises(ValueError, match="blank id must be 3"):
        tdt_loss(acts, targets, t_len, u_len, blank=2, durations=(0, 1, 2))
    with pytest.raises(ValueError, match="expects a joint output with 8 classes"):
        TDTLoss(num_classes=V, durations=(0, 1, 2, 3))(acts, targets, t_len, u_len)
    with pytest.raises(ValueError, match="tdt_kwargs.durations"):
        TDTLoss(num_classes=V, durations=(1, 2))


def test_tdt_loss_class_is_keyword_callable():
    acts, targets, t_len, u_len = _batch(7)
    loss = TDTLoss(num_classes=V, durations=[0, 1, 2], sigma=0.05, omega=0.5, reduction="mean_volume")
    kw = dict(blank=V, durations=(0, 1, 2), sigma=0.05, omega=0.5, reduction="mean_volume")
    for coin in (0.1, 0.9):
        value = loss(log_probs=acts, targets=targets, input_lengths=t_len, target_lengths=u_len, coin=coin)
        torch.testing.assert_close(value, tdt_loss(acts, targets, t_len, u_len, coin=coin, **kw))


def test_matches_nemo_reference_losses(nemo3_dir):
    ref = torch.load(nemo3_dir / "fastconformer_tdt_bpe.ref.pt", weights_only=True)
    loss = TDTLoss(num_classes=ref["blank_id"], durations=ref["durations"], sigma=ref["sigma"], omega=ref["omega"],
                   reduction=ref["loss_reduction"])
    per_utt = TDTLoss(num_classes=ref["blank_id"], durations=ref["durations"], sigma=ref["sigma"],
                      omega=ref["omega"], reduction="none")
    args = (ref["targets"], ref["encoded_len"], ref["targets_len"])
    for key in ("joint_out", "joint_logits"):
        torch.testing.assert_close(loss(ref[key], *args, coin=ref["omega"]), ref["loss"], rtol=1e-4, atol=0)
        torch.testing.assert_close(per_utt(ref[key], *args, coin=0.99), ref["loss_per_utt"], rtol=1e-4, atol=0)
        below = ref["omega"] / 2
        torch.testing.assert_close(loss(ref[key], *args, coin=below), ref["loss_rnnt_branch"], rtol=1e-4, atol=0)
        torch.testing.assert_close(per_utt(ref[key], *args, coin=below), ref["loss_rnnt_branch_per_utt"],
                                   rtol=1e-4, atol=0)
