"""The AD modes against each other on composite functions, and the engine's
bookkeeping: shapes of directions, chunking, repeated pullbacks, gradient
accumulation, detach, no_grad, comparisons, repr."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad2 as tg
from tinygrad2 import Tensor, check, kernels, no_grad

from _helpers import D, assert_close, central_difference, host, mlp_loss, npt

EXACT = 1e-10  # two AD routes: rounding only
FD = 1e-7  # against 4th-order finite differences


# ---------------------------------------------------------------- composite functions of a flat theta


mlp = mlp_loss  # (activation, X, y, hidden, C) -> (f, n)


def relu_away_from_kinks(X, y, rng, hidden=4, C=3):
    """A ReLU MLP at a theta where every pre-activation is at least 0.1 from 0."""
    f, n = mlp("relu", X, y, hidden, C)
    d = X.shape[1]
    for _ in range(100):
        theta = rng.standard_normal(n)
        pre = X @ theta[: d * hidden].reshape(d, hidden) + theta[d * hidden : d * hidden + hidden]
        if np.abs(pre).min() > 0.1:
            return f, theta
    raise AssertionError("no kink-free point found")


def fused_cross_entropy(X, y, C=3):
    n, d = X.shape
    return (lambda theta: (Tensor(D(X)) @ theta.reshape(d, C)).tanh().cross_entropy(D(y))), d * C


def softplus_regression(X, y):
    return (lambda theta: ((Tensor(D(X)) @ theta).softplus() ** 2).sum() * 0.1 + (theta * theta).sum()), X.shape[1]


@st.composite
def composites(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, d = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    X, y = rng.standard_normal((n, d)), rng.integers(0, 3, n)
    kind = draw(st.sampled_from(["tanh", "sigmoid", "softplus", "relu", "cross_entropy", "softplus_regression"]))
    if kind == "relu":
        f, theta = relu_away_from_kinks(X, y, rng)
        return kind, f, theta
    if kind == "cross_entropy":
        f, n_params = fused_cross_entropy(X, y)
    elif kind == "softplus_regression":
        f, n_params = softplus_regression(X, y)
    else:
        f, n_params = mlp(kind, X, y)
    return kind, f, rng.standard_normal(n_params) * 0.7


@given(composites(), st.integers(0, 2**32 - 1))
def test_all_modes_agree(problem, seed):
    kind, f, theta = problem
    n = theta.shape[0]
    V = np.random.default_rng(seed).standard_normal((3, n))
    theta, V = D(theta), D(V)
    value, g = tg.value_and_grad(f)(theta)
    # forward mode: J v = g . v, for three directions at once
    f0, Jv = tg.jvp(f, theta, V)
    assert float(f0) == value
    assert_close(Jv, V @ g, EXACT, 1e-13, f"{kind}: jvp vs grad . v")
    # the vjp pullback of the scalar: J^T 1 = g
    _, pullback = tg.vjp(f, theta)
    assert_close(pullback(D(np.ones(()))), g, EXACT, 0, f"{kind}: vjp vs grad")
    # second order: forward-over-reverse, reverse-over-reverse, finite differences
    Hv = tg.hvp(f, theta, V)
    assert_close(Hv, tg.hvp_reverse_over_reverse(f, theta, V), EXACT, 1e-13, f"{kind}: fwd-over-rev vs rev-over-rev")
    fd = central_difference(lambda xs: tg.grad(f)(xs[0]), [theta], [V])
    assert_close(Hv, fd, FD, 1e-9, f"{kind}: H v vs differences of gradients")
    # and the dense Hessian: symmetric, and consistent with the products
    H = tg.hessian(f, theta)
    assert_close(H, H.T, EXACT, 1e-13, f"{kind}: symmetry")
    assert_close(V @ H, Hv, EXACT, 1e-13, f"{kind}: hessian vs hvp")


def test_check_reports_on_a_relu_network_near_its_kinks():
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    f, theta = relu_away_from_kinks(X, y, rng)
    V = rng.standard_normal((4, theta.size))
    theta, V = D(theta), D(V)
    for report in (check.check_grad(f, theta), check.check_jvp(f, theta, V), check.check_hvp(f, theta, V)):
        assert report.rel_error < 1e-8, str(report)
        assert report.directions in (theta.size, 4)


# ---------------------------------------------------------------- shapes of directions and chunking


def quartic(theta):
    return ((theta * theta).sum() ** 2) * 0.25 + (theta.tanh() * Tensor(D(np.arange(theta.shape[0], dtype=float)))).sum()


def test_jvp_with_one_direction_and_with_a_batch():
    rng = np.random.default_rng(0)
    x, V = rng.standard_normal(5), rng.standard_normal((3, 5))
    f = lambda t: t.tanh() * 2.0  # vector valued
    value, single = tg.jvp(f, D(x), D(V[1]))
    _, batch = tg.jvp(f, D(x), D(V))
    npt.assert_allclose(value, 2 * np.tanh(x), rtol=1e-15)
    assert single.shape == (5,) and batch.shape == (3, 5)
    npt.assert_array_equal(batch[1], single)
    npt.assert_allclose(batch, 2 * (1 - np.tanh(x) ** 2) * V, rtol=1e-14)
    # a batch of one stays a batch
    assert tg.jvp(f, D(x), D(V[:1]))[1].shape == (1, 5)


def test_hvp_single_and_batched():
    rng = np.random.default_rng(1)
    x, V = rng.standard_normal(6), rng.standard_normal((4, 6))
    batch = tg.hvp(quartic, D(x), D(V))
    assert batch.shape == (4, 6)
    for k in range(4):
        single = tg.hvp(quartic, D(x), D(V[k]))
        assert single.shape == (6,)
        assert_close(single, batch[k], 1e-14, 0, "single vs batched hvp")
    # the closed form of the quartic part plus tanh: H = |x|^2 I + 2 x x^T + diag(-2 tanh sech^2 * i)
    t = np.tanh(x)
    H = (x @ x) * np.eye(6) + 2 * np.outer(x, x) + np.diag(-2 * t * (1 - t**2) * np.arange(6))
    assert_close(batch, V @ H, 1e-13, 0, "hvp vs closed form")


@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_hessian_chunk_sizes_agree(chunk):
    x = np.random.default_rng(2).standard_normal(7)
    reference = tg.hessian(quartic, D(x), chunk=7)
    H = tg.hessian(quartic, D(x), chunk=chunk)
    assert H.shape == (7, 7) and H.dtype == np.float64
    assert_close(H, reference, 1e-15, 0, f"chunk {chunk}")
    t = np.tanh(x)
    closed = (x @ x) * np.eye(7) + 2 * np.outer(x, x) + np.diag(-2 * t * (1 - t**2) * np.arange(7))
    assert_close(H, closed, 1e-13, 0, "hessian vs closed form")


def test_functions_that_do_not_depend_on_x():
    x, V = D(np.ones(3)), D(np.ones((2, 3)))
    constant = lambda t: Tensor(D(np.array(2.0)))
    linear = lambda t: (t * Tensor(D(np.array([1.0, 2.0, 3.0])))).sum()
    value, g = tg.value_and_grad(constant)(x)
    assert value == 2.0
    npt.assert_array_equal(g, np.zeros(3))
    value, Jv = tg.jvp(constant, x, V)
    assert value == 2.0 and Jv.shape == (2,) and not Jv.any()
    npt.assert_array_equal(tg.hvp(constant, x, V), np.zeros((2, 3)))
    npt.assert_array_equal(tg.hvp(linear, x, V), np.zeros((2, 3)))
    npt.assert_array_equal(tg.hvp_reverse_over_reverse(linear, x, V), np.zeros((2, 3)))
    npt.assert_array_equal(tg.hessian(linear, x), np.zeros((3, 3)))
    _, pullback = tg.vjp(constant, x)
    npt.assert_array_equal(pullback(D(np.ones(()))), np.zeros(3))


# ---------------------------------------------------------------- graph bookkeeping


def test_vjp_pullback_can_be_called_twice():
    x = np.array([0.3, -1.2, 2.0])
    f = lambda t: (t * t).tanh() * t  # vector valued
    value, pullback = tg.vjp(f, D(x))
    u1, u2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 3.0])
    first, second, again = pullback(D(u1)), pullback(D(u2)), pullback(D(u1))
    J = np.diag(np.tanh(x**2) + x * (1 - np.tanh(x**2) ** 2) * 2 * x)
    npt.assert_allclose(first, J @ u1, rtol=1e-14)
    npt.assert_allclose(second, J @ u2, rtol=1e-14)
    npt.assert_array_equal(again, first)  # no accumulation across calls
    npt.assert_allclose(value, np.tanh(x**2) * x, rtol=1e-15)


def test_gradients_accumulate_across_backward_calls_with_retain_graph():
    x = Tensor(D(np.array([1.0, 2.0, -3.0])), requires_grad=True)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    npt.assert_array_equal(x.grad.data, 2 * x.data)
    loss.backward()
    npt.assert_array_equal(x.grad.data, 4 * x.data)
    # a fresh graph accumulates on top as well
    (x * 3.0).sum().backward()
    npt.assert_array_equal(x.grad.data, 4 * x.data + 3)


def test_a_reused_tensor_gets_the_sum_of_its_paths():
    x = Tensor(D(np.array([0.5, -1.5])), requires_grad=True)
    y = x.exp()
    (y * y + y + x).sum().backward()  # diamond: y used three times, x twice
    npt.assert_allclose(x.grad.data, 2 * np.exp(2 * x.data) + np.exp(x.data) + 1, rtol=1e-15)


def test_detach_stops_gradients_and_tangents():
    x = Tensor(D(np.array([1.0, 2.0])), requires_grad=True, tangent=D(np.array([[1.0, 0.0]])))
    y = x * x.detach()  # d/dx = x only (the detached factor is a constant)
    assert x.detach().tangent is None and not x.detach().requires_grad
    npt.assert_array_equal(y.tangent, [[1.0, 0.0]])
    y.sum().backward()
    npt.assert_array_equal(x.grad.data, x.data)
    z = Tensor(D(np.array([1.0])), requires_grad=True)
    with pytest.raises(RuntimeError, match="does not depend"):
        (z.detach() * 2.0).sum().backward()


def test_no_grad_records_nothing_but_tangents_still_flow():
    x = Tensor(D(np.array([0.1, 0.2, 0.3])), requires_grad=True, tangent=D(np.eye(3)))
    with no_grad():
        y = (x.tanh() * 2.0).sum()
    assert y.requires_grad is False and y._node is None
    npt.assert_allclose(y.tangent, 2 * (1 - np.tanh(x.data) ** 2)[:, None].reshape(3), rtol=1e-15)
    with pytest.raises(RuntimeError, match="does not depend"):
        y.backward()
    z = (x * 2.0).sum()  # recording is back on after the block
    assert z.requires_grad


def test_comparisons_are_not_differentiable():
    x = Tensor(D(np.array([-1.0, 0.0, 2.0])), requires_grad=True, tangent=D(np.ones((2, 3))))
    for mask in (x > 0, x >= 0, x < 0, x <= 0, x == 0, x != 0, x > Tensor(D(np.zeros(3)))):
        assert mask.dtype == bool
        assert not mask.requires_grad and mask.tangent is None and mask._node is None
    npt.assert_array_equal((x > 0).data, [False, False, True])
    # a mask used as a constant factor carries no derivative of its own
    y = (x * Tensor((x > 0).data.astype(float))).sum()
    y.backward()
    npt.assert_array_equal(x.grad.data, [0.0, 0.0, 1.0])


def test_repr_shows_shape_and_op():
    x = Tensor(D(np.ones((2, 3))), requires_grad=True)
    y = x.tanh()
    assert "shape=(2, 3)" in repr(x) and "requires_grad=True" in repr(x)
    assert "shape=(2, 3)" in repr(y) and "op=tanh" in repr(y)
    assert "op=sum" in repr(y.sum()) and "shape=()" in repr(y.sum())
    t = Tensor(D(np.zeros(4)), tangent=D(np.zeros((5, 4))))
    assert "directions=5" in repr(t) and "float64" in repr(t)
    big = Tensor(D(np.arange(100.0).reshape(10, 10)))
    assert "shape=(10, 10)" in repr(big) and "99" in repr(big)


def test_forward_over_reverse_on_tensors_directly():
    """The README's route: a leaf with tangent V and requires_grad; after
    backward, grad.tangent == H V."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4, 4))
    A = A + A.T
    V = rng.standard_normal((2, 4))
    x = Tensor(D(rng.standard_normal(4)), requires_grad=True, tangent=D(V))
    loss = (x * (Tensor(D(A)) @ x)).sum() * 0.5 + x.exp().sum()
    loss.backward()
    assert x.grad.tangent.shape == (2, 4)
    xh = host(x.data)
    H = A + np.diag(np.exp(xh))
    npt.assert_allclose(x.grad.tangent, V @ H, rtol=1e-13)
    npt.assert_allclose(x.grad.data, A @ xh + np.exp(xh), rtol=1e-13)


