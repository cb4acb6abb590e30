"""NeMo's learning-rate schedules as pure functions of the optimizer step (``nemo/core/optim/lr_scheduler.py``).

Every schedule is a callable object (treat it as immutable) ``schedule(k) -> lr`` where ``k`` is the 0-based index of the optimizer
step about to run; it returns the lr that NeMo's torch scheduler has put into the optimizer for that step.

Step convention: a torch ``_LRScheduler`` built with ``last_epoch=L`` immediately steps once, so the first
optimizer step runs with the formula evaluated at ``L + 1``; Lightning then steps the scheduler after every
optimizer step. So ``schedule(k) == formula(k + last_epoch + 1)``, which with NeMo's default ``last_epoch=-1`` is
``formula(k)``. :meth:`Schedule.lr_at` evaluates the formula at NeMo's ``last_epoch`` value directly.

Names, keyword arguments, defaults and formulas are NeMo's. Differences, all on inputs where NeMo crashes or
fails late: argument errors are ``ValueError`` raised at construction (NeMo uses ``assert`` or fails at the first
step that needs the value); ``max_steps=None`` in ``WarmupHoldPolicy`` means "no end" (NeMo compares with None);
``T5InverseSquareRootAnnealing`` also accepts ``constant_ratio``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "Schedule", "Constant", "WarmupPolicy", "WarmupHoldPolicy", "WarmupAnnealHoldPolicy", "SquareAnnealing",
    "SquareRootAnnealing", "CosineAnnealing", "NoamAnnealing", "NoamHoldAnnealing", "WarmupAnnealing",
    "InverseSquareRootAnnealing", "T5InverseSquareRootAnnealing", "PolynomialDecayAnnealing",
    "PolynomialHoldDecayAnnealing", "WarmupHoldAnnealOneMinusSquareRoot", "WarmupHoldAnnealLinear",
]

_MAX_STEPS_HINT = "set optim.sched.max_steps, or pass max_steps= to build_optimization (e.g. from compute_max_steps)"


def _steps_or_ratio(name: str, kind: str, steps: float | None, ratio: float | None, max_steps: int | None) -> float:
    """Resolves NeMo's ``<kind>_steps`` / ``<kind>_ratio`` pair to a step count (``int(ratio * max_steps)``)."""
    if steps is not None and ratio is not None:
        raise ValueError(f"{name}: {kind}_steps={steps} and {kind}_ratio={ratio} are mutually exclusive; set one "
                         f"of them to null")
    if steps is not None:
        if steps < 0:
            raise ValueError(f"{name}: {kind}_steps must be >= 0, got {steps}")
        return steps
    if ratio is not None:
        if max_steps is None:
            raise ValueError(f"{name}: {kind}_ratio={ratio} needs max_steps to turn into a step count; "
                             + _MAX_STEPS_HINT)
        return int(ratio * max_steps)
    return 0


class Schedule:
    """Base class: ``schedule(k)`` is the lr of 0-based optimizer step ``k``; subclasses implement ``lr_at``."""

    #: NeMo refuses to build this schedule without ``max_steps`` (its constructor has no default for it).
    needs_max_steps: bool = False

    def __init__(self, base_lr: float, *, last_epoch: int = -1, **hparams: Any):
        self.base_lr = float(base_lr)
        self.last_epoch = int(last_epoch)
        self.hparams = dict(hparams, last_epoch=last_epoch)
        if self.needs_max_steps and hparams.get("max_steps") is None:
            raise ValueError(f"{type(self).__name__} needs max_steps; " + _MAX_STEPS_HINT)
        if hparams.get("max_steps") is not None and hparams["max_steps"] < 0:
            raise ValueError(f"{type(self).__name__}: max_steps must be >= 0, got {hparams['max_steps']}")

    def __call__(self, step: int) -> float:
        """lr for 0-based optimizer step ``step`` (a Python int)."""
        return float(self.lr_at(int(step) + self.last_epoch + 1))

    def lr_at(self, step: int) -> float:
        """NeMo's ``get_lr()`` when the scheduler's ``last_epoch == step``."""
        raise NotImplementedError(type(self).__name__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}(base_lr={self.base_lr!r}, {args})"


