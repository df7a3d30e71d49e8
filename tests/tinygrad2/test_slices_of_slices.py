"""A slice of a slice of a 1-D tensor sums its cotangent in place straight
into the root's gradient buffer (``graph.through_slices``): a module tree of
slices costs one copy per parameter. Gradients and H·V are those of direct
slices, whatever else uses the intermediate slices."""
from __future__ import annotations

import numpy as np
import pytest

from nets import ResNet18
from tinygrad2 import Tensor, primitives
from _helpers import D, host, npt


def _loss(theta, pieces):
    """Σ_k (k + 1) · Σ (piece_k)³ over pieces cut from theta by ``pieces(theta)``."""
    total = None
    for k, p in enumerate(pieces(theta)):
        term = (p * p * p).sum() * float(k + 1)
        total = term if total is None else total + term
    return total


def _direct(t):
    return [t[0:3], t[3:4], t[4:9], t[9:12]]


def _tree(t):  # theta[0:4] -> [0:3], [3:4];  theta[4:12] -> [0:5] -> [4:9], [5:8] -> [9:12]
    left, right = t[:4], t[4:]
    return [left[:3], left[3:], right[:5], right[5:]]


def _tree_with_an_intermediate_used_directly(t):
    right = t[4:]
    return [t[0:3], t[3:4], right[:5], right[5:], right]


def _tree_with_a_strided_level(t):
    odd = t[1::2]  # a step-2 slice stops the composition; below it, step-1 slices compose again
    return [t[0:3], odd[1:3], odd[3:][1:]]


def _grad_and_hvp(pieces, theta, V):
    th = Tensor(D(theta), requires_grad=True, tangent=D(V))
    _loss(th, pieces).backward()
    return host(th.grad.data), host(th.grad.tangent)


def _reference(pieces, theta, V):
    """The same gradient and H·V from closed forms: each entry's coefficient."""
    coef = np.zeros_like(theta)
    index = np.arange(theta.size, dtype=float)
    for k, p in enumerate(pieces(index)):
        np.add.at(coef, p.astype(int), float(k + 1))
    return 3 * coef * theta**2, 6 * coef * theta * V


@pytest.mark.parametrize("pieces", [_direct, _tree, _tree_with_an_intermediate_used_directly,
                                    _tree_with_a_strided_level], ids=lambda f: f.__name__.strip("_"))
def test_gradient_and_hvp_through_slices_of_slices_equal_the_closed_form(pieces, float64):
    rng = np.random.default_rng(0)
    theta, V = rng.standard_normal(12), rng.standard_normal((2, 12))
    g, hv = _grad_and_hvp(pieces, theta, V)
    g_ref, hv_ref = _reference(pieces, theta, V)
    npt.assert_allclose(g, g_ref, rtol=1e-13, atol=1e-13)
    npt.assert_allclose(hv, hv_ref, rtol=1e-13, atol=1e-13)


@pytest.mark.cpu_only  # counts the in-place sums on host arrays
def test_a_tree_of_slices_sums_every_piece_into_the_root_buffer_once(monkeypatch, float64):
    """ResNet18's parameters are cut from theta by a binary tree of slices
    (62 leaves, 61 inner slices): every in-place sum of the backward pass
    lands in theta's own buffer, one per parameter, none in an inner slice's."""
    net = ResNet18(in_channels=1, num_classes=3, stem="cifar", width=1 / 16)
    theta = net.init_theta(seed=1, dtype=np.float64)
    sizes = []
    real = primitives._add_at

    def counting(target, index, values, advanced):
        if target.ndim == 1:
            sizes.append(target.shape[0])
        real(target, index, values, advanced)

    monkeypatch.setattr(primitives, "_add_at", counting)
    th = Tensor(theta, requires_grad=True)
    X, y = np.random.default_rng(2).standard_normal((2, 1, 8, 8)), np.array([0, 2])
    net.apply(th, Tensor(X)).cross_entropy(y).backward()
    assert sizes == [theta.size] * len(net.layout().params)


def test_a_recorded_backward_pass_through_slices_of_slices_is_differentiable(float64):
    """create_graph=True keeps the scatter route (no in-place sums): the
    gradient of (g · v) is H v."""
    rng = np.random.default_rng(3)
    theta, v = rng.standard_normal(12), rng.standard_normal(12)
    th = Tensor(D(theta), requires_grad=True)
    _loss(th, _tree).backward(create_graph=True)
    g = th.grad
    th.grad = None
    (g * Tensor(D(v))).sum().backward()
    _, hv_ref = _reference(_tree, theta, v[None])
    npt.assert_allclose(host(th.grad.data), hv_ref[0], rtol=1e-13, atol=1e-13)


def _reshaped(t):  # a flat θ's parameters as a model cuts them: theta[a:b].reshape(shape), one level or two
    right = t[6:]
    return [t[0:6].reshape(2, 3), t[6:8], right[2:6].reshape(2, 2)]


def test_reshaped_slices_sum_into_the_flat_buffer_without_reshape_vjps(monkeypatch, float64):
    """theta[a:b].reshape(s) and theta[a:][b:c].reshape(s): their cotangents
    (and tangents) go straight into θ's buffer (graph.in_place_target):
    neither reshape's vjp nor a visit to the slice runs; the gradient and H·V
    are the closed form's; a recorded pass takes the vjps and agrees."""
    rng = np.random.default_rng(5)
    theta, V = rng.standard_normal(12), rng.standard_normal((3, 12))
    g_ref, hv_ref = _reference(lambda t: [p.reshape(-1) for p in _reshaped(t)], theta, V)

    def refuse(*args, **kwargs):
        raise AssertionError("reshape's vjp ran in a plain backward pass")

    with monkeypatch.context() as m:
        m.setattr(primitives.REGISTRY["reshape"], "vjp", refuse)
        g, hv = _grad_and_hvp(_reshaped, theta, V)
    npt.assert_allclose(g, g_ref, rtol=1e-13, atol=1e-13)
    npt.assert_allclose(hv, hv_ref, rtol=1e-13, atol=1e-13)
    th = Tensor(D(theta), requires_grad=True, tangent=D(V))
    _loss(th, _reshaped).backward(create_graph=True)
    npt.assert_allclose(host(th.grad.data), g_ref, rtol=1e-13, atol=1e-13)
    npt.assert_allclose(host(th.grad.tangent), hv_ref, rtol=1e-13, atol=1e-13)


def test_a_reshape_of_a_strided_or_2d_slice_takes_its_vjp(monkeypatch, float64):
    """Only a step-1 slice of a 1-D tensor sums in place; a reshape of a
    strided slice, or of a slice of a 2-D tensor, runs reshape's vjp, and the
    gradient is still the closed form's."""
    rng = np.random.default_rng(6)
    theta = rng.standard_normal(12)
    th = Tensor(D(theta), requires_grad=True)
    strided = th[0::2].reshape(2, 3)
    rows = th.reshape(3, 4)[1:].reshape(8)
    calls, real = [], primitives.REGISTRY["reshape"].vjp
    monkeypatch.setattr(primitives.REGISTRY["reshape"], "vjp", lambda *a, **k: calls.append(1) or real(*a, **k))
    ((strided * strided).sum() + (rows * rows * rows).sum()).backward()
    assert len(calls) == 3  # strided's, rows' and the reshape of th under rows
    coef2 = np.zeros(12)
    coef2[0::2] = 2 * theta[0::2]
    coef3 = np.zeros(12)
    coef3[4:] = 3 * theta[4:] ** 2
    npt.assert_allclose(host(th.grad.data), coef2 + coef3, rtol=1e-13, atol=1e-13)
