"""``Tensor.backward(tangents_only=True)``: the HVP pass skips the products whose
values reach only the gradient's value (dead cotangents), and its tangents are
exactly those of the full pass."""
from __future__ import annotations

import numpy as np
import pytest

from nets import MLP, Conv2d, Linear, ReLU, ResNet18, Sequential, SmallCNN, WeightNorm
from tinygrad2 import Tensor, primitives
from tinygrad2.graph import reachable, values_skippable
from _helpers import D, npt

def _route(net, patches):
    """net with every Conv2d on the given patch route."""
    for _, module in net.named_modules():
        if isinstance(module, Conv2d):
            module.patches = patches
    return net


def _cnn():
    return SmallCNN(widths=(2, 3), hidden=5, in_channels=1, image_size=16, num_classes=3)


NETS = {
    "mlp": (lambda: MLP([12, 7, 3]), (6, 12)),
    "cnn-blocked": (_cnn, (4, 1, 16, 16)),
    "cnn-slices": (lambda: _route(_cnn(), "slices"), (4, 1, 16, 16)),
    "cnn-tanh": (lambda: SmallCNN(widths=(2, 3), hidden=5, in_channels=1, image_size=16, num_classes=3,
                                  activation="tanh"), (4, 1, 16, 16)),
    "resnet18": (lambda: ResNet18(in_channels=1, num_classes=3, stem="cifar", width=1 / 16), (2, 1, 8, 8)),
    "weightnorm-first": (lambda: Sequential(WeightNorm(Linear(12, 7)), ReLU(), Linear(7, 3)), (6, 12)),
}


def _pass(name, rng, K, tangents_only):
    make, shape = NETS[name]
    net = make()
    X, y = rng.standard_normal(shape), rng.integers(0, 3, shape[0])
    theta = net.init_theta(seed=1, dtype=np.float64)
    V = D(np.random.default_rng(7).standard_normal((K, theta.shape[0])))
    th = Tensor(theta, requires_grad=True, tangent=V)
    loss = net.apply(th, Tensor(D(X))).cross_entropy(D(y))
    loss.backward(tangents_only=tangents_only)
    return th.grad


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("name", sorted(NETS))
def test_tangents_are_those_of_the_full_pass(name, K, float64):
    full = _pass(name, np.random.default_rng(0), K, False)
    only = _pass(name, np.random.default_rng(0), K, True)
    npt.assert_array_equal(only.tangent, full.tangent)


@pytest.fixture
def matmuls(monkeypatch):
    """Counts the matmul values computed (forward calls)."""
    count = [0]
    forward = primitives.matmul.forward

    def counted(a, b):
        count[0] += 1
        return forward(a, b)

    monkeypatch.setattr(primitives.matmul, "forward", counted)
    return count


@pytest.mark.parametrize("name, skipped", [("mlp", 3), ("weightnorm-first", 0)])
def test_the_first_layers_weight_product_is_skipped(name, skipped, matmuls, float64):
    # MLP: X W1 has no tangent on X, so W1's cotangent Xᵀg needs only Xᵀ g.tangent; the bias
    # add and the ReLU (masked) pass that on, so the second layer's products g W2ᵀ and hᵀ g are
    # read by no one either: only the forward pass's X W1 and h W2 keep their values.
    # Under weight norm W1 = g v/||v|| is not a linear function of θ: nothing is skipped
    _pass(name, np.random.default_rng(0), 2, False)
    full, matmuls[0] = matmuls[0], 0
    _pass(name, np.random.default_rng(0), 2, True)
    assert full - matmuls[0] == skipped


@pytest.fixture
def convolutions(monkeypatch):
    """Counts the convolution values computed (forward calls), by primitive."""
    from collections import Counter

    count = Counter()
    for name in ("conv", "conv_weight_grad", "conv_input_grad"):
        prim = primitives.REGISTRY[name]

        def counted(*args, _forward=prim.forward, _name=name, **kwargs):
            count[_name] += 1
            return _forward(*args, **kwargs)

        monkeypatch.setattr(prim, "forward", counted)
    return count


