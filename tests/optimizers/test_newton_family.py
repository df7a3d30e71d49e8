"""Newton, damped Newton, truncated CG, Hessian-free and Gauss-Newton HF.

Exact properties (one-step Newton, the a_i / (a_i + λ) damping factor, CG's
finite termination, ρ = 1 on a quadratic, G = H for linear models),
agreement with SciPy (CG iterates, the logistic-regression optimum),
Rosenbrock, safeguards on singular and indefinite curvature, bad
hyper-parameters, bit-exact state round trips through HDF5, and a few steps
on a small MLP on real digits. All float64 on the NumPy backend.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse.linalg
from threadpoolctl import threadpool_limits

import tinygrad2 as tg
from tinygrad2 import Tensor
from optimizers import DampedNewton, GaussNewton, HessianFree, Newton, states_equal

from _helpers import hdf5_round_trip
from optimizers.cg import cg, save_points

pytestmark = pytest.mark.usefixtures("float64")


# ================================================================ problems


def rotation(n, seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))[0]


def spd(eigenvalues, seed=0):
    """Q diag(a) Qᵀ with a random rotation Q; returns (A, Q)."""
    a = np.asarray(eigenvalues, dtype=float)
    Q = rotation(a.size, seed)
    A = (Q * a) @ Q.T
    return 0.5 * (A + A.T), Q


def quadratic(n=8, seed=0, low=0.1, high=10.0):
    """Quadratic(A, b) with eigenvalues spread over [low, high], and (A, Q, a)."""
    a = np.geomspace(low, high, n)
    A, Q = spd(a, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    return tg.Quadratic(A, b), A, Q, a


def quartic_saddle(diag):
    """f(x) = ½ xᵀ D x + ¼ Σ x⁴ (bounded below): H(0) = D, singular or
    indefinite by the choice of D."""
    D = np.diag(np.asarray(diag, dtype=float))

    def f(x):
        return (x * (Tensor(D) @ x)).sum() * 0.5 + (x * x * x * x).sum() * 0.25

    return tg.Function(f, len(diag), name="quartic_saddle")


def logistic(n=200, d=6, seed=0, l2=1e-3):
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.normal(size=(n, d - 1)), np.ones((n, 1))])
    w = rng.normal(size=d)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(float)
    return tg.LogisticRegression(X, y, l2=l2)


def full_hf(cls=HessianFree, **kw):
    """HF with CG run to convergence, no damping, no backtracking: a Newton solver."""
    settings = dict(damping=0.0, adapt="fixed", backtracking=False, martens_eps=None, cg_tol=1e-14,
                    reject_increase=False)
    settings.update(kw)
    return cls(**settings)


# ================================================================ Newton and damped Newton


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_newton_solves_an_spd_quadratic_in_one_step():
    obj, A, _, _ = quadratic(n=10, high=1e3)
    x0 = np.random.default_rng(5).normal(size=10)
    opt = Newton()
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    x_star = np.linalg.solve(A, obj.b)
    assert np.abs(x1 - x_star).max() <= 1e-12 * np.abs(x_star).max()
    assert info["status"] == "positive_definite" and info["fallback"] is None
    assert info["min_eig"] == pytest.approx(0.1, rel=1e-10) and info["cond"] == pytest.approx(1e4, rel=1e-8)
    assert info["rho"] == pytest.approx(1.0, abs=1e-9) and state["step"] == 1
    result = opt.minimize(obj, x0, maxiter=5, gtol=1e-10)
    assert result.success and result.nit == 2  # step 2 starts at a zero gradient: minimize stops there
    np.testing.assert_allclose(result.x, x1, rtol=1e-11)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_damping_scales_each_eigencomponent_by_a_over_a_plus_lambda():
    obj, A, Q, a = quadratic(n=8)
    x0 = np.random.default_rng(3).normal(size=8)
    g = A @ x0 - obj.b
    newton_coords = Q.T @ -np.linalg.solve(A, g)
    lam = 0.7
    expected = a / (a + lam) * newton_coords
    opt = DampedNewton(damping=lam, adapt="fixed", reject_increase=False)
    x1, _, info = opt.step(obj, x0, opt.init(x0))
    assert info["shift"] == 0.0
    np.testing.assert_allclose(Q.T @ (x1 - x0), expected, rtol=1e-11, atol=1e-13)
    hf = full_hf(damping=lam)
    x1_hf, _, _ = hf.step(obj, x0, hf.init(x0))
    np.testing.assert_allclose(Q.T @ (x1_hf - x0), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_newton_reports_indefinite_and_singular_hessians_and_falls_back():
    x0 = np.array([1e-3, -1e-3, 2e-3, 2e-3])  # gᵀH⁻¹g ≈ x0ᵀ D x0 < 0
    saddle = quartic_saddle([2.0, 1.0, -1.0, -3.0])
    _, _, info = Newton().step(saddle, x0, Newton().init(x0))
    assert info["status"] == "indefinite" and info["min_eig"] < -2.9 and info["fallback"] == "lstsq"
    assert not info["descent"]  # the Newton step heads for the saddle, and says so
    g = saddle.grad(x0)
    x1, _, info = Newton(fallback="gradient").step(saddle, x0, Newton().init(x0))
    assert info["fallback"] == "gradient" and np.array_equal(x1, x0 - g)

    flat = quartic_saddle([2.0, 1.0, 0.0, 0.0])
    x0 = np.array([0.5, -0.5, 0.0, 0.0])  # H = D + 3 diag(x²): zero on the last two coordinates
    x1, _, info = Newton().step(flat, x0, Newton().init(x0))
    assert info["status"] == "singular" and info["cond"] == math.inf and info["fallback"] == "lstsq"
    assert np.all(np.isfinite(x1)) and flat.loss(x1) < flat.loss(x0)
    assert np.array_equal(x1[2:], [0.0, 0.0])  # the minimum-norm step leaves the null space alone


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_damped_newton_is_safe_on_singular_and_indefinite_hessians():
    saddle = quartic_saddle([2.0, 1.0, -1.0, -3.0])
    x0 = np.array([1e-3, -2e-3, 1.5e-3, 1e-3])
    # LM: H + λI is indefinite at first; the Cholesky shift makes it PD and the loss never rises
    opt, x, state, losses = DampedNewton(damping=1e-3, adapt="lm"), x0, None, [saddle.loss(x0)]
    state = opt.init(x)
    for k in range(15):
        x, state, info = opt.step(saddle, x, state)
        assert np.all(np.isfinite(x))
        losses.append(saddle.loss(x))
        if k == 0:
            assert info["shift"] > 2.9  # τ > -λ_min(H) - λ
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < -2.0  # f = -(1 + 9)/4 at the minimum x = (0, 0, ±1, ±√3)
    # saddle-free: |H| + λI is PD, one step already escapes downhill
    opt = DampedNewton(damping=1e-3, adapt="fixed", saddle_free=True)
    x1, _, info = opt.step(saddle, x0, opt.init(x0))
    assert info["min_eig"] == pytest.approx(-3.0, abs=1e-4) and info["shift"] == 0.0
    assert np.all(np.isfinite(x1)) and saddle.loss(x1) < saddle.loss(x0) and info["actual"] < 0
    # singular H, λ = 0: the Cholesky shift keeps the step finite
    flat = quartic_saddle([2.0, 1.0, 0.0, 0.0])
    x0 = np.array([0.5, -0.5, 0.0, 0.0])
    opt = DampedNewton(damping=0.0, adapt="fixed")
    x1, _, info = opt.step(flat, x0, opt.init(x0))
    assert info["shift"] > 0 and np.all(np.isfinite(x1)) and flat.loss(x1) < flat.loss(x0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("make", [
    lambda: DampedNewton(damping=1.0, adapt="lm"),
    lambda: HessianFree(damping=1.0),
    lambda: GaussNewton(damping=1.0),
], ids=["damped_newton", "hessian_free", "gauss_newton"])
def test_exact_quadratic_gives_rho_one_and_shrinks_damping(make):
    obj, _, _, _ = quadratic(n=12, high=100.0)
    opt = make()
    x0 = np.random.default_rng(0).normal(size=12)
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == pytest.approx(1.0, abs=1e-9)
    assert info["actual"] == pytest.approx(obj.loss(x1) - obj.loss(x0), rel=1e-12)
    assert state["damping"] == pytest.approx(2 / 3, rel=1e-15) and info["damping"] == 1.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("make", [
    lambda: DampedNewton(lr=3.0, damping=1e-3, adapt="lm"),
    lambda: HessianFree(lr=3.0, damping=1e-3),
], ids=["damped_newton", "hessian_free"])
def test_a_step_that_raises_the_loss_is_rejected_and_boosts_damping(make):
    # f(x + 3 d_N) - f(x) = (-3 + 9/2) gᵀA⁻¹g > 0 on a quadratic
    obj, _, _, _ = quadratic(n=6)
    opt = make()
    x0 = np.random.default_rng(1).normal(size=6)
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == -math.inf and info["fallback"] == "rejected" and info["lr"] == 0.0
    assert np.array_equal(x1, x0) and state["damping"] == pytest.approx(1.5e-3, rel=1e-15)


# ================================================================ conjugate gradient


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cg_converges_in_at_most_n_iterations():
    n = 30  # κ = 10: in floating point, larger κ loses orthogonality and needs more than n
    A, _ = spd(np.geomspace(1, 10, n), seed=2)
    b = np.random.default_rng(2).normal(size=n)
    res = cg(lambda v: A @ v, b, tol=1e-10, martens_eps=None)
    assert res.reason == "converged" and res.iterations <= n
    assert np.linalg.norm(A @ res.x - b) <= 1e-9 * np.linalg.norm(b)
    assert all(b2 <= b1 + 1e-14 * abs(b1) for b1, b2 in zip(res.phi, res.phi[1:]))  # φ never rises


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_cg_converges_in_k_iterations_for_k_distinct_eigenvalues(k):
    n = 40
    values = np.array([1.0, 3.0, 7.0, 20.0, 50.0, 90.0])[:k]
    A, _ = spd(np.resize(values, n), seed=k)
    b = np.random.default_rng(k).normal(size=n)
    res = cg(lambda v: A @ v, b, tol=1e-9, martens_eps=None)
    assert res.reason == "converged" and res.iterations == k
    assert np.linalg.norm(A @ res.x - b) <= 1e-8 * np.linalg.norm(b)


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
@pytest.mark.parametrize("iterations", [1, 3, 8])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_cg_iterates_match_scipy(iterations, preconditioned):
    n = 25
    A, _ = spd(np.geomspace(0.5, 200, n), seed=4)
    A += np.diag(np.linspace(1, 50, n))  # a diagonal the preconditioner can use
    b = np.random.default_rng(4).normal(size=n)
    x0 = np.random.default_rng(5).normal(size=n) * 0.1
    diag = np.diag(A).copy() if preconditioned else None
    M_scipy = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda r: r / diag) if preconditioned else None
    expected, _ = scipy.sparse.linalg.cg(A, b, x0=x0, rtol=0.0, atol=0.0, maxiter=iterations, M=M_scipy)
    res = cg(lambda v: A @ v, b, x0=x0, M=diag, max_iter=iterations, tol=0.0, martens_eps=None)
    assert res.reason == "max_iter" and res.iterations == iterations
    np.testing.assert_allclose(res.x, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cg_stops_at_negative_curvature_and_reports_it():
    # A has a negative eigenvalue; CG's first direction b sees positive curvature
    A = np.diag([4.0, 3.0, 2.0, -1.0])
    b = np.array([1.0, 1.0, 1.0, 0.3])
    res = cg(lambda v: A @ v, b, martens_eps=None)
    assert res.reason == "negative_curvature" and res.curvature <= 0 and res.fallback is None
    assert res.iterations >= 1 and res.phi[-1] < 0  # the current iterate, which made progress
    assert res.iterates[-1][0] == res.iterations and res.iterates[-1][1] is res.x
    # negative curvature on the very first direction: the steepest-descent direction M⁻¹b
    res = cg(lambda v: -v, b, martens_eps=None)
    assert res.reason == "negative_curvature" and res.fallback == "steepest_descent"
    assert res.iterations == 0 and np.array_equal(res.x, b)
    res = cg(lambda v: -v, b, M=np.full(4, 2.0), martens_eps=None)
    np.testing.assert_array_equal(res.x, b / 2)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_martens_relative_progress_stop_triggers_on_an_ill_conditioned_quadratic():
    n = 300
    A, _ = spd(np.geomspace(1e-4, 1.0, n), seed=6)
    b = np.random.default_rng(6).normal(size=n)
    eps = 5e-4
    res = cg(lambda v: A @ v, b, max_iter=250, martens_eps=eps)
    assert res.reason == "martens" and res.iterations < 250
    phi, i = res.phi, res.iterations

    def passes(j):
        k = max(10, math.ceil(0.1 * j))
        return j > k and phi[j] < 0 and (phi[j] - phi[j - k]) / phi[j] < k * eps

    assert passes(i) and not any(passes(j) for j in range(1, i))  # the first iteration that passes
    # without the rule the same solve runs to the cap
    assert cg(lambda v: A @ v, b, max_iter=250, martens_eps=None).reason == "max_iter"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cg_saves_iterates_at_ceil_5_times_1_3_to_the_j():
    assert save_points(30) == [5, 7, 9, 11, 15, 19, 25]
    n = 40
    A, _ = spd(np.geomspace(1e-3, 1, n), seed=7)
    b = np.random.default_rng(7).normal(size=n)
    res = cg(lambda v: A @ v, b, max_iter=20, tol=0.0, martens_eps=None)
    assert [i for i, _ in res.iterates] == [5, 7, 9, 11, 15, 19, 20]
    short = cg(lambda v: A @ v, b, max_iter=9, tol=0.0, martens_eps=None)
    np.testing.assert_array_equal(res.iterates[2][1], short.x)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cg_warm_start_matches_a_cold_start_at_convergence():
    n = 20
    A, _ = spd(np.geomspace(1, 10, n), seed=8)
    b = np.random.default_rng(8).normal(size=n)
    cold = cg(lambda v: A @ v, b, tol=1e-12, martens_eps=None)
    warm = cg(lambda v: A @ v, b, x0=0.95 * cold.x, tol=1e-12, martens_eps=None)
    np.testing.assert_allclose(warm.x, cold.x, rtol=1e-10)
    assert warm.phi[0] < 0 and warm.iterations <= cold.iterations


# ================================================================ Hessian-free


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("cls", [HessianFree, GaussNewton])
def test_hf_with_no_damping_and_full_cg_is_the_newton_step(cls):
    obj, A, _, _ = quadratic(n=15, high=50.0)
    x0 = np.random.default_rng(9).normal(size=15)
    opt = full_hf(cls)
    x1, _, info = opt.step(obj, x0, opt.init(x0))
    newton, _, _ = Newton().step(obj, x0, Newton().init(x0))
    np.testing.assert_allclose(x1, newton, rtol=1e-9, atol=1e-12)
    assert info["cg_reason"] == "converged"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_gauss_newton_equals_hf_newton_on_logistic_regression_and_least_squares():
    obj = logistic()
    w = np.zeros(obj.n)
    gn, hf = GaussNewton(damping=1.0), HessianFree(damping=1.0)
    w_gn, s_gn, w_hf, s_hf = w, gn.init(w), w, hf.init(w)
    for _ in range(3):
        w_gn, s_gn, i_gn = gn.step(obj, w_gn, s_gn)
        w_hf, s_hf, i_hf = hf.step(obj, w_hf, s_hf)
        assert i_gn["cg_iters"] == i_hf["cg_iters"] and i_gn["backtrack_iter"] == i_hf["backtrack_iter"]
    np.testing.assert_allclose(w_gn, w_hf, rtol=1e-10, atol=1e-12)
    assert s_gn["damping"] == s_hf["damping"]
    assert obj.counts["nggnvp"] > 0 and obj.counts["nhvp"] > 0  # each used its own product

    rng = np.random.default_rng(10)  # linear least squares through the engine's GGN
    X, Y = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    layout = tg.Layout([("W", (4, 2)), ("b", (2,))])

    def model(theta, X):
        p = layout.unflatten(theta)
        return X @ p["W"] + p["b"]

    lsq = tg.Objective(model, "mse", X, Y, layout)
    theta = rng.normal(size=layout.n)
    a, _, _ = GaussNewton(damping=0.1).step(lsq, theta, GaussNewton().init(theta))
    b, _, _ = HessianFree(damping=0.1).step(lsq, theta, HessianFree().init(theta))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: HessianFree(damping=1.0),
    lambda: GaussNewton(damping=1.0, preconditioner="martens"),
    lambda: HessianFree(damping=1.0, line_search=True),
    lambda: DampedNewton(adapt="lm"),
], ids=["hf", "gn_preconditioned", "hf_line_search", "damped_newton"])
@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
def test_reaches_scipys_logistic_regression_optimum(make):
    obj = logistic()
    w0 = np.zeros(obj.n)
    ref = scipy.optimize.minimize(obj.loss, w0, jac=obj.grad, hessp=lambda w, p: obj.hvp(w, p),
                                  method="trust-ncg", options={"gtol": 1e-12})
    assert ref.success
    result = make().minimize(obj, w0, maxiter=100, gtol=1e-11)
    assert result.success, result.message
    assert np.abs(result.x - ref.x).max() <= 1e-6
    assert result.fun <= ref.fun + 1e-12


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("make", [
    lambda: HessianFree(),
    lambda: GaussNewton(),
    lambda: DampedNewton(adapt="lm"),
    lambda: DampedNewton(adapt="lm", saddle_free=True),
], ids=["hf", "gn", "damped_newton_lm", "saddle_free"])
def test_rosenbrock_reaches_all_ones(make, n):
    obj = tg.Rosenbrock(n)
    result = make().minimize(obj, obj.x0, maxiter=300, gtol=1e-9)
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-6)


def test_hf_info_reports_what_a_researcher_plots():
    obj = tg.Rosenbrock(4)
    opt = HessianFree(preconditioner="martens", line_search=True)
    x, state = obj.x0, opt.init(obj.x0)
    for _ in range(3):
        x, state, info = opt.step(obj, x, state)
    for key in ("loss", "grad_norm", "grad_norm_inf", "damping", "rho", "cg_iters", "cg_residual", "cg_reason",
                "lr", "curvature", "predicted", "actual", "loss_change", "backtrack_iter", "fallback"):
        assert key in info, key
    assert info["predicted"] < 0 and 0 < info["lr"] <= 1 and state["cg_x"].shape == (4,)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_martens_preconditioner_uses_per_example_squares_or_the_batch_approximation():
    obj = logistic(n=40)
    w = np.random.default_rng(11).normal(size=obj.n) * 0.1
    g = obj.grad(w)
    opt = HessianFree(damping=2.0, preconditioner="martens")
    np.testing.assert_allclose(opt._precond(obj, w, g, 2.0), (40 * g * g + 2.0) ** 0.75, rtol=1e-14)

    class WithSquares:  # an objective that can give (1/N) Σ_i (∇ℓ_i)² itself
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def per_example_grad_sq(self, theta):
            self.calls += 1
            p = 1 / (1 + np.exp(-self.inner.X @ theta))
            per_example = (p - self.inner.y)[:, None] * self.inner.X + self.inner.l2 * theta
            return (per_example**2).mean(axis=0)

    wrapped = WithSquares(obj)
    M = opt._precond(wrapped, w, g, 2.0)
    assert wrapped.calls == 1 and np.all(M > 2.0**0.75) and not np.allclose(M, (40 * g * g + 2.0) ** 0.75)
    w1, _, _ = opt.step(wrapped, w, opt.init(w))
    assert wrapped.calls == 2 and obj.loss(w1) < obj.loss(w)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_non_finite_loss_stops_newton_without_moving():
    bad = tg.Function(lambda x: (x.log()).sum(), 3, name="log")
    x0 = np.array([1.0, -1.0, 2.0])
    for opt in (Newton(), DampedNewton(adapt="fixed")):
        with np.errstate(invalid="ignore"):
            x1, _, info = opt.step(bad, x0, opt.init(x0))
            result = opt.minimize(bad, x0, maxiter=5)
        assert info["fallback"] == "non_finite" and np.array_equal(x1, x0)
        assert result.status == 3 and "non-finite" in result.message


def test_hyperparameters_rebuild_the_same_optimizer():
    for opt in (Newton(fallback="gradient"), DampedNewton(adapt="lm", saddle_free=True),
                HessianFree(preconditioner="martens"), GaussNewton(damping=3.0, line_search=True)):
        clone = type(opt)(**opt.hyperparameters())
        assert clone.hyperparameters() == opt.hyperparameters() and repr(clone) == repr(opt)


# ================================================================ hyper-parameters and state


@pytest.mark.parametrize("make, name", [
    (lambda: Newton(lr=0.0), "lr"),
    (lambda: Newton(fallback="eig"), "fallback"),
    (lambda: Newton(curvature="fisher"), "curvature"),
    (lambda: Newton(rcond=-1.0), "rcond"),
    (lambda: DampedNewton(damping=-1.0), "damping"),
    (lambda: DampedNewton(adapt="trust"), "adapt"),
    (lambda: DampedNewton(boost=0.5), "boost"),
    (lambda: DampedNewton(drop=2.0), "drop"),
    (lambda: DampedNewton(min_damping=2.0, max_damping=1.0), "min_damping"),
    (lambda: HessianFree(damping=math.nan), "damping"),
    (lambda: HessianFree(lr=-1.0), "lr"),
    (lambda: HessianFree(cg_max_iter=0), "cg_max_iter"),
    (lambda: HessianFree(cg_max_iter=2.5), "cg_max_iter"),
    (lambda: HessianFree(warm_start_decay=1.5), "warm_start_decay"),
    (lambda: HessianFree(preconditioner="jacobi"), "preconditioner"),
    (lambda: HessianFree(precond_exponent=2.0), "precond_exponent"),
    (lambda: HessianFree(curvature="fisher"), "curvature"),
    (lambda: HessianFree(martens_eps=0.0), "martens_eps"),
    (lambda: HessianFree(line_search_c1=1.0), "line_search_c1"),
    (lambda: HessianFree(line_search_shrink=0.0), "line_search_shrink"),
    (lambda: HessianFree(boost=0.9), "boost"),
    (lambda: GaussNewton(curvature="hessian"), "curvature"),
    (lambda: cg(lambda v: v, np.ones(3), max_iter=0), "max_iter"),
    (lambda: cg(lambda v: v, np.ones(3), tol=-1.0), "tol"),
    (lambda: cg(lambda v: v, np.ones(3), martens_eps=-1.0), "martens_eps"),
])
def test_bad_hyperparameters_raise_value_errors_naming_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("make", [
    lambda: Newton(),
    lambda: DampedNewton(adapt="lm", damping=10.0),
    lambda: HessianFree(damping=10.0, preconditioner="martens"),
    lambda: GaussNewton(damping=10.0, line_search=True),
], ids=["newton", "damped_newton", "hessian_free", "gauss_newton"])
def test_state_survives_hdf5_round_trip_with_an_identical_next_step(make, tmp_path):
    obj = tg.Rosenbrock(4)
    opt = make()
    x, state = obj.x0, opt.init(obj.x0)
    for _ in range(2):
        x, state, _ = opt.step(obj, x, state)
    loaded = hdf5_round_trip(state, tmp_path / "state.h5")
    x_a, state_a, info_a = opt.step(obj, x, state)
    x_b, state_b, info_b = make().step(obj, x.copy(), loaded)
    assert x_a.tobytes() == x_b.tobytes() and states_equal(state_a, state_b)
    assert info_a["loss"] == info_b["loss"]


# ================================================================ a small network on real data


@pytest.fixture(scope="module")
def digits_mlp():
    """Objective of an MLP 64-16-10 (tanh, softmax cross-entropy) on 300 of
    scikit-learn's digits, and a small random initial theta."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300].astype(np.int64)
    layout = tg.Layout([("W1", (64, 16)), ("b1", (16,)), ("W2", (16, 10)), ("b2", (10,))])

    def model(theta, X):
        p = layout.unflatten(theta)
        return (X @ p["W1"] + p["b1"]).tanh() @ p["W2"] + p["b2"]

    rng = np.random.default_rng(0)
    theta0 = np.concatenate([rng.normal(size=64 * 16) / 8, np.zeros(16), rng.normal(size=160) / 4, np.zeros(10)])
    return (X, y, layout, model), theta0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("make, steps", [
    (lambda: HessianFree(), 5),
    (lambda: HessianFree(damping=1.0, line_search=True), 5),
    (lambda: GaussNewton(), 5),
    (lambda: GaussNewton(damping=1.0, preconditioner="martens"), 5),
    (lambda: DampedNewton(adapt="lm"), 5),
    (lambda: Newton(fallback="gradient"), 5),
], ids=["hf", "hf_line_search", "gn", "gn_preconditioned", "damped_newton", "newton"])
def test_each_optimizer_decreases_the_loss_of_an_mlp_on_digits(digits_mlp, make, steps):
    (X, y, layout, model), theta = digits_mlp
    obj = tg.Objective(model, "cross_entropy", X, y, layout)
    opt = make()
    state, start = opt.init(theta), obj.loss(theta)
    losses = []
    # dense 1210 x 1210 eigvalsh/Cholesky: one BLAS thread is about as fast as
    # two and several times faster when the cores are shared with other jobs
    with threadpool_limits(1):
        for _ in range(steps):
            theta, state, info = opt.step(obj, theta, state)
            losses.append(info["loss"])
            assert math.isfinite(info["loss"])
    final = obj.loss(theta)
    assert losses[0] == start and final < start - 0.02
    if isinstance(opt, Newton):  # a softmax cross-entropy Hessian is never positive definite
        assert info["status"] in ("singular", "indefinite") and info["fallback"] == "gradient"
    assert all(b <= a for a, b in zip(losses, losses[1:]))
