"""Global-norm clipping against ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import pytest
import torch

from nemofn.optim import clip_by_global_norm, global_norm


def _grads(seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * scale for s in [(4, 3), (7,), (2, 3, 5), (1,)]]


def _torch_clip(grads, max_norm, norm_type):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    return total, [p.grad for p in params]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_matches_clip_grad_norm(max_norm, norm_type):
    grads = _grads()
    ref_total, ref_grads = _torch_clip(grads, max_norm, norm_type)
    total = clip_by_global_norm(grads, max_norm, norm_type)
    assert torch.equal(total, ref_total)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_clips_to_max_norm_and_returns_norm_before():
    grads = _grads(scale=10.0)
    expected = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    total = clip_by_global_norm(grads, 1.0)
    torch.testing.assert_close(total.double(), expected, rtol=1e-6, atol=0)
    assert abs(float(global_norm(grads)) - 1.0) < 1e-5


def test_no_change_below_max_norm():
    grads = _grads(scale=1e-3)
    before = [g.clone() for g in grads]
    clip_by_global_norm(grads, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(grads, before))


def test_mixed_dtypes_match_torch():
    grads = [g.to(torch.float64) if i % 2 else g for i, g in enumerate(_grads(scale=5.0))]
    ref_total, ref_grads = _torch_clip(grads, 1.0, 2.0)
    total = clip_by_global_norm(grads, 1.0)
    assert torch.equal(total, ref_total)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_empty():
    assert float(clip_by_global_norm([], 1.0)) == 0.0


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    grads = _grads(scale=10.0)
    expected = [g.clone() for g in grads]
    expected_total = clip_by_global_norm(expected, 1.0)
    compiled = torch.compile(lambda gs: clip_by_global_norm(gs, 1.0), fullgraph=True)
    total = compiled(grads)
    torch.testing.assert_close(total, expected_total)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)