class Constant(Schedule):
    """``lr = base_lr`` at every step (what an optimizer without a NeMo scheduler uses)."""

    def __init__(self, base_lr: float):
        super().__init__(base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr


class WarmupPolicy(Schedule):
    """Linear warmup ``base * (s + 1) / (W + 1)`` for ``s <= W``, then ``base``; ``min_lr`` after ``max_steps``."""

    def __init__(self, base_lr: float, *, warmup_steps: float | None = None, warmup_ratio: float | None = None,
                 max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1):
        super().__init__(base_lr, last_epoch=last_epoch, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
                         max_steps=max_steps, min_lr=min_lr)
        name = type(self).__name__
        self.max_steps = max_steps
        self.min_lr = min_lr
        self.warmup_steps = _steps_or_ratio(name, "warmup", warmup_steps, warmup_ratio, max_steps)

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self._warmup_lr(step)
        if self.max_steps is not None and step > self.max_steps:
            return self.min_lr
        return self._anneal_lr(step)

    def _warmup_lr(self, step: int) -> float:
        return self.base_lr * ((step + 1) / (self.warmup_steps + 1))

    def _anneal_lr(self, step: int) -> float:
        return self.base_lr


class WarmupHoldPolicy(WarmupPolicy):
    """:class:`WarmupPolicy` plus a hold at ``base`` for ``hold_steps`` steps after warmup (``W <= s < W + H``)."""

    def __init__(self, base_lr: float, *, warmup_steps: float | None = None, warmup_ratio: float | None = None,
                 hold_steps: float | None = None, hold_ratio: float | None = None, max_steps: int | None = None,
                 min_lr: float = 0.0, last_epoch: int = -1):
        super().__init__(base_lr, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, max_steps=max_steps,
                         min_lr=min_lr, last_epoch=last_epoch)
        self.hparams.update(hold_steps=hold_steps, hold_ratio=hold_ratio)
        hold = _steps_or_ratio(type(self).__name__, "hold", hold_steps, hold_ratio, max_steps)
        # NeMo stores the end of the hold phase (hold + warmup), or 0 when no hold was asked for.
        self.hold_steps = hold + self.warmup_steps if (hold_steps is not None or hold_ratio is not None) else 0

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self._warmup_lr(step)
        if self.warmup_steps <= step < self.hold_steps:
            return self.base_lr
        if self.max_steps is not None and step > self.max_steps:
            return self.min_lr
        return self._anneal_lr(step)


class WarmupAnnealHoldPolicy(Schedule):
    """Warmup, anneal over ``decay_steps = max_steps - (constant + warmup)``, then ``min_lr`` for ``constant``."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, warmup_steps: float | None = None,
                 warmup_ratio: float | None = None, constant_steps: float | None = None,
                 constant_ratio: float | None = None, min_lr: float = 0.0, last_epoch: int = -1):
        super().__init__(base_lr, last_epoch=last_epoch, max_steps=max_steps, warmup_steps=warmup_steps,
                         warmup_ratio=warmup_ratio, constant_steps=constant_steps, constant_ratio=constant_ratio,
                         min_lr=min_lr)
        name = type(self).__name__
        self.max_steps = max_steps
        self.min_lr = min_lr
        self.warmup_steps = _steps_or_ratio(name, "warmup", warmup_steps, warmup_ratio, max_steps)
        self.constant_steps = _steps_or_ratio(name, "constant", constant_steps, constant_ratio, max_steps)
        self.decay_steps = max_steps - (self.constant_steps + self.warmup_steps)

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self._warmup_lr(step)
        if self.constant_steps > 0 and self.warmup_steps + self.decay_steps < step <= self.max_steps:
            return self._constant_lr(step)
        if step > self.max_steps:
            return self.min_lr
        return self._anneal_lr(step)

    def _warmup_lr(self, step: int) -> float:
        return self.base_lr * ((step + 1) / (self.warmup_steps + 1))

    def _constant_lr(self, step: int) -> float:
        return self.min_lr

    def _anneal_lr(self, step: int) -> float:
        return self.base_lr


class CosineAnnealing(WarmupAnnealHoldPolicy):
    """Warmup then ``(base - min) * 0.5 * (1 + cos(pi * (s - W) / (M - W))) + min``.

    With ``constant_steps > 0`` (or ``constant_ratio``) it is Megatron's variant: warmup ``base * s / W``, cosine
    over ``decay_steps = M - W - C`` steps, then ``min_lr``.
    """

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1,
                 warmup_steps: float | None = None, warmup_ratio: float | None = None,
                 constant_steps: float | None = None, constant_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
                         constant_steps=constant_steps, constant_ratio=constant_ratio, min_lr=min_lr,
                         last_epoch=last_epoch)
        if self.base_lr < min_lr:
            raise ValueError(f"CosineAnnealing: base lr {self.base_lr} is lower than min_lr {min_lr}")
        if self.constant_steps > 0 and not self.base_lr > min_lr:
            raise ValueError(f"CosineAnnealing with constant steps needs base lr > min_lr, got {self.base_lr} and "
                             f"{min_lr}")

    def _anneal_lr(self, step: int) -> float:
        if self.constant_steps == 0:
            span = self.max_steps - self.warmup_steps
            mult = 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / span))
            return (self.base_lr - self.min_lr) * mult + self.min_lr
        return self._megatron_lr(step)

    def _warmup_lr(self, step: int) -> float:
        return super()._warmup_lr(step) if self.constant_steps == 0 else self._megatron_lr(step)

    def _constant_lr(self, step: int) -> float:
        return self._megatron_lr(step)

    def _megatron_lr(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.base_lr * float(step) / float(self.warmup_steps)
        if step > self.warmup_steps + self.decay_steps:
            return self.min_lr
        ratio = float(step - self.warmup_steps) / float(self.decay_steps)
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.base_lr - self.min_lr)


class SquareAnnealing(WarmupPolicy):
    """Warmup then ``max(base * ((M' - s') / M') ** 2, min_lr)`` with ``s' = s - W``, ``M' = M - W``."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 1e-5, last_epoch: int = -1,
                 warmup_steps: float | None = None, warmup_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)

    def _anneal_lr(self, step: int) -> float:
        span = self.max_steps - self.warmup_steps
        return max(self.base_lr * ((span - (step - self.warmup_steps)) / span) ** 2, self.min_lr)


class SquareRootAnnealing(WarmupPolicy):
    """Warmup then ``max(base * sqrt((M - s) / M), min_lr)`` (no warmup shift, as in NeMo)."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1,
                 warmup_steps: float | None = None, warmup_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)

    def _anneal_lr(self, step: int) -> float:
        return max(self.base_lr * ((self.max_steps - step) / self.max_steps) ** 0.5, self.min_lr)


class WarmupAnnealing(WarmupPolicy):
    """Warmup then linear decay ``min + (1 - (s - W) / (M - W)) * (base - min)``."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1,
                 warmup_steps: float | None = None, warmup_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)

    def _anneal_lr(self, step: int) -> float:
        mult = (step - self.warmup_steps) / (self.max_steps - self.warmup_steps)
        return self.min_lr + (1 - mult) * (self.base_lr - self.min_lr)


class InverseSquareRootAnnealing(WarmupPolicy):
    """Warmup then ``base / sqrt((s + 1) / (W + 1))``."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1,
                 warmup_steps: float | None = None, warmup_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)

    def _anneal_lr(self, step: int) -> float:
        return self.base_lr / ((step + 1) / (self.warmup_steps + 1)) ** 0.5


def _poly_decay(base_lr: float, step: float, decay_steps: float, power: float, min_lr: float, cycle: bool) -> float:
    if cycle:
        decay_steps *= 1.0 if step == 0 else math.ceil(step / decay_steps)
    else:
        step = min(step, decay_steps)
    return (base_lr - min_lr) * math.pow(1.0 - step / decay_steps, power) + min_lr


class PolynomialDecayAnnealing(WarmupPolicy):
    """Warmup then ``(base - min) * (1 - (s - W) / (M - W)) ** power + min`` (``cycle`` restarts the decay)."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, power: float = 1.0,
                 cycle: bool = False, last_epoch: int = -1, warmup_steps: float | None = None,
                 warmup_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)
        self.power, self.cycle = power, cycle
        self.hparams.update(power=power, cycle=cycle)

    def _anneal_lr(self, step: int) -> float:
        return _poly_decay(self.base_lr, step - self.warmup_steps, self.max_steps - self.warmup_steps, self.power,
                           self.min_lr, self.cycle)


