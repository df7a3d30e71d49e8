"""Tests written for mutants that survived the mutation pass (docs/MUTATION.md):
DampedNewton's info figures, the saddle-free eigenvalue report, the
non-finite fallback's state and info, the acceptance of a step that leaves
the loss exactly equal, and the dtype of θ through a damped step; from the
second pass HessianFree, cg and Newton; from the third pass L-BFGS (its line
search against N&W Alg. 3.5/3.6), AdaHessian, SGD-PH, SGD, Adam, SGD-BB, the
Hybrid, state.py, GaussNewton and base.py (``minimize``, the checks); from the
fourth pass K-FAC, Sophia and Shampoo."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nets
import tinygrad2 as tg
from optimizers import KFAC, LBFGS, SGD, Adam, AdamW, DampedNewton, HessianFree, Newton
from optimizers.kfac import _solve_small
from optimizers.shampoo import Shampoo
from optimizers.sophia import Sophia
from tinygrad2 import Quadratic, backend, rademacher


def diagonal_quadratic(eigenvalues, dtype=np.float64):
    """f(x) = ½ xᵀ diag(a) x - bᵀx with b = (1, ..., 1)."""
    a = np.asarray(eigenvalues, dtype=dtype)
    return tg.Quadratic(np.diag(a), np.ones(a.size, dtype=dtype)), a


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("lr, rejected", [(0.8, False), (2.5, True)])
def test_damped_newton_info_figures_are_the_closed_forms(lr, rejected):
    obj, a = diagonal_quadratic([0.5, 2.0, 4.0])
    lam = 0.25
    x0 = np.array([1.0, -2.0, 0.5])
    g = a * x0 - 1.0
    d = -g / (a + lam)
    opt = DampedNewton(lr=lr, damping=lam, adapt="fixed")
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    actual = obj.loss(x0 + lr * d) - obj.loss(x0)
    assert info["curvature"] == pytest.approx(d @ (a * d), rel=1e-12)
    assert info["predicted"] == pytest.approx(lr * (g @ d) + 0.5 * lr**2 * (d @ (a * d)), rel=1e-12)
    assert info["actual"] == pytest.approx(actual, rel=1e-12)
    assert (info["fallback"] == "rejected") == rejected and (actual > 0) == rejected
    if rejected:
        assert info["lr"] == 0.0 and info["step_norm"] == 0.0 and info["loss_change"] == 0.0
        np.testing.assert_array_equal(x1, x0)
    else:
        assert info["lr"] == lr and info["loss_change"] == pytest.approx(actual, rel=1e-12)
        assert info["step_norm"] == pytest.approx(lr * np.linalg.norm(d), rel=1e-12)
        np.testing.assert_allclose(x1, x0 + lr * d, rtol=1e-13)
    assert state["step"] == 1 and state["damping"] == lam


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_saddle_free_reports_the_extreme_eigenvalues():
    # f = ½ xᵀ D x + ¼ Σ x⁴ at x = 0: H = D, four distinct eigenvalues
    D = np.diag([3.0, -2.0, 0.5, 7.0])
    f = tg.Function(lambda x: (x * (tg.Tensor(D) @ x)).sum() * 0.5 + (x * x * x * x).sum() * 0.25, 4)
    x0 = np.array([1e-3, 2e-3, -1e-3, 1e-3])
    opt = DampedNewton(damping=0.1, saddle_free=True, adapt="fixed")
    _, _, info = opt.step(f, x0, opt.init(x0))
    H = D + 3 * np.diag(x0**2)
    assert info["min_eig"] == pytest.approx(H[1, 1], rel=1e-12)
    assert info["max_eig"] == pytest.approx(H[3, 3], rel=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # exp overflows on purpose
@pytest.mark.parametrize("make", [lambda: DampedNewton(), lambda: Newton()], ids=["damped_newton", "newton"])
def test_a_non_finite_loss_leaves_theta_counts_the_step_and_says_why(make):
    obj = tg.Function(lambda x: x.exp().sum(), 3)  # overflows to inf at a finite theta
    x0 = np.array([1000.0, 1.0, 2.0])
    opt = make()
    state = opt.init(x0)
    x1, state, info = opt.step(obj, x0, state)
    x2, state, _ = opt.step(obj, x1, state)
    assert state["step"] == 2 and set(state) == set(opt.init(x0))
    assert info["fallback"] == "non_finite" and math.isnan(info["loss_change"])
    np.testing.assert_array_equal(x2, x0)
    assert x1 is not x0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_a_step_that_leaves_the_loss_exactly_equal_is_taken():
    # f = ½||x||²: from x the step x - 2x = -x has the same loss, bit for bit
    obj = tg.Quadratic(np.eye(3))
    x0 = np.array([0.75, -1.5, 0.25])
    opt = DampedNewton(lr=2.0, damping=0.0, adapt="fixed")
    x1, _, info = opt.step(obj, x0, opt.init(x0))
    assert obj.loss(x1) == obj.loss(x0) and info["actual"] == 0.0
    assert info["fallback"] is None and info["lr"] == 2.0
    np.testing.assert_array_equal(x1, -x0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_damped_step_keeps_float32():
    with backend.precision("float32"):
        obj, _ = diagonal_quadratic([0.5, 2.0, 4.0], dtype=np.float32)
        x0 = np.array([1.0, -2.0, 0.5], dtype=np.float32)
        opt = DampedNewton(damping=0.3)
        x1, _, _ = opt.step(obj, x0, opt.init(x0))
    assert x1.dtype == np.float32


@pytest.mark.parametrize("cls", [DampedNewton, HessianFree])
@pytest.mark.parametrize("kwargs, name", [
    ({"lr": 0.0}, "lr"), ({"damping": -1.0}, "damping"), ({"curvature": "gn"}, "curvature"),
    ({"adapt": "lmx"}, "adapt"), ({"boost": 0.0}, "boost"), ({"boost": 0.99}, "boost"),
    ({"drop": 0.0}, "drop"), ({"drop": 1.01}, "drop"), ({"min_damping": -0.1}, "min_damping"),
    ({"max_damping": 0.0}, "max_damping"), ({"min_damping": 2.0, "max_damping": 1.0}, "min_damping"),
])
def test_bad_hyper_parameters_are_refused_by_name(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name} (\(.*\) )?must"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [DampedNewton, HessianFree])
def test_the_limits_of_the_lm_settings_are_allowed(cls):
    opt = cls(boost=1.0, drop=1.0, min_damping=0.5, max_damping=0.5)
    assert (opt.boost, opt.drop, opt.min_damping, opt.max_damping) == (1.0, 1.0, 0.5, 0.5)


def test_damped_newton_defaults():
    opt = DampedNewton()
    assert (opt.lr, opt.damping, opt.adapt, opt.saddle_free, opt.curvature) == (1.0, 1.0, "lm", False, "hessian")
    assert (opt.boost, opt.drop, opt.min_damping, opt.max_damping) == (1.5, 2 / 3, 0.0, 1e10)
    assert opt.reject_increase is True


# ---------------------------------------------------------------- HessianFree (second pass)


class Table:
    """A stand-in objective: loss(θ) = f(θ[0]), counting the evaluations."""

    batch_size = 1

    def __init__(self, f):
        self.f, self.calls = f, []

    def loss(self, theta):
        self.calls.append(float(theta[0]))
        return float(self.f(float(theta[0])))


def iterates_at(*steps):
    return [(i, np.array([float(i)])) for i in steps]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_backtracking_walks_back_while_the_loss_decreases():
    # θ = 0, lr = 2: the iterates 5, 7, 9, 11 land at 10, 14, 18, 22; f = (x - 14)²
    obj = Table(lambda x: (x - 14.0) ** 2)
    i, p, f, evals = HessianFree(lr=2.0)._backtrack(obj, np.zeros(1), iterates_at(5, 7, 9, 11))
    assert (i, p.tolist(), f, evals) == (7, [7.0], 0.0, 4)
    assert obj.calls == [22.0, 18.0, 14.0, 10.0]
    obj = Table(lambda x: (x - 14.0) ** 2)
    assert HessianFree(lr=2.0, backtracking=False)._backtrack(obj, np.zeros(1), iterates_at(5, 7, 9, 11))[::3] == (11, 1)
    assert obj.calls == [22.0]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_backtracking_stops_at_an_equal_loss():
    obj = Table(lambda x: (x - 20.0) ** 2)  # 22 and 18 give the same loss: keep the later iterate
    i, p, f, evals = HessianFree(lr=2.0)._backtrack(obj, np.zeros(1), iterates_at(7, 9, 11))
    assert (i, f, evals) == (11, 4.0, 2)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_armijo_takes_the_first_trial_that_decreases_enough():
    opt = HessianFree(lr=1.0, line_search=True, line_search_c1=0.1, line_search_shrink=0.5, line_search_max=3)
    f = lambda x: x * x - 0.5 * x  # slope -0.5 at 0; trials α = 1, 0.5, 0.25
    obj = Table(f)
    assert opt._armijo(obj, np.zeros(1), np.ones(1), -0.5, 0.0, f(1.0)) == (0.25, f(0.25), 2)
    assert obj.calls == [0.5, 0.25]
    obj = Table(f)
    assert opt._armijo(obj, np.zeros(1), np.ones(1), -0.5, 0.0, -1.0) == (1.0, -1.0, 0)
    assert obj.calls == []


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_armijo_gives_up_after_line_search_max_trials():
    opt = HessianFree(lr=1.0, line_search=True, line_search_c1=0.1, line_search_shrink=0.5, line_search_max=3)
    obj = Table(lambda x: x * x)
    assert opt._armijo(obj, np.zeros(1), np.ones(1), -1.0, 0.0, 1.0) == (0.0, 0.0, 3)
    assert obj.calls == [0.5, 0.25, 0.125]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_armijo_with_an_ascent_slope_asks_for_no_increase():
    opt = HessianFree(lr=1.0, line_search=True, line_search_c1=0.1, line_search_max=1)
    obj = Table(lambda x: 0.01)
    # slope > 0 counts as 0: f(θ + α p) = loss + 0.01 is not enough
    assert opt._armijo(obj, np.zeros(1), np.ones(1), 0.5, 0.0, 0.01) == (0.0, 0.0, 1)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_martens_preconditioner_floor_keeps_the_dtype_eps():
    with backend.precision("float32"):
        opt = HessianFree(preconditioner="martens", precond_exponent=1.0)
        g = np.array([0.0, 2.0, 0.5], dtype=np.float32)
        M = opt._precond(Table(None), np.zeros(3, np.float32), g, 0.0)
    eps = np.finfo(np.float32).eps
    np.testing.assert_array_equal(M, np.array([4.0 * eps, 4.0, 0.25], dtype=np.float32))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_martens_preconditioner_of_a_zero_gradient_is_one():
    opt = HessianFree(preconditioner="martens")
    M = opt._precond(Table(None), np.zeros(3), np.zeros(3), 0.0)
    np.testing.assert_array_equal(M, np.ones(3))
    assert opt._precond(Table(None), np.zeros(0), np.zeros(0), 0.0).shape == (0,)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_init_state():
    x0 = np.array([1.0, 2.0, 3.0])
    state = HessianFree(damping=2.0).init(x0)
    assert state["cg_x"].shape == (3,) and state["cg_x"].dtype == np.float64 and not state["cg_x"].any()
    assert state["damping"] == 2.0 and type(state["damping"]) is float


def ill_conditioned(n=40):
    a = np.geomspace(1e-3, 1e3, n)
    return tg.Quadratic(np.diag(a), np.ones(n)), a


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_warm_starts_cg_at_the_decayed_previous_iterate():
    from optimizers.cg import cg

    obj, a = ill_conditioned(6)
    opt = HessianFree(damping=0.5, adapt="fixed", cg_max_iter=2, backtracking=False, reject_increase=False)
    x0 = np.linspace(-1.0, 1.0, 6)
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["cg_iters"] == 2 and info["cg_reason"] == "max_iter"
    prev = state["cg_x"]
    x2, state, info = opt.step(obj, x1, state)
    g = a * x1 - 1.0
    res = cg(lambda v: a * v + 0.5 * v, -g, x0=0.95 * prev, max_iter=2)
    np.testing.assert_allclose(x2, x1 + res.x, rtol=1e-12, atol=1e-14)
    cold = cg(lambda v: a * v + 0.5 * v, -g, max_iter=2)
    assert np.abs(res.x - cold.x).max() > 1e-3  # the warm start matters here


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_passes_its_cg_stops_on():
    from optimizers.cg import cg

    obj, _ = ill_conditioned()
    x0 = np.zeros(40)
    cases = [({"martens_eps": 0.5, "cg_tol": 0.0}, "martens", 11),
             ({"martens_eps": None, "cg_tol": 0.1}, "converged", None),
             ({"martens_eps": None, "cg_tol": 0.0, "cg_max_iter": 3}, "max_iter", 3)]
    for kwargs, reason, iters in cases:
        opt = HessianFree(damping=0.0, adapt="fixed", **kwargs)
        _, _, info = opt.step(obj, x0, opt.init(x0))
        assert info["cg_reason"] == reason
        if iters is not None:
            assert info["cg_iters"] == iters
        else:  # CG's default tol (1e-10) would take about twice as many iterations
            assert info["cg_iters"] == cg(obj.A.__matmul__, np.ones(40), tol=0.1, martens_eps=None).iterations
            assert info["cg_iters"] < cg(obj.A.__matmul__, np.ones(40), martens_eps=None).iterations
            assert info["cg_residual"] <= 0.1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("line_search_max, shrink", [(60, 0.5), (1, 0.9)], ids=["shrinks", "fails"])
def test_hessian_free_line_search_step_and_info_figures(line_search_max, shrink):
    from optimizers.cg import cg

    # f = ½ xᵀ diag(1, 4) x - 1ᵀx from 0: p = A⁻¹1, c = 1ᵀp = pᵀAp = 1.25, f(t p) = (t²/2 - t) c
    a = np.array([1.0, 4.0])
    obj, c = tg.Quadratic(np.diag(a), np.ones(2)), 1.25
    x0 = np.zeros(2)
    opt = HessianFree(lr=3.0, damping=0.0, adapt="fixed", line_search=True, line_search_shrink=shrink,
                      line_search_max=line_search_max)
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    res = cg(lambda v: a * v, np.ones(2))
    p = res.x
    assert info["cg_iters"] == res.iterations == 2 and info["cg_reason"] == "converged"
    assert info["cg_residual"] == pytest.approx(res.residual_norm / np.sqrt(2), rel=1e-14) and info["cg_curvature"] == res.curvature
    assert info["backtrack_iter"] == 2 and info["backtrack_evals"] == 1
    assert info["curvature"] == pytest.approx(c, rel=1e-12)
    assert info["predicted"] == pytest.approx(-3 * c + 4.5 * c, rel=1e-12)
    assert info["actual"] == pytest.approx(1.5 * c, rel=1e-12) and info["rho"] == -math.inf
    assert info["line_search_evals"] == 1
    if line_search_max == 60:  # α = 1.5 passes Armijo: f = -0.375 c
        assert info["lr"] == 1.5 and info["fallback"] is None
        assert info["loss_change"] == pytest.approx(-0.375 * c, rel=1e-12)
        assert info["step_norm"] == pytest.approx(1.5 * np.linalg.norm(p), rel=1e-12)
        np.testing.assert_allclose(x1, 1.5 * p, rtol=1e-13)
    else:  # α = 2.7 fails and no trial is left
        assert info["lr"] == 0.0 and info["fallback"] == "line_search_failed"
        assert info["loss_change"] == 0.0 and info["step_norm"] == 0.0
        np.testing.assert_array_equal(x1, x0)
    assert state["step"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_without_line_search_counts_no_trials():
    obj = tg.Quadratic(np.diag([1.0, 4.0]), np.ones(2))
    opt = HessianFree(lr=0.5, damping=0.0, adapt="fixed")
    x1, _, info = opt.step(obj, np.zeros(2), opt.init(np.zeros(2)))
    assert info["line_search_evals"] == 0 and info["lr"] == 0.5 and info["fallback"] is None
    assert info["loss_change"] == pytest.approx((0.125 - 0.5) * 1.25, rel=1e-12)
    np.testing.assert_allclose(x1, [0.5, 0.125], rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_residual_loss_change_and_carried_cg_iterate():
    from optimizers.cg import cg

    a = np.array([1.0, 4.0])
    obj = tg.Quadratic(np.diag(a), np.full(2, 0.5))
    x0 = np.array([0.25, 0.25])  # loss -0.09375, ||g|| = sqrt(0.0625 + 0.25) < 1
    g = a * x0 - 0.5
    opt = HessianFree(lr=1.0, damping=0.0, adapt="fixed", cg_max_iter=1, reject_increase=False)
    state0 = opt.init(x0)
    x1, state, info = opt.step(obj, x0, state0)
    res = cg(lambda v: a * v, -g, max_iter=1)
    assert res.residual_norm > 0.01
    assert info["cg_residual"] == pytest.approx(res.residual_norm / np.linalg.norm(g), rel=1e-12)
    assert info["loss_change"] == pytest.approx(obj.loss(x0 + res.x) - obj.loss(x0), rel=1e-12)
    assert set(state) == set(state0)
    np.testing.assert_allclose(state["cg_x"], res.x, rtol=1e-13)
    np.testing.assert_allclose(x1, x0 + res.x, rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_at_a_stationary_point_reports_a_zero_residual():
    obj = tg.Quadratic(np.diag([1.0, 4.0]), np.array([1.0, 4.0]))
    x0 = np.ones(2)  # the minimizer: g = 0
    opt = HessianFree(damping=0.0, adapt="fixed")
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["cg_reason"] == "zero_rhs" and info["cg_residual"] == 0.0
    np.testing.assert_array_equal(x1, x0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hessian_free_does_not_warm_start_from_a_steepest_descent_fallback():
    obj = tg.Quadratic(np.diag([-1.0, -2.0]), np.ones(2))  # negative curvature on CG's first direction
    x0 = np.zeros(2)
    opt = HessianFree(damping=0.0, adapt="fixed")
    _, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["fallback"] == "steepest_descent" and info["cg_reason"] == "negative_curvature"
    assert state["cg_x"].shape == (2,) and not state["cg_x"].any() and set(state) == set(opt.init(x0))


@pytest.mark.parametrize("kwargs, message", [
    ({"cg_max_iter": 0}, "cg_max_iter must be an integer >= 1, got 0"),
    ({"cg_tol": -1.0}, "cg_tol must be a finite number >= 0, got -1.0"),
    ({"martens_eps": 0.0}, "martens_eps must be a finite number > 0, got 0.0"),
    ({"warm_start_decay": 1.5}, "warm_start_decay must lie in [0, 1], got 1.5"),
    ({"backtracking": 1}, "backtracking must be True or False, got 1 (int)"),
    ({"preconditioner": "x"}, "preconditioner must be one of (None, 'martens'), got 'x'"),
    ({"precond_exponent": 1.5}, "precond_exponent must lie in [0, 1], got 1.5"),
    ({"line_search": "y"}, "line_search must be True or False, got 'y' (str)"),
    ({"line_search_c1": 1.0}, "line_search_c1 must lie in [0, 1), got 1.0"),
    ({"line_search_shrink": 1.0}, "line_search_shrink must lie in [0, 1), got 1.0"),
    ({"line_search_shrink": 0}, "line_search_shrink must lie in (0, 1), got 0"),
    ({"line_search_max": 0}, "line_search_max must be an integer >= 1, got 0"),
    ({"reject_increase": None}, "reject_increase must be True or False, got None (NoneType)"),
])
def test_hessian_free_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError) as err:
        HessianFree(**kwargs)
    assert str(err.value) == f"HessianFree: {message}"


def test_hessian_free_defaults_and_allowed_limits():
    opt = HessianFree()
    assert (opt.lr, opt.damping, opt.adapt, opt.curvature) == (1.0, 45.0, "lm", "hessian")
    assert (opt.cg_max_iter, opt.cg_tol, opt.martens_eps, opt.warm_start_decay) == (250, 1e-10, 5e-4, 0.95)
    assert (opt.backtracking, opt.preconditioner, opt.precond_exponent) == (True, None, 0.75)
    assert (opt.line_search, opt.line_search_c1, opt.line_search_shrink, opt.line_search_max) == (False, 1e-2, 0.8, 60)
    assert opt.reject_increase is True
    opt = HessianFree(cg_tol=0.0, warm_start_decay=1.0, precond_exponent=1.0, martens_eps=None)
    assert (opt.cg_tol, opt.warm_start_decay, opt.precond_exponent, opt.martens_eps) == (0.0, 1.0, 1.0, None)


# ---------------------------------------------------------------- cg (second pass)


def test_cg_save_points_are_the_ceilings_of_5_times_1_3_to_the_j():
    from optimizers.cg import save_points

    assert save_points(4) == [] and save_points(5) == [5]
    assert save_points(25) == [5, 7, 9, 11, 15, 19, 25]
    assert save_points(24) == [5, 7, 9, 11, 15, 19]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_with_a_callable_preconditioner_matches_the_diagonal():
    from optimizers.cg import cg

    a = np.array([1.0, 10.0, 100.0])
    b = np.array([1.0, -2.0, 3.0])
    by_diagonal = cg(lambda v: a * v, b, M=a)
    by_callable = cg(lambda v: a * v, b, M=lambda r: r / a)
    np.testing.assert_array_equal(by_callable.x, by_diagonal.x)
    assert by_callable.iterations == by_diagonal.iterations == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kwargs, message", [
    ({"M": np.eye(2)}, "cg: M must be None, an (n,) diagonal or a callable, got an array of shape (2, 2)"),
    ({"M": np.array([1.0, 0.0])}, "cg: the diagonal preconditioner M must be positive"),
    ({"max_iter": 0}, "cg: max_iter must be an integer >= 1, got 0"),
    ({"tol": -1.0}, "cg: tol must be a finite number >= 0, got -1.0"),
    ({"martens_eps": 0.0}, "cg: martens_eps must be a finite number > 0, got 0.0"),
    ({"martens_min_gap": 0}, "cg: martens_min_gap must be an integer >= 1, got 0"),
    ({"x0": np.ones(3)}, "cg: x0 has shape (3,) but b has shape (2,)"),
])
def test_cg_refuses_bad_arguments_by_name(kwargs, message):
    from optimizers.cg import cg

    with pytest.raises(ValueError) as err:
        cg(lambda v: v, np.ones(2), **kwargs)
    assert str(err.value) == message


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cg_refuses_a_matrix_right_hand_side():
    from optimizers.cg import cg

    with pytest.raises(ValueError) as err:
        cg(lambda v: v, np.ones((2, 2)))
    assert str(err.value) == "cg: b must be a vector (n,), got shape (2, 2)"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_allows_a_martens_gap_of_one():
    from optimizers.cg import cg

    a = np.geomspace(1.0, 100.0, 30)
    res = cg(lambda v: a * v, np.ones(30), martens_eps=0.5, martens_min_gap=1, tol=0.0)
    assert res.reason == "martens"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_warm_start_phi_and_dtype():
    from optimizers.cg import cg

    a = np.array([2.0, 3.0])
    b = np.array([1.0, 5.0])
    x0 = np.ones(2)  # all ones is a warm start, not a cold one
    res = cg(lambda v: a * v, b, x0=x0, max_iter=1, martens_eps=None)
    r0 = b - a * x0
    assert res.phi[0] == pytest.approx(-0.5 * x0 @ (b + r0), rel=1e-15)
    assert res.phi[0] == pytest.approx(0.5 * x0 @ (a * x0) - b @ x0, rel=1e-14)
    exact = cg(lambda v: a * v, b, x0=(b / a).astype(np.float32), tol=1e-6)
    assert exact.reason == "converged" and exact.iterations == 0 and exact.x.dtype == np.float64


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_of_a_zero_right_hand_side_is_the_zero_solution():
    from optimizers.cg import cg

    res = cg(lambda v: 2.0 * v, np.zeros(3))
    assert res.reason == "zero_rhs" and res.iterations == 0 and res.residual_norm == 0.0 and res.phi == [0.0]
    assert res.x.shape == (3,) and not res.x.any() and res.fallback is None and math.isnan(res.curvature)
    assert len(res.iterates) == 1 and res.iterates[0][0] == 0 and res.iterates[0][1].shape == (3,)
    unit = cg(lambda v: 2.0 * v, np.array([1.0, 0.0, 0.0]))  # ||b|| = 1 is not zero
    assert unit.reason == "converged" and unit.iterations == 1 and unit.x.tolist() == [0.5, 0.0, 0.0]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_phi_zero_tolerance_and_zero_curvature():
    from optimizers.cg import cg

    a = np.array([1.0, 2.0, 5.0])
    b = np.array([1.0, 1.0, 1.0])
    res = cg(lambda v: a * v, b, max_iter=2, martens_eps=None)
    assert res.phi[0] == 0.0 and len(res.phi) == 3
    x = res.x
    assert res.phi[2] == pytest.approx(0.5 * x @ (a * x) - b @ x, rel=1e-14)
    # tol = 0 with an exactly zero residual is "converged"
    exact = cg(lambda v: v, np.array([1.0, 0.0, 0.0]), tol=0.0)
    assert exact.reason == "converged" and exact.iterations == 1 and exact.residual_norm == 0.0
    # zero curvature on the first direction is not positive: steepest descent
    flat = cg(lambda v: np.array([0.0, 1.0]) * v, np.array([1.0, 0.0]))
    assert flat.reason == "negative_curvature" and flat.curvature == 0.0 and flat.fallback == "steepest_descent"
    assert flat.x.tolist() == [1.0, 0.0]


def martens_stop(phi, gap, eps):
    """The first i at which Martens' rule (cg's module docstring) stops, from the whole φ sequence."""
    for i in range(1, len(phi)):
        k = max(gap, math.ceil(0.1 * i))
        if i > k and phi[i] < 0 and (phi[i] - phi[i - k]) / phi[i] < k * eps:
            return i
    return None


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("gap, eps, scale", [(1, 1e-2, 0.0), (10, 5e-4, 0.3)], ids=["k-grows-with-i", "phi-positive"])
def test_cg_martens_rule_stops_where_the_docstring_says(gap, eps, scale):
    # scale > 0: a warm start with φ > 0 for the first 22 iterations (no stop while φ >= 0)
    from optimizers.cg import cg

    a = np.geomspace(1.0, 1e4, 60)
    x0 = -scale * np.ones(60) / np.sqrt(a)
    full = cg(lambda v: a * v, np.ones(60), x0=x0, martens_eps=None, tol=0.0, max_iter=200)
    res = cg(lambda v: a * v, np.ones(60), x0=x0, martens_eps=eps, martens_min_gap=gap, tol=0.0, max_iter=200)
    expected = martens_stop(full.phi, gap, eps)
    assert res.reason == "martens" and res.iterations == expected and expected > 30


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cg_martens_rule_needs_more_than_k_iterations():
    from optimizers.cg import cg

    a = np.array([1.0, 2.0, 4.0])
    res = cg(lambda v: a * v, np.ones(3), martens_eps=2.0, martens_min_gap=1, tol=0.0)
    assert res.reason == "martens" and res.iterations == 2


# ---------------------------------------------------------------- Newton and cholesky_shifted (second pass)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_newton_info_figures_are_the_closed_forms():
    obj, a = diagonal_quadratic([0.5, 2.0, 4.0])
    x0 = np.array([1.0, -2.0, 0.5])
    g = a * x0 - 1.0
    d = -g / a
    lr = 0.8
    x1, state, info = Newton(lr=lr).step(obj, x0, Newton(lr=lr).init(x0))
    actual = obj.loss(x0 + lr * d) - obj.loss(x0)
    predicted = lr * (g @ d) + 0.5 * lr**2 * (d @ (a * d))
    assert info["lr"] == lr and info["status"] == "positive_definite" and info["fallback"] is None
    assert (info["min_eig"], info["max_eig"]) == (0.5, 4.0) and info["cond"] == pytest.approx(8.0, rel=1e-12)
    assert info["descent"] is True and info["step_norm"] == pytest.approx(lr * np.linalg.norm(d), rel=1e-12)
    assert info["curvature"] == pytest.approx(d @ (a * d), rel=1e-12)
    assert info["predicted"] == pytest.approx(predicted, rel=1e-12)
    assert info["actual"] == info["loss_change"] == pytest.approx(actual, rel=1e-12)
    assert info["rho"] == pytest.approx(actual / predicted, rel=1e-12)
    np.testing.assert_allclose(x1, x0 + lr * d, rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_newton_at_a_stationary_point_is_not_a_descent():
    obj = tg.Quadratic(np.eye(2), np.ones(2))
    _, _, info = Newton().step(obj, np.ones(2), Newton().init(np.ones(2)))
    assert info["descent"] is False and info["step_norm"] == 0.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("fallback, expected", [("none", "lstsq"), ("lstsq", "lstsq"), ("gradient", "gradient")])
def test_newton_on_a_singular_hessian(fallback, expected):
    # H = diag(0, 2): singular; the minimum-norm step leaves the null direction alone
    obj = tg.Quadratic(np.diag([0.0, 2.0]), np.array([0.0, 1.0]))
    x0 = np.array([3.0, 2.0])
    x1, _, info = Newton(fallback=fallback).step(obj, x0, Newton().init(x0))
    assert info["status"] == "singular" and info["fallback"] == expected and info["cond"] == math.inf
    g = np.array([0.0, 3.0])
    np.testing.assert_allclose(x1, x0 + (np.array([0.0, -1.5]) if expected == "lstsq" else -g), rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_newton_status_thresholds_use_rcond_times_the_top_eigenvalue():
    obj = tg.Quadratic(np.diag([1e-3, 4.0]), np.ones(2))
    x0 = np.zeros(2)
    # rcond * top = 4e-3 > 1e-3: singular by the rule; rcond 2.5e-4 puts the bound at exactly 1e-3 (not above)
    for rcond, status in [(1e-3, "singular"), (2.5e-4, "singular"), (2e-4, "positive_definite")]:
        _, _, info = Newton(rcond=rcond).step(obj, x0, Newton().init(x0))
        assert info["status"] == status, rcond
    obj = tg.Quadratic(np.diag([-1e-3, 4.0]), np.ones(2))
    for rcond, status in [(2.5e-4, "singular"), (2e-4, "indefinite")]:
        _, _, info = Newton(rcond=rcond).step(obj, x0, Newton().init(x0))
        assert info["status"] == status, rcond


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_newton_keeps_an_eigenvalue_exactly_at_the_bound_out_of_the_solve():
    obj = tg.Quadratic(np.diag([1e-3, 4.0]), np.ones(2))
    x1, _, info = Newton(rcond=2.5e-4).step(obj, np.zeros(2), Newton().init(np.zeros(2)))
    assert info["fallback"] == "lstsq"
    np.testing.assert_allclose(x1, [0.0, 0.25], rtol=1e-13)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"curvature": "x"}, "curvature must be one of"),
    ({"fallback": "x"}, "fallback must be one of ('lstsq', 'gradient', 'none'), got 'x'"),
    ({"rcond": -1.0}, "rcond must be a finite number > 0, got -1.0"),
])
def test_newton_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError) as err:
        Newton(**kwargs)
    assert str(err.value).startswith(f"Newton: {message}")


def test_newton_allows_fallback_none():
    assert Newton(fallback="none", rcond=1e-8).fallback == "none"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_cholesky_shifted_shifts_and_doubles():
    from optimizers.newton import cholesky_shifted

    A = np.diag([-1.0, 3.0])
    shifted, tau = cholesky_shifted(A, beta=0.5)
    assert tau == 1.0 + 0.5 * 2.0  # -min a_ii + β·mean|a_ii|
    np.testing.assert_array_equal(shifted, A + tau * np.eye(2))
    A = np.array([[1.0, 2.5], [2.5, 1.0]])  # eigenvalues -1.5, 3.5: positive diagonal, needs a shift
    shifted, tau = cholesky_shifted(A, beta=0.25)
    assert tau == 2.0  # 0, then β' = 0.25, 0.5, 1, 2 (the first > 1.5)
    A = np.diag([0.0, 2.0])  # a zero diagonal entry is not > 0
    assert cholesky_shifted(A, beta=0.5)[1] == 0.5
    with pytest.raises(FloatingPointError) as err:
        cholesky_shifted(np.array([[1.0, 2.5], [2.5, 1.0]]), beta=0.25, max_tries=3)
    assert str(err.value) == "cholesky_shifted: no positive definite A + τI found up to τ = 1"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_newton_default_rcond_uses_the_dtype_of_theta():
    with backend.precision("float32"):
        # 1e-7 is below 2·eps(float32) = 2.4e-7 but far above 2·eps(float64)
        obj = tg.Quadratic(np.diag([1e-7, 1.0]).astype(np.float32), np.ones(2, np.float32))
        x0 = np.zeros(2, np.float32)
        _, _, info = Newton().step(obj, x0, Newton().init(x0))
    assert info["status"] == "singular"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_newton_fallback_none_solves_an_indefinite_hessian_directly():
    obj = tg.Quadratic(np.diag([-1.0, 2.0]), np.ones(2))
    x1, _, info = Newton(fallback="none").step(obj, np.zeros(2), Newton().init(np.zeros(2)))
    assert info["status"] == "indefinite" and info["fallback"] is None
    np.testing.assert_allclose(x1, [-1.0, 0.5], rtol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cholesky_shifted_first_shift_and_float32():
    from optimizers.newton import cholesky_shifted

    with backend.precision("float64"):
        assert cholesky_shifted(np.diag([0.0, 2.0]), beta=0.5, max_tries=1)[1] == 0.5
        assert cholesky_shifted(np.diag([-1.0, 3.0]), beta=0.5, max_tries=1)[1] == 2.0
    with backend.precision("float32"):
        A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]], dtype=np.float32)
        shifted, tau = cholesky_shifted(A, max_tries=1)
    assert tau == 0.0 and shifted.dtype == np.float32


# ---------------------------------------------------------------- L-BFGS (third pass)


def hermite_minimizer(a, fa, ga, b, fb, gb):
    """The local minimizer of the cubic p with p(a) = fa, p'(a) = ga, p(b) = fb,
    p'(b) = gb, from its power-basis coefficients (not from N&W eq. 3.59), or None."""
    h = b - a
    c = np.linalg.solve([[1, 0, 0, 0], [0, 1, 0, 0], [1, h, h * h, h**3], [0, 1, 2 * h, 3 * h * h]], [fa, ga, fb, gb])
    roots = np.roots([3 * c[3], 2 * c[2], c[1]])  # p'(a + u) = c1 + 2 c2 u + 3 c3 u²
    mins = [a + u.real for u in roots if abs(u.imag) <= 1e-12 * abs(u) and 2 * c[2] + 6 * c[3] * u.real > 0]
    return mins[0] if mins else None


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (1.0, 0.0), (0.5, 2.0), (2.0, 0.5), (-1.0, -3.0)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_cubic_min_is_the_minimizer_of_the_hermite_cubic(a, b, scale):
    from optimizers.lbfgs import _cubic_min

    # p(t) = k ((t - m)³/3 - (t - m)): local minimum at m + 1; and a parabola k (t - m)²
    for m in (-0.5, 0.3, 1.2):
        for p, dp, t_min in [
            (lambda t: scale * ((t - m) ** 3 / 3 - (t - m)), lambda t: scale * ((t - m) ** 2 - 1), m + 1),
            (lambda t: scale * (t - m) ** 2, lambda t: 2 * scale * (t - m), m),
        ]:
            t = _cubic_min(a, p(a), dp(a), b, p(b), dp(b))
            expected = hermite_minimizer(a, p(a), dp(a), b, p(b), dp(b))
            assert expected == pytest.approx(t_min, rel=1e-9, abs=1e-9)
            assert t == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # p(t) = k (t³ + t) is monotone: no minimizer
    p, dp = (lambda t: scale * (t**3 + t)), (lambda t: scale * (3 * t * t + 1))
    assert _cubic_min(a, p(a), dp(a), b, p(b), dp(b)) is None


