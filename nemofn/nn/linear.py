"""Linear and Embedding."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from nemofn.core.rng import as_key
from nemofn.nn.module import Module

__all__ = ["Linear", "Embedding"]


@attrs.frozen
class Linear(Module):
    """``y = x @ W.T + b``. Params: ``weight [out, in]``, ``bias [out]``. Init: torch's ``nn.Linear`` default."""

    in_features: int
    out_features: int
    bias: bool = True

    def init(self, rng):
        g = as_key(rng).generator()
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        # kaiming_uniform(a=sqrt(5)) on [out, in] has bound sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in).
        params = {"weight": torch.empty(self.out_features, self.in_features).uniform_(-bound, bound, generator=g)}
        if self.bias:
            params["bias"] = torch.empty(self.out_features).uniform_(-bound, bound, generator=g)
        return params, {}

    def apply(self, params, buffers, x, *, train=False, rng=None):
        """x: ``[..., in]`` -> ``[..., out]``."""
        return F.linear(x, params["weight"], params.get("bias")), buffers


@attrs.frozen
class Embedding(Module):
    """Lookup table. Params: ``weight [num_embeddings, dim]`` (init N(0, 1), as ``nn.Embedding``)."""

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None

    def init(self, rng):
        w = torch.randn(self.num_embeddings, self.embedding_dim, generator=as_key(rng).generator())
        if self.padding_idx is not None:
            w[self.padding_idx] = 0.0
        return {"weight": w}, {}

    def apply(self, params, buffers, ids, *, train=False, rng=None):
        """ids: ``[...]`` int64 -> ``[..., dim]``."""
        return F.embedding(ids, params["weight"], self.padding_idx), buffers