def test_reverse_over_reverse_on_tensors_directly():
    x = Tensor(D(np.array([0.5, -0.25])), requires_grad=True)
    loss = (x**3).sum()
    loss.backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    npt.assert_allclose(g.data, 3 * x.data**2)
    x.grad = None
    (g * Tensor(D(np.array([1.0, 0.0])))).sum().backward()
    npt.assert_allclose(x.grad.data, [6 * 0.5, 0.0])


def test_float32_stays_float32_through_all_modes():
    x = D(np.array([0.5, -1.0, 2.0], dtype=np.float32))
    f = lambda t: (t.tanh() * t).sum()
    assert tg.grad(f)(x).dtype == np.float32
    assert tg.jvp(f, x, D(np.ones(3, dtype=np.float32)))[1].dtype == np.float32
    assert tg.hvp(f, x, D(np.ones(3, dtype=np.float32))).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32


# ---------------------------------------------------------------- engine economies
# (each keeps the result exact; these tests pin both the result and the economy)

P = importlib.import_module("tinygrad2.primitives")  # the module (the package's ``primitives`` is the registry)


def test_a_zero_tangent_slice_of_a_flat_vector_is_a_symbolic_zero():
    V = np.zeros((3, 8))
    V[:, 5:] = np.arange(9.0).reshape(3, 3)
    theta = Tensor(D(np.linspace(-1, 1, 8)), tangent=D(V))
    assert theta[0:5].tangent is None  # zero in every direction: skipped downstream
    npt.assert_array_equal(theta[4:6].tangent, V[:, 4:6])
    # a 2-D tensor keeps its (zero) tangent: the economy is only for flat parameter vectors
    M = Tensor(D(np.ones((2, 4))), tangent=D(np.zeros((3, 2, 4))))
    npt.assert_array_equal(M[0].tangent, np.zeros((3, 4)))


