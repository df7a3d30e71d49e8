"""Tests written for mutants that survived the mutation pass (docs/MUTATION.md):
DampedNewton's info figures, the saddle-free eigenvalue report, the
non-finite fallback's state and info, the acceptance of a step that leaves
the loss exactly equal, and the dtype of θ through a damped step."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad2 as tg
from optimizers import DampedNewton, HessianFree, Newton
from tinygrad2 import backend


def diagonal_quadratic(eigenvalues, dtype=np.float64):
    """f(x) = ½ xᵀ diag(a) x - bᵀx with b = (1, ..., 1)."""
    a = np.asarray(eigenvalues, dtype=dtype)
    return tg.Quadratic(np.diag(a), np.ones(a.size, dtype=dtype)), a


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


@pytest.mark.usefixtures("float64")
def test_cg_backtracking_stops_at_an_equal_loss():
    obj = Table(lambda x: (x - 20.0) ** 2)  # 22 and 18 give the same loss: keep the later iterate
    i, p, f, evals = HessianFree(lr=2.0)._backtrack(obj, np.zeros(1), iterates_at(7, 9, 11))
    assert (i, f, evals) == (11, 4.0, 2)


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


@pytest.mark.usefixtures("float64")
def test_armijo_gives_up_after_line_search_max_trials():
    opt = HessianFree(lr=1.0, line_search=True, line_search_c1=0.1, line_search_shrink=0.5, line_search_max=3)
    obj = Table(lambda x: x * x)
    assert opt._armijo(obj, np.zeros(1), np.ones(1), -1.0, 0.0, 1.0) == (0.0, 0.0, 3)
    assert obj.calls == [0.5, 0.25, 0.125]


@pytest.mark.usefixtures("float64")
def test_armijo_with_an_ascent_slope_asks_for_no_increase():
    opt = HessianFree(lr=1.0, line_search=True, line_search_c1=0.1, line_search_max=1)
    obj = Table(lambda x: 0.01)
    # slope > 0 counts as 0: f(θ + α p) = loss + 0.01 is not enough
    assert opt._armijo(obj, np.zeros(1), np.ones(1), 0.5, 0.0, 0.01) == (0.0, 0.0, 1)


def test_martens_preconditioner_floor_keeps_the_dtype_eps():
    with backend.precision("float32"):
        opt = HessianFree(preconditioner="martens", precond_exponent=1.0)
        g = np.array([0.0, 2.0, 0.5], dtype=np.float32)
        M = opt._precond(Table(None), np.zeros(3, np.float32), g, 0.0)
    eps = np.finfo(np.float32).eps
    np.testing.assert_array_equal(M, np.array([4.0 * eps, 4.0, 0.25], dtype=np.float32))


@pytest.mark.usefixtures("float64")
def test_martens_preconditioner_of_a_zero_gradient_is_one():
    opt = HessianFree(preconditioner="martens")
    M = opt._precond(Table(None), np.zeros(3), np.zeros(3), 0.0)
    np.testing.assert_array_equal(M, np.ones(3))
    assert opt._precond(Table(None), np.zeros(0), np.zeros(0), 0.0).shape == (0,)


@pytest.mark.usefixtures("float64")
def test_hessian_free_init_state():
    x0 = np.array([1.0, 2.0, 3.0])
    state = HessianFree(damping=2.0).init(x0)
    assert state["cg_x"].shape == (3,) and state["cg_x"].dtype == np.float64 and not state["cg_x"].any()
    assert state["damping"] == 2.0 and type(state["damping"]) is float


def ill_conditioned(n=40):
    a = np.geomspace(1e-3, 1e3, n)
    return tg.Quadratic(np.diag(a), np.ones(n)), a


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


@pytest.mark.usefixtures("float64")
def test_hessian_free_without_line_search_counts_no_trials():
    obj = tg.Quadratic(np.diag([1.0, 4.0]), np.ones(2))
    opt = HessianFree(lr=0.5, damping=0.0, adapt="fixed")
    x1, _, info = opt.step(obj, np.zeros(2), opt.init(np.zeros(2)))
    assert info["line_search_evals"] == 0 and info["lr"] == 0.5 and info["fallback"] is None
    assert info["loss_change"] == pytest.approx((0.125 - 0.5) * 1.25, rel=1e-12)
    np.testing.assert_allclose(x1, [0.5, 0.125], rtol=1e-13)


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


@pytest.mark.usefixtures("float64")
def test_hessian_free_at_a_stationary_point_reports_a_zero_residual():
    obj = tg.Quadratic(np.diag([1.0, 4.0]), np.array([1.0, 4.0]))
    x0 = np.ones(2)  # the minimizer: g = 0
    opt = HessianFree(damping=0.0, adapt="fixed")
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["cg_reason"] == "zero_rhs" and info["cg_residual"] == 0.0
    np.testing.assert_array_equal(x1, x0)


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


@pytest.mark.usefixtures("float64")
def test_cg_with_a_callable_preconditioner_matches_the_diagonal():
    from optimizers.cg import cg

    a = np.array([1.0, 10.0, 100.0])
    b = np.array([1.0, -2.0, 3.0])
    by_diagonal = cg(lambda v: a * v, b, M=a)
    by_callable = cg(lambda v: a * v, b, M=lambda r: r / a)
    np.testing.assert_array_equal(by_callable.x, by_diagonal.x)
    assert by_callable.iterations == by_diagonal.iterations == 1


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


def test_cg_refuses_a_matrix_right_hand_side():
    from optimizers.cg import cg

    with pytest.raises(ValueError) as err:
        cg(lambda v: v, np.ones((2, 2)))
    assert str(err.value) == "cg: b must be a vector (n,), got shape (2, 2)"


@pytest.mark.usefixtures("float64")
def test_cg_allows_a_martens_gap_of_one():
    from optimizers.cg import cg

    a = np.geomspace(1.0, 100.0, 30)
    res = cg(lambda v: a * v, np.ones(30), martens_eps=0.5, martens_min_gap=1, tol=0.0)
    assert res.reason == "martens"


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


@pytest.mark.usefixtures("float64")
def test_cg_of_a_zero_right_hand_side_is_the_zero_solution():
    from optimizers.cg import cg

    res = cg(lambda v: 2.0 * v, np.zeros(3))
    assert res.reason == "zero_rhs" and res.iterations == 0 and res.residual_norm == 0.0 and res.phi == [0.0]
    assert res.x.shape == (3,) and not res.x.any() and res.fallback is None and math.isnan(res.curvature)
    assert len(res.iterates) == 1 and res.iterates[0][0] == 0 and res.iterates[0][1].shape == (3,)
    unit = cg(lambda v: 2.0 * v, np.array([1.0, 0.0, 0.0]))  # ||b|| = 1 is not zero
    assert unit.reason == "converged" and unit.iterations == 1 and unit.x.tolist() == [0.5, 0.0, 0.0]


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


@pytest.mark.usefixtures("float64")
def test_cg_martens_rule_needs_more_than_k_iterations():
    from optimizers.cg import cg

    a = np.array([1.0, 2.0, 4.0])
    res = cg(lambda v: a * v, np.ones(3), martens_eps=2.0, martens_min_gap=1, tol=0.0)
    assert res.reason == "martens" and res.iterations == 2


# ---------------------------------------------------------------- Newton and cholesky_shifted (second pass)


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


@pytest.mark.usefixtures("float64")
def test_newton_at_a_stationary_point_is_not_a_descent():
    obj = tg.Quadratic(np.eye(2), np.ones(2))
    _, _, info = Newton().step(obj, np.ones(2), Newton().init(np.ones(2)))
    assert info["descent"] is False and info["step_norm"] == 0.0


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


def test_newton_default_rcond_uses_the_dtype_of_theta():
    with backend.precision("float32"):
        # 1e-7 is below 2·eps(float32) = 2.4e-7 but far above 2·eps(float64)
        obj = tg.Quadratic(np.diag([1e-7, 1.0]).astype(np.float32), np.ones(2, np.float32))
        x0 = np.zeros(2, np.float32)
        _, _, info = Newton().step(obj, x0, Newton().init(x0))
    assert info["status"] == "singular"


@pytest.mark.usefixtures("float64")
def test_newton_fallback_none_solves_an_indefinite_hessian_directly():
    obj = tg.Quadratic(np.diag([-1.0, 2.0]), np.ones(2))
    x1, _, info = Newton(fallback="none").step(obj, np.zeros(2), Newton().init(np.zeros(2)))
    assert info["status"] == "indefinite" and info["fallback"] is None
    np.testing.assert_allclose(x1, [-1.0, 0.5], rtol=1e-13)


def test_cholesky_shifted_first_shift_and_float32():
    from optimizers.newton import cholesky_shifted

    with backend.precision("float64"):
        assert cholesky_shifted(np.diag([0.0, 2.0]), beta=0.5, max_tries=1)[1] == 0.5
        assert cholesky_shifted(np.diag([-1.0, 3.0]), beta=0.5, max_tries=1)[1] == 2.0
    with backend.precision("float32"):
        A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]], dtype=np.float32)
        shifted, tau = cholesky_shifted(A, max_tries=1)
    assert tau == 0.0 and shifted.dtype == np.float32
