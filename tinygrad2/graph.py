"""Walks over a recorded graph (tensors whose ``_node`` is (primitive,
inputs, params, sequence number)): what a backward pass visits, and which of
its values a tangents-only pass may skip. No array math here."""
from __future__ import annotations


def reachable(root):
    """The recorded tensors and the leaves that ``root`` depends on."""
    nodes, leaves, seen, stack = [], [], {id(root)}, [root]
    while stack:
        t = stack.pop()
        node = t._node
        if node is None:
            leaves.append(t)
            continue
        nodes.append(t)
        if node[1] is None:
            continue
        for x in node[1]:
            if x.requires_grad and id(x) not in seen:
                seen.add(id(x))
                stack.append(x)
    return nodes, leaves


def values_skippable(nodes):
    """The nodes of a tangents-only backward pass whose vjp may skip its values;
    ``nodes`` in creation order (inputs before their consumers), as the
    backward pass has sorted them.

    A cotangent's value is dead when it flows only into leaves' gradient
    values: at a leaf, or at a linear node (reshape, slice, ...) all of whose
    differentiable inputs are dead (a linear vjp's tangent is L(g.tangent),
    without g's value). A bilinear node (matmul) whose differentiable inputs
    are all dead, and whose other operand carries no tangent, then needs only
    the tangents of its cotangents: for θ's first layer, W's cotangent
    Xᵀ g has the tangent Xᵀ g.tangent, and the product Xᵀ g.value (the
    largest GEMM of an MLP's gradient) is skipped."""
    dead, skippable = set(), set()
    for t in nodes:
        prim, inputs = t._node[0], t._node[1]
        if inputs is None:  # freed by an earlier backward(), which says so
            continue
        wanted = [i for i, x in enumerate(inputs) if x.requires_grad]
        if not all(inputs[i]._node is None or id(inputs[i]) in dead for i in wanted):
            continue
        if prim.linear:
            dead.add(id(t))
        elif prim.bilinear and all(inputs[1 - i].tangent is None for i in wanted):
            skippable.add(id(t))
    return skippable