def test_hvp_with_block_sparse_directions_equals_the_dense_hessian():
    # unit and block-supported directions (what hessian/diagonals/group products use)
    # must give the rows of the Hessian assembled from dense directions
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    layout = tg.Layout([("W1", (4, 5)), ("b1", (5,)), ("W2", (5, 3)), ("b2", (3,))])

    def model(theta, X):
        p = layout.unflatten(theta)
        return (X @ p["W1"] + p["b1"]).tanh() @ p["W2"] + p["b2"]

    obj = tg.Objective(model, "cross_entropy", D(X), D(y), layout)
    theta = D(0.5 * rng.standard_normal(layout.n))
    Q = rng.standard_normal((layout.n, layout.n))  # dense directions: nothing is a symbolic zero
    H = np.linalg.solve(Q, host(obj.hvp(theta, D(Q))))  # the rows of hvp(Q) are (Q H)ᵢ, so H = Q⁻¹ (Q H)
    npt.assert_allclose(H, H.T, atol=1e-10)
    npt.assert_allclose(obj.hessian(theta), H, atol=1e-10)
    block = np.zeros((2, layout.n))
    block[:, layout["W2"].slice] = rng.standard_normal((2, 15))
    npt.assert_allclose(obj.hvp(theta, D(block)), block @ H, atol=1e-10)