class NoamAnnealing(Schedule):
    """``base * d_model**-0.5 * min(s**-0.5, s * W**-1.5)`` with ``s = max(1, step)``; ``>= min_lr`` after warmup."""

    def __init__(self, base_lr: float, *, d_model: int, warmup_steps: float | None = None,
                 warmup_ratio: float | None = None, max_steps: int | None = None, min_lr: float = 0.0,
                 last_epoch: int = -1):
        super().__init__(base_lr, last_epoch=last_epoch, d_model=d_model, warmup_steps=warmup_steps,
                         warmup_ratio=warmup_ratio, max_steps=max_steps, min_lr=min_lr)
        self.normalize = d_model ** (-0.5)
        self.max_steps, self.min_lr = max_steps, min_lr
        self.warmup_steps = _steps_or_ratio("NoamAnnealing", "warmup", warmup_steps, warmup_ratio, max_steps)
        if self.base_lr < min_lr:
            raise ValueError(f"NoamAnnealing: base lr {self.base_lr} is lower than min_lr {min_lr}")

    def lr_at(self, step: int) -> float:
        step = max(1, step)
        if self.warmup_steps > 0:
            mult = self.normalize * min(step ** (-0.5), step * (self.warmup_steps ** (-1.5)))
        else:
            mult = self.normalize * step ** (-0.5)
        lr = self.base_lr * mult
        return max(lr, self.min_lr) if step > self.warmup_steps else lr


