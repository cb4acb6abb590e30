"""Functional Novograd with NeMo's semantics (``nemo.core.optim.novograd.Novograd``), on foreach kernels.

Per parameter tensor ``i`` with gradient ``g_i`` (Zhang et al., "Stochastic Gradient Methods with Layer-wise
Adaptive Moments", arXiv:1905.11286, as NeMo implements it)::

    n_i = ||g_i||_2 ** 2
    v_i = n_i                                   if v_i == 0 (first step, or all previous grads were zero)
        = beta2 * v_i + (1 - beta2) * n_i       otherwise
    d_i = sqrt(v_i) + eps                       (sqrt(max_t v_i) + eps with amsgrad)
    u_i = g_i / d_i + weight_decay * p_i        (times (1 - beta1) with grad_averaging)
    m_i = beta1 * m_i + u_i
    p_i -= lr * m_i                             (luc: lr replaced by min(luc_trust*||p_i|| / (||m_i|| + luc_eps), lr))

The second moment is one scalar per tensor, so the state keeps all of them in one vector ``[N]`` and the
``v_i == 0`` test is a ``torch.where`` (no host sync, no Python branch on tensor values). Per-tensor norms come
from ``torch._foreach_norm``; per-tensor scaling is a foreach op with a list of 0-dim tensors.
"""

from __future__ import annotations

import torch

from nemofn.optim.base import LearningRate, Optimizer, OptState, check_lr, check_update_args

__all__ = ["novograd"]


def novograd(betas: tuple[float, float] = (0.95, 0.98), eps: float = 1e-8, weight_decay: float = 0.0,
             grad_averaging: bool = False, amsgrad: bool = False, luc: bool = False, luc_trust: float = 1e-3,
             luc_eps: float = 1e-8) -> Optimizer:
    """Builds a functional Novograd optimizer (NeMo's defaults).

    Args:
        betas: ``(beta1, beta2)``: momentum of the update and decay of the per-tensor squared-norm average.
        eps: added to ``sqrt(v)``.
        weight_decay: coefficient of ``p`` added to the normalised gradient.
        grad_averaging: scale the normalised gradient by ``1 - beta1``.
        amsgrad: normalise by the running maximum of ``v``.
        luc: layer-wise update clipping (NeMo's ``luc``): the step size of tensor ``i`` is
            ``min(luc_trust * ||p_i|| / (||m_i|| + luc_eps), lr)``.
        luc_trust: trust ratio of ``luc``.
        luc_eps: added to ``||m_i||`` in ``luc``.

    State: ``{"exp_avg": [Tensor like p], "exp_avg_sq": Tensor [N], ("max_exp_avg_sq": Tensor [N])}`` where ``N``
    is the number of parameter tensors; the ``[N]`` vectors use the default float dtype (as NeMo's 0-dim state).
    All parameters must live on one device.

    ``lr``: a float, or a 1-element tensor on the parameters' device; a tensor lr is used as a tensor (no host
    sync), which can round the last bit differently from a float lr.
    """
    betas = (float(betas[0]), float(betas[1]))
    if eps < 0.0:
        raise ValueError(f"novograd: invalid eps {eps}; must be >= 0")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"novograd: betas must lie in [0, 1), got {betas}")
    if weight_decay < 0.0:
        raise ValueError(f"novograd: invalid weight_decay {weight_decay}; must be >= 0")
    beta1, beta2 = betas
    hparams = dict(betas=betas, eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging, amsgrad=amsgrad,
                   luc=luc, luc_trust=luc_trust, luc_eps=luc_eps)

    def init(params: list[torch.Tensor]) -> OptState:
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"novograd: all parameters must be on one device, got {sorted(map(str, devices))}")
        device = params[0].device if params else torch.device("cpu")
        state: OptState = {
            "exp_avg": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
            "exp_avg_sq": torch.zeros(len(params), device=device),
        }
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros(len(params), device=device)
        return state

    @torch.no_grad()
    def update(params: list[torch.Tensor], grads: list[torch.Tensor], opt_state: OptState, *,
               lr: LearningRate) -> OptState:
        check_update_args("novograd", params, grads, opt_state, "exp_avg_sq")
        check_lr("novograd", lr)
        if not params:
            return opt_state
        params, grads = list(params), list(grads)
        exp_avg, exp_avg_sq = opt_state["exp_avg"], opt_state["exp_avg_sq"]

        sq_norms = torch.stack(torch._foreach_norm(grads)).pow(2)  # [N], in the grads' dtype like NeMo
        running = torch.add(exp_avg_sq * beta2, sq_norms, alpha=1.0 - beta2)
        exp_avg_sq.copy_(torch.where(exp_avg_sq == 0, sq_norms.to(exp_avg_sq.dtype), running))
        if amsgrad:
            torch.maximum(opt_state["max_exp_avg_sq"], exp_avg_sq, out=opt_state["max_exp_avg_sq"])
            denom = opt_state["max_exp_avg_sq"].sqrt().add_(eps)
        else:
            denom = exp_avg_sq.sqrt().add_(eps)

        step = torch._foreach_div(grads, list(denom.unbind()))
        if weight_decay != 0:
            torch._foreach_add_(step, params, alpha=weight_decay)
        if grad_averaging:
            torch._foreach_mul_(step, 1.0 - beta1)
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, step)
        del step

        if luc:
            param_norms = torch.stack(torch._foreach_norm(params))
            update_norms = torch.stack(torch._foreach_norm(exp_avg))
            factors = luc_trust * param_norms / (update_norms + luc_eps)
            factors = torch.clamp(factors, max=lr)
            torch._foreach_sub_(params, torch._foreach_mul(exp_avg, list(factors.unbind())))
        elif isinstance(lr, torch.Tensor):
            torch._foreach_sub_(params, torch._foreach_mul(exp_avg, lr.reshape(())))
        else:
            torch._foreach_add_(params, exp_avg, alpha=-lr)
        return opt_state

    return Optimizer(name="novograd", init=init, update=update, hparams=hparams)