def test_cubic_min_of_a_parabola_with_a_unit_denominator():
    from optimizers.lbfgs import _cubic_min

    # ¼ (t - ¼)² on [0, 1]: every quantity of eq. 3.59 is a dyadic number and its denominator is exactly 1
    p, dp = (lambda t: (t - 0.25) ** 2 / 4), (lambda t: (t - 0.25) / 2)
    assert _cubic_min(0.0, p(0.0), dp(0.0), 1.0, p(1.0), dp(1.0)) == 0.25


def reference_line_search(phi, f0, dg0, t, c1, c2, max_evals):
    """N&W Alg. 3.5 (bracketing) and Alg. 3.6 (zoom), with the safeguards that
    lbfgs.py documents: extrapolate to the cubic's minimizer kept in
    [1.1 t, 10 t] (4 t without one); in zoom, bisect when there is no cubic
    minimizer or the interval shrank by less than half in the last trial,
    otherwise keep the cubic's minimizer 1 % of the interval off its ends; stop
    zooming when the interval is at most 1e-12·max(1, |α_lo|) wide. At most
    ``max_evals`` evaluations. Returns (t, f, g, trials, status)."""
    from optimizers.lbfgs import _cubic_min

    trials = []

    def evaluate(alpha):
        f, g, dg = phi(alpha)
        trials.append(alpha)
        return (alpha, f, dg, g)

    def armijo(p):
        return p[1] <= f0 + c1 * p[0] * dg0

    def wolfe(p):
        return abs(p[2]) <= c2 * abs(dg0)

    def zoom(lo, hi):
        last = math.inf
        while len(trials) < max_evals:
            left, right = min(lo[0], hi[0]), max(lo[0], hi[0])
            width = right - left
            if width <= 1e-12 * max(1.0, abs(lo[0])):
                break
            alpha = _cubic_min(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])
            if alpha is None or width > last / 2:
                alpha = (left + right) / 2
            else:
                alpha = min(max(alpha, left + width / 100), right - width / 100)
            last = width
            cur = evaluate(alpha)
            if not armijo(cur) or cur[1] >= lo[1]:
                hi = cur
            elif wolfe(cur):
                return cur[0], cur[1], cur[3], trials, "wolfe"
            else:
                if cur[2] * (hi[0] - lo[0]) >= 0:
                    hi = lo
                lo = cur
        if lo[0] > 0:
            return lo[0], lo[1], lo[3], trials, "armijo"
        return 0.0, f0, None, trials, "failed"

    prev = (0.0, f0, dg0, None)
    while len(trials) < max_evals:
        cur = evaluate(t)
        if not armijo(cur) or (len(trials) > 1 and cur[1] >= prev[1]):
            return zoom(prev, cur)
        if wolfe(cur):
            return cur[0], cur[1], cur[3], trials, "wolfe"
        if cur[2] >= 0:
            return zoom(cur, prev)
        guess = _cubic_min(prev[0], prev[1], prev[2], cur[0], cur[1], cur[2])
        prev, t = cur, min(max(4 * t if guess is None else guess, 1.1 * t), 10 * t)
    return prev[0], prev[1], prev[3], trials, "armijo"


