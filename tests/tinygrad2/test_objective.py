"""The Objective layer: curvature products against closed forms, explicit
Jacobians, dense Hessians, finite differences and SciPy; Hutchinson's
statistics; the memory forecast; the closed-form test problems; bad inputs.

All in float64 (the ``float64`` fixture), small sizes, NumPy backend.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.optimize import rosen, rosen_der, rosen_hess, rosen_hess_prod

import tinygrad2 as tg
from tinygrad2 import Tensor, backend
from tinygrad2 import memory as memory_module
from tinygrad2 import (
    CurvatureMemoryError, Function, Layout, LogisticRegression, Objective, Quadratic, Rosenbrock, rademacher,
)

pytestmark = pytest.mark.usefixtures("float64")


# ================================================================ helpers


def rel(a, b):
    """||a - b|| / max(||a||, ||b||), Frobenius."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), 1e-300)


def two_layer(d=5, h=4, c=3, activation="tanh"):
    """(layout, model_fn) of d-h-c: activation(X W1 + b1) W2 + b2."""
    layout = Layout([("W1", (d, h), "weight"), ("b1", (h,), "bias"), ("W2", (h, c), "weight"), ("b2", (c,), "bias")])

    def model(theta, X):
        p = layout.unflatten(theta)
        return getattr(X @ p["W1"] + p["b1"], activation)() @ p["W2"] + p["b2"]

    return layout, model


def linear(d, c):
    layout = Layout([("W", (d, c), "weight"), ("b", (c,), "bias")])

    def model(theta, X):
        p = layout.unflatten(theta)
        return X @ p["W"] + p["b"]

    return layout, model


def softplus_loss(out, y):
    """A convex loss on the outputs, given as a callable: mean softplus(z - y)."""
    return (out - Tensor(y)).softplus().mean()


