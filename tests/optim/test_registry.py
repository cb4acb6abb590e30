"""Optimizer and schedule registries: NeMo names, errors naming the bad name or key, registration."""

from __future__ import annotations

import pytest

from nemofn.optim import registry
from nemofn.optim.registry import (
    get_optimizer,
    get_schedule,
    register_optimizer,
    register_schedule,
    schedule_needs_max_steps,
)
from nemofn.optim.schedules import Constant, CosineAnnealing, NoamAnnealing


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "novograd", "AdamW", "Novograd", "SGD"])
def test_get_optimizer_by_nemo_name(name):
    assert get_optimizer(name).name == name.lower()


def test_get_optimizer_passes_kwargs():
    opt = get_optimizer("novograd", betas=(0.8, 0.5), weight_decay=1e-3)
    assert opt.hparams["betas"] == (0.8, 0.5) and opt.hparams["weight_decay"] == 1e-3


def test_unknown_optimizer_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'.*adam, adamw, novograd, sgd"):
        get_optimizer("lion")


def test_nemo_optimizer_not_in_nemofn_says_so():
    with pytest.raises(ValueError, match="'adafactor'.*not implemented in nemofn"):
        get_optimizer("adafactor")


def test_unknown_optimizer_kwarg_names_the_key():
    with pytest.raises(TypeError, match=r"'betaz'.*accepted: betas"):
        get_optimizer("adamw", betaz=(0.9, 0.98))


def test_lr_kwarg_explains_where_lr_goes():
    with pytest.raises(TypeError, match="passed to update"):
        get_optimizer("sgd", lr=0.1)


def test_get_schedule():
    schedule = get_schedule("CosineAnnealing", 0.02, max_steps=100, warmup_steps=10, min_lr=1e-5)
    assert isinstance(schedule, CosineAnnealing) and schedule(10) == pytest.approx(0.02)
    assert isinstance(get_schedule("NoamAnnealing", 2.0, d_model=256, warmup_steps=10, max_steps=None),
                      NoamAnnealing)


def test_unknown_schedule_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown schedule 'Cosine'.*CosineAnnealing"):
        get_schedule("Cosine", 0.1)


def test_torch_schedulers_are_reported_as_not_implemented():
    with pytest.raises(ValueError, match="ReduceLROnPlateau.*monitored metric.*not implemented"):
        get_schedule("ReduceLROnPlateau", 0.1)


def test_unknown_schedule_kwarg_names_the_key():
    with pytest.raises(TypeError, match=r"'warmup'.*accepted:.*warmup_steps"):
        get_schedule("CosineAnnealing", 0.1, max_steps=10, warmup=5)


def test_needs_max_steps():
    assert schedule_needs_max_steps("CosineAnnealing")
    assert schedule_needs_max_steps("PolynomialHoldDecayAnnealing")
    assert not schedule_needs_max_steps("NoamAnnealing")
    assert not schedule_needs_max_steps("WarmupPolicy")


def test_all_nemo_step_schedulers_are_registered():
    assert set(registry.SCHEDULES) == {
        "WarmupPolicy", "WarmupHoldPolicy", "SquareAnnealing", "CosineAnnealing", "NoamAnnealing",
        "NoamHoldAnnealing", "WarmupHoldAnnealOneMinusSquareRoot", "WarmupHoldAnnealLinear", "WarmupAnnealing",
        "InverseSquareRootAnnealing", "T5InverseSquareRootAnnealing", "SquareRootAnnealing",
        "PolynomialDecayAnnealing", "PolynomialHoldDecayAnnealing"}


@pytest.fixture
def clean_registries(monkeypatch):
    monkeypatch.setattr(registry, "OPTIMIZERS", dict(registry.OPTIMIZERS))
    monkeypatch.setattr(registry, "SCHEDULES", dict(registry.SCHEDULES))


def test_register_optimizer(clean_registries):
    from nemofn.optim import sgd

    def heavy_ball(beta: float = 0.9):
        return sgd(momentum=beta)

    register_optimizer("heavy_ball", heavy_ball)
    assert get_optimizer("heavy_ball", beta=0.5).hparams["momentum"] == 0.5
    with pytest.raises(ValueError, match="cannot override"):
        register_optimizer("adam", heavy_ball)


def test_register_schedule_drops_max_steps_it_does_not_take(clean_registries):
    def halving(base_lr, *, every: int = 10):
        return lambda step: base_lr * 0.5 ** (step // every)

    register_schedule("Halving", halving)
    schedule = get_schedule("Halving", 1.0, every=2, max_steps=100)  # max_steps dropped, as NeMo does
    assert schedule(5) == 0.25
    assert not schedule_needs_max_steps("Halving")
    with pytest.raises(ValueError, match="cannot override"):
        register_schedule("CosineAnnealing", halving)


def test_register_schedule_needing_max_steps(clean_registries):
    register_schedule("Needy", lambda base_lr, *, max_steps: Constant(base_lr))
    assert schedule_needs_max_steps("Needy")