LINE_FUNCTIONS = {
    "parabola": (lambda t: 50 * (t - 0.02) ** 2, lambda t: 100 * (t - 0.02)),
    "far_parabola": (lambda t: (t - 100) ** 2, lambda t: 2 * (t - 100)),
    "flat_parabola": (lambda t: 0.01 * (t - 1) ** 2, lambda t: 0.02 * (t - 1)),
    "quartic": (lambda t: (t - 1) ** 4 - 2 * t, lambda t: 4 * (t - 1) ** 3 - 2),
    "wavy": (lambda t: np.cos(t + 0.5) + 0.05 * t * t, lambda t: -np.sin(t + 0.5) + 0.1 * t),
    "sine": (lambda t: -np.sin(3 * t) + 0.1 * t * t, lambda t: -3 * np.cos(3 * t) + 0.2 * t),
    "linear": (lambda t: -t, lambda t: -1.0),
    "rising": (lambda t: 1.0 + t, lambda t: 1.0),  # φ'(0) is claimed to be -1 below: no decrease anywhere
    "rosenbrock": (lambda t: so_rosen(t), lambda t: so_rosen_slope(t)),
}


def so_rosen(t):
    x = np.array([-1.2, 1.0]) + t * np.array([1.0, -0.5])
    return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


def so_rosen_slope(t):
    x = np.array([-1.2, 1.0]) + t * np.array([1.0, -0.5])
    grad = np.array([-400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]), 200 * (x[1] - x[0] ** 2)])
    return float(grad @ np.array([1.0, -0.5]))


def recording(f, df):
    """phi(t) -> (f, gradient stand-in [t], φ'(t)), recording the trial steps."""
    calls = []

    def phi(t):
        calls.append(t)
        return f(t), np.array([t]), df(t)

    return phi, calls


@pytest.mark.parametrize("name", sorted(LINE_FUNCTIONS))
def test_strong_wolfe_follows_nocedal_wright_algorithms_3_5_and_3_6(name):
    """The trial steps, the result and the status are those of the reference
    above, for several starting steps, Wolfe constants and budgets; and the
    result has the property its status claims."""
    from optimizers.lbfgs import strong_wolfe

    f, df = LINE_FUNCTIONS[name]
    f0, dg0 = f(0.0), (-1.0 if name == "rising" else df(0.0))
    statuses = set()
    for t0 in (0.01, 0.5, 1.0, 5.0, 40.0):
        for c1, c2 in ((1e-4, 0.9), (1e-4, 0.1), (0.3, 0.4)):
            for max_evals in (25, 4, 2):
                phi, calls = recording(f, df)
                t, ft, g, evals, status = strong_wolfe(phi, f0, dg0, t0, c1, c2, max_evals)
                phi, _ = recording(f, df)
                ref_t, ref_f, ref_g, trials, ref_status = reference_line_search(phi, f0, dg0, t0, c1, c2, max_evals)
                assert calls == trials and evals == len(trials) <= max_evals
                assert (t, ft, status) == (ref_t, ref_f, ref_status)
                assert (g is None and ref_g is None) or g[0] == ref_g[0] == t
                statuses.add(status)
                if status == "failed":
                    assert (t, ft, g) == (0.0, f0, None)
                    assert all(f(s) > f0 + c1 * s * dg0 or f(s) >= f0 for s in trials)
                else:
                    assert t > 0 and ft == f(t) <= f0 + c1 * t * dg0
                if status == "wolfe":
                    assert abs(df(t)) <= c2 * abs(dg0)
                if status == "armijo":  # the best trial with sufficient decrease
                    assert ft == min(f(s) for s in trials if f(s) <= f0 + c1 * s * dg0)
    if name == "rising":
        assert statuses == {"failed"}
    else:
        assert ("wolfe" in statuses) == (name != "linear")


def scripted(*values):
    """phi returning the given (f, φ') at its successive calls, recording the trial steps."""
    calls = []

    def phi(t):
        f, dg = values[len(calls)]
        calls.append(t)
        return f, np.array([t]), dg

    return phi, calls


def test_strong_wolfe_accepts_both_conditions_with_equality():
    from optimizers.lbfgs import strong_wolfe

    # f(1) = f0 + c1·1·φ'(0) and |φ'(1)| = c2 |φ'(0)|: N&W eq. 3.7 holds (≤ in both)
    phi, calls = scripted((-0.25, -0.5))
    assert strong_wolfe(phi, 0.0, -1.0, 1.0, c1=0.25, c2=0.5)[3:] == (1, "wolfe")
    phi, calls = scripted((-0.25, 0.5))
    assert strong_wolfe(phi, 0.0, -1.0, 1.0, c1=0.25, c2=0.5)[3:] == (1, "wolfe")


def test_strong_wolfe_zooms_when_the_second_trial_is_no_lower():
    from optimizers.lbfgs import strong_wolfe

    # Alg. 3.5: φ(α_2) ≥ φ(α_1) brackets a minimizer in [α_1, α_2] even with sufficient decrease
    phi, calls = scripted((-0.5, -1.0), (-0.5, -1.0), (-0.75, 0.0))
    t, f, _, evals, status = strong_wolfe(phi, 0.0, -1.0, 1.0, c1=1e-4, c2=0.5)
    assert calls[1] > calls[0] and calls[0] < calls[2] < calls[1]
    assert (t, f, evals, status) == (calls[2], -0.75, 3, "wolfe")


def test_zoom_stops_once_the_bracket_is_at_most_tol_times_max_1_alpha_lo_wide():
    from optimizers.lbfgs import _zoom

    def bracket(lo, hi, tol):
        phi, calls = scripted(*[(-1.0, -1.0)] * 3)
        result = _zoom(phi, 0.0, -1.0, (lo, -0.5, -1.0, "g_lo"), (hi, 1.0, 1.0, None), 1e-4, 0.9, 3, tol, 0)
        return calls, result

    assert bracket(0.5, 0.75, 0.25) == ([], (0.5, -0.5, "g_lo", 0, "armijo"))  # width 1/4 = 1/4·max(1, 1/2)
    assert bracket(2.0, 3.0, 0.5) == ([], (2.0, -0.5, "g_lo", 0, "armijo"))    # width 1 = 1/2·max(1, 2)
    calls, _ = bracket(0.5, 0.875, 0.25)                                      # 3/8 > 1/4: zoom on
    assert calls and 0.5 < calls[0] < 0.875


def test_zoom_boundaries_follow_algorithm_3_6():
    from optimizers.lbfgs import _zoom

    # the cubic through (0, 0, -1) and (1, 1, 3) has its minimizer at 1/4 (eq. 3.59, all dyadic)
    # sufficient decrease and |φ'| = c2 |φ'(0)|, both with equality: accepted
    phi, calls = scripted((-0.0625, -0.5))
    t, f, g, evals, status = _zoom(phi, 0.0, -1.0, (0.0, 0.0, -1.0, None), (1.0, 1.0, 3.0, None), 0.25, 0.5, 5, 1e-12, 0)
    assert calls == [0.25] and (t, f, g[0], evals, status) == (0.25, -0.0625, 0.25, 1, "wolfe")
    # the same shifted to [1, 2], φ lowered by 1: a trial as low as α_lo (not lower) becomes α_hi, even with φ' = 0;
    # with the budget spent, α_lo = 1 is returned with its own loss and gradient
    phi, calls = scripted((-1.0, 0.0))
    result = _zoom(phi, 0.0, -1.0, (1.0, -1.0, -1.0, "g_lo"), (2.0, 0.0, 3.0, None), 0.25, 0.5, 1, 1e-12, 7)
    assert calls == [1.25] and result == (1.0, -1.0, "g_lo", 8, "armijo")
    # a cubic minimizer beyond α_hi (the parabola (t - 1.5)² - 2.25) is kept 1 % of the interval inside it
    phi, calls = scripted((-1.0, -2.0))
    _zoom(phi, 0.0, -3.0, (0.0, 0.0, -3.0, None), (1.0, -2.0, -1.0, None), 0.9, 0.1, 1, 1e-12, 0)
    assert calls == [1.0 - 0.01 * 1.0]
    # a lower trial whose slope points back to α_lo (φ'(α)(α_hi - α_lo) >= 0): α_lo becomes α_hi, so the
    # next trial lies between the old α_lo and the new one (whatever the sign of φ(α_hi))
    phi, calls = scripted((-1.0, 0.9), (-1.0, 0.0))
    _zoom(phi, 0.0, -1.0, (0.0, 0.0, -1.0, None), (1.0, -0.5, 2.0, None), 1e-4, 0.5, 2, 1e-12, 0)
    assert 0.0 < calls[1] < calls[0] < 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"history_size": 0}, "history_size must be an integer >= 1, got 0"),
    ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
    ({"c1": 1.5}, "c1 must lie in [0, 1), got 1.5"),
    ({"c2": 1.5}, "c2 must lie in [0, 1), got 1.5"),
    ({"c1": 0.0}, "c1, c2: the Wolfe constants need 0 < c1 < c2 < 1, got c1=0.0, c2=0.9"),
    ({"c1": 0.5, "c2": 0.5}, "c1, c2: the Wolfe constants need 0 < c1 < c2 < 1, got c1=0.5, c2=0.5"),
    ({"skip_threshold": 1.0}, "skip_threshold must lie in [0, 1), got 1.0"),
    ({"line_search": "wolfe"}, "line_search must be one of (None, 'strong_wolfe', 'exact'), got 'wolfe'"),
    ({"batch_mode": "mixed"}, "batch_mode must be one of ('fixed', 'same_batch'), got 'mixed'"),
    ({"max_ls": 0}, "max_ls must be an integer >= 1, got 0"),
    ({"tolerance_grad": -1.0}, "tolerance_grad must be a finite number >= 0, got -1.0"),
])
def test_lbfgs_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError) as err:
        LBFGS(**kwargs)
    assert str(err.value) == f"LBFGS: {message}"


