"""Gradients and Hessians against closed forms, in float64.

* least squares 0.5 mean((Xw - y)^2): g = X^T r / n, H = X^T X / n;
* logistic regression, mean log-loss: g = X^T (p - t) / n,
  H = X^T diag(p (1 - p)) X / n;
* softmax regression, W (d, C) flattened row-major, mean cross-entropy:
  g = vec(X^T (P - Y)) / n, H = (1/n) Σ_i kron(x_i x_i^T, diag(p_i) - p_i p_i^T),
  which annihilates the shift directions vec(u 1^T);
* a two-layer tanh network: the dense Hessian against finite differences.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad2 as tg
from tinygrad2 import Tensor, check

from _helpers import D, host, mlp_loss

RTOL = 1e-8  # Frobenius relative error of the assembled Hessians


def rel(a, b):
    a, b = host(a), host(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@st.composite
def problems(draw, classes=False):
    """A small float64 data set: X (n, d) and targets; plus a point w."""
    n, d = draw(st.integers(2, 12)), draw(st.integers(1, 5))
    C = draw(st.integers(2, 4)) if classes else None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d))
    if classes:
        y = rng.integers(0, C, n)
        w = rng.standard_normal(d * C) * 0.5
    else:
        y = rng.standard_normal(n)
        w = rng.standard_normal(d)
    return X, y, w, C


# ---------------------------------------------------------------- least squares


def least_squares(X, y):
    return lambda w: ((Tensor(D(X)) @ w - Tensor(D(y))) ** 2).mean() * 0.5


@given(problems())
def test_least_squares(problem):
    X, y, w, _ = problem
    n = len(X)
    f = least_squares(X, y)
    value, g = tg.value_and_grad(f)(D(w))
    r = X @ w - y
    assert abs(value - 0.5 * np.mean(r**2)) <= 1e-12 * max(1.0, abs(value))
    assert rel(g, X.T @ r / n) < 1e-12
    H = tg.hessian(f, D(w))
    assert H.dtype == np.float64
    assert rel(H, X.T @ X / n) < RTOL


# ---------------------------------------------------------------- logistic regression


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def logistic(X, t):
    """mean_i [softplus(z_i) - t_i z_i], z = X w: the log-loss of sigmoid(z)."""
    return lambda w: ((Tensor(D(X)) @ w).softplus() - (Tensor(D(X)) @ w) * Tensor(D(t))).mean()


def logistic_via_sigmoid(X, t):
    """The same loss written as -mean(t log p + (1 - t) log(1 - p))."""

    def f(w):
        p = (Tensor(D(X)) @ w).sigmoid()
        return -(Tensor(D(t)) * p.log() + (1 - Tensor(D(t))) * (1 - p).log()).mean()

    return f


@pytest.mark.parametrize("loss", [logistic, logistic_via_sigmoid], ids=["softplus", "sigmoid-log"])
@given(problem=problems())
def test_logistic_regression(loss, problem):
    X, y, w, _ = problem
    n = len(X)
    t = (y > 0).astype(np.float64)
    f = loss(X, t)
    p = _sigmoid(X @ w)
    value, g = tg.value_and_grad(f)(D(w))
    assert abs(value - np.mean(-t * np.log(p) - (1 - t) * np.log(1 - p))) < 1e-12 * max(1.0, abs(value))
    assert rel(g, X.T @ (p - t) / n) < 1e-10
    H_true = X.T @ (X * (p * (1 - p))[:, None]) / n
    assert rel(tg.hessian(f, D(w)), H_true) < RTOL


# ---------------------------------------------------------------- softmax regression


def softmax_regression(X, y, C, fused):
    """Mean cross-entropy of logits X W, W = w.reshape(d, C) (row-major):
    either log_softmax with an integer-array gather, or the fused primitive."""
    n, d = X.shape
    rows, y = D(np.arange(n)), D(y)  # device index arrays

    def f(w):
        Z = Tensor(D(X)) @ w.reshape(d, C)
        if fused:
            return Z.cross_entropy(y)
        return -Z.log_softmax(axis=1)[rows, y].mean()

    return f


def softmax_probabilities(X, W):
    Z = X @ W
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True)


def softmax_hessian(X, P):
    """(1/n) Σ_i kron(x_i x_i^T, diag(p_i) - p_i p_i^T): rows indexed a * C + c,
    the row-major flattening of W (d, C)."""
    n = len(X)
    return sum(np.kron(np.outer(x, x), np.diag(p) - np.outer(p, p)) for x, p in zip(X, P)) / n


@pytest.mark.parametrize("fused", [False, True], ids=["log_softmax-gather", "cross_entropy"])
@given(problem=problems(classes=True))
def test_softmax_regression(fused, problem):
    X, y, w, C = problem
    n, d = X.shape
    f = softmax_regression(X, y, C, fused)
    P = softmax_probabilities(X, w.reshape(d, C))
    Y = np.eye(C)[y]
    value, g = tg.value_and_grad(f)(D(w))
    assert abs(value - np.mean(-np.log(P[np.arange(n), y]))) < 1e-12 * max(1.0, abs(value))
    assert rel(g, (X.T @ (P - Y) / n).ravel()) < 1e-10
    H = tg.hessian(f, D(w))
    assert rel(H, softmax_hessian(X, P)) < RTOL


def test_softmax_hessian_flattening_order_matters():
    """The check above can tell the two Kronecker orders apart (the one for a
    column-major flattening of W would be kron(diag(p) - p p^T, x x^T))."""
    rng = np.random.default_rng(0)
    n, d, C = 10, 3, 4
    X, y, w = rng.standard_normal((n, d)), rng.integers(0, C, n), rng.standard_normal(d * C)
    P = softmax_probabilities(X, w.reshape(d, C))
    wrong = sum(np.kron(np.diag(p) - np.outer(p, p), np.outer(x, x)) for x, p in zip(X, P)) / n
    H = tg.hessian(softmax_regression(X, y, C, fused=False), D(w))
    assert rel(H, softmax_hessian(X, P)) < RTOL
    assert rel(H, wrong) > 0.1


@pytest.mark.parametrize("fused", [False, True], ids=["log_softmax-gather", "cross_entropy"])
@given(problem=problems(classes=True))
def test_softmax_shift_directions_are_in_the_null_space(fused, problem):
    """Adding the same vector u to every class's weights, W + u 1^T, leaves
    every softmax unchanged: H vec(u 1^T) = 0, while H is not zero."""
    X, y, w, C = problem
    n, d = X.shape
    f = softmax_regression(X, y, C, fused)
    u = np.random.default_rng(1).standard_normal(d)
    shift = np.outer(u, np.ones(C)).ravel()
    H = host(tg.hessian(f, D(w)))
    Hv = host(tg.hvp(f, D(w), D(shift)))
    scale = np.linalg.norm(H) * np.linalg.norm(shift)
    assert np.linalg.norm(H) > 1e-6
    assert np.linalg.norm(Hv) <= 1e-12 * scale
    assert np.linalg.norm(H @ shift) <= 1e-12 * scale
    # the gradient is orthogonal to the shift too: the loss is constant along it
    g = host(tg.grad(f)(D(w)))
    assert abs(g @ shift) <= 1e-12 * np.linalg.norm(shift) * max(1.0, np.linalg.norm(g))


# ---------------------------------------------------------------- a two-layer tanh network


def two_layer_tanh(X, y, hidden, C):
    return mlp_loss("tanh", X, y, hidden, C)


def test_two_layer_tanh_hessian_against_finite_differences():
    rng = np.random.default_rng(0)
    n, d, hidden, C = 16, 4, 3, 3
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    f, size = two_layer_tanh(X, y, hidden, C)
    theta = D(rng.standard_normal(size) * 0.5)
    report = check.check_hessian(f, theta)
    assert report.directions == size
    assert report.rel_error < RTOL, str(report)
    assert report.symmetry < 1e-12, str(report)
    # not a trivially small Hessian: it has negative curvature (a non-convex net)
    eig = np.linalg.eigvalsh(host(tg.hessian(f, theta)))
    assert eig.min() < -1e-6 < 1e-6 < eig.max()


def test_check_hessian_reports_a_wrong_hessian(monkeypatch):
    """check_hessian is only as good as its failure mode: with a wrong tanh
    jvp the Hessian is off and the report says so."""
    from tinygrad2.primitives import REGISTRY

    rng = np.random.default_rng(0)
    n, d, hidden, C = 16, 4, 3, 3
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    f, size = two_layer_tanh(X, y, hidden, C)
    theta = D(rng.standard_normal(size) * 0.5)
    monkeypatch.setattr(REGISTRY["tanh"], "jvp", lambda primals, tangents, out: tangents[0] * (1 - out))
    assert check.check_hessian(f, theta).rel_error > 1e-3
