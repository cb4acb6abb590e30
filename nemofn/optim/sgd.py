"""Functional SGD (with momentum, dampening, Nesterov and L2 weight decay) on ``torch.optim.sgd.sgd`` foreach kernels.

Same maths as ``torch.optim.SGD``: the first momentum step copies the (decayed) gradient into the buffer, later
steps compute ``buf = momentum * buf + (1 - dampening) * g``; Nesterov uses ``g + momentum * buf``.
"""

from __future__ import annotations

import torch
from torch.optim.sgd import sgd as _torch_sgd

from nemofn.optim.base import LearningRate, Optimizer, OptState, check_lr, check_update_args

__all__ = ["sgd"]


def sgd(momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, *,
        maximize: bool = False, foreach: bool = True, fused: bool = False) -> Optimizer:
    """Builds a functional SGD optimizer (torch's defaults).

    Args:
        momentum: momentum factor (0 disables the buffers entirely).
        dampening: dampening of the momentum update (not applied on the first step, as in torch).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        weight_decay: L2 penalty added to the gradient.
        maximize: ascend instead of descend.
        foreach: use the foreach (multi-tensor) kernels; ``False`` runs torch's per-tensor loop (for debugging).
        fused: use torch's fused SGD kernel (CUDA/CPU) instead of foreach.

    State: ``{"momentum_buffer": [None | Tensor, ...]}`` (``None`` until the first step, exactly as torch), or an
    empty list when ``momentum == 0``.

    ``lr``: a float, or a 1-element tensor. In eager mode a tensor lr is read on the host once per step by the
    foreach add (a device sync on GPU); under ``torch.compile`` it stays a graph tensor. ``fused=True`` takes a
    tensor lr without any sync.
    """
    if momentum < 0.0:
        raise ValueError(f"sgd: invalid momentum {momentum}; must be >= 0")
    if weight_decay < 0.0:
        raise ValueError(f"sgd: invalid weight_decay {weight_decay}; must be >= 0")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"sgd: nesterov=True needs momentum > 0 and dampening == 0 (got momentum={momentum}, "
                         f"dampening={dampening})")
    hparams = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                   maximize=maximize, foreach=foreach, fused=fused)

    def init(params: list[torch.Tensor]) -> OptState:
        return {"momentum_buffer": [None] * len(params) if momentum != 0 else []}

    @torch.no_grad()
    def update(params: list[torch.Tensor], grads: list[torch.Tensor], opt_state: OptState, *,
               lr: LearningRate) -> OptState:
        check_update_args("sgd", params, grads, opt_state, "momentum_buffer" if momentum != 0 else None)
        check_lr("sgd", lr)
        buffers = opt_state["momentum_buffer"] if momentum != 0 else [None] * len(params)
        _torch_sgd(list(params), list(grads), buffers, foreach=foreach and not fused, fused=fused,
                   weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov,
                   maximize=maximize)
        return opt_state

    return Optimizer(name="sgd", init=init, update=update, hparams=hparams)