def test_lbfgs_defaults_and_init_state():
    opt = LBFGS()
    assert (opt.lr, opt.history_size, opt.max_iter, opt.line_search, opt.c1, opt.c2) == (1.0, 10, 1, None, 1e-4, 0.9)
    assert (opt.skip_threshold, opt.batch_mode, opt.max_ls, opt.tolerance_grad) == (1e-8, "fixed", 25, 0.0)
    assert opt.init(np.zeros(3)) == {
        "optimizer": "LBFGS", "theta_size": 3, "step": 0, "S": [], "Y": [], "inner_iterations": 0,
        "skipped_total": 0, "nan_reverts_total": 0, "resets_total": 0, "shrink": 1.0, "x": None, "f": None, "g": None}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("line_search", [None, "strong_wolfe", "exact"])
def test_lbfgs_info_figures_and_counters(line_search):
    obj = tg.Quadratic(np.diag([1.0, 2.0, 4.0, 5.0, 7.0, 9.0]), np.array([1.0, -1.0, 0.5, 2.0, 0.0, -3.0]))
    opt = LBFGS(lr=0.5 if line_search is None else 1.0, max_iter=3, line_search=line_search)
    theta = np.array([2.0, 1.0, -1.0, 0.5, 1.5, -2.0])
    state = state0 = opt.init(theta)
    for call in (1, 2):
        before = obj.counts["nfev"]
        x, state, info = opt.step(obj, theta, state)
        assert info["nfev"] == obj.counts["nfev"] - before
        assert info["nfev"] == info["line_search_evals"] + (1 if call == 1 else 0)  # call 2 starts from the cache
        assert info["inner_iterations"] == 3 and state["inner_iterations"] == 3 * call and state["step"] == call
        if line_search == "strong_wolfe":
            assert info["line_search_evals"] >= 3 and info["line_search_status"] == "wolfe"
        else:
            assert info["line_search_evals"] == 3 and info["line_search_status"] == ("exact" if line_search else "fixed")
        assert info["lr"] == 0.5 if line_search is None else info["lr"] > 0
        assert info["loss"] == obj.loss(theta) and info["loss_change"] == pytest.approx(obj.loss(x) - obj.loss(theta))
        assert info["step_norm"] == pytest.approx(np.linalg.norm(x - theta), rel=1e-14)
        assert info["skipped"] == info["nan_reverts"] == 0 and info["memory"] == len(state["S"]) == 3 * call
        assert info["curvature"] == pytest.approx(state["S"][-1] @ state["Y"][-1], rel=1e-14)
        np.testing.assert_array_equal(state["x"], x)
        assert state["f"] == obj.loss(x) and np.array_equal(state["g"], obj.grad(x))
        theta = x
    assert state0 == opt.init(theta)  # the caller's state is not changed in place


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_at_a_stationary_point_or_within_tolerance_grad_takes_no_iteration():
    obj = tg.Quadratic(np.diag([1.0, 2.0]), np.array([1.0, 2.0]))  # minimizer (1, 1), g = 0 there exactly
    for opt, theta in [(LBFGS(), np.ones(2)), (LBFGS(tolerance_grad=0.5), np.array([1.5, 1.0]))]:  # ||g||_inf = 0.5
        x, state, info = opt.step(obj, theta, opt.init(theta))
        np.testing.assert_array_equal(x, theta)
        assert (info["lr"], info["line_search_evals"], info["curvature"], info["skipped"], info["nan_reverts"]) == (
            0.0, 0, None, 0, 0)
        assert (info["line_search_status"], info["inner_iterations"], info["step_norm"], info["nfev"]) == (
            None, 0, 0.0, 1)
        assert info["memory"] == 0 and info["loss_change"] == 0.0 and state["inner_iterations"] == 0
    _, _, info = LBFGS(tolerance_grad=0.25).step(obj, np.array([1.5, 1.0]), LBFGS().init(np.ones(2)))
    assert info["inner_iterations"] == 1


class NanBeyond:
    """½||x - (2, 0)||², with a NaN gradient (``part="grad"``, the loss stays
    finite) or a NaN loss and gradient (``part="both"``) wherever x[0] > edge."""

    def __init__(self, edge, part):
        self.inner, self.edge, self.part = tg.Quadratic(np.eye(2), np.array([2.0, 0.0])), edge, part
        self.counts = self.inner.counts

    def loss_and_grad(self, x):
        f, g = self.inner.loss_and_grad(x)
        if x[0] > self.edge:
            return (f if self.part == "grad" else math.nan), g * math.nan
        return f, g


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("part", ["grad", "both"])
def test_lbfgs_halves_the_initial_step_after_each_nan_revert(part):
    """From (1, 0) the steepest-descent trials 1, 1/2, 1/4 land on x[0] = 2, 1.5, 1.25 > 1.2 (a NaN
    gradient, or NaN loss and gradient): each is reverted and halves the next; 1/8 succeeds."""
    obj, opt = NanBeyond(1.2, part), LBFGS()
    theta = np.array([1.0, 0.0])
    state, shrinks = opt.init(theta), []
    for _ in range(4):
        theta, state, info = opt.step(obj, theta, state)
        shrinks.append(state["shrink"])
    assert shrinks == [0.5, 0.25, 0.125, 1.0] and state["nan_reverts_total"] == 3
    assert info["lr"] == 0.125 and info["nan_reverts"] == 0
    np.testing.assert_array_equal(theta, [1.125, 0.0])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_started_at_a_nan_gradient_resets_and_clears_the_cache():
    obj, opt = NanBeyond(1.5, "grad"), LBFGS()
    good = np.array([0.5, 0.5])
    _, state, _ = opt.step(obj, good, opt.init(good))
    assert len(state["S"]) == 1 and state["x"] is not None
    bad = np.array([3.0, 0.0])  # finite loss, NaN gradient
    for call in (1, 2):
        x, state, info = opt.step(obj, bad, state)
        np.testing.assert_array_equal(x, bad)
        assert info["nan_reverts"] == 1 and state["nan_reverts_total"] == call and state["resets_total"] == 1
        assert state["S"] == state["Y"] == [] and info["memory"] == 0 and math.isnan(info["loss_change"])
        assert state["x"] is None and state["f"] is None and state["g"] is None


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_fixed_mode_recomputes_at_a_theta_other_than_the_cached_one():
    obj, opt = tg.Quadratic(np.diag([1.0, 3.0]), np.ones(2)), LBFGS()
    theta = np.array([2.0, -1.0])
    _, state, _ = opt.step(obj, theta, opt.init(theta))
    f_theta, before = obj.loss(theta), obj.counts["nfev"]
    _, _, info = opt.step(obj, theta, state)  # the cache holds the returned point, not theta
    assert info["loss"] == f_theta and info["nfev"] == 2 and obj.counts["nfev"] - before == 2


class LyingSlope:
    """f(x) = Σx, but the gradient is reported as -1: every direction it calls descent goes uphill."""

    def __init__(self):
        self.counts = {"nfev": 0}

    def loss_and_grad(self, x):
        self.counts["nfev"] += 1
        return float(x.sum()), -np.ones_like(x)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_line_search_failure_keeps_theta_and_resets_the_memory():
    opt = LBFGS(line_search="strong_wolfe", max_iter=3, max_ls=6)
    theta = np.array([0.5, -0.25])
    _, state, _ = opt.step(tg.Quadratic(np.diag([1.0, 2.0])), theta, opt.init(theta))
    assert len(state["S"]) == 3
    x, state, info = opt.step(LyingSlope(), theta, state)
    np.testing.assert_array_equal(x, theta)
    assert info["line_search_status"] == "failed" and info["line_search_evals"] == 6 and info["nfev"] == 7
    assert info["inner_iterations"] == 0 and info["lr"] == 0.0 and info["loss_change"] == 0.0
    assert state["S"] == [] and info["memory"] == 0 and state["resets_total"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_restarts_from_steepest_descent_when_the_memory_gives_no_descent():
    """A memory with sᵀy < 0 (as a state from another objective may hold) makes
    -H g an ascent direction here (gᵀH g = 0.35): it is dropped, d = -g, and
    the first step t = min(1, 1/||g||_1) = 1 reaches the minimizer."""
    from optimizers.lbfgs import two_loop

    obj, theta = tg.Quadratic(np.eye(2)), np.array([0.5, 0.0])
    state = dict(LBFGS().init(theta), S=[np.array([1.0, 1.0])], Y=[np.array([1.0, -3.0])])
    assert theta @ two_loop(theta, state["S"], state["Y"]) == pytest.approx(-0.35)
    for line_search in (None, "strong_wolfe"):
        x, new, info = LBFGS(line_search=line_search).step(obj, theta, state)
        np.testing.assert_array_equal(x, [0.0, 0.0])
        assert new["resets_total"] == 1 and info["memory"] == 1 and info["line_search_evals"] == 1
        np.testing.assert_array_equal(new["S"][0], [-0.5, 0.0])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_restarts_when_the_slope_along_d_is_exactly_zero():
    """g = 1e-170·(1, 1): gᵀd underflows to -0.0, which is not < 0, so d is no descent direction: the
    (valid) memory is dropped."""
    obj, theta = tg.Quadratic(np.eye(2), np.full(2, -1e-170)), np.zeros(2)
    state = dict(LBFGS().init(theta), S=[np.array([1.0, 0.5])], Y=[np.array([2.0, 0.5])])
    _, new, _ = LBFGS().step(obj, theta, state)
    assert new["resets_total"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_first_step_is_lr_times_min_1_and_inverse_l1_norm_of_g():
    obj = tg.Quadratic(np.eye(2))  # g = θ
    for theta, t in [(np.array([3.0, -1.0]), 0.125), (np.array([0.125, 0.125]), 0.5)]:
        x, _, info = LBFGS(lr=0.5).step(obj, theta, LBFGS().init(theta))
        assert info["lr"] == t
        np.testing.assert_array_equal(x, theta - t * theta)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_exact_line_search_without_positive_curvature_keeps_the_initial_step():
    # dᵀH d = 0 (f = ½x₁² - x₀ along d = e₀) and dᵀH d < 0 (f = ½(-x₀² + x₁²)): t stays min(1, 1/||g||_1) = 1
    for obj, theta, expected in [(tg.Quadratic(np.diag([0.0, 1.0]), np.array([1.0, 0.0])), np.zeros(2), [1.0, 0.0]),
                                 (tg.Quadratic(np.diag([-1.0, 1.0])), np.array([0.5, 0.0]), [1.0, 0.0])]:
        x, _, info = LBFGS(line_search="exact").step(obj, theta, LBFGS().init(theta))
        assert info["lr"] == 1.0 and info["line_search_status"] == "exact"
        np.testing.assert_array_equal(x, expected)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_lbfgs_skips_a_pair_with_zero_curvature_even_at_threshold_zero():
    # f = ½x₁² - x₀ from 0: steps along e₀, where y = 0, so sᵀy = 0 is not > 0·||s||·||y||
    obj = tg.Quadratic(np.diag([0.0, 1.0]), np.array([1.0, 0.0]))
    x, state, info = LBFGS(skip_threshold=0.0, max_iter=3).step(obj, np.zeros(2), LBFGS().init(np.zeros(2)))
    assert info["skipped"] == 3 and state["skipped_total"] == 3 and info["memory"] == 0
    np.testing.assert_array_equal(x, [3.0, 0.0])


@pytest.mark.usefixtures("float64")
def test_lbfgs_passes_c2_and_max_ls_to_the_line_search():
    obj = tg.Rosenbrock(2)
    for max_ls in (2, 25):
        opt = LBFGS(line_search="strong_wolfe", c2=0.1, max_ls=max_ls)
        theta, state, evals = obj.x0, opt.init(obj.x0), []
        for _ in range(8):
            new, state, info = opt.step(obj, theta, state)
            evals.append(info["line_search_evals"])
            if info["line_search_status"] == "wolfe":  # the strong curvature condition with c2 = 0.1
                s = new - theta
                assert abs(obj.grad(new) @ s) <= 0.1 * abs(obj.grad(theta) @ s) + 1e-15
            theta = new
        assert max(evals) <= 2 if max_ls == 2 else max(evals) > 2


# ---------------------------------------------------------------- AdaHessian (third pass)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"betas": (1.0, 0.9)}, "betas (beta1, beta2)[0] must lie in [0, 1), got 1.0"),
    ({"eps": -1.0}, "eps must be a finite number >= 0, got -1.0"),
    ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0, got -1.0"),
    ({"hessian_power": 1.5}, "hessian_power must lie in [0, 1], got 1.5"),
    ({"update_each": 0}, "update_each must be an integer >= 1, got 0"),
    ({"spatial_average": 1}, "spatial_average must be True or False, got 1 (int)"),
    ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": 2**31}, "seed must be < 2**31, got 2147483648"),
])
def test_adahessian_refuses_bad_settings_by_name(kwargs, message):
    from optimizers.adahessian import AdaHessian

    with pytest.raises(ValueError) as err:
        AdaHessian(**kwargs)
    assert str(err.value) == f"AdaHessian: {message}"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_defaults_allowed_limits_and_init_state():
    from optimizers.adahessian import AdaHessian

    opt = AdaHessian()
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.hessian_power) == (0.15, (0.9, 0.999), 1e-4, 0.0, 1.0)
    assert (opt.update_each, opt.spatial_average, opt.block_size, opt.seed) == (1, True, None, 0)
    opt = AdaHessian(block_size=1, seed=2**31 - 1)
    assert (opt.block_size, opt.seed) == (1, 2**31 - 1)
    theta = np.arange(3, dtype=np.float32)
    state = opt.init(theta)
    for key in ("m", "v", "D"):
        assert state[key].shape == (3,) and state[key].dtype == np.float32 and not state[key].any()
    assert (state["seed"], state["draws"], state["nhvp"], state["step"]) == (2**31 - 1, 0, 0, 0)
    D = np.array([1.0, 2.0])
    assert AdaHessian().average(D, None) is D  # no layout: nothing to average


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_adahessian_first_step_with_eps_and_weight_decay_is_the_closed_form(power):
    """On a diagonal quadratic D = |a| exactly, and after one step m̂ = g and
    √v̂ = |a|, so θ₁ = θ₀ - lr (g / (|a|ᵏ + ε) + wd θ₀)."""
    from optimizers.adahessian import AdaHessian

    a = np.array([0.5, -2.0, 9.0])
    obj = tg.Quadratic(np.diag(a), np.array([1.0, -2.0, 3.0]))
    theta = np.array([5.0, -3.0, 2.0])
    g = a * theta - np.array([1.0, -2.0, 3.0])
    opt = AdaHessian(lr=0.3, eps=0.5, weight_decay=0.1, hessian_power=power, update_each=2)
    x1, state, info = opt.step(obj, theta, opt.init(theta))
    expected = theta - 0.3 * (g / (np.abs(a) ** power + 0.5) + 0.1 * theta)
    np.testing.assert_allclose(x1, expected, rtol=1e-13)
    assert info["lr"] == 0.3 and info["nhvp"] == 1 and info["hessian_refreshed"] is True
    assert info["hessian_diag_mean"] == pytest.approx(np.abs(a).mean(), rel=1e-15)
    assert info["step_norm"] == pytest.approx(np.linalg.norm(expected - theta), rel=1e-13)
    _, state, info = opt.step(obj, x1, state)  # update_each = 2: no HVP on step 2
    assert info["nhvp"] == 0 and info["hessian_refreshed"] is False and state["nhvp"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_keeps_float32_and_block_averaging_warns_of_nothing():
    import warnings

    from optimizers.adahessian import AdaHessian

    with backend.precision("float32"):
        obj = tg.Quadratic(np.diag([1.0, 2.0, 3.0, 4.0]).astype(np.float32), np.ones(4, np.float32))
        theta = np.ones(4, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # 4 entries in blocks of 2: no empty last block to average
            x1, state, _ = AdaHessian(block_size=2).step(obj, theta, AdaHessian().init(theta))
    assert x1.dtype == state["m"].dtype == state["v"].dtype == state["D"].dtype == np.float32


# ---------------------------------------------------------------- SGD-PH (third pass)


def tanh_mlp(sizes, with_bias=True, n=40, seed=1):
    """A tanh MLP with softmax cross-entropy on random data; (objective, θ₀).
    With biases its 1-D tensors are b1, b2, ... in layout order."""
    spec = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        spec += [(f"W{i}", (a, b), "weight")] + ([(f"b{i}", (b,), "bias")] if with_bias else [])
    layout, depth = tg.Layout(spec), len(sizes) - 1

    def model(theta, X):
        p, h = layout.unflatten(theta), X
        for i in range(1, depth + 1):
            h = h @ p[f"W{i}"] + p[f"b{i}"] if with_bias else h @ p[f"W{i}"]
            h = h.tanh() if i < depth else h
        return h

    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], size=n)
    theta = layout.flatten({p.name: rng.normal(size=p.shape) / np.sqrt(p.shape[0]) if p.ndim == 2
                            else 0.1 * rng.normal(size=p.shape) for p in layout})
    return tg.Objective(model, "cross_entropy", X, y, layout), theta


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"momentum": 1.0}, "momentum must lie in [0, 1), got 1.0"),
    ({"hessian_momentum": 1.0}, "hessian_momentum must lie in [0, 1), got 1.0"),
    ({"eps": 0}, "eps must be a finite number > 0, got 0"),
    ({"second_order_lr": 0}, "second_order_lr must be a finite number > 0, got 0"),
    ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0, got -1.0"),
    ({"diag": "x"}, "diag must be one of ('row_sums', 'exact'), got 'x'"),
    ({"schedule": "x"}, "schedule must be one of ('round_robin', 'all'), got 'x'"),
    ({"bias_correction": 1}, "bias_correction must be True or False, got 1 (int)"),
    ({"official_last_1d_sgd": None}, "official_last_1d_sgd must be True or False, got None (NoneType)"),
])
def test_sgdph_refuses_bad_settings_by_name(kwargs, message):
    from optimizers.sgdph import SGDPH

    with pytest.raises(ValueError) as err:
        SGDPH(**kwargs)
    assert str(err.value) == f"SGDPH: {message}"


