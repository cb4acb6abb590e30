"""NeMo's lr schedules: hand-computed values, step/ratio resolution, error cases, and the step convention
checked against a torch ``LRScheduler`` driven the way Lightning drives NeMo's schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from nemofn.optim import schedules as S


def _lrs(schedule, steps):
    return {k: schedule(k) for k in steps}


def _check(schedule, expected: dict[int, float]):
    got = _lrs(schedule, expected)
    for k, want in expected.items():
        assert got[k] == pytest.approx(want, rel=1e-12, abs=1e-15), f"step {k}: {got[k]} != {want}"


def test_warmup_policy():
    _check(S.WarmupPolicy(1.0, warmup_steps=4, max_steps=10, min_lr=0.1),
           {0: 0.2, 3: 0.8, 4: 1.0, 5: 1.0, 10: 1.0, 11: 0.1, 50: 0.1})
    # warmup_ratio -> int(ratio * max_steps) = int(2.5) = 2
    schedule = S.WarmupPolicy(1.0, warmup_ratio=0.25, max_steps=10)
    assert schedule.warmup_steps == 2
    _check(schedule, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 1.0})
    # No max_steps: constant after warmup, forever.
    _check(S.WarmupPolicy(1.0, warmup_steps=1), {0: 0.5, 1: 1.0, 10**9: 1.0})


def test_warmup_hold_policy_and_linear_anneal():
    schedule = S.WarmupHoldAnnealLinear(1.0, warmup_steps=2, hold_steps=3, max_steps=10, min_lr=0.1)
    assert schedule.hold_steps == 5  # NeMo stores the end of the hold: hold + warmup
    _check(schedule, {0: 1 / 3, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1 - 0.9 * 0.2, 10: 0.1, 11: 0.1})
    # hold_ratio -> int(0.3 * 10) = 3 hold steps after the 2 warmup steps
    assert S.WarmupHoldPolicy(1.0, warmup_steps=2, hold_ratio=0.3, max_steps=10).hold_steps == 5
    assert S.WarmupHoldPolicy(1.0, warmup_steps=2, max_steps=10).hold_steps == 0
    _check(S.WarmupHoldPolicy(1.0, warmup_steps=2, hold_steps=3, max_steps=10, min_lr=0.2),
           {1: 2 / 3, 4: 1.0, 7: 1.0, 11: 0.2})


def test_cosine_annealing():
    schedule = S.CosineAnnealing(1.0, max_steps=10, warmup_steps=2, min_lr=0.1)
    _check(schedule, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 4: 0.45 * (1 + math.sqrt(0.5)) + 0.1, 6: 0.55, 10: 0.1, 11: 0.1})
    _check(S.CosineAnnealing(1.0, max_steps=10, min_lr=0.1), {0: 1.0, 5: 0.55, 10: 0.1})
    # warmup_ratio=0.2 of 10 steps is the same schedule as warmup_steps=2
    ratio = S.CosineAnnealing(1.0, max_steps=10, warmup_ratio=0.2, min_lr=0.1)
    assert [ratio(k) for k in range(12)] == [schedule(k) for k in range(12)]


def test_cosine_annealing_megatron_constant_steps():
    # decay_steps = 20 - (4 + 6) = 10; warmup is base * s / W (so step 0 has lr 0)
    schedule = S.CosineAnnealing(1.0, max_steps=20, warmup_steps=4, constant_steps=6, min_lr=0.1)
    assert schedule.decay_steps == 10
    _check(schedule, {0: 0.0, 2: 0.5, 4: 1.0, 9: 0.55, 14: 0.1, 15: 0.1, 20: 0.1, 21: 0.1})
    # constant_ratio=0.3 of 20 = 6 steps
    ratio = S.CosineAnnealing(1.0, max_steps=20, warmup_steps=4, constant_ratio=0.3, min_lr=0.1)
    assert [ratio(k) for k in range(22)] == [schedule(k) for k in range(22)]


def test_noam_annealing():
    # d_model**-0.5 = 1/16; warmup**-1.5 = 1e-3
    schedule = S.NoamAnnealing(2.0, d_model=256, warmup_steps=100, min_lr=1e-6)
    _check(schedule, {0: 1.25e-4, 1: 1.25e-4, 50: 0.00625, 100: 0.0125, 400: 0.00625})
    floored = S.NoamAnnealing(2.0, d_model=256, warmup_steps=100, min_lr=0.01)
    _check(floored, {50: 0.00625, 400: 0.01})  # min_lr only applies after warmup
    _check(S.NoamAnnealing(2.0, d_model=256), {3: 0.125 / math.sqrt(3)})


def test_noam_hold_annealing():
    schedule = S.NoamHoldAnnealing(1.0, warmup_steps=4, hold_steps=6, max_steps=100)
    _check(schedule, {2: 0.6, 4: 1.0, 9: 1.0, 10: 1.0, 22: 0.5, 42: 1 / 3, 101: 0.0})
    _check(S.NoamHoldAnnealing(1.0, warmup_steps=4, hold_steps=6, max_steps=100, decay_rate=1.0), {22: 0.25})
    _check(S.NoamHoldAnnealing(1.0, warmup_steps=4, max_steps=100), {16: 0.5})
    _check(S.NoamHoldAnnealing(1.0, warmup_steps=4, max_steps=100, min_lr=0.6), {16: 0.6})


def test_warmup_annealing():
    _check(S.WarmupAnnealing(1.0, max_steps=10, warmup_steps=2, min_lr=0.1),
           {1: 2 / 3, 3: 0.1 + 0.875 * 0.9, 6: 0.55, 10: 0.1, 11: 0.1})


def test_inverse_square_root_annealing():
    _check(S.InverseSquareRootAnnealing(1.0, max_steps=100, warmup_steps=3),
           {0: 0.25, 3: 1.0, 15: 0.5, 35: 1 / 3, 101: 0.0})


def test_t5_inverse_square_root_annealing():
    schedule = S.T5InverseSquareRootAnnealing(123.0, max_steps=100, constant_steps=4, min_lr=1e-3)
    _check(schedule, {0: 0.5, 4: 0.5, 16: 0.25, 100: 0.1, 101: 1e-3})
    assert S.T5InverseSquareRootAnnealing(1.0, max_steps=100, constant_ratio=0.04).constant_steps == 4


def test_polynomial_decay_annealing():
    _check(S.PolynomialDecayAnnealing(1.0, max_steps=12, warmup_steps=2, power=2.0, min_lr=0.1),
           {1: 2 / 3, 7: 0.325, 12: 0.1, 13: 0.1})
    linear = S.PolynomialDecayAnnealing(1.0, max_steps=12, warmup_steps=2, min_lr=0.1)
    cycled = S.PolynomialDecayAnnealing(1.0, max_steps=12, warmup_steps=2, min_lr=0.1, cycle=True)
    _check(linear, {4: 0.82})
    assert [cycled(k) for k in range(14)] == [linear(k) for k in range(14)]


def test_polynomial_hold_decay_annealing():
    _check(S.PolynomialHoldDecayAnnealing(1.0, max_steps=20, warmup_steps=2, hold_steps=4),
           {5: 1.0, 6: 1.0, 13: 0.5, 20: 0.0})
    # Without hold NeMo decays from step 0 over max_steps - warmup steps (hold_steps is 0).
    _check(S.PolynomialHoldDecayAnnealing(1.0, max_steps=20, warmup_steps=2), {3: 1 - 3 / 18, 18: 0.0, 19: 0.0})


def test_square_and_square_root_annealing():
    _check(S.SquareAnnealing(1.0, max_steps=12, warmup_steps=2), {2: 1.0, 7: 0.25, 12: 1e-5, 13: 1e-5})
    _check(S.SquareRootAnnealing(1.0, max_steps=16, warmup_steps=2),
           {2: 1.0, 3: math.sqrt(13 / 16), 12: 0.5, 16: 0.0})


def test_warmup_hold_anneal_one_minus_square_root():
    _check(S.WarmupHoldAnnealOneMinusSquareRoot(1.0, max_steps=20, warmup_steps=2, hold_steps=2, min_lr=0.05),
           {1: 2 / 3, 3: 1.0, 8: 0.5, 20: 0.05})


def test_last_epoch_shifts_the_schedule():
    fresh = S.CosineAnnealing(1.0, max_steps=100, warmup_steps=10, min_lr=0.01)
    resumed = S.CosineAnnealing(1.0, max_steps=100, warmup_steps=10, min_lr=0.01, last_epoch=5)
    assert [resumed(k) for k in range(50)] == [fresh(k + 6) for k in range(50)]
    assert fresh.lr_at(0) == fresh(0)


def test_constant():
    assert S.Constant(0.3)(0) == S.Constant(0.3)(10**6) == 0.3


def test_repr_lists_arguments():
    text = repr(S.CosineAnnealing(0.02, max_steps=100, warmup_steps=10))
    assert text.startswith("CosineAnnealing(base_lr=0.02") and "warmup_steps=10" in text


@pytest.mark.parametrize("make,match", [
    (lambda: S.WarmupPolicy(1.0, warmup_steps=2, warmup_ratio=0.1, max_steps=10), "mutually exclusive"),
    (lambda: S.WarmupPolicy(1.0, warmup_ratio=0.1), "max_steps"),
    (lambda: S.WarmupHoldPolicy(1.0, hold_steps=1, hold_ratio=0.1, max_steps=10), "mutually exclusive"),
    (lambda: S.WarmupHoldPolicy(1.0, hold_ratio=0.1), "max_steps"),
    (lambda: S.CosineAnnealing(1.0), "needs max_steps"),
    (lambda: S.CosineAnnealing(1.0, max_steps=10, constant_steps=1, constant_ratio=0.1), "mutually exclusive"),
    (lambda: S.CosineAnnealing(1e-6, max_steps=10, min_lr=1e-5), "lower than min_lr"),
    (lambda: S.CosineAnnealing(1e-5, max_steps=10, min_lr=1e-5, constant_steps=2), "base lr > min_lr"),
    (lambda: S.NoamAnnealing(1.0, d_model=4, min_lr=2.0), "lower than min_lr"),
    (lambda: S.NoamHoldAnnealing(1.0, max_steps=10), "without warmup"),
    (lambda: S.T5InverseSquareRootAnnealing(1.0, max_steps=10), "constant_steps"),
    (lambda: S.PolynomialDecayAnnealing(1.0, max_steps=-3), "max_steps must be >= 0"),
    (lambda: S.WarmupPolicy(1.0, warmup_steps=-1), "warmup_steps must be >= 0"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_cosine_annealing_with_equal_base_and_min_lr_is_constant():
    schedule = S.CosineAnnealing(1e-5, max_steps=10, min_lr=1e-5)
    assert all(schedule(k) == pytest.approx(1e-5, rel=1e-12) for k in range(12))


# --- The step convention, against a torch LRScheduler -------------------------------------------------------------
# Each formula below is written from the NeMo docs independently of nemofn.optim.schedules, and evaluated by a
# torch LRScheduler at its own `last_epoch`, which torch advances in __init__ and in every sched.step(), exactly
# as for NeMo's schedulers. The lr the optimizer holds when it steps must equal schedule(k).

def _cosine(s, base, W=5, M=40, lo=1e-3):
    if W > 0 and s <= W:
        return base * (s + 1) / (W + 1)
    if s > M:
        return lo
    return lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * (s - W) / (M - W)))


def _noam(s, base, d=144, W=8, lo=1e-5):
    s = max(1, s)
    lr = base / math.sqrt(d) * min(1 / math.sqrt(s), s / W ** 1.5)
    return max(lr, lo) if s > W else lr


def _hold_linear(s, base, W=3, H=4, M=30, lo=0.01):
    if W > 0 and s <= W:
        return base * (s + 1) / (W + 1)
    if s < W + H:
        return base
    if s > M:
        return lo
    return base - (base - lo) * (s - W - H) / (M - W - H)


REDERIVED = [
    (_cosine, lambda base, **kw: S.CosineAnnealing(base, max_steps=40, warmup_steps=5, min_lr=1e-3, **kw)),
    (_noam, lambda base, **kw: S.NoamAnnealing(base, d_model=144, warmup_steps=8, min_lr=1e-5, **kw)),
    (_hold_linear, lambda base, **kw: S.WarmupHoldAnnealLinear(base, warmup_steps=3, hold_steps=4, max_steps=30,
                                                               min_lr=0.01, **kw)),
]


class _FormulaScheduler(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer, formula, last_epoch=-1):
        self.formula = formula
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self.formula(self.last_epoch, base) for base in self.base_lrs]


def _lrs_seen_by_optimizer(formula, base, steps, last_epoch=-1):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    if last_epoch != -1:
        opt.param_groups[0]["initial_lr"] = base  # what a resumed torch optimizer carries
    sched = _FormulaScheduler(opt, formula, last_epoch=last_epoch)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("formula,make", REDERIVED, ids=["cosine", "noam", "hold_linear"])
@pytest.mark.parametrize("last_epoch", [-1, 12])
def test_schedule_matches_lr_seen_by_torch_optimizer(formula, make, last_epoch):
    base = 0.5
    seen = _lrs_seen_by_optimizer(formula, base, 45, last_epoch)
    ours = [make(base, last_epoch=last_epoch)(k) for k in range(45)]
    assert ours == pytest.approx(seen, rel=1e-12)
