"""Tree helpers: flatten/unflatten with NeMo's dotted names, mapping, merging, copying."""

from __future__ import annotations

import pytest
import torch

from nemofn.core.tree import (
    flatten,
    items,
    leaves,
    merge,
    num_leaves,
    subtree,
    tree_clone,
    tree_copy_,
    tree_map,
    tree_map2,
    unflatten,
)


def _tree():
    return {
        "encoder": {"encoder": {"0": {"mconv": {"0": {"conv": {"weight": torch.ones(2, 1, 3)}},
                                                 "2": {"weight": torch.ones(2), "bias": torch.zeros(2)}}}}},
        "decoder": {"decoder_layers": {"0": {"weight": torch.full((3, 2, 1), 2.0), "bias": torch.zeros(3)}}},
    }


def test_flatten_gives_dotted_names_in_order():
    flat = flatten(_tree())
    assert list(flat) == [
        "encoder.encoder.0.mconv.0.conv.weight",
        "encoder.encoder.0.mconv.2.weight",
        "encoder.encoder.0.mconv.2.bias",
        "decoder.decoder_layers.0.weight",
        "decoder.decoder_layers.0.bias",
    ]
    assert list(flatten({"a": {"b": 1}}, prefix="model.")) == ["model.a.b"]


def test_flatten_unflatten_roundtrip():
    tree = _tree()
    flat = flatten(tree)
    back = unflatten(flat)
    assert flatten(back) == flat
    assert back.keys() == tree.keys()
    path = "encoder.encoder.0.mconv.2.bias"
    assert subtree(back, path) is subtree(tree, path)


def test_empty_subtrees_vanish():
    assert flatten({"a": {}, "b": {"c": {}}, "d": 1}) == {"d": 1}


@pytest.mark.parametrize("bad", [{"a.b": 1}, {"": 1}, {1: 2}, {"x": {"y.z": 3}}])
def test_flatten_rejects_bad_keys(bad):
    with pytest.raises(KeyError, match="must be a non-empty str"):
        flatten(bad)


def test_bad_key_error_names_its_parent():
    with pytest.raises(KeyError, match="'x.'"):
        flatten({"x": {"y.z": 3}})


def test_unflatten_rejects_conflicts():
    with pytest.raises(KeyError, match="is a leaf"):
        unflatten({"a": 1, "a.b": 2})
    with pytest.raises(KeyError, match="conflicting key 'a.b'"):
        unflatten({"a.b.c": 1, "a.b": 2})


def test_tree_map_and_map2():
    tree = _tree()
    doubled = tree_map(lambda t: t * 2, tree)
    assert torch.equal(doubled["decoder"]["decoder_layers"]["0"]["weight"], torch.full((3, 2, 1), 4.0))
    summed = tree_map2(torch.add, tree, doubled)
    assert torch.equal(flatten(summed)["encoder.encoder.0.mconv.2.weight"], torch.full((2,), 3.0))
    with pytest.raises(KeyError, match="structures differ"):
        tree_map2(torch.add, {"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_leaves_items_and_count():
    tree = _tree()
    assert num_leaves(tree) == 5
    assert [name for name, _ in items(tree)] == list(flatten(tree))
    assert leaves(tree)[0] is tree["encoder"]["encoder"]["0"]["mconv"]["0"]["conv"]["weight"]


def test_merge():
    merged = merge({"a": {"x": 1}}, {"a": {"y": 2}, "b": 3})
    assert flatten(merged) == {"a.x": 1, "a.y": 2, "b": 3}
    with pytest.raises(KeyError, match="'x' is defined twice"):
        merge({"a": {"x": 1}}, {"a": {"x": 2}})


def test_subtree():
    tree = _tree()
    assert subtree(tree, "decoder.decoder_layers.0") is tree["decoder"]["decoder_layers"]["0"]
    assert subtree(tree, "") is tree
    with pytest.raises(KeyError, match="missing '5'"):
        subtree(tree, "encoder.encoder.5")


def test_tree_clone_is_a_deep_detached_copy():
    tree = {"w": torch.ones(2, requires_grad=True), "n": {"k": torch.zeros(1)}}
    clone = tree_clone(tree)
    assert clone["w"] is not tree["w"] and not clone["w"].requires_grad
    clone["n"]["k"].add_(1)
    assert tree["n"]["k"].item() == 0


def test_tree_copy_in_place():
    dst = {"a": {"w": torch.zeros(2)}, "b": torch.zeros(1)}
    w = dst["a"]["w"]
    tree_copy_(dst, {"a": {"w": torch.tensor([1.0, 2.0])}})
    assert dst["a"]["w"] is w and torch.equal(w, torch.tensor([1.0, 2.0]))
    assert dst["b"].item() == 0
    with pytest.raises(KeyError, match="no key 'c'"):
        tree_copy_(dst, {"c": torch.ones(1)})