def test_sgdph_defaults():
    from optimizers.sgdph import SGDPH

    opt = SGDPH()
    assert (opt.lr, opt.momentum, opt.hessian_momentum, opt.eps, opt.second_order_lr) == (0.1, 0.9, 0.9, 1e-4, 1e-3)
    assert (opt.weight_decay, opt.diag, opt.schedule) == (0.0, "row_sums", "round_robin")
    assert opt.bias_correction is True and opt.official_last_1d_sgd is True


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sgdph_refuses_a_state_from_another_layout():
    from optimizers.sgdph import SGDPH

    obj, theta = tanh_mlp((5, 4, 4, 3))
    state = dict(SGDPH().init(theta), visits=[1, 0])
    with pytest.raises(ValueError) as err:
        SGDPH().step(obj, theta, state)
    assert str(err.value) == "SGDPH.step: the state has 2 1-D tensors, the layout 3"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sgdph_schedule_all_two_steps_follow_the_update_rule():
    """Every 1-D tensor every step, c_t = 1 - μ_hᵗ, all of them second-order
    (``official_last_1d_sgd=False``); the weights take SGD-momentum."""
    from optimizers.sgdph import SGDPH

    obj, theta = tanh_mlp((5, 4, 4, 3))
    lr, mu, mu_h, eps, tau, wd = 0.1, 0.9, 0.8, 1e-3, 1e-2, 0.01
    opt = SGDPH(lr=lr, momentum=mu, hessian_momentum=mu_h, eps=eps, second_order_lr=tau, weight_decay=wd,
                schedule="all", official_last_1d_sgd=False)
    names, L = ["b1", "b2", "b3"], obj.layout
    x, state = theta, opt.init(theta)
    buf, diag = np.zeros_like(theta), np.zeros_like(theta)
    for t in (1, 2):
        g = obj.grad(x)
        h = {k: np.abs(obj.block_row_sums(x, k)) for k in names}
        d = g + wd * x
        for k in names:
            d[L[k].slice] = g[L[k].slice]
        buf = mu * buf + d
        expected = x - lr * buf
        for k in names:
            s = L[k].slice
            diag[s] = mu_h * diag[s] + (1 - mu_h) * h[k]
            expected[s] = x[s] - lr * (tau * (1 - mu_h**t) * buf[s] / (diag[s] + eps) + wd * x[s])
        new, state, info = opt.step(obj, x, state)
        np.testing.assert_allclose(new, expected, rtol=1e-12, atol=1e-15)
        assert info["lr"] == lr and info["nhvp"] == 3 and info["hessian_groups"] == names
        assert info["hessian_diag_mean"] == pytest.approx(np.mean([h[k].mean() for k in names]), rel=1e-12)
        one_d = np.concatenate([diag[L[k].slice] for k in names])
        assert info["hessian_momentum_mean"] == pytest.approx(one_d.mean(), rel=1e-12)
        assert info["step_norm"] == pytest.approx(np.linalg.norm(expected - x), rel=1e-12)
        assert state["nhvp"] == 3 * t and state["cursor"] == 0 and state["visits"] == [t] * 3
        x = new


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sgdph_round_robin_quirk_hands_only_the_last_1d_tensor_to_sgd():
    """Three 1-D tensors, the official quirk, no bias correction (c = 1): step 1
    visits b1; b1 and b2 take the second-order step (b2 with d = 0), b3 SGD."""
    from optimizers.sgdph import SGDPH

    obj, theta = tanh_mlp((5, 4, 4, 3))
    lr, mu_h, eps, tau = 0.1, 0.8, 1e-3, 1e-2
    opt = SGDPH(lr=lr, hessian_momentum=mu_h, eps=eps, second_order_lr=tau, bias_correction=False)
    new, state, info = opt.step(obj, theta, opt.init(theta))
    g, L = obj.grad(theta), obj.layout
    expected = theta - lr * g
    s = L["b1"].slice
    expected[s] = theta[s] - lr * tau * g[s] / ((1 - mu_h) * np.abs(obj.block_row_sums(theta, "b1")) + eps)
    s = L["b2"].slice
    expected[s] = theta[s] - lr * tau * g[s] / eps
    np.testing.assert_allclose(new, expected, rtol=1e-12, atol=1e-15)
    assert info["nhvp"] == 1 and state["nhvp"] == 1 and state["cursor"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sgdph_without_1d_tensors_reports_zero_curvature_means():
    from optimizers.sgdph import SGDPH

    obj, theta = tanh_mlp((5, 4, 3), with_bias=False)
    _, state, info = SGDPH().step(obj, theta, SGDPH().init(theta))
    assert info["hessian_diag_mean"] == 0.0 and info["hessian_momentum_mean"] == 0.0
    assert info["hessian_groups"] == [] and info["nhvp"] == 0 and state["nhvp"] == 0


# ---------------------------------------------------------------- SGD, Adam (third pass)


@pytest.mark.parametrize("make, message", [
    (lambda: SGD(lr=-1.0), "SGD: lr must be a finite number >= 0, got -1.0"),
    (lambda: SGD(0.1, momentum=1.0), "SGD: momentum must lie in [0, 1), got 1.0"),
    (lambda: SGD(0.1, nesterov=1), "SGD: nesterov must be True or False, got 1 (int)"),
    (lambda: SGD(0.1, weight_decay=-1.0),
     "SGD: weight_decay must be a finite number >= 0, got -1.0"),
    (lambda: SGD(0.1, dampening=1.5), "SGD: dampening must lie in [0, 1], got 1.5"),
    (lambda: Adam(lr=-1.0), "Adam: lr must be a finite number >= 0, got -1.0"),
    (lambda: Adam(eps=-1.0), "Adam: eps must be a finite number >= 0, got -1.0"),
    (lambda: Adam(weight_decay=-1.0),
     "Adam: weight_decay must be a finite number >= 0, got -1.0"),
    (lambda: Adam(decoupled=1), "Adam: decoupled must be True or False, got 1 (int)"),
])
def test_sgd_and_adam_refuse_bad_settings_by_name(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sgd_and_adam_allow_their_limits_and_report_lr_and_step_norm():
    # lr = 0 (a frozen run), dampening = 1 (PyTorch allows both), eps = 0
    assert SGD(0.0, momentum=0.5, dampening=1.0).dampening == 1.0 and Adam(lr=0.0, eps=0.0).eps == 0.0
    assert (Adam().lr, Adam().betas, Adam().eps, Adam().weight_decay, Adam().decoupled) == (
        1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert (AdamW().lr, AdamW().weight_decay, AdamW().decoupled) == (1e-3, 1e-2, True)
    obj, theta = tg.Quadratic(np.diag([1.0, 4.0]), np.ones(2)), np.array([2.0, -1.0])
    state = Adam().init(theta)
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (2,) and not state["exp_avg"].any()
    for opt in (SGD(0.25, momentum=0.5), Adam(lr=0.25)):
        x, _, info = opt.step(obj, theta, opt.init(theta))
        assert info["lr"] == 0.25 and info["step_norm"] == pytest.approx(np.linalg.norm(x - theta), rel=1e-15)
        x, _, info = type(opt)(lr=0.0).step(obj, theta, opt.init(theta))
        np.testing.assert_array_equal(x, theta)
        assert info["step_norm"] == 0.0


# ---------------------------------------------------------------- SGD-BB (third pass)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0, "beta": 0.5}, "lr must be a finite number > 0, got 0"),
    ({"lr": 0.1, "steps_per_epoch": 0}, "steps_per_epoch must be an integer >= 1, got 0"),
    ({"lr": 0.1}, "beta: give beta explicitly when steps_per_epoch is None (its default is 10/m)"),
    ({"lr": 0.1, "beta": 0}, "beta must lie in (0, 1], got 0"),
    ({"lr": 0.1, "beta": "a"}, "beta must be a real number, got 'a' (str)"),
    ({"lr": 0.1, "beta": 0.5, "tau_min": -1.0}, "tau_min must be a finite number >= 0, got -1.0"),
    ({"lr": 0.1, "beta": 0.5, "tau_max": 0}, "tau_max must be a finite number > 0, got 0"),
    ({"lr": 0.1, "beta": 0.5, "tau_min": 2.0, "tau_max": 1.0}, "tau_min must be <= tau_max, got tau_min=2.0, tau_max=1.0"),
    ({"lr": 0.1, "beta": 0.5, "tau0": 0}, "tau0 must be a finite number > 0, got 0"),
    ({"lr": 0.1, "beta": 0.5, "smoothing": 1}, "smoothing must be True or False, got 1 (int)"),
    ({"lr": 0.1, "beta": 0.5, "curvature_eps": -1.0}, "curvature_eps must be a finite number >= 0, got -1.0"),
])
def test_bb_refuses_bad_settings_by_name(kwargs, message):
    from optimizers import BB

    with pytest.raises(ValueError) as err:
        BB(**kwargs)
    assert str(err.value) == f"BB: {message}"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bb_defaults_limits_and_init_state():
    from optimizers import BB
    from optimizers.bb import bb_step_size

    assert BB(0.1, steps_per_epoch=20).beta == 0.5 and BB(0.1, steps_per_epoch=5).beta == 1.0  # 10/m, capped at 1
    opt = BB(0.1, beta=1.0, tau_min=0.0, tau_max=0.0 + 2.0, curvature_eps=0.0)
    assert (opt.tau_min, opt.tau_max, opt.tau0, opt.curvature_eps, opt.smoothing) == (0.0, 2.0, 0.1, 0.0, False)
    assert BB(0.1, beta=0.5, tau_min=1.0, tau_max=1.0).tau_max == 1.0 and BB(0.1, beta=0.5, smoothing=True).smoothing
    assert BB(0.1, beta=0.5).curvature_eps == 1e-12
    state = BB(0.25, beta=0.5).init(np.ones(3))
    assert state["g_hat"].shape == (3,) and not state["g_hat"].any()
    del state["g_hat"]
    assert state == {"optimizer": "BB", "theta_size": 3, "step": 0, "epoch": 0, "inner": 0, "lr": 0.25,
                     "x_prev": None, "g_hat_prev": None, "smooth_c": 1.0, "bb_skipped": 0, "bb_fallbacks": 0,
                     "epoch_info": {}}
    s, y = np.array([3.0, 4.0]), np.array([1.0, 0.5])
    assert bb_step_size(s, y) == 25.0 / 5.0 and bb_step_size(s, np.array([4.0, -3.0])) == math.inf


class ScriptedGradients:
    """loss 0 and the given gradients, one per call, in turn."""

    def __init__(self, *gradients):
        self.gradients, self.calls = [np.asarray(g, float) for g in gradients], 0

    def loss_and_grad(self, theta):
        g = self.gradients[self.calls % len(self.gradients)]
        self.calls += 1
        return 0.0, g


def bb_epochs(opt, obj, epochs, theta=None):
    theta = np.zeros(2) if theta is None else theta
    state, infos = opt.init(theta), []
    for _ in range(epochs):
        theta, state, info = opt.step(obj, theta, state)
        infos.append(info)
    return theta, state, infos


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_bb_step_info_and_epoch_figures():
    """lr 1, one step per epoch, β = 1 (ĝ = the last g): at k = 2, s = -g₁ = (-2, 0), y = g₁ - g₀ = (2, 0),
    sᵀy = -4, so η₂ = ||s||² / |sᵀy| = 1."""
    from optimizers import BB

    obj = ScriptedGradients([0.0, 0.0], [2.0, 0.0], [1.0, 0.0])
    _, state, infos = bb_epochs(BB(1.0, steps_per_epoch=1, beta=1.0), obj, 3)
    assert state["epoch_info"] == {"epoch": 3, "m": 1, "s_dot_y": 1.0, "bb": 1.0}  # s = (-1, 0), y = (-1, 0)
    assert [i["curvature"] for i in infos] == [None, None, -4.0] and [i["lr"] for i in infos] == [1.0, 1.0, 1.0]
    assert [i["step_norm"] for i in infos] == [0.0, 2.0, 1.0] and [i["inner"] for i in infos] == [1, 1, 1]
    assert [i["epoch"] for i in infos] == [0, 1, 2]
    assert all(i["bb_skipped"] == 0 and i["bb_fallbacks"] == 0 for i in infos)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("bound, expected_lr, fallbacks", [
    ({"tau_min": 3.0}, 1.0, 0),    # η₂ = 1 = τ_min/(k+1): kept
    ({"tau_max": 3.0}, 1.0, 0),    # η₂ = 1 = τ_max/(k+1): kept
    ({"tau_min": 3.5}, 0.5, 1),    # τ_min/(k+1) = 7/6 > 1: τ₀/(k+1) = 1.5/3
    ({"tau_max": 2.5}, 0.5, 1),    # τ_max/(k+1) = 5/6 < 1
])
def test_bb_bounds_are_tau_over_k_plus_1_and_closed(bound, expected_lr, fallbacks):
    from optimizers import BB

    obj = ScriptedGradients([0.0, 0.0], [2.0, 0.0])
    _, state, _ = bb_epochs(BB(1.0, steps_per_epoch=1, beta=1.0, tau0=1.5, **bound), obj, 2)
    assert state["lr"] == expected_lr and state["bb_fallbacks"] == fallbacks
    assert state["epoch_info"].get("fallback", False) == bool(fallbacks) and state["epoch_info"]["bb"] == 1.0
    opt, theta = BB(1.0, steps_per_epoch=1, beta=1.0, tau_max=0.3), np.zeros(2)
    state, flagged = opt.init(theta), 0
    for _ in range(6):
        theta, state, _ = opt.step(obj, theta, state)
        flagged += state["epoch_info"].get("fallback", False)
    assert flagged >= 2 and state["bb_fallbacks"] == flagged  # counted once per epoch that falls back


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_bb_curvature_guard_is_relative_to_s_and_y_norms():
    """s = (-2, 0), y = (-δ, -10): sᵀy = 2δ = 1e-3 against ε ||s|| ||y|| = 1e-4·2·10.0 = 2e-3: skipped.
    A linear objective (y = 0, sᵀy = 0) is skipped even with curvature_eps = 0."""
    from optimizers import BB

    delta = 5e-4
    obj = ScriptedGradients([2.0 + delta, 10.0], [2.0, 0.0])
    _, state, _ = bb_epochs(BB(1.0, steps_per_epoch=1, beta=1.0, curvature_eps=1e-4), obj, 2)
    assert state["bb_skipped"] == 1 and state["epoch_info"]["skipped"] is True and state["lr"] == 1.0
    assert state["epoch_info"]["s_dot_y"] == pytest.approx(1e-3, rel=1e-9) and "bb" not in state["epoch_info"]
    _, state, _ = bb_epochs(BB(1.0, steps_per_epoch=1, beta=1.0, curvature_eps=1e-5), obj, 2)
    assert state["bb_skipped"] == 0 and state["lr"] == pytest.approx(4.0 / 1e-3, rel=1e-9)
    _, state, _ = bb_epochs(BB(1.0, steps_per_epoch=1, beta=1.0, curvature_eps=0.0), ScriptedGradients([1.0, 1.0]), 3)
    assert state["bb_skipped"] == 2 and state["lr"] == 1.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_bb_end_epoch_after_no_steps_and_after_one_step():
    from optimizers import BB

    obj = ScriptedGradients([0.0, 0.0], [2.0, 0.0])
    opt = BB(1.0, beta=1.0)  # epochs closed by end_epoch
    theta, state = np.zeros(2), opt.init(np.zeros(2))
    theta, state, _ = opt.step(obj, theta, state)
    state = opt.end_epoch(theta, state)
    state = opt.end_epoch(theta, state)  # an epoch of m = 0 steps: no update, nothing skipped
    assert state["epoch_info"] == {"epoch": 2, "m": 0} and state["bb_skipped"] == 0 and state["lr"] == 1.0
    theta, state, _ = opt.step(obj, theta, state)
    state = opt.end_epoch(theta, state)  # m = 1: s = (-2, 0), y = (2, 0)
    assert state["epoch_info"] == {"epoch": 3, "m": 1, "s_dot_y": -4.0, "bb": 1.0}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_bb_smoothing_is_the_geometric_mean_recurrence():
    """c_k = c_{k-1}^((k-2)/(k-1)) (η_k k)^(1/(k-1)), c_1 = 1, η_k <- c_k / k, from the raw BB values."""
    from optimizers import BB

    obj = tg.Quadratic(np.diag([0.5, 2.0, 5.0]), np.array([1.0, -1.0, 2.0]))
    opt = BB(0.1, steps_per_epoch=3, smoothing=True)
    theta, state, c = np.array([2.0, -1.0, 1.0]), opt.init(np.zeros(3)), 1.0
    updates = 0
    for _ in range(3 * 6):
        theta, state, _ = opt.step(obj, theta, state)
        info = state["epoch_info"]
        if state["inner"] == 0 and "bb" in info:
            k = info["epoch"]
            c = c ** ((k - 2) / (k - 1)) * (info["bb"] * k) ** (1 / (k - 1))
            assert state["smooth_c"] == pytest.approx(c, rel=1e-12) and state["lr"] == pytest.approx(c / k, rel=1e-12)
            updates += 1
    assert updates == 5 and state["epoch"] == 6


# ---------------------------------------------------------------- Hybrid (third pass)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": -1.0}, "threshold must be a number >= 0 (inf allowed), got -1.0"),
    ({"threshold": "a"}, "threshold must be a real number, got 'a' (str)"),
    ({"sgd_lr": 0}, "sgd_lr must be a finite number > 0, got 0"),
    ({"sgd_momentum": 1.0}, "sgd_momentum must lie in [0, 1), got 1.0"),
    ({"ada_lr": 0}, "ada_lr must be a finite number > 0, got 0"),
    ({"lr": 0.1}, "give AdaHessian's learning rate as ada_lr, not lr"),
])
def test_hybrid_refuses_bad_settings_by_name(kwargs, message):
    from optimizers.hybrid import Hybrid

    with pytest.raises(ValueError) as err:
        Hybrid(**kwargs)
    assert str(err.value) == f"Hybrid: {message}"


