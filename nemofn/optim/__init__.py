"""Functional optimizers (foreach/fused PyTorch kernels), gradient clipping and NeMo's lr schedules.

Typical use::

    opt, schedule, base_lr = build_optimization(cfg.optim, max_steps=trainer_max_steps)
    flat = tree.leaves(params)
    opt_state = opt.init(flat)
    ...
    clip_by_global_norm(grads, max_norm=1.0)
    opt_state = opt.update(flat, grads, opt_state, lr=schedule(step))
"""

from nemofn.optim.adam import adam, adamw
from nemofn.optim.base import LearningRate, Optimizer, OptState
from nemofn.optim.clip import clip_by_global_norm, global_norm
from nemofn.optim.config import build_optimization, compute_max_steps
from nemofn.optim.novograd import novograd
from nemofn.optim.registry import (
    OPTIMIZERS,
    SCHEDULES,
    get_optimizer,
    get_schedule,
    register_optimizer,
    register_schedule,
    schedule_needs_max_steps,
)
from nemofn.optim.schedules import (
    Constant,
    CosineAnnealing,
    InverseSquareRootAnnealing,
    NoamAnnealing,
    NoamHoldAnnealing,
    PolynomialDecayAnnealing,
    PolynomialHoldDecayAnnealing,
    Schedule,
    SquareAnnealing,
    SquareRootAnnealing,
    T5InverseSquareRootAnnealing,
    WarmupAnnealHoldPolicy,
    WarmupAnnealing,
    WarmupHoldAnnealLinear,
    WarmupHoldAnnealOneMinusSquareRoot,
    WarmupHoldPolicy,
    WarmupPolicy,
)
from nemofn.optim.sgd import sgd

__all__ = [
    "Optimizer", "OptState", "LearningRate", "sgd", "adam", "adamw", "novograd",
    "clip_by_global_norm", "global_norm",
    "build_optimization", "compute_max_steps",
    "OPTIMIZERS", "SCHEDULES", "get_optimizer", "get_schedule", "register_optimizer", "register_schedule",
    "schedule_needs_max_steps",
    "Schedule", "Constant", "WarmupPolicy", "WarmupHoldPolicy", "WarmupAnnealHoldPolicy", "CosineAnnealing",
    "NoamAnnealing", "NoamHoldAnnealing", "WarmupAnnealing", "InverseSquareRootAnnealing",
    "T5InverseSquareRootAnnealing", "PolynomialDecayAnnealing", "PolynomialHoldDecayAnnealing", "SquareAnnealing",
    "SquareRootAnnealing", "WarmupHoldAnnealOneMinusSquareRoot", "WarmupHoldAnnealLinear",
]