def test_backward_frees_each_intermediate_once_its_consumers_are_done():
    import weakref

    x = Tensor(D(np.linspace(0.1, 1, 6)), requires_grad=True, tangent=D(np.eye(6)))
    y1 = x * 2.0
    y2 = y1.tanh()
    loss = (y2 * y2).sum()
    alive = weakref.ref(y2)
    del y1, y2
    seen = []
    mul_vjp = P.REGISTRY["mul"].vjp

    def spy(g, out, a, b):
        if a is x or b is x:  # the first node: everything after it is done
            seen.append(alive() is None)
        return mul_vjp(g, out, a, b)

    P.REGISTRY["mul"].vjp = spy
    try:
        loss.backward()
    finally:
        P.REGISTRY["mul"].vjp = mul_vjp
    assert seen == [True]
    t = np.tanh(2 * x.data)
    npt.assert_allclose(x.grad.data, 4 * t * (1 - t * t))  # d/dx tanh²(2x), t = tanh(2x)
    # d/dx [4 t (1 - t²)] = 4 (1 - 3 t²) dt/dx, dt/dx = 2 (1 - t²)
    npt.assert_allclose(np.diag(x.grad.tangent), 8 * (1 - t * t) * (1 - 3 * t * t), rtol=1e-12)


def test_no_tangent_records_the_graph_but_pushes_no_tangent():
    x = Tensor(D(np.array([0.3, -0.2])), requires_grad=True, tangent=D(np.eye(2)))
    z = x.tanh()
    with tg.no_tangent():
        loss = (z * z).sum()
    assert loss.tangent is None and loss.requires_grad
    loss.backward()
    t = np.tanh(x.data)  # d²/dx² tanh² = 2 (1 - t²)(1 - 3 t²)
    npt.assert_allclose(np.diag(x.grad.tangent), 2 * (1 - t * t) * (1 - 3 * t * t), rtol=1e-12)


