"""SGD, Adam/AdamW, SGD-BB and L-BFGS: closed forms, hand-computed PyTorch
updates, BB's inverse Rayleigh quotient, L-BFGS against the explicit BFGS
formula, linear CG and SciPy; the NaN guard; state round trips; a small MLP.

float64 (the ``float64`` fixture) except for the MLP, which trains in the
default float32. NumPy backend; no torch import.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize as so
from sklearn.datasets import load_digits

from optimizers import BB, LBFGS, SGD, Adam, AdamW, states_equal

from _helpers import hdf5_round_trip
from optimizers.base import base_info
from optimizers.lbfgs import two_loop
from tinygrad2 import backend
from tinygrad2 import Layout, LogisticRegression, Objective, Quadratic, Rosenbrock


def spd(n, eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Qᵀ with a random orthogonal Q."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    A = (Q * np.asarray(eigenvalues, float)) @ Q.T
    return (A + A.T) / 2


def quadratic(n=6, seed=0, eigenvalues=None):
    ev = np.linspace(0.5, 5.0, n) if eigenvalues is None else eigenvalues
    A = spd(n, ev, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    return Quadratic(A, b), A, b


def run(opt, objective, theta, steps):
    state, thetas, infos = opt.init(theta), [theta], []
    for _ in range(steps):
        theta, state, info = opt.step(objective, theta, state)
        thetas.append(theta)
        infos.append(info)
    return thetas, state, infos


# ================================================================ SGD


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_under_a_constant_gradient_is_a_geometric_series(float64, nesterov):
    """f = -bᵀθ has ∇f = g = -b everywhere: b_t = (1 - μ^t)/(1 - μ) g and
    θ_t = θ_0 - lr Σ_j d_j with d_j = b_j (heavy ball) or g + μ b_j (Nesterov)."""
    n, lr, mu = 4, 0.1, 0.9
    bvec = np.arange(1.0, n + 1)
    obj, g = Quadratic(np.zeros((n, n)), bvec), -bvec
    theta0 = np.ones(n)
    thetas, state, _ = run(SGD(lr, momentum=mu, nesterov=nesterov), obj, theta0, 12)
    t = 12
    np.testing.assert_allclose(state["momentum_buffer"], (1 - mu**t) / (1 - mu) * g, rtol=1e-13)
    for t in range(1, 13):
        if nesterov:  # Σ_{j<=t} (1 - μ^{j+1})/(1 - μ)
            total = (t - mu**2 * (1 - mu**t) / (1 - mu)) / (1 - mu)
        else:         # Σ_{j<=t} (1 - μ^j)/(1 - μ)
            total = (t - mu * (1 - mu**t) / (1 - mu)) / (1 - mu)
        np.testing.assert_allclose(thetas[t], theta0 - lr * total * g, rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("kw", [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1),
    dict(momentum=0.8, dampening=0.3, weight_decay=0.05),
])
def test_sgd_matches_pytorch_semantics_by_hand(float64, kw):
    obj, A, b = quadratic(5)
    lr, mu, wd, damp = 0.05, kw.get("momentum", 0.0), kw.get("weight_decay", 0.0), kw.get("dampening", 0.0)
    thetas, _, infos = run(SGD(lr, **kw), obj, np.linspace(-1, 1, 5), 6)
    x, buf = np.linspace(-1, 1, 5), None
    for t in range(6):
        g = A @ x - b + wd * x
        if mu:
            buf = g.copy() if buf is None else mu * buf + (1 - damp) * g
            g = g + mu * buf if kw.get("nesterov") else buf
        x = x - lr * g
        np.testing.assert_allclose(thetas[t + 1], x, rtol=1e-14, atol=1e-15)
    assert infos[0]["lr"] == lr and "grad_norm" in infos[0]


# ================================================================ Adam / AdamW


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("wd, decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_matches_pytorch_semantics_by_hand(float64, wd, decoupled):
    """Written in the paper's form m̂ = m/(1-β1^t), v̂ = v/(1-β2^t) with ε on
    sqrt(v̂), which is PyTorch's update up to rounding."""
    obj, A, b = quadratic(5)
    lr, (b1, b2), eps = 0.01, (0.8, 0.99), 1e-8
    opt = Adam(lr, (b1, b2), eps, weight_decay=wd, decoupled=decoupled)
    thetas, state, _ = run(opt, obj, np.linspace(-1, 1, 5), 7)
    x, m, v = np.linspace(-1, 1, 5), np.zeros(5), np.zeros(5)
    for t in range(1, 8):
        g = A @ x - b
        if decoupled:
            x = x - lr * wd * x
        else:
            g = g + wd * x
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(thetas[t], x, rtol=1e-12, atol=1e-14)
    assert state["step"] == 7
    np.testing.assert_allclose(state["exp_avg_sq"], v, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adam_first_step_is_lr_g_over_abs_g_plus_eps(float64):
    obj, _, _ = quadratic(6)
    theta0 = np.linspace(-2, 2, 6)
    g = obj.grad(theta0)
    lr, eps = 1e-3, 1e-8
    theta1, _, _ = Adam(lr, eps=eps).step(obj, theta0, Adam(lr, eps=eps).init(theta0))
    step = theta1 - theta0
    np.testing.assert_allclose(step, -lr * g / (np.abs(g) + eps), rtol=1e-6)
    np.testing.assert_allclose(step, -lr * np.sign(g), rtol=1e-6)  # |g| >> eps here


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adamw_decay_is_decoupled_from_the_moments(float64):
    """With a zero gradient AdamW only shrinks θ geometrically, θ_t = (1 - lr·wd)^t θ_0,
    and its moments stay 0; Adam's L2 decay instead feeds wd·θ into the moments
    and moves θ by about lr·sign(θ) per step."""
    n, lr, wd = 4, 0.1, 0.5
    zero = Quadratic(np.zeros((n, n)), np.zeros(n))
    theta0 = np.array([1.0, -2.0, 3.0, -4.0])
    thetas, state, _ = run(AdamW(lr, weight_decay=wd), zero, theta0, 5)
    for t in range(6):
        np.testing.assert_allclose(thetas[t], (1 - lr * wd) ** t * theta0, rtol=1e-14)
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    l2 = run(Adam(lr, weight_decay=wd), zero, theta0, 1)[0][1]
    np.testing.assert_allclose(l2, theta0 - lr * np.sign(theta0), rtol=1e-6)
    # one step on a real objective: AdamW = decay, then Adam(wd=0)'s step
    obj, _, _ = quadratic(4)
    plain = run(Adam(lr), obj, theta0, 1)[0][1]
    decoupled = run(AdamW(lr, weight_decay=wd), obj, theta0, 1)[0][1]
    np.testing.assert_allclose(decoupled, plain - lr * wd * theta0, rtol=1e-14)
    assert AdamW().weight_decay == 1e-2 and AdamW().decoupled


# ================================================================ SGD-BB


def test_bb_step_is_an_inverse_rayleigh_quotient(float64):
    """With y = A s, ||s||²/(m sᵀy) lies in [1/(m λ_max), 1/(m λ_min)]."""
    from optimizers.bb import bb_step_size

    ev = np.array([0.2, 0.7, 1.0, 3.0, 9.0])
    A, m, rng = spd(5, ev), 7, np.random.default_rng(3)
    for _ in range(20):
        s = rng.normal(size=5)
        eta = bb_step_size(s, A @ s, m)
        assert 1 / (m * ev.max()) * (1 - 1e-12) <= eta <= 1 / (m * ev.min()) * (1 + 1e-12)
    v = np.linalg.eigh(A)[1]
    assert bb_step_size(v[:, 0], A @ v[:, 0], m) == pytest.approx(1 / (m * ev.min()), rel=1e-12)
    assert bb_step_size(v[:, -1], A @ v[:, -1], m) == pytest.approx(1 / (m * ev.max()), rel=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_bb_on_a_full_batch_quadratic_follows_the_formula(float64, beta):
    """Full-batch quadratic, m steps per epoch, end_epoch after each epoch.
    The test recomputes x_k and ĝ itself and checks η_k = ||s||²/(m |sᵀy|),
    s = x_k - x_{k-1}, y = ĝ_{k-1} - ĝ_{k-2}, and η_0 = η_1 = lr (the local lr0).

    With β = 1 (ĝ = the last gradient of the epoch) and η constant in epochs 0
    and 1, s and y at k = 2 are polynomials in A applied to one vector:
    y = A (I - η_0 A)^{-1} s, so m η_2 is a weighted mean of 1/λ_i - η_0, in
    [1/λ_max - η_0, 1/λ_min - η_0] -- the inverse Rayleigh quotient shifted by
    η_0, inside (0, 1/λ_min]."""
    ev = np.array([0.5, 1.0, 2.0, 4.0])
    A = spd(4, ev, seed=2)
    obj = Quadratic(A, np.ones(4))
    m, lr0, epochs = 5, 0.05, 6
    opt = BB(lr0, beta=beta)
    theta = np.array([3.0, -2.0, 1.0, 4.0])
    state = opt.init(theta)
    ends, g_hat, g_hats, lrs = [theta], np.zeros(4), [], []
    for k in range(epochs):
        lrs.append(state["lr"])
        for _ in range(m):
            g_hat = beta * (A @ theta - np.ones(4)) + (1 - beta) * g_hat
            theta, state, info = opt.step(obj, theta, state)
            assert info["lr"] == lrs[-1] and info["epoch"] == k
        state = opt.end_epoch(theta, state, {})
        ends.append(theta)
        g_hats.append(g_hat)
    assert lrs[0] == lrs[1] == lr0
    for k in range(2, epochs):
        s, y = ends[k] - ends[k - 1], g_hats[k - 1] - g_hats[k - 2]
        assert lrs[k] == pytest.approx(s @ s / (m * abs(s @ y)), rel=1e-12)
    if beta == 1.0:
        assert (1 / ev.max() - lr0) / m * (1 - 1e-12) <= lrs[2] <= (1 / ev.min() - lr0) / m * (1 + 1e-12)
    # steps_per_epoch: the optimizer closes the epochs itself, same trajectory
    thetas = run(BB(lr0, steps_per_epoch=m, beta=beta), obj, ends[0], m * epochs)[0]
    np.testing.assert_array_equal(thetas[-1], ends[-1])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bb_tau_bounds_fallback_and_zero_curvature_guard(float64):
    obj, A, b = quadratic(4)
    m, lr0 = 4, 0.05

    def epochs(opt, theta, count):
        state = opt.init(theta)
        for _ in range(count):
            for _ in range(m):
                theta, state, _ = opt.step(obj, theta, state)
            state = opt.end_epoch(theta, state, {})
        return state

    free = epochs(BB(lr0, beta=0.5), np.ones(4), 2)
    raw = free["lr"]  # η_2, checked against τ/(k+1) = τ/3
    assert free["bb_fallbacks"] == 0 and raw == free["epoch_info"]["bb"] and raw != lr0
    kept = epochs(BB(lr0, beta=0.5, tau_min=raw * 3 * 0.5, tau_max=raw * 3 * 2, tau0=7.0), np.ones(4), 2)
    assert kept["lr"] == raw and kept["bb_fallbacks"] == 0
    for bounds in (dict(tau_max=raw * 3 * 0.5), dict(tau_min=raw * 3 * 2)):
        out = epochs(BB(lr0, beta=0.5, tau0=7.0, **bounds), np.ones(4), 2)
        assert out["lr"] == pytest.approx(7.0 / 3) and out["bb_fallbacks"] == 1
        assert out["epoch_info"]["fallback"] and out["epoch_info"]["bb"] == raw
    # at the minimizer nothing moves: s = 0, the previous η is kept and the skip reported
    still = epochs(BB(lr0, beta=0.5), np.linalg.solve(A, b), 3)
    assert still["lr"] == lr0 and still["bb_skipped"] == 2


# ================================================================ L-BFGS: two-loop recursion


def explicit_inverse_hessian(S, Y, gamma):
    """H from H^0 = γ I by the BFGS update (N&W eq. 6.17), oldest pair first."""
    n = S[0].shape[0]
    H = gamma * np.eye(n)
    for s, y in zip(S, Y):
        rho = 1.0 / (y @ s)
        V = np.eye(n) - rho * np.outer(y, s)
        H = V.T @ H @ V + rho * np.outer(s, s)
    return H


@pytest.mark.parametrize("pairs", [1, 3, 6])
def test_two_loop_equals_the_explicit_bfgs_formula(float64, pairs):
    rng = np.random.default_rng(pairs)
    A = spd(8, np.linspace(0.3, 6, 8))
    S = [rng.normal(size=8) for _ in range(pairs)]
    Y = [A @ s + 0.05 * rng.normal(size=8) for s in S]
    assert all(s @ y > 0 for s, y in zip(S, Y))
    gamma = S[-1] @ Y[-1] / (Y[-1] @ Y[-1])
    H = explicit_inverse_hessian(S, Y, gamma)
    for _ in range(3):
        g = rng.normal(size=8)
        np.testing.assert_allclose(two_loop(g, S, Y), H @ g, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(two_loop(g, S, Y, gamma=2.5), explicit_inverse_hessian(S, Y, 2.5) @ g, rtol=1e-11)
    np.testing.assert_allclose(two_loop(Y[-1], S, Y), S[-1], rtol=1e-11)  # secant: H y = s
    np.testing.assert_array_equal(two_loop(g, [], []), g)


def linear_cg(A, b, x, iterations):
    """Textbook linear CG (N&W Alg. 5.2); the iterates x_0 .. x_iterations."""
    r, xs = A @ x - b, [x]
    p = -r
    for _ in range(iterations):
        alpha = (r @ r) / (p @ A @ p)
        x = x + alpha * p
        r_new = r + alpha * A @ p
        p = -r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
        xs.append(x)
    return xs


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("history", [2, 10])
def test_lbfgs_with_exact_line_search_reproduces_cg_on_a_quadratic(float64, history):
    n = 7
    obj, A, b = quadratic(n, seed=4, eigenvalues=np.geomspace(0.5, 30, n))
    x0 = np.zeros(n)
    thetas, state, infos = run(LBFGS(history_size=history, line_search="exact"), obj, x0, n)
    for k, x_cg in enumerate(linear_cg(A, b, x0, n)):
        np.testing.assert_allclose(thetas[k], x_cg, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(thetas[n], np.linalg.solve(A, b), rtol=1e-8)
    assert len(state["S"]) == min(history, n) and infos[0]["line_search_status"] == "exact"


# ================================================================ L-BFGS: the line search


def line(f, df):
    """phi(t) -> (f, gradient stand-in, φ'(t)) for a 1-D function, counting calls."""
    calls = []

    def phi(t):
        calls.append(t)
        return f(t), np.array([df(t)]), df(t)

    return phi, calls


@pytest.mark.parametrize("name, f, df, t0", [
    ("overshoot", lambda t: 50 * (t - 0.02) ** 2, lambda t: 100 * (t - 0.02), 1.0),
    ("extrapolate", lambda t: (t - 3) ** 2, lambda t: 2 * (t - 3), 0.01),
    ("quartic", lambda t: (t - 1) ** 4 - 2 * t, lambda t: 4 * (t - 1) ** 3 - 2, 5.0),
    ("rosenbrock", lambda t: so.rosen(np.array([-1.2, 1.0]) + t * np.array([1.0, -0.5])),
     lambda t: so.rosen_der(np.array([-1.2, 1.0]) + t * np.array([1.0, -0.5])) @ np.array([1.0, -0.5]), 1.0),
])
def test_strong_wolfe_returns_a_point_satisfying_both_conditions(name, f, df, t0):
    from optimizers.lbfgs import strong_wolfe

    c1, c2 = 1e-4, 0.9
    phi, calls = line(f, df)
    t, ft, _, evals, status = strong_wolfe(phi, f(0.0), df(0.0), t0, c1, c2)
    assert status == "wolfe" and evals == len(calls) and t > 0
    assert ft <= f(0.0) + c1 * t * df(0.0)          # sufficient decrease
    assert abs(df(t)) <= c2 * abs(df(0.0))           # strong curvature condition
    if name == "overshoot":  # a cubic through two points of a parabola is the parabola: one zoom step
        assert evals == 2 and t == pytest.approx(0.02, rel=1e-12)


def test_strong_wolfe_with_tight_c2_and_without_decrease():
    from optimizers.lbfgs import strong_wolfe

    f, df = (lambda t: np.cos(t + 0.5) + 0.05 * t * t), (lambda t: -np.sin(t + 0.5) + 0.1 * t)
    phi, _ = line(f, df)
    t, _, _, _, status = strong_wolfe(phi, f(0.0), df(0.0), 4.0, 1e-4, 0.1)
    assert status == "wolfe" and abs(df(t)) <= 0.1 * abs(df(0.0))
    # φ increases although φ'(0) claims descent: no step is accepted
    phi, calls = line(lambda t: 1.0 + t, lambda t: 1.0)
    t, ft, g, evals, status = strong_wolfe(phi, 1.0, -1.0, 1.0, max_evals=25)
    assert (t, ft, g, status) == (0.0, 1.0, None, "failed") and evals <= 25


# ================================================================ L-BFGS: agreement with SciPy


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
@pytest.mark.parametrize("n", [2, 5])
def test_lbfgs_reaches_scipys_rosenbrock_minimizer(float64, n):
    obj = Rosenbrock(n)
    result = LBFGS(line_search="strong_wolfe").minimize(obj, obj.x0, maxiter=300, gtol=1e-10)
    ref = so.minimize(so.rosen, obj.x0, jac=so.rosen_der, method="L-BFGS-B",
                      options=dict(gtol=1e-12, ftol=1e-16, maxiter=1000))
    assert result.success and result.nit < 150
    np.testing.assert_allclose(result.x, ref.x, atol=1e-6)
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-6)
    statuses = [h["line_search_status"] for h in result.history]
    assert statuses.count("wolfe") >= 0.9 * len(statuses) and "nan_revert" not in statuses


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
def test_lbfgs_reaches_scipys_logistic_regression_optimum(float64):
    rng = np.random.default_rng(7)
    X = np.c_[rng.normal(size=(300, 6)), np.ones(300)]
    y = (rng.random(300) < 1 / (1 + np.exp(-X @ rng.normal(size=7)))).astype(float)
    obj = LogisticRegression(X, y, l2=1e-3)
    # gtol 1e-8: below about sqrt(eps·f·λ_min) ~ 1e-10 no line search can see f decrease
    result = LBFGS(line_search="strong_wolfe").minimize(obj, np.zeros(7), maxiter=200, gtol=1e-8)
    ref = so.minimize(lambda w: obj.loss_and_grad(w), np.zeros(7), jac=True, method="L-BFGS-B",
                      options=dict(gtol=1e-12, ftol=1e-16))
    assert result.success
    np.testing.assert_allclose(result.x, ref.x, atol=1e-6)
    assert result.fun <= ref.fun + 1e-12


# ================================================================ L-BFGS: robustness


class Cliff:
    """½||x - c||² with c = (2, 0), but NaN loss and gradient wherever x[0] > 1.5:
    the minimizer lies in the NaN region, so unit steps keep landing there."""

    def __init__(self):
        self.inner = Quadratic(np.eye(2), np.array([2.0, 0.0]))
        self.counts = self.inner.counts

    def loss_and_grad(self, x):
        f, g = self.inner.loss_and_grad(x)
        return (math.nan, g * math.nan) if x[0] > 1.5 else (f, g)

    def loss(self, x):
        return self.loss_and_grad(x)[0]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_nan_guard_reverts_resets_and_reports(float64, line_search):
    obj, opt = Cliff(), LBFGS(line_search=line_search)
    thetas, state, infos = run(opt, obj, np.array([0.0, 0.5]), 25)
    assert all(np.isfinite(t).all() and t[0] <= 1.5 for t in thetas)
    reverts = [i for i, info in enumerate(infos) if info["nan_reverts"]]
    assert reverts and state["nan_reverts_total"] == len(reverts)
    for i in reverts:
        np.testing.assert_array_equal(thetas[i + 1], thetas[i])  # reverted to the last good point
        assert infos[i]["memory"] == 0 and infos[i]["line_search_status"] == "nan_revert"
    assert math.isfinite(obj.loss(thetas[-1])) and obj.loss(thetas[-1]) < obj.loss(thetas[0])
    assert obj.loss(thetas[-1]) < 0.125 + 1e-3  # close to the edge x[0] = 1.5, f = 1/8 there
    result = opt.minimize(obj, np.array([0.0, 0.5]), maxiter=40)
    assert np.isfinite(result.x).all() and math.isfinite(result.fun)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lbfgs_halves_the_next_step_after_a_nan_revert(float64):
    """From (1, 0), steepest descent with t = 1 lands on x[0] = 2 (NaN); after
    the revert the next call tries t = 1/2 and reaches the edge (1.5, 0)."""
    thetas, state, infos = run(LBFGS(), Cliff(), np.array([1.0, 0.0]), 2)
    assert infos[0]["nan_reverts"] == 1 and infos[1]["nan_reverts"] == 0
    np.testing.assert_array_equal(thetas[1], [1.0, 0.0])
    np.testing.assert_array_equal(thetas[2], [1.5, 0.0])
    assert infos[1]["lr"] == 0.5 and state["shrink"] == 1.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lbfgs_skips_pairs_without_positive_curvature_and_counts_them(float64):
    """On f = ½(-x₀² + x₁²) every step has sᵀy = -s₀² + s₁² < 0 here."""
    obj = Quadratic(np.diag([-1.0, 1.0]))
    thetas, state, infos = run(LBFGS(lr=0.1), obj, np.array([1.0, 0.01]), 5)
    assert [info["skipped"] for info in infos] == [1] * 5 and state["skipped_total"] == 5
    assert all(info["curvature"] < 0 and info["memory"] == 0 for info in infos)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lbfgs_skip_test_is_scale_aware(float64):
    """On f = 1e-12·½||x||², sᵀy = 1e-12 ||s||² (an absolute 1e-10 test would
    skip every pair); the relative test keeps them, and L-BFGS then takes
    the exact step 1/1e-12 along -g."""
    obj = Quadratic(1e-12 * spd(3, [1.0, 2.0, 3.0]))
    thetas, state, infos = run(LBFGS(), obj, np.ones(3), 3)
    assert state["skipped_total"] == 0 and infos[-1]["memory"] == 3
    assert 0 < infos[0]["curvature"] < 1e-10


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lbfgs_same_batch_pairs_use_one_batch_and_fixed_mode_caches(float64):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.integers(0, 2, 64).astype(float)
    full = LogisticRegression(X, y, l2=1e-2)
    opt = LBFGS(batch_mode="same_batch", line_search="strong_wolfe")
    theta, state = np.zeros(4), opt.init(np.zeros(4))
    for i in range(4):
        batch = full.with_batch(X[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)])
        new, state, info = opt.step(batch, theta, state)
        if info["skipped"] == 0:  # the newest pair, recomputed on this call's batch
            np.testing.assert_allclose(state["Y"][-1], batch.grad(new) - batch.grad(theta), rtol=1e-12)
            np.testing.assert_allclose(state["S"][-1], new - theta, rtol=1e-12)
        assert state["x"] is None
        theta = new
    # "fixed": the gradient at the returned θ is reused, one evaluation per call
    opt, before = LBFGS(), full.counts["nfev"]
    run(opt, full, np.zeros(4), 5)
    assert full.counts["nfev"] - before == 6


@pytest.mark.parametrize("make, name", [
    (lambda: SGD(-0.1), "lr"), (lambda: SGD(0.1, momentum=1.0), "momentum"),
    (lambda: SGD(0.1, weight_decay=-1), "weight_decay"), (lambda: SGD(0.1, nesterov=True), "nesterov"),
    (lambda: SGD(0.1, dampening=1.5), "dampening"),
    (lambda: Adam(lr=-1), "lr"), (lambda: Adam(betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda: Adam(betas=(-0.1, 0.9)), r"betas\[0\]"), (lambda: Adam(betas=0.9), "betas"),
    (lambda: Adam(eps=-1e-8), "eps"), (lambda: AdamW(weight_decay=-0.1), "weight_decay"),
    (lambda: BB(0.0, beta=0.5), "lr"), (lambda: BB(0.1), "beta"), (lambda: BB(0.1, beta=1.5), "beta"),
    (lambda: BB(0.1, steps_per_epoch=0), "steps_per_epoch"), (lambda: BB(0.1, beta=0.5, tau_min=-1), "tau_min"),
    (lambda: BB(0.1, beta=0.5, tau_min=2, tau_max=1), "tau_min"), (lambda: BB(0.1, beta=0.5, tau0=0), "tau0"),
    (lambda: LBFGS(lr=0), "lr"), (lambda: LBFGS(history_size=0), "history_size"),
    (lambda: LBFGS(max_iter=0), "max_iter"), (lambda: LBFGS(line_search="wolfe"), "line_search"),
    (lambda: LBFGS(c1=0.9, c2=0.1), "c1"), (lambda: LBFGS(c2=1.0), "c2"),
    (lambda: LBFGS(skip_threshold=-1e-8), "skip_threshold"), (lambda: LBFGS(batch_mode="mixed"), "batch_mode"),
    (lambda: LBFGS(max_ls=0), "max_ls"),
])
def test_bad_hyperparameters_raise_value_errors_naming_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ================================================================ state round trips


def _optimizers():
    return {
        "sgd": SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        "adam": Adam(0.05),
        "adamw": AdamW(0.05),
        "bb": BB(0.05, steps_per_epoch=3, beta=0.5, tau_min=1e-3, tau_max=10.0),
        "lbfgs": LBFGS(line_search="strong_wolfe", history_size=3),
        "lbfgs_same_batch": LBFGS(batch_mode="same_batch", max_iter=2),
    }


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("key", list(_optimizers()))
def test_state_round_trips_through_hdf5_with_an_identical_next_step(float64, tmp_path, key):
    opt = _optimizers()[key]
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 5))
    obj = LogisticRegression(X, (X @ rng.normal(size=5) > 0).astype(float), l2=0.1)
    thetas, state, _ = run(opt, obj, np.ones(5), 7)
    theta = thetas[-1]
    loaded = hdf5_round_trip(state, tmp_path / "state.h5")
    a_theta, a_state, a_info = opt.step(obj, theta, state)
    b_theta, b_state, b_info = opt.step(obj, theta, loaded)
    np.testing.assert_array_equal(a_theta, b_theta)
    assert states_equal(a_state, b_state) and states_equal(a_info, b_info)
    assert np.isfinite(a_theta).all() and not np.array_equal(a_theta, theta)


# ================================================================ a small MLP on digits


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    layout = Layout([("W1", (64, 16)), ("b1", (16,)), ("W2", (16, 10)), ("b2", (10,))])

    def model_fn(theta, X):
        p = layout.unflatten(theta)
        return (X @ p["W1"] + p["b1"]).relu() @ p["W2"] + p["b2"]

    rng = np.random.default_rng(0)
    theta0 = np.concatenate([
        rng.normal(0, 1 / 8, 64 * 16), np.zeros(16), rng.normal(0, 1 / 4, 16 * 10), np.zeros(10),
    ]).astype(np.float32)
    return Objective(model_fn, "cross_entropy", X, y, layout), theta0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("key, minibatch", [
    ("sgd", True), ("adam", True), ("bb", True), ("lbfgs_same_batch", True), ("lbfgs_full", False),
])
def test_each_optimizer_decreases_the_mlp_loss_on_digits(digits, key, minibatch):
    full, theta = digits
    opt = {
        "sgd": SGD(0.2, momentum=0.9),
        "adam": Adam(1e-2),
        "bb": BB(0.3, steps_per_epoch=3, beta=0.5, tau_min=1e-3, tau_max=10.0),  # BB steps from step 7 on
        "lbfgs_same_batch": LBFGS(batch_mode="same_batch", line_search="strong_wolfe", max_iter=2),
        "lbfgs_full": LBFGS(line_search="strong_wolfe"),
    }[key]
    state, start = opt.init(theta), full.loss(theta)
    rng = np.random.default_rng(1)
    for _ in range(12):
        objective = full
        if minibatch:
            idx = rng.choice(full.X.shape[0], 128, replace=False)
            objective = full.with_batch(full.X[idx], full.y[idx])
        theta, state, info = opt.step(objective, theta, state)
        assert np.isfinite(theta).all() and theta.dtype == np.float32
        assert set(base_info(0.0, theta[:1])) <= set(info)
    end = full.loss(theta)
    assert end < 0.9 * start, (key, start, end)
