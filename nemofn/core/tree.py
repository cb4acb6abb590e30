"""Helpers over trees: nested ``dict[str, ...]`` whose leaves are tensors (or other values).

Parameter and buffer trees use NeMo's state-dict names: flattening a tree with :func:`flatten` joins the keys
with ``.``, so ``{"encoder": {"layers": {"0": {"linear_q": {"weight": w}}}}}`` becomes
``{"encoder.layers.0.linear_q.weight": w}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

Tree = dict[str, Any]

__all__ = [
    "Tree",
    "flatten",
    "unflatten",
    "tree_map",
    "tree_map2",
    "leaves",
    "items",
    "merge",
    "subtree",
    "tree_copy_",
    "tree_clone",
    "num_leaves",
]


def items(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields ``(dotted_name, leaf)`` in insertion order (depth first)."""
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"tree key {key!r} under {prefix or '<root>'!r} must be a non-empty str without '.'")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from items(value, name + ".")
        else:
            yield name, value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tree -> flat ``{dotted_name: leaf}`` dict. Empty sub-dicts vanish."""
    return dict(items(tree, prefix))


def unflatten(flat: Mapping[str, Any]) -> Tree:
    """Flat ``{dotted_name: leaf}`` -> nested tree. Raises on a name that is both a leaf and a prefix."""
    root: Tree = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = root
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise KeyError(f"{'.'.join(parts[: i + 1])!r} is a leaf but {name!r} uses it as a prefix")
            node = child
        if parts[-1] in node:
            raise KeyError(f"duplicate or conflicting key {name!r}")
        node[parts[-1]] = value
    return root


def tree_map(fn: Callable[[Any], Any], tree: Mapping[str, Any]) -> Tree:
    """Applies ``fn`` to every leaf, keeping the structure."""
    return {k: tree_map(fn, v) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}


def tree_map2(fn: Callable[[Any, Any], Any], a: Mapping[str, Any], b: Mapping[str, Any]) -> Tree:
    """Applies ``fn(a_leaf, b_leaf)`` over two trees of identical structure."""
    if a.keys() != b.keys():
        raise KeyError(f"tree structures differ: {sorted(a.keys())} vs {sorted(b.keys())}")
    return {k: tree_map2(fn, a[k], b[k]) if isinstance(a[k], Mapping) else fn(a[k], b[k]) for k in a}


def leaves(tree: Mapping[str, Any]) -> list[Any]:
    """All leaves in flatten order."""
    return [v for _, v in items(tree)]


def num_leaves(tree: Mapping[str, Any]) -> int:
    return sum(1 for _ in items(tree))


def merge(*trees: Mapping[str, Any]) -> Tree:
    """Deep-merges trees; a leaf present in two trees is an error."""
    out: Tree = {}
    for tree in trees:
        for k, v in tree.items():
            if k in out:
                if isinstance(out[k], dict) and isinstance(v, Mapping):
                    out[k] = merge(out[k], v)
                    continue
                raise KeyError(f"merge: key {k!r} is defined twice")
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def subtree(tree: Mapping[str, Any], dotted: str) -> Any:
    """``subtree(t, "encoder.layers.0")`` -> that node. KeyError names the missing part."""
    node: Any = tree
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no {dotted!r} in tree (missing {part!r})")
        node = node[part]
    return node


@torch.no_grad()
def tree_copy_(dst: Mapping[str, Any], src: Mapping[str, Any]) -> None:
    """In place: ``dst_leaf.copy_(src_leaf)`` for every leaf of ``src`` (``src`` may be a sub-structure)."""
    for k, v in src.items():
        if k not in dst:
            raise KeyError(f"tree_copy_: destination has no key {k!r}")
        if isinstance(v, Mapping):
            tree_copy_(dst[k], v)
        elif dst[k] is not v:
            dst[k].copy_(v)


def tree_clone(tree: Mapping[str, Any]) -> Tree:
    """Detached deep copy of every tensor leaf."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)
