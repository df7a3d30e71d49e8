"""Walks over a recorded graph (tensors whose ``_node`` is (primitive,
inputs, params, sequence number)): what a backward pass visits, which of its
values a tangents-only pass may skip, and where a slice's cotangent is summed
in place. No array math here."""
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
    values: at a leaf, or at a node all of whose differentiable inputs are
    dead and whose vjp's tangents do not read its cotangent's value:

    * a linear node (reshape, slice, bias add, ...): a linear vjp's tangent is
      L(g.tangent), without g's value;
    * a masked node (relu, abs, maximum, max): its vjp is g times a factor
      without a tangent, so its tangent is g.tangent times that factor;
    * a bilinear node whose other operand carries no tangent: for θ's first
      layer, W's cotangent Xᵀ g has the tangent Xᵀ g.tangent, and the product
      Xᵀ g.value (the largest GEMM of an MLP's gradient) is skipped.

    Each of these skips its values (a bias's cotangent sum, ReLU's product
    with its mask; views excepted: they cost nothing, and matmul's vjp reads
    its transposes). A bilinear node with ``direct_vjp`` (matmul, the
    convolutions) on dead inputs skips its values even when the other
    operand carries a tangent (its tangents then read g's value, so it is
    not dead itself): an MLP's second layer, and the second convolution of a
    net whose first one is skipped, compute neither the weight's nor the
    input's cotangent value."""
    dead, skippable = set(), set()
    for t in nodes:
        prim, inputs = t._node[0], t._node[1]
        if inputs is None:  # freed by an earlier backward(), which says so
            continue
        wanted = [i for i, x in enumerate(inputs) if x.requires_grad]
        if not all(inputs[i]._node is None or id(inputs[i]) in dead for i in wanted):
            continue
        if prim.linear or prim.masked:
            dead.add(id(t))
            skippable.add(id(t))
        elif prim.bilinear:
            alone = all(inputs[1 - i].tangent is None for i in wanted)
            if alone or prim.direct_vjp:
                skippable.add(id(t))
            if alone:
                dead.add(id(t))
    return skippable


def in_place_target(t):
    """Where the cotangent of ``t`` (a getitem or reshape node) is summed in
    place, as (x, the getitem index of the place in x, x's shape), or None
    where the node's vjp runs instead.

    A slice goes into its input's gradient buffer; a step-1 slice of a 1-D
    tensor that is itself such a slice goes straight into the outer tensor's
    buffer at the composed place (theta[a:][b:c] is theta[a + b: a + c]), and
    so on up: a module tree of slices (``nets.module.split``) then costs one
    copy per parameter, not one per level (ResNet18: 122 copies of up to 10M
    entries per step, 6% of it). A reshape of such a slice (a flat θ's
    ``theta[a:b].reshape(shape)``) goes there too, flattened, without a
    reshape of its cotangent or a visit to the slice (its vjp alone cost 13%
    of an MLP gradient at batch 64)."""
    prim, inputs, params = t._node[0], t._node[1], t._node[2]
    if prim.name == "reshape":
        x = inputs[0]
        if x._node is None or x._node[0].name != "getitem" or x._node[1] is None:
            return None
        here = _step_one_slice(x._node[2])
        if here is None:
            return None
        x = x._node[1][0]
    else:
        x, here = inputs[0], _step_one_slice(params)
        if here is None:
            return x, params["index"], params["old"]
    while x._node is not None and x._node[0].name == "getitem" and x._node[1] is not None:
        outer = _step_one_slice(x._node[2])
        if outer is None:
            break
        x, here = x._node[1][0], (here[0] + outer[0], here[1] + outer[0])
    return x, (slice(*here),), x.shape


def _step_one_slice(params):
    """(start, stop) of getitem ``params`` that take a step-1 slice of a 1-D
    tensor, else None."""
    index, old = params["index"], params["old"]
    if len(index) != 1 or len(old) != 1 or type(index[0]) is not slice:
        return None
    start, stop, step = index[0].indices(old[0])
    return (start, stop) if step == 1 else None
