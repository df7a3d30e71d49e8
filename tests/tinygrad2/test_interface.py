"""The Objective interface written down once (ObjectiveInterface), and the
memory forecast shared by the Objective and functional.hessian."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad2 as tg
from tinygrad2 import (
    CurvatureMemoryError, Function, LogisticRegression, Objective, ObjectiveInterface, Quadratic, Rosenbrock,
    Tensor, memory,
)

from _helpers import D, host, npt

pytestmark = pytest.mark.usefixtures("float64")

X = np.random.default_rng(0).standard_normal((7, 3))
LABELS = np.array([0, 1, 2, 0, 1, 2, 0])


def objectives():
    return {
        "Objective": Objective(lambda th, X: X @ th.reshape(3, 3), "cross_entropy", D(X), D(LABELS)),
        "Quadratic": Quadratic(D(np.eye(3))),
        "Rosenbrock": Rosenbrock(3),
        "LogisticRegression": LogisticRegression(D(X), D(LABELS % 2)),
        "Function": Function(lambda t: (t * t).sum(), 3),
    }


@pytest.mark.parametrize("name", sorted(objectives()))
def test_every_objective_has_the_interface(name):
    assert isinstance(objectives()[name], ObjectiveInterface)


def test_something_else_does_not_have_it():
    class LossOnly:
        def loss(self, theta):
            return 0.0

    assert not isinstance(LossOnly(), ObjectiveInterface)


@pytest.mark.parametrize("name, batch", [
    ("Objective", 7), ("LogisticRegression", 7), ("Quadratic", 1), ("Rosenbrock", 1), ("Function", 1),
])
def test_batch_size_is_what_the_loss_averages_over(name, batch):
    assert objectives()[name].batch_size == batch


def test_with_batch_keeps_the_loss_and_changes_the_batch():
    obj = objectives()["Objective"]
    other = obj.with_batch(D(X[:4]), D(LABELS[:4]))
    assert other.batch_size == 4 and other.counts is obj.counts


@pytest.mark.parametrize("name", ["Quadratic", "Rosenbrock", "Function"])
def test_with_batch_on_a_problem_without_a_batch_is_a_clear_error(name):
    with pytest.raises(NotImplementedError, match=f"{name}.*\\.with_batch: .* has no batch"):
        objectives()[name].with_batch(D(X), D(LABELS))


def test_objective_hvp_and_grad_go_through_functional(monkeypatch):
    from tinygrad2 import functional

    calls = []
    for name in ("checked_hvp", "checked_value_and_grad"):
        original = getattr(functional, name)
        monkeypatch.setattr(functional, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    obj = objectives()["Objective"]
    theta, V = D(np.linspace(-1, 1, 9)), D(np.random.default_rng(1).standard_normal((4, 9)))
    HV = obj.hvp(theta, V)
    obj.grad(theta)
    assert calls == ["checked_hvp", "checked_value_and_grad"]
    npt.assert_array_equal(HV, tg.hvp(obj._scalar, theta, V))


def test_objective_checks_its_arguments_once(monkeypatch):
    # the Objective checks theta and V itself; functional's public checks must not run again
    from tinygrad2 import functional

    def second_check(*args):
        raise AssertionError("functional's argument checks ran again inside the Objective")

    monkeypatch.setattr(functional, "_input", second_check)
    monkeypatch.setattr(functional, "_directions", second_check)
    obj = objectives()["Objective"]
    theta = D(np.linspace(-1, 1, 9))
    obj.hvp(theta, D(np.ones((2, 9))))
    obj.loss_and_grad(theta)
    with pytest.raises(AssertionError, match="ran again"):
        tg.hvp(obj._scalar, theta, D(np.ones(9)))  # the public function still checks


def f_tanh(t):
    return (Tensor(D(X)) @ t.reshape(3, -1)).tanh().sum()


def test_functional_hessian_refuses_before_allocating_beyond_the_budget():
    x = D(np.zeros(3 * 4000))  # (12,000)^2 float64 = 1.07 GiB
    with pytest.raises(CurvatureMemoryError, match=r"hessian: n = 12,000 parameters; needs about 1\.07 GiB"):
        tg.hessian(f_tanh, x, memory_budget=2**30)


def test_functional_hessian_reads_the_session_budget(monkeypatch):
    monkeypatch.setattr(memory, "default_memory_budget", 1000)
    with pytest.raises(CurvatureMemoryError, match="budget is 1,000 bytes"):
        tg.hessian(f_tanh, D(np.zeros(12)))


def test_functional_hessian_within_the_budget_is_exact():
    x = D(np.linspace(-0.5, 0.5, 6))
    H = tg.hessian(f_tanh, x, memory_budget=10 * 2**20)
    E = np.eye(6)
    npt.assert_allclose(H, np.stack([host(tg.hvp(f_tanh, x, D(e))) for e in E]), rtol=1e-14)
    npt.assert_allclose(H, H.T, atol=1e-14)