def make(loss="cross_entropy", activation="tanh", batch=12, d=5, h=4, c=3, seed=0, model="mlp"):
    """(objective, theta) with data drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    layout, fn = two_layer(d, h, c, activation) if model == "mlp" else linear(d, c)
    X = rng.standard_normal((batch, d))
    y = rng.integers(0, c, batch) if loss == "cross_entropy" else rng.standard_normal((batch, c))
    return Objective(fn, loss, X, y, layout), rng.standard_normal(layout.n) * 0.8


LOSSES = ["cross_entropy", "mse", softplus_loss]


def loss_id(loss):
    return loss if isinstance(loss, str) else "callable"


# ================================================================ layout


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@given(st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=1, max_size=6))
def test_layout_slices_tile_theta_exactly(shapes):
    layout = Layout([(f"p{i}", tuple(s)) for i, s in enumerate(shapes)])
    covered = 0
    for p in layout:
        assert p.slice.start == covered and p.slice.stop - p.slice.start == p.size
        covered = p.slice.stop
    assert covered == layout.n == sum(math.prod(s) for s in shapes)
    theta = np.arange(layout.n, dtype=np.float64)
    parts = layout.unflatten(theta)
    assert [parts[p.name].shape for p in layout] == [p.shape for p in layout]
    np.testing.assert_array_equal(layout.flatten(parts), theta)
    np.testing.assert_array_equal(layout.flatten([parts[n] for n in layout.names]), theta)
    ones = sum(layout.indicator(p.name) for p in layout) if len(layout) else 0
    np.testing.assert_array_equal(ones, np.ones(layout.n))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_layout_groups_find_kinds_and_1d_parameters():
    layout = Layout([("W", (3, 2), "weight"), ("gamma", (2,), "scale"), ("beta", (2,), "shift"), ("b", (2,))])
    assert [p.name for p in layout.groups(ndim=1)] == ["gamma", "beta", "b"]
    assert [p.name for p in layout.groups(kind=("scale", "shift"))] == ["gamma", "beta"]
    assert [p.name for p in layout.groups(kind="weight")] == ["W"]
    assert layout["b"].kind == "bias" and layout.kinds == ["bias", "scale", "shift", "weight"]
    with pytest.raises(KeyError, match="'nope'"):
        layout["nope"]
    with pytest.raises(ValueError, match="unique"):
        Layout([("a", (1,)), ("a", (2,))])
    with pytest.raises(ValueError, match=r"'W' has shape \(2, 3\), expected \(3, 2\)"):
        layout.flatten({"W": np.zeros((2, 3)), "gamma": np.zeros(2), "beta": np.zeros(2), "b": np.zeros(2)})


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_unflatten_of_a_tensor_is_differentiable():
    layout, model = two_layer()
    obj, theta = make()
    g = obj.grad(theta)
    # the same function written without the layout
    def f(t):
        W1, b1 = t[:20].reshape(5, 4), t[20:24]
        W2, b2 = t[24:36].reshape(4, 3), t[36:39]
        return ((Tensor(obj.X) @ W1 + b1).tanh() @ W2 + b2).cross_entropy(obj.y)
    assert rel(g, tg.grad(f)(theta)) < 1e-14


# ================================================================ first order, counts, batches


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_loss_grad_and_counts():
    obj, theta = make()
    value, g = obj.loss_and_grad(theta)
    assert value == pytest.approx(obj.loss(theta), rel=1e-15)
    np.testing.assert_allclose(obj.grad(theta), g, rtol=1e-14)
    assert obj.counts == {"nfev": 2, "ngev": 2, "nhvp": 0, "nggnvp": 0}
    obj.hvp(theta, np.ones((3, obj.n)))
    obj.ggn_vp(theta, np.ones(obj.n))
    assert (obj.counts["nhvp"], obj.counts["nggnvp"]) == (3, 1)
    obj.reset_counts()
    assert set(obj.counts.values()) == {0}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_outputs_and_default_layouts():
    X = np.random.default_rng(0).standard_normal((6, 3))
    model = lambda theta, X: X @ theta.reshape(3, 2)
    obj = Objective(model, "mse", X, np.zeros((6, 2)))  # layout None: bound on first use
    theta = np.arange(6.0)
    np.testing.assert_allclose(obj.outputs(theta), X @ theta.reshape(3, 2))
    assert obj.layout.names == ["theta"] and obj.n == 6
    assert Objective(model, "mse", X, np.zeros((6, 2)), layout=6).layout.n == 6


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_with_batch_changes_the_loss_and_leaves_the_original_unchanged():
    obj, theta = make(batch=12)
    rng = np.random.default_rng(7)
    X2, y2 = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)
    before = obj.loss(theta)
    other = obj.with_batch(X2, y2)
    assert other.loss(theta) != pytest.approx(before)
    z = np.tanh(X2 @ theta[:20].reshape(5, 4) + theta[20:24]) @ theta[24:36].reshape(4, 3) + theta[36:39]
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(9), y2])
    assert other.loss(theta) == pytest.approx(ce, rel=1e-13)
    assert obj.loss(theta) == before and obj.X.shape == (12, 5)
    assert other.layout is obj.layout and other.counts is obj.counts


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_float32_theta_uses_float32_data():
    obj, theta = make()
    t32 = theta.astype(np.float32)
    assert obj.outputs(t32).dtype == np.float32
    H = obj.hessian(t32)
    assert H.dtype == np.float32
    assert rel(H, obj.hessian(theta)) < 1e-4


# ================================================================ GGN


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("loss", LOSSES, ids=loss_id)
def test_ggn_equals_hessian_for_linear_models_with_convex_losses(loss):
    obj, theta = make(loss=loss, model="linear", d=4, c=3, batch=10)
    H, G = obj.hessian(theta), obj.ggn(theta)
    assert rel(G, H) < 1e-12
    assert np.linalg.norm(H) > 1e-3


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_linear_least_squares_hessian_closed_form():
    """mse on X W + b: H = (2/m) [X 1]ᵀ[X 1] ⊗ I_c (rows of W, then b)."""
    obj, theta = make(loss="mse", model="linear", d=4, c=3, batch=10)
    Xa = np.hstack([obj.X, np.ones((10, 1))])
    H_true = 2 / obj.y.size * np.kron(Xa.T @ Xa, np.eye(3))
    assert rel(obj.hessian(theta), H_true) < 1e-13


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_ggn_is_psd_where_the_hessian_is_indefinite(activation):
    obj, theta = make(activation=activation, batch=30, d=5, h=6, c=4, seed=3)
    H, G = obj.hessian(theta), obj.ggn(theta)
    eig_h, eig_g = np.linalg.eigvalsh(H), np.linalg.eigvalsh((G + G.T) / 2)
    scale = np.abs(eig_h).max()
    assert eig_h.min() < -1e-3 * scale, "H should be indefinite at this point"
    assert eig_g.min() >= -1e-12 * scale
    assert rel(G, G.T) < 1e-13


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("loss", LOSSES, ids=loss_id)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_ggn_trick_equals_explicit_jacobian_product(loss, activation):
    """G from one forward + one backward pass == Jᵀ H_z J with J built column
    by column (forward mode, one unit vector at a time) and H_z written out."""
    obj, theta = make(loss=loss, activation=activation, batch=7, d=3, h=4, c=3, seed=5)
    n = obj.n
    out_shape = obj.outputs(theta).shape
    model = lambda t: obj.model_fn(t, Tensor(obj.X)).reshape(-1)
    J = np.stack([tg.jvp(model, theta, e)[1] for e in np.eye(n)], axis=1)  # (m, n)
    z = obj.outputs(theta)
    if loss == "cross_entropy":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        Hz = np.zeros((z.size, z.size))
        for i, pi in enumerate(p):
            block = slice(i * 3, i * 3 + 3)
            Hz[block, block] = (np.diag(pi) - np.outer(pi, pi)) / z.shape[0]
    elif loss == "mse":
        Hz = 2 / z.size * np.eye(z.size)
    else:
        Hz = tg.hessian(lambda zz: loss(zz.reshape(out_shape), obj.y), z.reshape(-1))
    G_explicit = J.T @ Hz @ J
    assert rel(obj.ggn(theta), G_explicit) < 1e-12
    V = np.random.default_rng(0).standard_normal((4, n))
    assert rel(obj.ggn_vp(theta, V), V @ G_explicit) < 1e-12
    assert rel(obj.ggn_vp(theta, V[0]), G_explicit @ V[0]) < 1e-12


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_softmax_shift_directions_are_in_the_null_space():
    """Adding a vector a to every class's output weights (W2 + a 1ᵀ) and a
    constant s to every output bias leaves every softmax unchanged: H w = 0."""
    obj, theta = make(batch=20, d=5, h=4, c=3, seed=2)
    layout, rng = obj.layout, np.random.default_rng(9)
    w = np.zeros(obj.n)
    w[layout["W2"].slice] = np.outer(rng.standard_normal(4), np.ones(3)).ravel()
    w[layout["b2"].slice] = 0.7
    assert obj.loss(theta + w) == pytest.approx(obj.loss(theta), rel=1e-13)
    H = obj.hessian(theta)
    norm_h = np.linalg.norm(H, 2)
    assert np.linalg.norm(obj.hvp(theta, w)) <= 1e-13 * norm_h * np.linalg.norm(w)
    assert np.linalg.norm(obj.ggn_vp(theta, w)) <= 1e-13 * norm_h * np.linalg.norm(w)
    assert np.linalg.norm(obj.hvp(theta, rng.standard_normal(obj.n))) > 1e-3 * norm_h  # not trivially zero


# ================================================================ Hessian diagonal and groups


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_exact_diagonal_equals_the_dense_diagonal(chunk):
    obj, theta = make(activation="relu", seed=4)
    H = obj.hessian(theta, chunk=chunk)
    assert rel(H, obj.hessian(theta)) == 0.0
    np.testing.assert_allclose(obj.hessian_diag(theta, chunk=chunk), np.diag(H), rtol=1e-13, atol=1e-15)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_rademacher_draws_both_signs():
    z = rademacher((4000,), seed=0, dtype=np.float64)
    assert set(np.unique(z).tolist()) == {-1.0, 1.0}
    # binomial(4000, 1/2): mean 2000, sd 31.6; six sds either side
    assert abs(int((z > 0).sum()) - 2000) < 190
    assert set(np.unique(rademacher((50,), seed=1)).tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(rademacher((5, 3), seed=3), rademacher((5, 3), seed=3))


def spd_with_offdiagonal(n=8, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    return M @ M.T / n + np.diag(rng.uniform(1, 2, n))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_is_not_a_row_sum():
    """With all-(-1) "Rademacher" vectors z ⊙ Hz is exactly the row sum H·1."""
    A = spd_with_offdiagonal()
    q = Quadratic(A)
    est = q.hessian_diag(np.zeros(8), method="hutchinson", samples=4000, seed=0)
    assert rel(est, np.diag(A)) < 0.02 and rel(est, A.sum(1)) > 0.2


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_is_exact_in_one_sample_for_a_diagonal_hessian():
    d = np.random.default_rng(1).uniform(-2, 3, 9)
    est = Quadratic(np.diag(d)).hessian_diag(np.zeros(9), method="hutchinson", samples=1, seed=5)
    np.testing.assert_allclose(est, d, rtol=1e-15)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_is_unbiased():
    """Entry i of z ⊙ Hz has mean H_ii and variance σ_i² = Σ_{j≠i} H_ij², so
    the S-sample mean lies within 5 σ_i / √S of H_ii."""
    A = spd_with_offdiagonal(n=6, seed=2)
    S = 20000
    est = Quadratic(A).hessian_diag(np.zeros(6), method="hutchinson", samples=S, seed=11)
    sigma = np.sqrt((A**2).sum(1) - np.diag(A) ** 2)
    assert np.all(np.abs(est - np.diag(A)) <= 5 * sigma / np.sqrt(S))
    same = Quadratic(A).hessian_diag(np.zeros(6), method="hutchinson", samples=S, seed=11, chunk=999)
    np.testing.assert_allclose(same, est, rtol=1e-12)  # chunking does not change the draw order


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_error_falls_like_one_over_sqrt_samples():
    """Fit log(mean error) against log(samples): slope about -1/2."""
    A = spd_with_offdiagonal(n=10, seed=3)
    q, x = Quadratic(A), np.zeros(10)
    counts = [8, 32, 128, 512, 2048]
    errors = []
    for S in counts:
        errs = [np.linalg.norm(q.hessian_diag(x, "hutchinson", samples=S, seed=seed) - np.diag(A)) for seed in range(30)]
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert -0.62 < slope < -0.38, f"slope {slope:.3f}"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_block_row_sums_and_block_diag():
    """H_gg·1 against central differences of the gradient along 1_g; the exact
    block diagonal against the dense diagonal; and the two differ (the hidden
    biases' block is not diagonal: the output layer mixes channels)."""
    obj, theta = make(batch=15, d=4, h=5, c=3, seed=6)
    H = obj.hessian(theta)
    for name in obj.layout.names:
        p = obj.layout[name]
        e = obj.layout.indicator(name)
        h = 1e-3
        fd = (-obj.grad(theta + 2 * h * e) + 8 * obj.grad(theta + h * e) - 8 * obj.grad(theta - h * e)
              + obj.grad(theta - 2 * h * e)) / (12 * h)
        scale = np.abs(H).max()  # (W2's row sums vanish: 1 on W2 is a softmax shift direction)
        np.testing.assert_allclose(obj.block_row_sums(theta, name), fd[p.slice], rtol=1e-8, atol=1e-9 * scale)
        np.testing.assert_allclose(obj.block_diag(theta, name), np.diag(H)[p.slice], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(obj.block_row_sums(theta, name), H[p.slice, p.slice].sum(1),
                                   rtol=1e-12, atol=1e-14 * scale)
    assert rel(obj.block_row_sums(theta, "b1"), obj.block_diag(theta, "b1")) > 0.05


# ================================================================ memory forecast


def _forbid_allocation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("allocated before the memory forecast refused")

    for fn in ("empty", "zeros", "eye"):
        monkeypatch.setattr(backend.xp, fn, refuse)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("what", ["hessian", "ggn", "hessian_diag", "block_diag"])
def test_memory_forecast_refuses_before_allocating(monkeypatch, what):
    obj, theta = make()
    n = obj.n
    result = 8 * (n * n if what in ("hessian", "ggn") else n if what == "hessian_diag" else 20)
    for budget in (result // 2, result + 16):  # the result alone, then the result plus one direction
        obj.memory_budget = budget
        call = (lambda: getattr(obj, what)(theta, "W1")) if what == "block_diag" else (lambda: getattr(obj, what)(theta))
        with monkeypatch.context() as m:
            _forbid_allocation(m)
            with pytest.raises(CurvatureMemoryError) as info:
                call()
        message = str(info.value)
        assert isinstance(info.value, MemoryError)
        assert f"n = {n}" in message and f"{info.value.needed:,} bytes" in message and f"{budget:,} bytes" in message
        assert "hutchinson" in message and "hvp" in message
        assert info.value.needed > budget and info.value.n == n


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_memory_budget_default_is_module_level_and_chunk_shrinks_to_fit(monkeypatch):
    obj, theta = make()
    n, H = obj.n, obj.hessian(theta)
    monkeypatch.setattr(memory_module, "default_memory_budget", 100)
    with pytest.raises(CurvatureMemoryError, match="memory budget is 100 bytes"):
        obj.hessian(theta)
    per = obj.bytes_per_direction(theta)
    obj.memory_budget = 8 * n * n + 3 * per  # room for the result and three directions
    chunk, needed = obj.memory_forecast(theta, n * n, n)
    assert chunk == 3 and needed <= obj.memory_budget
    np.testing.assert_allclose(obj.hessian(theta), H, rtol=1e-14, atol=1e-16)
    with pytest.raises(CurvatureMemoryError, match="4 direction"):
        obj.hessian(theta, chunk=4)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_draws_are_chunked_to_fit_the_budget():
    A = spd_with_offdiagonal(n=6)
    q = Quadratic(A)
    full = q.hessian_diag(np.zeros(6), "hutchinson", samples=50, seed=1)
    q.memory_budget = 6 * 8 + 2 * q.bytes_per_direction(np.zeros(6))
    np.testing.assert_allclose(q.hessian_diag(np.zeros(6), "hutchinson", samples=50, seed=1), full, rtol=1e-13)


# ================================================================ closed-form problems


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_rosenbrock_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x, v = rng.uniform(-2, 2, n), rng.standard_normal(n)
    r = Rosenbrock(n)
    assert r.loss(x) == pytest.approx(rosen(x), rel=1e-14)
    np.testing.assert_allclose(r.grad(x), rosen_der(x), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(r.hvp(x, v), rosen_hess_prod(x, v), rtol=1e-13, atol=1e-11)
    np.testing.assert_allclose(r.hessian(x), rosen_hess(x), rtol=1e-13, atol=1e-11)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_rosenbrock_gauss_newton():
    """G = 2 J_rᵀ J_r for the residuals r(x) = (10 (x_{i+1} - x_i²), 1 - x_i);
    G = H at the minimizer, where every residual is zero."""
    n, x = 5, np.random.default_rng(0).uniform(-1.5, 1.5, 5)
    r = Rosenbrock(n)
    resid = lambda t: Tensor.concatenate([(t[1:] - t[:-1] * t[:-1]) * 10.0, 1.0 - t[:-1]])
    J = np.stack([tg.jvp(resid, x, e)[1] for e in np.eye(n)], axis=1)
    assert rel(r.ggn(x), 2 * J.T @ J) < 1e-14
    assert rel(r.ggn(r.minimizer), rosen_hess(np.ones(n))) < 1e-14
    assert r.loss(r.minimizer) == 0.0 and r.x0[:2].tolist() == [-1.2, 1.0]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_quadratic_closed_forms():
    rng = np.random.default_rng(1)
    A, b, x = spd_with_offdiagonal(7), rng.standard_normal(7), rng.standard_normal(7)
    q = Quadratic(A, b)
    assert q.loss(x) == pytest.approx(0.5 * x @ A @ x - b @ x, rel=1e-14)
    np.testing.assert_allclose(q.grad(x), A @ x - b, rtol=1e-13)
    np.testing.assert_allclose(q.hessian(x), A, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(q.ggn(x), A, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(q.hessian_diag(x), np.diag(A), rtol=1e-14)
    np.testing.assert_allclose(q.grad(q.minimizer), 0, atol=1e-12)
    with pytest.raises(ValueError, match="symmetric"):
        Quadratic(A + np.triu(np.ones((7, 7)), 1))
    with pytest.raises(ValueError, match=r"b has shape \(6,\), expected \(7,\)"):
        Quadratic(A, b[:6])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logistic_regression_closed_forms(l2):
    rng = np.random.default_rng(2)
    X, y, w = rng.standard_normal((40, 5)), rng.integers(0, 2, 40).astype(float), rng.standard_normal(5)
    lr = LogisticRegression(X, y, l2=l2)
    z = X @ w
    p = 1 / (1 + np.exp(-z))
    assert lr.loss(w) == pytest.approx(np.mean(np.log1p(np.exp(z)) - y * z) + 0.5 * l2 * w @ w, rel=1e-13)
    np.testing.assert_allclose(lr.grad(w), X.T @ (p - y) / 40 + l2 * w, rtol=1e-12)
    H_true = X.T @ (X * (p * (1 - p))[:, None]) / 40 + l2 * np.eye(5)
    assert rel(lr.hessian(w), H_true) < 1e-13
    assert rel(lr.ggn(w), H_true) < 1e-13
    half = lr.with_batch(X[:20], y[:20])
    assert half.loss(w) != pytest.approx(lr.loss(w)) and half.l2 == l2 and half.counts is lr.counts
    with pytest.raises(ValueError, match="0 or 1"):
        LogisticRegression(X, y * 2 - 1)
    with pytest.raises(ValueError, match=r"y has shape \(39,\), expected \(40,\)"):
        LogisticRegression(X, y[:39])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_function_objective_has_no_ggn():
    f = Function(lambda x: (x * x * x).sum(), 3, name="cubic")
    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(f.hessian(x), np.diag(6 * x))
    with pytest.raises(NotImplementedError, match="cubic"):
        f.ggn_vp(x, np.ones(3))


# ================================================================ bad inputs


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bad_inputs_raise_clear_errors():
    obj, theta = make()
    n = obj.n
    with pytest.raises(ValueError, match=rf"theta has shape \({n - 1},\), expected \({n},\)"):
        obj.grad(theta[:-1])
    with pytest.raises(ValueError, match=rf"theta has shape \(1, {n}\)"):
        obj.hessian(theta[None])
    with pytest.raises(ValueError, match=rf"V has shape \(2, {n + 1}\) but theta has length {n}"):
        obj.hvp(theta, np.ones((2, n + 1)))
    with pytest.raises(TypeError, match="floating"):
        obj.loss(np.arange(n))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        Objective(obj.model_fn, "hinge", obj.X, obj.y, obj.layout)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(12,\).*shape \(12, 1\)"):
        Objective(obj.model_fn, "cross_entropy", obj.X, obj.y[:, None], obj.layout)
    with pytest.raises(ValueError, match=r"shape \(12,\).*got y of shape \(11,\)"):
        Objective(obj.model_fn, "cross_entropy", obj.X, obj.y[:11], obj.layout)
    with pytest.raises(ValueError, match="dtype float64"):
        Objective(obj.model_fn, "cross_entropy", obj.X, obj.y.astype(float), obj.layout)
    mse = Objective(obj.model_fn, "mse", obj.X, np.zeros((12, 2)), obj.layout)
    with pytest.raises(ValueError, match=r"outputs have shape \(12, 3\) but y has shape \(12, 2\)"):
        mse.loss(theta)
    with pytest.raises(ValueError, match="first dimensions"):
        Objective(obj.model_fn, "mse", obj.X, np.zeros((11, 3)), obj.layout)
    with pytest.raises(ValueError, match="'exact' or 'hutchinson'"):
        obj.hessian_diag(theta, method="fancy")
    with pytest.raises(KeyError, match="'W3'"):
        obj.block_row_sums(theta, "W3")
    with pytest.raises(ValueError, match="scalar"):
        Objective(obj.model_fn, lambda out, y: out, obj.X, obj.y, obj.layout).loss(theta)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("n, per, room, want", [
    (20_000, 3 * 2**20, math.inf, 64),  # (n, n) float64 = 3.2 GB: half of it / per = 508 -> the preferred 64
    (40, 2**10, math.inf, 40),          # fewer directions than that: all of them in one pass
    (2_000, 2**21, math.inf, 32),       # 32 MB: the 64 MiB floor / 2 MiB = 32
    (100, 10**7, math.inf, 16),         # tiny result, big directions: the memory rule stops at min_chunk
    (6_000, 2**20, 10.5, 10),           # room for 10.5 directions beside the result: 10
    (6_000, 2**20, 0.5, 1),             # not even one: one (check_fits then refuses)
])
def test_automatic_chunk_is_the_preferred_chunk_unless_memory_or_budget_say_fewer(monkeypatch, n, per, room, want):
    obj, theta = make()
    theta = np.zeros(n)
    monkeypatch.setattr(type(obj), "bytes_per_direction", lambda self, theta: per)
    obj.memory_budget = math.inf if room == math.inf else 8 * n * n + int(room * per)
    chunk, needed = obj.memory_forecast(theta, n * n, n)
    assert (memory_module.preferred_chunk, memory_module.min_chunk) == (64, 16)
    assert chunk == want and needed == 8 * n * n + chunk * per