@pytest.mark.parametrize("rule", ["mul", "tanh_grad"])
def test_direction_by_direction_products_equal_the_vectorized_ones(rule, monkeypatch):
    rng = np.random.default_rng(4)
    a, b = D(rng.standard_normal((70, 64))), D(rng.standard_normal((70, 1)))  # broadcasting operands
    ta, tb = D(rng.standard_normal((3, 70, 64))), D(rng.standard_normal((3, 70, 1)))
    prim = P.REGISTRY[rule]
    out = prim.forward(a, b)
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 1)
    blocked = prim.jvp([a, b], [ta, tb], out)
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 10**9)
    vectorized = prim.jvp([a, b], [ta, tb], out)
    assert blocked.shape == vectorized.shape == (3, 70, 64)
    npt.assert_allclose(blocked, vectorized, rtol=1e-14, atol=1e-14)
    eps = 1e-6  # and both are the directional derivative
    fd = (prim.forward(a + eps * ta[1], b + eps * tb[1]) - prim.forward(a - eps * ta[1], b - eps * tb[1])) / (2 * eps)
    npt.assert_allclose(blocked[1], fd, rtol=1e-7, atol=1e-8)


def test_matmul_jvp_folding_directions_into_one_gemm_is_exact(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = D(rng.standard_normal((9, 7))), D(rng.standard_normal((7, 4)))
    ta, tb = D(rng.standard_normal((5, 9, 7))), D(rng.standard_normal((5, 7, 4)))
    prim = P.REGISTRY["matmul"]
    monkeypatch.setattr(kernels, "FOLD_ELEMENTS", 1)
    folded = prim.jvp([a, b], [ta, tb], a @ b)
    assert folded.flags.c_contiguous
    monkeypatch.setattr(kernels, "FOLD_ELEMENTS", 10**9)
    batched = prim.jvp([a, b], [ta, tb], a @ b)
    npt.assert_allclose(folded, batched, rtol=1e-13)
    npt.assert_allclose(folded, ta @ b + a @ tb, rtol=1e-13)


def test_slice_buffers_are_never_shared_between_two_gradients():
    # add hands the same cotangent to both inputs; a later slice of one input must
    # not add into the other's gradient
    a = Tensor(D(np.arange(4.0)), requires_grad=True)
    b = Tensor(D(np.ones(4)), requires_grad=True)
    head = a[0:1]            # a getitem on a, recorded before a + b
    x = a + b
    loss = (x[0:2] * 3.0).sum() + (head * 5.0).sum()
    loss.backward()
    npt.assert_array_equal(a.grad.data, [8, 3, 0, 0])
    npt.assert_array_equal(b.grad.data, [3, 3, 0, 0])