@pytest.mark.parametrize("name, skipped", [
    ("cnn-blocked", {"conv_weight_grad": 2, "conv_input_grad": 1}),  # conv1's dW; conv2's dW and dx
    ("cnn-tanh", {"conv_weight_grad": 1}),  # tanh's vjp reads g's value: only conv1's dW
])
def test_the_convolutions_values_that_only_gradients_read_are_skipped(name, skipped, convolutions, float64):
    # conv1 (the data carries no tangent) needs only Xᵀ-like products of g.tangent; the
    # bias add, ReLU (masked) and max-pool (masked, slices) between pass that on, so
    # conv2's values (its weight's cotangent and its input's) are read by no one either
    _pass(name, np.random.default_rng(0), 2, False)
    full = dict(convolutions)
    convolutions.clear()
    _pass(name, np.random.default_rng(0), 2, True)
    assert {k: full[k] - convolutions[k] for k in full if full[k] != convolutions[k]} == skipped


def test_only_bilinear_nodes_on_dead_inputs_without_partner_tangents_are_skippable(float64):
    rng = np.random.default_rng(0)
    X = Tensor(D(rng.standard_normal((5, 4))))
    theta = Tensor(D(rng.standard_normal(4 * 3 + 3 * 2)), requires_grad=True, tangent=D(rng.standard_normal((2, 18))))
    W1, W2 = theta[:12].reshape(4, 3), theta[12:].reshape(3, 2)
    first = X @ W1                   # skippable: X has no tangent, W1 a slice of θ
    second = first.tanh() @ W2       # not: its left operand carries a tangent
    loss = (second * second).sum()
    nodes = sorted(reachable(loss)[0], key=lambda t: t._node[3])  # creation order, as backward sorts them
    skippable = values_skippable(nodes)
    slices = {id(W1), id(W2), id(W1._node[1][0]), id(W2._node[1][0])}  # θ's two slices and their reshapes
    assert skippable == {id(first)} | slices


def test_gauss_newton_products_skip_the_same_product_and_are_unchanged(matmuls, monkeypatch, float64):
    from tinygrad2 import tensor

    rng = np.random.default_rng(0)
    net = MLP([12, 7, 3])
    obj = net.objective("cross_entropy", D(rng.standard_normal((6, 12))), D(rng.integers(0, 3, 6)))
    theta = D(net.init_theta(seed=1, dtype=np.float64))
    V = D(rng.standard_normal((2, theta.shape[0])))
    skipping = obj.ggn_vp(theta, V)
    counted, matmuls[0] = matmuls[0], 0
    full = tensor.Tensor.backward
    monkeypatch.setattr(tensor.Tensor, "backward",
                        lambda self, *args, tangents_only=False, **kwargs: full(self, *args, **kwargs))
    npt.assert_array_equal(obj.ggn_vp(theta, V), skipping)
    assert matmuls[0] - counted == 3


@pytest.mark.cpu_only  # counts the in-place sums on host arrays
def test_a_tangents_only_pass_sums_only_tangents_into_the_flat_buffer(monkeypatch, float64):
    """θ's parameters are slices (and reshaped slices) of θ: a plain pass sums
    each one's cotangent value and tangent into θ's buffers, a tangents-only
    pass the tangents alone (the values are skipped placeholders)."""
    targets, real = [], primitives._add_at

    def counting(target, index, values, advanced):
        targets.append(target.ndim)
        real(target, index, values, advanced)

    monkeypatch.setattr(primitives, "_add_at", counting)
    n_params = len(MLP([12, 7, 3]).layout().params)
    for tangents_only, expected in ((False, [1, 2] * n_params), (True, [2] * n_params)):
        targets.clear()
        _pass("mlp", np.random.default_rng(0), 2, tangents_only)
        assert targets == expected
