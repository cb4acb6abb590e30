"""A node budget for untrusted YAML: ``model_config.yaml`` of a ``.nemo`` and override files.

YAML aliases let a few hundred bytes stand for billions of nodes (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``,
...): the parser shares them, but OmegaConf copies every reference into its own node tree, which takes minutes and
gigabytes. :func:`check_yaml_budget` composes the document (aliases stay shared, so this is linear in the file) and
counts the nodes it expands to, refusing it past ``NEMOFN_YAML_NODE_LIMIT`` (default 1,000,000; NeMo's largest
configs have a few thousand) or when an alias refers to one of its own ancestors.
"""

from __future__ import annotations

import os

import yaml

from compat.errors import YamlBudgetError

__all__ = ["DEFAULT_NODE_LIMIT", "check_yaml_budget", "expanded_nodes"]

DEFAULT_NODE_LIMIT = 1_000_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_nodes(root: yaml.Node, limit: int) -> int:
    """Nodes of ``root`` with every alias expanded, counted without expanding (stops early past ``limit``).

    Raises:
        ValueError: an alias refers to an ancestor (a recursive structure, infinite when expanded).
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ValueError(f"a recursive alias at line {node.start_mark.line + 1}")
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ValueError(f"a recursive alias at line {child.start_mark.line + 1}")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def node_limit() -> int:
    value = os.environ.get("NEMOFN_YAML_NODE_LIMIT")
    if value is None:
        return DEFAULT_NODE_LIMIT
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"NEMOFN_YAML_NODE_LIMIT={value!r} is not an integer") from None


def check_yaml_budget(file: str, *, source: str, member: str, limit: int | None = None) -> None:
    """Refuses ``file`` (a YAML document) when it expands to more than ``limit`` nodes.

    Args:
        file: the YAML file.
        source, member: named in the error (the archive and its member, or the file twice).
        limit: default :func:`node_limit` (``NEMOFN_YAML_NODE_LIMIT``).

    Raises:
        YamlBudgetError: too many nodes once aliases are expanded, or a recursive alias.
        yaml.YAMLError: not valid YAML (the caller reports it).
    """
    limit = node_limit() if limit is None else limit
    with open(file, encoding="utf-8") as f:
        root = yaml.compose(f, Loader=yaml.SafeLoader)
    if root is None:
        return
    try:
        count = expanded_nodes(root, limit)
    except ValueError as exc:
        raise YamlBudgetError(source, member, str(exc)) from None
    if count > limit:
        raise YamlBudgetError(source, member, f"its aliases expand to more than {limit:,} nodes (raise "
                                              f"NEMOFN_YAML_NODE_LIMIT only for a file you trust)")
