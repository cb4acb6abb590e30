"""Functional Adam and AdamW on ``torch.optim.adam.adam`` / ``torch.optim.adamw.adamw`` (foreach or fused kernels).

Same maths as ``torch.optim.Adam`` (L2 weight decay added to the gradient) and ``torch.optim.AdamW`` (decoupled
weight decay ``p *= 1 - lr * wd``), including AMSGrad and bias correction.

On an accelerator that torch's capturable path supports (cuda, xpu, hpu; not mps) the step counters are kept on
the parameters' device and that path runs (bias corrections as device ops), so an update reads nothing back to the
host. torch's default keeps them on the CPU, and then a step whose update may be undone (:mod:`nemofn.optim.guard`)
would have to wait for the device to know whether to count it. The results equal the default path's up to fp32
rounding of the bias corrections. On the CPU nothing changes.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as _torch_adam
from torch.optim.adamw import adamw as _torch_adamw

from nemofn.optim.base import LearningRate, Optimizer, OptState, check_lr, check_update_args

__all__ = ["adam", "adamw"]


def _check_hparams(name: str, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if len(betas) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"{name}: betas must lie in [0, 1), got {tuple(betas)}")
    if eps < 0.0:
        raise ValueError(f"{name}: invalid eps {eps}; must be >= 0")
    if weight_decay < 0.0:
        raise ValueError(f"{name}: invalid weight_decay {weight_decay}; must be >= 0")


def _step_dtype(fused: bool) -> torch.dtype:
    # torch keeps the step counters in float32, or float64 when that is the default dtype (not for fused).
    return torch.float64 if (not fused and torch.get_default_dtype() == torch.float64) else torch.float32


def _capturable_devices() -> tuple[str, ...]:
    try:  # torch's own list (private; it names privateuse1 backends by their registered name)
        from torch.optim.optimizer import _get_capturable_supported_devices

        return tuple(_get_capturable_supported_devices())
    except (ImportError, AttributeError):
        return ("cuda", "xpu", "hpu")


def _on_accelerator(t: torch.Tensor) -> bool:
    """A device where torch's capturable path runs (cuda, xpu, hpu, ...; not the host, meta or mps)."""
    return t.device.type in _capturable_devices()


def _make(name: str, kernel, betas: tuple[float, float], eps: float, weight_decay: float, amsgrad: bool,
          maximize: bool, foreach: bool, fused: bool, capturable: bool) -> Optimizer:
    _check_hparams(name, betas, eps, weight_decay)
    betas = (float(betas[0]), float(betas[1]))
    if fused and capturable:
        capturable = False  # fused kernels are always graph-capturable; torch ignores the flag there
    hparams = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                   foreach=foreach, fused=fused, capturable=capturable)
    on_device_steps = fused or capturable
    tensor_lr_ok = fused or capturable

    def init(params: list[torch.Tensor]) -> OptState:
        dtype = _step_dtype(fused)
        # On an accelerator the counters live on the device even without ``capturable`` (see the module doc).
        steps = [torch.zeros((), dtype=dtype, device=p.device if on_device_steps or _on_accelerator(p) else "cpu")
                 for p in params]
        state: OptState = {
            "step": steps,
            "exp_avg": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
            "exp_avg_sq": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
        }
        if amsgrad:
            state["max_exp_avg_sq"] = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        return state

    @torch.no_grad()
    def update(params: list[torch.Tensor], grads: list[torch.Tensor], opt_state: OptState, *,
               lr: LearningRate) -> OptState:
        check_update_args(name, params, grads, opt_state, "exp_avg")
        check_lr(name, lr)
        # Under torch.compile, torch's non-capturable foreach path fails on CPU tensors ("Expected scalars to be
        # on CPU, got meta"); its capturable path (bias corrections as tensor ops) traces fine there, and the
        # CPU step counters are on the parameters' device, which is all that path needs.
        capturable_now = capturable or (torch.compiler.is_compiling() and not fused and bool(params)
                                        and params[0].is_cpu)
        # Counters on the accelerator with the parameters: torch's capturable path, which reads nothing back.
        steps = opt_state["step"]
        capturable_now = capturable_now or (not fused and bool(params) and _on_accelerator(params[0])
                                            and bool(steps) and steps[0].device == params[0].device)
        if isinstance(lr, torch.Tensor) and not (tensor_lr_ok or capturable_now):
            lr = float(lr)  # torch's non-capturable foreach path needs a Python float (a host read)
        kernel(list(params), list(grads), opt_state["exp_avg"], opt_state["exp_avg_sq"],
               opt_state.get("max_exp_avg_sq", []), opt_state["step"], foreach=foreach and not fused,
               capturable=capturable_now, fused=fused, has_complex=any(map(torch.is_complex, params)),
               amsgrad=amsgrad, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=weight_decay, eps=eps,
               maximize=maximize)
        return opt_state

    return Optimizer(name=name, init=init, update=update, hparams=hparams)


def adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
         amsgrad: bool = False, *, maximize: bool = False, foreach: bool = True, fused: bool = False,
         capturable: bool = False) -> Optimizer:
    """Builds a functional Adam optimizer (torch's defaults; ``weight_decay`` is an L2 term on the gradient).

    Args:
        betas: ``(beta1, beta2)`` decay rates of the first and second moments.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient (use :func:`adamw` for decoupled decay).
        amsgrad: keep the running maximum of the second moment.
        maximize: ascend instead of descend.
        foreach: foreach kernels (default); ``False`` runs torch's per-tensor loop (for debugging).
        fused: torch's fused Adam kernel (CUDA, CPU); slightly different rounding from foreach.
        capturable: keep step counters on the parameters' device, so a step has no host sync (the default on an
            accelerator; see the module doc).

    State: ``{"step": [0-dim Tensor], "exp_avg": [Tensor], "exp_avg_sq": [Tensor], ("max_exp_avg_sq")}``, one
    entry per parameter. Step counters live on the CPU unless ``fused``, ``capturable`` or on an accelerator.

    ``lr``: a float, or a 1-element tensor. With ``fused`` or ``capturable`` a tensor lr is used on the device with
    no sync; otherwise it is read once per step with ``float(lr)`` (free on CPU, a device sync on GPU).
    """
    return _make("adam", _torch_adam, betas, eps, weight_decay, amsgrad, maximize, foreach, fused, capturable)


def adamw(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
          amsgrad: bool = False, *, maximize: bool = False, foreach: bool = True, fused: bool = False,
          capturable: bool = False) -> Optimizer:
    """Builds a functional AdamW optimizer (torch's defaults, ``weight_decay=1e-2`` decoupled: ``p *= 1 - lr*wd``).

    Arguments, state and ``lr`` handling are those of :func:`adam`.
    """
    return _make("adamw", _torch_adamw, betas, eps, weight_decay, amsgrad, maximize, foreach, fused, capturable)