def test_hybrid_defaults_limits_and_init_state():
    from optimizers.hybrid import Hybrid

    opt = Hybrid()
    assert (opt.threshold, opt.sgd_lr, opt.sgd_momentum, opt.ada_lr, opt.ada_kwargs) == (1.0, 0.005, 0.9, 0.001, {})
    assert Hybrid(seed=3, eps=0.0).ada_kwargs == {"seed": 3, "eps": 0.0}
    assert Hybrid(threshold=0.0).threshold == 0.0 and Hybrid(threshold=0.5).threshold == 0.5
    state = opt.init(np.zeros(2))
    assert state["ada"] is None and state["phase"] == "sgd" and state["sgd"] == SGD(0.1).init(np.zeros(2))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_hybrid_switches_only_below_the_threshold_and_reports_it():
    from optimizers.hybrid import Hybrid

    obj, theta = tg.Quadratic(np.diag([1.0, 2.0]), np.ones(2)), np.array([1.0, -1.0])
    opt = Hybrid(threshold=0.5, sgd_lr=0.1, ada_lr=0.1)
    theta, state, info = opt.step(obj, theta, opt.init(theta))
    assert info["nhvp"] == 0 and info["phase"] == "sgd" and info["switch_epoch"] is None
    state = opt.end_epoch(theta, state, {"val_loss": 0.5})  # equal: not below
    assert state["phase"] == "sgd"
    state = opt.end_epoch(theta, state, {"val_loss": 0.25})
    assert state["phase"] == "adahessian" and state["sgd"] is None and state["switch_epoch"] == 2
    theta, state, info = opt.step(obj, theta, state)
    assert info["nhvp"] == 1 and (info["switch_step"], info["switch_epoch"]) == (1, 2)


# ---------------------------------------------------------------- state.py, GaussNewton (third pass)


def memory_h5(name="state.h5"):
    import h5py

    return h5py.File(name, "w", driver="core", backing_store=False)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_state_round_trip_keeps_tuples_lists_and_non_finite_floats():
    from optimizers.state import load_state, save_state

    state = {"t": (1, 2.5, None, "s"), "l": [True, (0.1,)], "x": np.arange(3.0), "f": [math.nan, math.inf, -math.inf]}
    with memory_h5() as f:
        save_state(f, state)
        back = load_state(f)
    assert type(back["t"]) is tuple and back["t"] == (1, 2.5, None, "s")
    assert type(back["l"]) is list and type(back["l"][1]) is tuple and back["l"] == [True, (0.1,)]
    assert math.isnan(back["f"][0]) and back["f"][1:] == [math.inf, -math.inf]
    np.testing.assert_array_equal(back["x"], np.arange(3.0))


class ShapeOnly:
    shape = (2,)


@pytest.mark.parametrize("state, error, message", [
    ([1, 2], TypeError, "save_state: state must be a dict, got list"),
    ({1: 2}, ValueError, "save_state: keys must be strings without '/', got 1"),
    ({"a/b": 2}, ValueError, "save_state: keys must be strings without '/', got 'a/b'"),
    ({"s": {1, 2}}, TypeError, "save_state: value at '/s' has unsupported type set"),
    ({"s": ShapeOnly()}, TypeError, "save_state: value at '/s' has unsupported type ShapeOnly"),
    ({"a": [0, {"s": {1}}]}, TypeError, "save_state: value at '/a/1/s' has unsupported type set"),
    ({"aX": {"s": {1}}}, TypeError, "save_state: value at '/aX/s' has unsupported type set"),
])
def test_save_state_refuses_what_it_cannot_write_back(state, error, message):
    from optimizers.state import save_state

    with memory_h5() as f, pytest.raises(error) as err:
        save_state(f, state)
    assert str(err.value) == message


def test_load_state_refuses_a_group_it_did_not_write():
    from optimizers.state import load_state

    with memory_h5() as f, pytest.raises(ValueError) as err:
        f.create_group("other")
        load_state(f["other"])
    assert str(err.value) == "load_state: group '/other' was not written by save_state"


@pytest.mark.parametrize("a, b, equal", [
    ({"x": 1}, {"x": 1, "y": 2}, False),
    ([1, 2], [1, 2, 3], False),
    ([1], (1,), False),
    (np.zeros(2, np.int64), np.zeros(2, np.float64), False),   # the same bytes, another dtype
    (np.zeros(4), np.zeros((2, 2)), False),                    # the same bytes, another shape
    (np.zeros(2), [0.0, 0.0], False),
    (math.nan, math.nan, True),
    (1.0, math.nan, False),
    (math.nan, 1.0, False),
    (1.0, 2.0, False),
    (1, 1.0, False),
    (True, 1, False),
    ({"a": [np.ones(2), (math.nan, None)]}, {"a": [np.ones(2), (math.nan, None)]}, True),
])
def test_states_equal_is_exact(a, b, equal):
    from optimizers.state import states_equal

    assert states_equal(a, b) is equal


def test_gauss_newton_passes_lr_on():
    from optimizers import GaussNewton

    opt = GaussNewton(lr=0.5, damping=2.0)
    assert (opt.lr, opt.damping, opt.curvature) == (0.5, 2.0, "ggn")


# ---------------------------------------------------------------- base.py: minimize, results, checks (third pass)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_minimize_status_message_and_counts_for_each_stop():
    obj = tg.Quadratic(np.eye(2))  # f = ½||x||²: SGD with lr 1 lands on 0 in one step
    obj.loss(np.ones(2))  # counts before minimize are not charged to it
    r = SGD(1.0).minimize(obj, np.array([1.0, 2.0]), gtol=0.0, maxiter=10)
    assert (r.status, r.message, r.success, r.nit) == (0, "gradient norm below gtol", True, 2)  # ||g||_inf = 0 <= 0
    assert (r.nfev, r.njev, r.nhvp, r.fun, len(r.history), r.state["step"]) == (3, 3, 0, 0.0, 2, 2)
    np.testing.assert_array_equal(r.jac, [0.0, 0.0])
    assert 0 <= r.time < 60
    assert repr(r) == ("OptimizeResult(message='gradient norm below gtol', success=True, status=0, fun=0.0, nit=2, "
                       "nfev=3, njev=3, nhvp=0)")
    # maxiter reached, but the final gradient is below gtol: a success
    r = SGD(1.0).minimize(obj, np.array([1.0, 2.0]), gtol=0.0, maxiter=1)
    assert (r.status, r.message, r.nit) == (0, "gradient norm below gtol", 1)
    r = SGD(0.5).minimize(obj, np.array([1.0, 2.0]), maxiter=3)
    assert (r.status, r.message, r.success, r.nit, len(r.history)) == (1, "maximum number of iterations reached",
                                                                       False, 3, 3)
    r = SGD(1e-3).minimize(obj, np.array([1.0, 0.5]))  # defaults: maxiter 100, gtol 1e-8
    assert (r.status, r.nit) == (1, 100)
    seen = []
    r = SGD(0.5).minimize(obj, np.array([1.0, 2.0]), callback=lambda x, info: seen.append((x, info)) or len(seen) == 2)
    assert (r.status, r.message, r.nit) == (2, "stopped by the callback", 2)
    np.testing.assert_array_equal(seen[-1][0], r.x)
    assert seen[-1][1] is r.history[-1]
    with pytest.warns(RuntimeWarning):
        r = SGD(1e308).minimize(obj, np.array([1e10, 0.0]))
    assert (r.status, r.message, r.nit) == (3, "non-finite parameters after iteration 1", 1)
    np.testing.assert_array_equal(r.x, [1e10, 0.0])
    from optimizers.adahessian import AdaHessian

    ada = tg.Quadratic(np.diag([1.0, 2.0]))
    r = AdaHessian().minimize(ada, np.ones(2), maxiter=3)
    assert r.nhvp == 3 and r.nfev == r.njev == 4


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("scale, ftol_of", [(1.0, lambda d: d[2]), (1.0, lambda d: 0.75 * d[2]), (16.0, lambda d: 0.75)])
def test_minimize_ftol_compares_the_loss_change_with_ftol_times_max_1_abs_f(scale, ftol_of):
    """DampedNewton with lr ½ on ½||x||² halves x: f_k = f₀/4ᵏ, |Δf_k| = 3 f₀/4ᵏ (all dyadic, exact); it
    stops at the first k with |Δf_k| <= ftol·max(1, f_{k-1})."""
    obj = tg.Quadratic(np.eye(2))
    x0 = scale * np.array([0.5, 0.25])
    f0 = 0.5 * float(x0 @ x0)
    change = {k: 3 * f0 / 4**k for k in range(1, 30)}
    ftol = ftol_of(change)
    expected = next(k for k in change if change[k] <= ftol * max(1.0, f0 / 4 ** (k - 1)))
    r = DampedNewton(lr=0.5, damping=0.0, adapt="fixed").minimize(obj, x0, ftol=ftol, gtol=0.0, maxiter=30)
    assert (r.status, r.message, r.nit) == (0, "loss change below ftol", expected)
    assert [-info["loss_change"] for info in r.history] == [change[k] for k in range(1, expected + 1)]


def test_optimize_result_attributes_and_the_info_table_reader():
    from optimizers import base
    from optimizers.base import OptimizeResult, _read_info_table

    with pytest.raises(AttributeError, match="^nope$"):
        OptimizeResult(x=1).nope
    doc = """Title

Info keys
---------
text

======  ====
key     meaning
======  ====
``a``   first
        and more
``b2``  second
======  ====
after

======  ====
``c``   not in the table
======  ====
"""
    assert _read_info_table(doc) == {"a": "first and more", "b2": "second"}
    assert _read_info_table("") == {} and _read_info_table(base.__doc__) == base.INFO_KEYS


@pytest.mark.parametrize("make, message", [
    (lambda: LBFGS(c2="a"), "LBFGS: c2 must be a real number, got 'a' (str)"),
    (lambda: LBFGS(history_size=1.5), "LBFGS: history_size must be an integer >= 1, got 1.5 (float)"),
    (lambda: Adam(betas=0.9), "Adam: betas must be a pair (tuple of two), got 0.9 (float)"),
])
def test_type_errors_name_the_argument_and_show_the_value(make, message):
    with pytest.raises(TypeError) as err:
        make()
    assert str(err.value) == message


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_check_state_messages_and_check_choice_of_a_bool():
    from optimizers.base import check_choice

    assert check_choice("flag", True, (True, "auto")) is True
    obj, opt = tg.Quadratic(np.eye(2)), SGD(0.1)
    for state, theta, message in [
        ([1], np.zeros(2), "SGD.step: state must be the dict returned by SGD.init(theta), got list"),
        ({}, np.zeros(2), "SGD.step: the state has no 'optimizer' entry (not made by an init of this version), "
                          "not by SGD.init; start from SGD.init(theta)"),
        (opt.init(np.zeros(2)), [0.0, 0.0], "SGD.step: the state was made for a theta of size 2, but theta has "
                                            "size None; start from SGD.init(theta)"),
    ]:
        with pytest.raises((TypeError, ValueError)) as err:
            opt.step(obj, theta, state)
        assert str(err.value) == message


