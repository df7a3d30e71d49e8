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