class NoamHoldAnnealing(WarmupHoldPolicy):
    """Warmup, hold, then ``max(base * max(1, W**r) / max(1, (s - hold)**r), min_lr)`` (Squeezeformer)."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, decay_rate: float = 0.5,
                 min_lr: float = 0.0, last_epoch: int = -1, warmup_steps: float | None = None,
                 warmup_ratio: float | None = None, hold_steps: float | None = None, hold_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, hold_steps=hold_steps,
                         hold_ratio=hold_ratio)
        self.decay_rate = decay_rate
        self.hparams.update(decay_rate=decay_rate)
        if not self.warmup_steps:
            raise ValueError("NoamHoldAnnealing cannot be used without warmup steps; set warmup_steps or "
                             "warmup_ratio")

    def _anneal_lr(self, step: int) -> float:
        hold = self.hold_steps - self.warmup_steps if self.hold_steps > 0 else 0
        lr = self.base_lr * max(1, self.warmup_steps ** self.decay_rate) / max(1, (step - hold) ** self.decay_rate)
        return max(lr, self.min_lr)


class PolynomialHoldDecayAnnealing(WarmupHoldPolicy):
    """Warmup, hold, then polynomial decay from the end of the hold over ``M - max(W, hold_end)`` steps."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, power: float = 1.0,
                 cycle: bool = False, last_epoch: int = -1, warmup_steps: float | None = None,
                 warmup_ratio: float | None = None, hold_steps: float | None = None, hold_ratio: float | None = None):
        super().__init__(base_lr, max_steps=max_steps, min_lr=min_lr, last_epoch=last_epoch,
                         warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, hold_steps=hold_steps,
                         hold_ratio=hold_ratio)
        self.power, self.cycle = power, cycle
        self.hparams.update(power=power, cycle=cycle)

    def _anneal_lr(self, step: int) -> float:
        return _poly_decay(self.base_lr, step - self.hold_steps,
                           self.max_steps - max(self.warmup_steps, self.hold_steps), self.power, self.min_lr,
                           self.cycle)


class WarmupHoldAnnealOneMinusSquareRoot(WarmupHoldPolicy):
    """Warmup, hold, then ``max(min_lr, base * (1 - sqrt((s - hold_end) / (M - hold_end))))``."""

    needs_max_steps = True

    def _anneal_lr(self, step: int) -> float:
        mult = 1 - ((step - self.hold_steps) / (self.max_steps - self.hold_steps)) ** 0.5
        return max(self.min_lr, self.base_lr * mult)


class WarmupHoldAnnealLinear(WarmupHoldPolicy):
    """Warmup, hold, then linear ``base - (base - min) * (s - hold_end) / (M - hold_end)``."""

    needs_max_steps = True

    def _anneal_lr(self, step: int) -> float:
        ratio = (step - self.hold_steps) / (self.max_steps - self.hold_steps)
        return self.base_lr - (self.base_lr - self.min_lr) * ratio


class T5InverseSquareRootAnnealing(Schedule):
    """``1 / sqrt(C)`` for ``s <= C``, then ``1 / sqrt(s)``, ``min_lr`` after ``max_steps``; ignores ``base_lr``."""

    needs_max_steps = True

    def __init__(self, base_lr: float, *, max_steps: int | None = None, min_lr: float = 0.0, last_epoch: int = -1,
                 constant_steps: float | None = None, constant_ratio: float | None = None):
        super().__init__(base_lr, last_epoch=last_epoch, max_steps=max_steps, min_lr=min_lr,
                         constant_steps=constant_steps, constant_ratio=constant_ratio)
        self.max_steps, self.min_lr = max_steps, min_lr
        self.constant_steps = _steps_or_ratio("T5InverseSquareRootAnnealing", "constant", constant_steps,
                                              constant_ratio, max_steps)
        if not self.constant_steps > 0:
            raise ValueError("T5InverseSquareRootAnnealing needs constant_steps > 0 (its lr before then is "
                             "1/sqrt(constant_steps)); set constant_steps or constant_ratio")
        self.constant_lr = 1 / (self.constant_steps ** 0.5)

    def lr_at(self, step: int) -> float:
        if step <= self.constant_steps:
            return self.constant_lr
        if step > self.max_steps:
            return self.min_lr
        return 1 / (step ** 0.5)