def test_optimizer_repr_and_hyperparameters_leave_out_private_attributes():
    from optimizers.hybrid import Hybrid

    assert repr(SGD(0.1)) == "SGD(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0)"
    assert Hybrid(seed=2).hyperparameters() == {"threshold": 1.0, "sgd_lr": 0.005, "sgd_momentum": 0.9,
                                                "ada_lr": 0.001, "ada_kwargs": {"seed": 2}}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_minimize_without_counts_with_maxiter_0_and_a_gtol_stop_on_the_step_info():
    r = SGD(0.5).minimize(ScriptedGradients([1.0, 1.0]), np.zeros(2), maxiter=2)  # no ``counts``: zeros
    assert (r.nfev, r.njev, r.nhvp, r.nit) == (0, 0, 0, 2)
    r = SGD(0.5).minimize(tg.Quadratic(np.eye(2)), np.ones(2), maxiter=0)
    assert (r.nit, r.history, r.status) == (0, [], 1)
    # the step's own ||g||_inf (at its start, 0.5) meets gtol, although the gradient after it does not
    r = SGD(3.0).minimize(tg.Quadratic(np.eye(2)), np.array([0.5, 0.25]), gtol=0.5)
    assert (r.status, r.message, r.nit) == (0, "gradient norm below gtol", 1) and np.abs(r.jac).max() == 1.0


# ---------------------------------------------------------------- K-FAC (fourth pass)


def _kfac_mlp(seed=0, batch=16, sizes=(4, 5, 3)):
    """(objective, theta) of a tanh MLP softmax classifier: every parameter is in a Linear layer."""
    rng = np.random.default_rng(seed)
    model = nets.MLP(sizes, activation="tanh")
    X = rng.standard_normal((batch, sizes[0]))
    return model.objective("cross_entropy", X, rng.integers(0, sizes[-1], batch)), model.init_theta(seed)


def _kfac_bn_net(seed=0, batch=16):
    """(objective, theta) of Linear, Tanh, BatchNorm1d, Linear: BN's γ and β lie outside the layers."""
    from nets.layers import Flatten, Linear, Sequential, Tanh
    from nets.normalization import BatchNorm1d

    rng = np.random.default_rng(seed)
    model = Sequential(Flatten(), Linear(4, 5), Tanh(), BatchNorm1d(5), Linear(5, 3))
    X = rng.standard_normal((batch, 4))
    return model.objective("cross_entropy", X, rng.integers(0, 3, batch)), model.init_theta(seed)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_init_state_is_empty_and_fresh():
    theta = np.array([0.5, -1.0, 2.0])
    state = KFAC(damping=0.3, seed=7).init(theta)
    assert set(state) == {"optimizer", "theta_size", "step", "damping", "updates", "omega", "gamma", "omega_inv",
                          "gamma_inv", "diag", "delta", "seed", "draws", "stale"}
    assert state["damping"] == 0.3 and type(state["damping"]) is float
    assert state["updates"] == 0 and state["draws"] == 0 and state["seed"] == 7 and state["step"] == 0
    for key in ("omega", "gamma", "omega_inv", "gamma_inv"):
        assert state[key] == {} and type(state[key]) is dict
    for key in ("diag", "delta"):
        assert state[key].shape == theta.shape and state[key].dtype == theta.dtype and not state[key].any()
    assert state["stale"] is False


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_kfac_solve_small_solves_and_falls_back_to_least_squares_then_to_zero():
    M = np.array([[2.0, 1.0], [1.0, 3.0]])
    np.testing.assert_allclose(_solve_small(M, M @ np.array([1.5, -0.5])), [1.5, -0.5], rtol=1e-14)
    # singular: np.linalg.solve raises; least squares gives the minimum-norm solution of x + y = 2
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])
    coef = _solve_small(singular, np.array([2.0, 2.0]))
    assert coef.shape == (2,)
    np.testing.assert_allclose(coef, [1.0, 1.0], rtol=1e-14)
    # no finite solution (an overflowed Gram matrix): c = 0, no step (the docstring's promise)
    for bad in (np.full((2, 2), np.inf), np.array([[np.inf, np.inf], [np.inf, 1.0]]),
                np.array([[np.nan, 1.0], [1.0, 1.0]])):
        coef = _solve_small(bad, np.array([2.0, 2.0]))
        assert coef.shape == (2,) and coef.dtype == np.float64
        np.testing.assert_array_equal(coef, [0.0, 0.0])
    np.testing.assert_array_equal(_solve_small(np.array([[0.0]]), np.array([0.0])), [0.0])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_refuses_a_state_whose_layer_changed_its_input_size():
    # MLP 4-5-3 and MLP 6-4-3 both have 43 parameters and the layer names "1.weight", ...
    obj, theta = _kfac_mlp(sizes=(4, 5, 3))
    other, _ = _kfac_mlp(sizes=(6, 4, 3))
    opt = KFAC(lr=0.1, adapt="fixed")
    _, state, _ = opt.step(obj, theta, opt.init(theta))
    with pytest.raises(ValueError) as err:
        opt.step(other, theta, state)
    assert str(err.value) == "KFAC: layer '1.weight' changed its input size since the state was made"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_both_factors_follow_the_decay_min_of_1_minus_1_over_k_and_factor_decay():
    obj, theta = _kfac_mlp()
    opt = KFAC(factor_decay=0.6, lr=0.1, adapt="fixed", reject=False)
    thetas, states = [theta], [opt.init(theta)]
    for _ in range(3):
        t, s, _ = opt.step(obj, thetas[-1], states[-1])
        thetas.append(t), states.append(s)
    fresh = []
    for t in thetas[:3]:
        cap = obj.capture(t, factor="exact")
        fresh.append({layer.weight: tg.capture.kronecker_factors(layer) for layer in cap.layers})
    for key in states[1]["omega"]:
        for i, name in enumerate(("omega", "gamma")):
            want = fresh[0][key][i]                          # k = 1: taken whole
            np.testing.assert_allclose(states[1][name][key], want, rtol=1e-12)
            want = 0.5 * want + 0.5 * fresh[1][key][i]       # k = 2: ε = min(1/2, 0.6)
            np.testing.assert_allclose(states[2][name][key], want, rtol=1e-12)
            want = 0.6 * want + 0.4 * fresh[2][key][i]       # k = 3: ε = min(2/3, 0.6)
            np.testing.assert_allclose(states[3][name][key], want, rtol=1e-12)
    assert [s["updates"] for s in states] == [0, 1, 2, 3]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_on_layers_only_draws_one_seed_per_step_and_keeps_no_diagonal():
    obj, theta = _kfac_mlp()
    opt = KFAC(lr=0.1, adapt="fixed")
    state = opt.init(theta)
    for k in (1, 2):
        theta, state, info = opt.step(obj, theta, state)
        assert state["draws"] == k and info["kfac_layers"] == 2  # the factor sample's draw only
        assert not state["diag"].any()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_diagonal_of_the_parameters_outside_the_layers_is_seeded_and_averaged():
    """Draw j of a run seeded s uses seed s·2³² + j; each step draws the factor sample (j even) and
    then z (j odd), Rademacher on the non-layer entries only; d = z ⊙ (G z), averaged like the factors."""
    obj, theta = _kfac_bn_net()
    names = obj.layout.names
    outside = np.zeros(theta.shape, bool)
    for name in ("3.weight", "3.bias"):  # BatchNorm1d's γ and β
        outside[obj.layout[name].slice] = True
    opt = KFAC(lr=0.05, adapt="fixed", factor_decay=0.9, seed=3, reject=False)
    state, thetas, states = opt.init(theta), [theta], []
    for _ in range(2):
        theta, state, info = opt.step(obj, theta, state)
        thetas.append(theta), states.append(state)
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias"] and info["kfac_layers"] == 2
    fresh = []
    for j, t in ((1, thetas[0]), (3, thetas[1])):
        z = rademacher(t.shape, seed=3 * 2**32 + j, dtype=t.dtype) * outside
        fresh.append(z * obj.ggn_vp(t, z))
    assert [s["draws"] for s in states] == [2, 4]
    np.testing.assert_allclose(states[0]["diag"], fresh[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(states[1]["diag"], 0.5 * fresh[0] + 0.5 * fresh[1], rtol=1e-12, atol=0)
    assert not states[1]["diag"][~outside].any() and states[1]["diag"][outside].all()
    assert np.isfinite(states[1]["diag"]).all()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_diagonal_step_floors_a_negative_estimate_at_zero_and_adds_damping_and_weight_decay():
    """-(g + ηθ) / (max(d, 0) + λ + η): with A = diag(a) - c (z zᵀ - I) for the z of the seed,
    z ⊙ (A z) = a - c (n - 1) exactly, so d = (-0.75, -0.5, 1.0) for a = (0.25, 0.5, 2), c = ½."""
    seed, n = 2, 3
    z = rademacher((n,), seed=seed * 2**32 + 1, dtype=np.float64)  # draw 1: after the factor sample
    A = np.diag([0.25, 0.5, 2.0]) - 0.5 * (np.outer(z, z) - np.eye(n))
    b = np.array([1.0, -2.0, 0.5])
    q = tg.Quadratic(A, b)
    theta = np.array([0.5, 1.5, -1.0])
    lam, eta = 0.25, 0.125
    opt = KFAC(lr=1.0, damping=lam, weight_decay=eta, adapt="fixed", reject=False, seed=seed)
    new, state, info = opt.step(q, theta, opt.init(theta))
    d = np.array([-0.75, -0.5, 1.0])
    np.testing.assert_allclose(state["diag"], d, rtol=1e-14)
    g = A @ theta - b + eta * theta
    np.testing.assert_allclose(new - theta, -g / (np.maximum(d, 0) + lam + eta), rtol=1e-13)
    assert info["kfac_layers"] == 0 and info["lr"] == 1.0 and info["mu"] == 0.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_kfac_step_on_an_objective_without_capture_names_the_objective_and_the_method():
    class NoCapture:
        layout = None

    theta = np.zeros(2)
    opt = KFAC()
    with pytest.raises(TypeError) as err:
        opt.step(NoCapture(), theta, opt.init(theta))
    assert str(err.value) == ("KFAC.step: the objective (NoCapture) has no capture(theta, factor, seed), which "
                              "K-FAC reads its layers and gradient from (tinygrad2.ObjectiveInterface)")


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_two_steps_on_a_quadratic_are_the_closed_forms():
    """No layers: Δ = -(g + ηθ)/(max(d, 0) + λ + η), d the average of z ⊙ (A z) over the draws z (seed s:
    draw 2k - 1 on step k); step 1 takes α of the model M(δ) = gᵀδ + ½δᵀ(A + (λ+η)I)δ along Δ, step 2 α
    and μ along [Δ, δ₁]; ρ = actual / predicted with the ℓ2 term in both; on step 2 (T₁ = 2) the model is
    exact, ρ = 1 > ¾, so λ ← λ (19/20)². A is not diagonal, so μ ≠ 0."""
    A = np.array([[2.0, 0.5, 0.0], [0.5, 4.0, 1.0], [0.0, 1.0, 9.0]])
    b = np.array([1.0, -2.0, 3.0])
    q = tg.Quadratic(A, b)
    lam, eta, seed = 0.5, 0.25, 6
    opt = KFAC(damping=lam, weight_decay=eta, adapt_every=2, seed=seed)
    theta = np.array([3.0, 3.0, -3.0])
    state = opt.init(theta)

    def f(x):
        return 0.5 * x @ A @ x - b @ x + 0.5 * eta * x @ x

    prev, d = np.zeros(3), None
    for k in (1, 2):
        z = rademacher((3,), seed=seed * 2**32 + 2 * k - 1, dtype=np.float64)
        d = z * (A @ z) if k == 1 else 0.5 * d + 0.5 * z * (A @ z)
        g = A @ theta - b + eta * theta
        Delta = -g / (np.maximum(d, 0) + lam + eta)
        D = np.stack([Delta, prev]) if k == 2 else Delta[None]
        M = D @ (A + (lam + eta) * np.eye(3)) @ D.T
        coef = np.linalg.solve(M, -D @ g)
        delta = coef @ D
        predicted = g @ delta + 0.5 * delta @ (A @ delta + eta * delta)
        actual = f(theta + delta) - f(theta)
        new, state, info = opt.step(q, theta, state)
        np.testing.assert_allclose(state["diag"], d, rtol=1e-14)
        np.testing.assert_allclose(new, theta + delta, rtol=1e-12)
        assert info["lr"] == pytest.approx(coef[0], rel=1e-12)
        assert info["mu"] == (pytest.approx(coef[1], rel=1e-10) if k == 2 else 0.0)
        assert info["step_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-12)
        assert info["predicted"] == pytest.approx(predicted, rel=1e-12)
        assert info["actual"] == pytest.approx(actual, rel=1e-10)
        assert info["rho"] == pytest.approx(actual / predicted, rel=1e-10)
        assert info["damping"] == lam and info["fallback"] is None and info["kfac_layers"] == 0
        assert info["inverses_refreshed"] is (k == 1)
        np.testing.assert_allclose(state["delta"], delta, rtol=1e-12)
        assert state["stale"] is False and state["step"] == k
        prev, theta = delta, new
    assert abs(info["mu"]) > 1e-3
    assert info["rho"] == pytest.approx(1.0, rel=1e-9)
    assert state["damping"] == pytest.approx(lam * (19 / 20) ** 2, rel=1e-14)
    # momentum=False: μ = 0 on every step, δ = α Δ
    opt = KFAC(damping=lam, momentum=False, adapt="fixed", seed=seed)
    theta, state = np.array([3.0, 3.0, -3.0]), opt.init(np.zeros(3))
    for _ in range(2):
        theta, state, info = opt.step(q, theta, state)
        assert info["mu"] == 0.0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_with_a_fixed_lr_takes_a_fresh_product_on_adaptation_steps_and_boosts_a_poor_rho():
    """lr = 10 overshoots: ρ < ¼, so λ ← λ / (19/20)^T₁ (T₁ = 1); predicted uses G δ of this step."""
    a, b = np.array([1.0, 4.0]), np.array([1.0, -2.0])
    q = tg.Quadratic(np.diag(a), b)
    lam, eta, lr = 0.01, 0.5, 10.0
    theta = np.array([3.0, 3.0])
    opt = KFAC(lr=lr, damping=lam, weight_decay=eta, adapt_every=1, reject=False)
    new, state, info = opt.step(q, theta, opt.init(theta))
    g = a * theta - b + eta * theta
    delta = -lr * g / (a + lam + eta)
    np.testing.assert_allclose(new, theta + delta, rtol=1e-13)
    predicted = g @ delta + 0.5 * delta @ ((a + eta) * delta)
    assert info["predicted"] == pytest.approx(predicted, rel=1e-12)
    assert info["lr"] == lr and info["mu"] == 0.0 and info["fallback"] is None
    assert info["rho"] < 0.25
    assert state["damping"] == pytest.approx(lam / (19 / 20), rel=1e-14)
    # not an adaptation step (T₁ = 2, t = 1) and no rejection: neither actual nor predicted
    opt = KFAC(lr=lr, damping=lam, adapt_every=2, reject=False)
    _, state, info = opt.step(q, theta, opt.init(theta))
    assert info["actual"] is None and info["predicted"] is None and info["rho"] is None
    assert state["damping"] == lam
    # lr=None: the model's product is at hand every step, so predicted but no actual
    opt = KFAC(damping=lam, adapt_every=2, reject=False)
    _, _, info = opt.step(q, theta, opt.init(theta))
    assert info["predicted"] < 0 and info["actual"] is None and info["rho"] is None


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_accepts_an_exactly_equal_loss_and_rejects_a_small_rise():
    """f = ½||x||², d = 1, λ = 1: Δ = -x/2, so lr 4 lands on -x (same loss, bit for bit) and lr 4.5 on
    -1.25 x (a rise below 1). A rejection after a taken step zeroes the momentum and marks the inverses
    stale; the next taken step clears the mark."""
    q = tg.Quadratic(np.eye(2))
    x = np.array([0.5, -0.25])
    opt = KFAC(lr=4.0, damping=1.0, adapt="fixed")
    new, state, info = opt.step(q, x, opt.init(x))
    np.testing.assert_array_equal(new, -x)
    assert info["actual"] == 0.0 and info["fallback"] is None and info["lr"] == 4.0
    rise = KFAC(lr=4.5, damping=1.0, adapt="fixed")
    back, rejected, info = rise.step(q, new, state)  # state["delta"] = -2x from the taken step
    assert 0 < info["actual"] < 1 and info["fallback"] == "rejected"
    np.testing.assert_array_equal(back, new)
    assert info["lr"] == 0.0 and info["mu"] == 0.0 and info["step_norm"] == 0.0
    assert rejected["delta"].shape == x.shape and not rejected["delta"].any()
    assert rejected["stale"] is True and rejected["damping"] == 1.0 and rejected["step"] == 2
    _, again, info = opt.step(q, new, rejected)
    assert info["fallback"] is None and info["inverses_refreshed"] and again["stale"] is False


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("adapt", ["lm", "fixed"])
def test_kfac_non_finite_direction_info_and_state(adapt, monkeypatch):
    import optimizers.kfac as kfac_module

    obj, theta = _kfac_mlp()
    opt = KFAC(damping=0.1, adapt=adapt, adapt_every=3, inverse_every=1)
    theta, state, _ = opt.step(obj, theta, opt.init(theta))
    assert state["delta"].any()
    real = kfac_module.kronecker_factors
    monkeypatch.setattr(kfac_module, "kronecker_factors", lambda layer: tuple(f * np.nan for f in real(layer)))
    new, after, info = opt.step(obj, theta, state)
    loss, g = obj.loss_and_grad(theta)
    assert info == {"loss": loss, "grad_norm": np.linalg.norm(g), "grad_norm_inf": np.abs(g).max(), "lr": 0.0,
                    "mu": 0.0, "step_norm": 0.0, "damping": 0.1, "predicted": None, "actual": None, "rho": None,
                    "inverses_refreshed": True, "kfac_layers": 2, "fallback": "non_finite"}
    assert after["step"] == 2 and after["stale"] is True and np.array_equal(new, theta)
    assert after["delta"].shape == theta.shape and not after["delta"].any()
    assert after["damping"] == (pytest.approx(0.1 / (19 / 20) ** 3, rel=1e-14) if adapt == "lm" else 0.1)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_inverses_are_damped_with_lambda_plus_weight_decay():
    obj, theta = _kfac_mlp()
    lam, eta = 0.3, 0.2
    opt = KFAC(lr=0.1, damping=lam, weight_decay=eta, adapt="fixed")
    _, state, _ = opt.step(obj, theta, opt.init(theta))
    root = math.sqrt(lam + eta)
    for key, omega in state["omega"].items():
        gamma = state["gamma"][key]
        pi = math.sqrt((np.trace(omega) / len(omega)) / (np.trace(gamma) / len(gamma)))
        np.testing.assert_allclose(state["omega_inv"][key], np.linalg.inv(omega + pi * root * np.eye(len(omega))),
                                   rtol=1e-10)
        np.testing.assert_allclose(state["gamma_inv"][key], np.linalg.inv(gamma + root / pi * np.eye(len(gamma))),
                                   rtol=1e-10)


def test_kfac_defaults_limits_and_exact_messages():
    opt = KFAC()
    assert (opt.lr, opt.damping, opt.adapt, opt.factor, opt.factor_decay, opt.inverse_every, opt.adapt_every,
            opt.momentum, opt.reject, opt.min_damping, opt.weight_decay, opt.seed) == (
        None, 0.01, "lm", "exact", 0.95, 10, 5, True, True, 1e-4, 0.0, 0)
    limits = KFAC(damping=0.5, min_damping=0.5, weight_decay=0.0, seed=2**31 - 1)
    assert (limits.min_damping, limits.seed) == (0.5, 2**31 - 1)
    assert KFAC(min_damping=0.0).min_damping == 0.0
    for kwargs, message in [
        ({"adapt_every": 0}, "KFAC: adapt_every must be an integer >= 1, got 0"),
        ({"min_damping": -1.0}, "KFAC: min_damping must be a finite number >= 0, got -1.0"),
        ({"weight_decay": -1.0}, "KFAC: weight_decay must be a finite number >= 0, got -1.0"),
        ({"seed": 2**31}, "KFAC: seed must be < 2**31, got 2147483648"),
        ({"damping": 0.5, "min_damping": 0.625}, "KFAC: min_damping (0.625) must not exceed damping (0.5)"),
    ]:
        with pytest.raises(ValueError) as err:
            KFAC(**kwargs)
        assert str(err.value) == message


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_kfac_direction_of_a_layer_without_bias_is_the_dense_kronecker_solve():
    from nets.layers import Flatten, Linear, Sequential, Tanh

    rng = np.random.default_rng(1)
    model = Sequential(Flatten(), Linear(4, 5, bias=False), Tanh(), Linear(5, 3))
    X = rng.standard_normal((16, 4))
    obj, theta = model.objective("cross_entropy", X, rng.integers(0, 3, 16)), model.init_theta(1)
    lam = 0.3
    opt = KFAC(lr=1.0, damping=lam, adapt="fixed", reject=False)
    new, state, _ = opt.step(obj, theta, opt.init(theta))
    g = obj.grad(theta)
    for key, bias in (("1.weight", None), ("3.weight", "3.bias")):
        omega, gamma = state["omega"][key], state["gamma"][key]
        pi = math.sqrt((np.trace(omega) / len(omega)) / (np.trace(gamma) / len(gamma)))
        damped = np.kron(gamma + math.sqrt(lam) / pi * np.eye(len(gamma)),
                         omega + pi * math.sqrt(lam) * np.eye(len(omega)))
        idx = tg.capture.block_indices(obj.layout, key, bias)
        np.testing.assert_allclose(new[idx] - theta[idx], -np.linalg.solve(damped, g[idx]), rtol=1e-10)
    assert state["omega"]["1.weight"].shape == (4, 4)


# ---------------------------------------------------------------- Sophia (fourth pass)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sophia_defaults_and_init_state():
    opt = Sophia()
    assert (opt.lr, opt.betas, opt.gamma, opt.eps, opt.weight_decay, opt.update_each, opt.clip, opt.estimator,
            opt.seed) == (1e-4, (0.965, 0.99), 0.04, 1e-12, 0.0, 10, 1.0, "hutchinson", 0)
    theta = np.array([0.5, -1.0, 2.0])
    state = Sophia(seed=4).init(theta)
    for key in ("m", "h"):
        assert state[key].shape == theta.shape and state[key].dtype == theta.dtype and not state[key].any()
    assert state["m"] is not state["h"]
    assert (state["step"], state["seed"], state["draws"], state["nhvp"]) == (0, 4, 0, 0)
    assert state["hessian_diag_mean"] == 0.0 and type(state["hessian_diag_mean"]) is float


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sophia_exact_estimator_draws_nothing_and_the_state_keeps_the_latest_mean():
    a = np.array([1.0, 2.0, 4.0])
    q = tg.Quadratic(np.diag(a), np.ones(3))
    opt = Sophia(lr=0.1, estimator="exact", update_each=2)
    theta = np.array([1.0, 1.0, 1.0])
    state = opt.init(theta)
    for t in (1, 2, 3):
        theta, state, info = opt.step(q, theta, state)
        assert state["draws"] == 0 and state["nhvp"] == 3 * ((t + 1) // 2)  # n HVPs per refresh (t = 1, 3)
        assert info["nhvp"] == (3 if t != 2 else 0)
        assert state["hessian_diag_mean"] == pytest.approx(a.mean(), rel=1e-14)
        assert info["hessian_diag_mean"] == pytest.approx(a.mean(), rel=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sophia_hessian_estimate_of_gnb_costs_no_hvp_and_one_draw():
    class Cap:
        sample_grad = np.array([[1.0, -2.0, 0.5]])

    class Capturing:
        def capture(self, theta, factor, seed):
            assert factor == "sample" and seed == 5 * 2**32 + 7
            return Cap()

    theta = np.zeros(3)
    h_hat, hvps, draws = Sophia(estimator="gnb").hessian_estimate(Capturing(), theta, 5, 7)
    np.testing.assert_array_equal(h_hat, [1.0, 4.0, 0.25])
    assert (hvps, draws) == (0, 1)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_sophia_counts_a_ratio_exactly_at_clip_as_not_clipped_and_reports_lr_and_step_norm():
    """β₁ = β₂ = 0, γ = 1, exact diagonal a = (1, 2, 4): the ratio is g/a = (1, 2, ½) exactly;
    only |2| > c = 1 is clipped (the docstring's strict >), so 1/3 of the coordinates."""
    a = np.array([1.0, 2.0, 4.0])
    q = tg.Quadratic(np.diag(a), np.zeros(3))
    theta = np.array([1.0, 2.0, 0.5])  # g = aθ, g/a = θ
    opt = Sophia(lr=0.5, betas=(0.0, 0.0), gamma=1.0, eps=1e-12, update_each=1, clip=1.0, estimator="exact")
    new, _, info = opt.step(q, theta, opt.init(theta))
    step = 0.5 * np.array([1.0, 1.0, 0.5])
    np.testing.assert_array_equal(new, theta - step)
    assert info["clipped_fraction"] == 1 / 3
    assert info["lr"] == 0.5
    assert info["step_norm"] == pytest.approx(np.linalg.norm(step), rel=1e-15)


# ---------------------------------------------------------------- Shampoo (fourth pass)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_new_tensor_entries_start_at_eps_with_no_roots():
    from tinygrad2.layout import Layout as _Layout

    W, b = _Layout([("W", (2, 3), "weight"), ("b", (3,), "bias")])
    entry = Shampoo(eps=0.5).new_tensor(W, np.float64)
    assert set(entry) == {"name", "shape", "path", "L", "R", "L_root", "R_root"}
    assert entry["path"] == "matrix" and entry["name"] == "W" and entry["shape"] == [2, 3]
    np.testing.assert_array_equal(entry["L"], 0.5 * np.eye(2))
    np.testing.assert_array_equal(entry["R"], 0.5 * np.eye(3))
    assert entry["L_root"] is None and entry["R_root"] is None
    entry = Shampoo(eps=0.5, max_preconditioner_dim=2).new_tensor(W, np.float64)  # the 3-side is diagonal
    np.testing.assert_array_equal(entry["R"], [0.5, 0.5, 0.5])
    assert entry["R_root"] is None and entry["L_root"] is None
    entry = Shampoo(eps=0.5).new_tensor(b, np.float64)
    assert set(entry) == {"name", "shape", "path", "h"} and entry["path"] == "diagonal"
    np.testing.assert_array_equal(entry["h"], [0.5, 0.5, 0.5])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_precondition_makes_one_eigh_call_per_full_side_it_refreshes():
    from tinygrad2.layout import Layout as _Layout

    (W,) = _Layout([("W", (2, 3), "weight")])
    g = np.arange(1.0, 7.0)
    full = Shampoo()
    entry, _, calls = full.precondition(full.new_tensor(W, np.float64), g, refresh=True)
    assert calls == 2
    _, _, calls = full.precondition(entry, g, refresh=False)  # roots kept
    assert calls == 0
    _, _, calls = full.precondition(entry, g, refresh=True)
    assert calls == 2
    half = Shampoo(max_preconditioner_dim=2)  # R (3 × 3) over the limit: diagonal, no eigh
    _, _, calls = half.precondition(half.new_tensor(W, np.float64), g, refresh=True)
    assert calls == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_objective_with_no_layout_attribute_is_one_1d_parameter():
    q = Quadratic(np.diag([1.0, 2.0, 4.0]), np.ones(3))

    class Bare:  # no ``layout`` attribute at all
        def loss_and_grad(self, theta):
            return q.loss_and_grad(theta)

    theta = np.array([1.0, -1.0, 2.0])
    eps, lr = 1e-6, 0.5
    opt = Shampoo(lr=lr, eps=eps, graft=None)
    new, state, info = opt.step(Bare(), theta, opt.init(theta))
    g = q.grad(theta)
    np.testing.assert_allclose(new, theta - lr * g / np.sqrt(eps + g * g), rtol=1e-14)
    assert [e["path"] for e in state["tensors"]] == ["diagonal"] and info["diagonal_tensors"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_refuses_a_layout_of_another_size_with_its_message():
    q = Quadratic(np.eye(4), np.ones(4))
    opt = Shampoo()
    theta = np.zeros(3)
    with pytest.raises(ValueError) as err:
        opt.parameters(q, theta)
    assert str(err.value) == "Shampoo.step: the objective's layout has n = 4, but theta has size 3"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_adam_graft_moments_in_the_state():
    q = Quadratic(np.diag([1.0, 2.0, 4.0]), np.ones(3))
    theta = np.array([1.0, -1.0, 2.0])
    b1, b2 = 0.75, 0.875
    opt = Shampoo(graft_betas=(b1, b2))
    th1, s1, _ = opt.step(q, theta, opt.init(theta))
    g1 = q.grad(theta)
    np.testing.assert_allclose(s1["exp_avg"], (1 - b1) * g1, rtol=1e-15)
    np.testing.assert_allclose(s1["exp_avg_sq"], (1 - b2) * g1 * g1, rtol=1e-15)
    _, s2, _ = opt.step(q, th1, s1)
    g2 = q.grad(th1)
    np.testing.assert_allclose(s2["exp_avg"], b1 * (1 - b1) * g1 + (1 - b1) * g2, rtol=1e-14)
    np.testing.assert_allclose(s2["exp_avg_sq"], b2 * (1 - b2) * g1 * g1 + (1 - b2) * g2 * g2, rtol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.usefixtures("float64")
def test_shampoo_counts_a_refresh_of_one_full_side_and_reports_lr_step_norm_and_graft_scale():
    """W (2 × 3) with the size limit 2: L full (one eigh), R diagonal; b (3,) diagonal with a zero gradient,
    last in the layout. The step counts as a refresh; b's graft scale is 0 (D = 0 stays 0)."""
    from tinygrad2.layout import Layout as _Layout

    layout = _Layout([("W", (2, 3), "weight"), ("b", (3,), "bias")])
    c = np.array([1.0, -2.0, 0.5, 3.0, 1.0, -1.0, 0.0, 0.0, 0.0])
    q = Quadratic(np.zeros((9, 9)), -c)  # f = cᵀθ: g = c
    q.layout = layout
    theta = np.linspace(-1.0, 1.0, 9)
    lr = 0.5
    opt = Shampoo(lr=lr, max_preconditioner_dim=2, graft="sgd")
    new, state, info = opt.step(q, theta, opt.init(theta))
    assert info["preconditioner_refreshed"] is True and state["refreshes"] == 1
    assert info["diagonal_sides"] == 1 and info["matrix_tensors"] == 1 and info["diagonal_tensors"] == 1
    assert info["lr"] == lr
    assert info["step_norm"] == pytest.approx(np.linalg.norm(new - theta), rel=1e-15)
    np.testing.assert_allclose(np.linalg.norm(new[:6] - theta[:6]), lr * np.linalg.norm(c[:6]), rtol=1e-13)
    np.testing.assert_array_equal(new[6:], theta[6:])
    _, D, _ = opt.precondition(opt.new_tensor(layout["W"], np.float64), c[:6], True)
    assert info["graft_scale_mean"] == pytest.approx(np.linalg.norm(c[:6]) / np.linalg.norm(D) / 2, rel=1e-13)
    assert Shampoo(max_preconditioner_dim=1).max_preconditioner_dim == 1
