"""Sophia: the diagonal Newton step it reduces to, its clipping, the lazy
Hessian refresh and the EMA recursions (against a hand loop), seeded and
resumable random draws (Hutchinson and Gauss-Newton-Bartlett), the GNB
estimate's mean (the GGN diagonal), loss decrease, and hyper-parameter checks.
float64, NumPy backend."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nets
from optimizers import Adam, states_equal
from optimizers.adahessian import AdaHessian
from optimizers.base import INFO_KEYS, HyperparameterError
from optimizers.sophia import Sophia
from tinygrad2 import Objective, Quadratic, Tensor, rademacher

from _helpers import assert_close, hdf5_round_trip, problem

pytestmark = pytest.mark.usefixtures("float64")

NEW_INFO_KEYS = {"clipped_fraction"}  # proposed for the glossary in optimizers/base.py
HAS_CAPTURE = hasattr(Objective, "capture")

# ---------------------------------------------------------------- problems


def tiny_mlp(n=24, seed=0):
    """(model, objective, theta0): a tanh 3-4-3 softmax classifier on random data (31 parameters)."""
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, 3)), rng.integers(0, 3, size=n)
    model = nets.MLP((3, 4, 3), activation="tanh")
    return model, model.objective("cross_entropy", X, y), model.init_theta(seed, dtype=np.float64)


def diagonal_quadratic(n=5, seed=0):
    """(objective, a, b, theta0): f = ½ Σ a_i x_i² - bᵀx, H = diag(a), minimiser b / a."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(1.0, 10.0, n), rng.normal(size=n)
    return Quadratic(np.diag(a), b), a, b, rng.normal(size=n)


class SampledLabels:
    """A stand-in for ``Objective.capture(theta, factor="sample", seed)`` written
    independently here: labels ŷ_i ~ softmax(z_i) from ``default_rng(seed)``,
    r_i = (p_i - e_ŷ_i) / √B, and sample_grad = Jᵀ r as the gradient of Σ z ⊙ r
    (r held fixed). Everything else is the wrapped objective's."""

    def __init__(self, model, objective):
        self.model, self.objective = model, objective

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def capture(self, theta, factor="sample", seed=None):
        assert factor == "sample"
        z = self.objective.outputs(theta)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        rng = np.random.default_rng(seed)
        labels = (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)
        r = (p - np.eye(p.shape[1])[labels]) / math.sqrt(len(p))
        inner = Objective(self.model.apply, lambda out, r: (out * Tensor(r)).sum(), self.objective.X, r,
                          layout=self.model.layout())
        loss, grad = self.objective.loss_and_grad(theta)
        return type("Capture", (), {"loss": loss, "grad": grad, "sample_grad": inner.grad(theta)[None]})()


def gnb_objectives():
    """(name, model, objective with capture) for the stand-in and, once it exists, the real capture."""
    model, objective, theta = tiny_mlp()
    cases = [pytest.param(SampledLabels(model, objective), id="stand-in")]
    cases.append(pytest.param(objective, id="objective.capture",
                              marks=pytest.mark.skipif(not HAS_CAPTURE, reason="Objective.capture not written yet")))
    return cases


def newton_like(**kw):
    """β₁ = β₂ = 0, k = 1, γ = 1, tiny ε, no clipping, no weight decay (and overrides)."""
    args = dict(lr=1.0, betas=(0.0, 0.0), gamma=1.0, eps=1e-300, weight_decay=0.0, update_each=1, clip=math.inf,
                estimator="exact")
    return Sophia(**{**args, **kw})


def run(opt, objective, theta, steps, state=None):
    state = opt.init(theta) if state is None else state
    thetas, states, infos = [theta], [state], []
    for _ in range(steps):
        theta, state, info = opt.step(objective, theta, state)
        thetas.append(theta)
        states.append(state)
        infos.append(info)
    return thetas, states, infos


# ---------------------------------------------------------------- the update rule


def softmax_regression(n=24, seed=0):
    """(objective, theta0): a linear softmax classifier (nets.MLP((3, 3))): convex, diag(H) > 0."""
    rng = np.random.default_rng(seed)
    model = nets.MLP((3, 3))
    objective = model.objective("cross_entropy", rng.normal(size=(n, 3)), rng.integers(0, 3, size=n))
    return objective, model.init_theta(seed, dtype=np.float64)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("case", ["softmax_regression", "rosenbrock"])
def test_one_step_with_the_exact_diagonal_is_the_diagonal_newton_step(case):
    if case == "rosenbrock":
        objective, theta, _ = problem("rosenbrock")
    else:
        objective, theta = softmax_regression()
    d = np.diag(objective.hessian(theta))  # dense H, not the optimizer's hessian_diag route
    assert d.min() > 1e-6  # where diag(H) > 0 the max(γh, ε) floor is inactive
    _, g = objective.loss_and_grad(theta)
    opt = newton_like(lr=0.3)
    theta1, state, info = opt.step(objective, theta, opt.init(theta))
    assert np.isfinite(theta1).all()
    assert_close(theta1, theta - 0.3 * g / d, rtol=1e-13, what="diagonal Newton step")
    assert_close(state["h"], d, rtol=1e-13, what="h = diag(H)")
    assert info["clipped_fraction"] == 0.0 and info["nhvp"] == theta.size and info["hessian_refreshed"]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_negative_curvature_coordinates_take_a_clipped_sign_step():
    # a tanh MLP has negative diagonal entries: there max(γh, ε) = ε and m/ε saturates the clip
    _, objective, theta = tiny_mlp()
    d = np.diag(objective.hessian(theta))
    _, g = objective.loss_and_grad(theta)
    negative = (d < 0) & (g != 0)
    assert negative.any()
    opt = newton_like(lr=0.01, eps=1e-12, clip=1.0)
    theta1, _, info = opt.step(objective, theta, opt.init(theta))
    assert np.array_equal(theta1[negative], theta[negative] - 0.01 * np.sign(g[negative]))
    assert info["clipped_fraction"] >= negative.mean()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_a_separable_quadratic_is_solved_in_one_step_with_lr_one(estimator):
    # H = diag(a): u ⊙ Hu = a exactly for every Rademacher u, so Sophia-H is exact too
    objective, a, b, theta = diagonal_quadratic()
    opt = newton_like(estimator=estimator, seed=5)
    theta1, state, _ = opt.step(objective, theta, opt.init(theta))
    assert_close(state["h"], a, rtol=1e-14, what="h")
    assert_close(theta1, b / a, rtol=1e-13, what="minimiser")


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_clipping_bounds_every_coordinate_and_saturated_ones_move_exactly_lr():
    objective, a, b, _ = diagonal_quadratic(n=8)
    theta = np.array([3.0, -3.0, 0.01, -0.01, 2.0, -0.02, 5.0, 0.0])  # ratio (a x - b)/a = x - b/a
    lr = 0.05
    opt = newton_like(lr=lr, clip=1.0)
    theta1, _, info = opt.step(objective, theta, opt.init(theta))
    ratio = theta - b / a
    big = np.abs(ratio) > 1
    assert 0 < big.sum() < theta.size
    assert np.all(np.abs(theta1 - theta) <= lr * (1 + 1e-12))
    assert np.array_equal(theta1[big], theta[big] - lr * np.sign(ratio[big]))
    assert_close(theta1[~big], theta[~big] - lr * ratio[~big], rtol=1e-14, what="unclipped coordinates")
    assert info["clipped_fraction"] == big.mean()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("clip", [1.0, 0.25])
def test_clipping_holds_along_a_run_with_momentum_and_noisy_curvature(clip):
    # Sophia-H on an MLP: h can be negative, then max(γh, ε) = ε and the step saturates
    _, objective, theta = tiny_mlp()
    lr = 0.02
    opt = Sophia(lr=lr, gamma=0.05, update_each=2, clip=clip, seed=1)
    thetas, states, infos = run(opt, objective, theta, 8)
    for t in range(1, 9):
        s, move = states[t], thetas[t] - thetas[t - 1]
        ratio = s["m"] / np.maximum(opt.gamma * s["h"], opt.eps)
        big = np.abs(ratio) > clip
        assert np.all(np.abs(move) <= lr * clip * (1 + 1e-12))
        assert np.array_equal(thetas[t][big], thetas[t - 1][big] - lr * clip * np.sign(s["m"][big]))
        assert infos[t - 1]["clipped_fraction"] == big.mean()
    assert any(info["clipped_fraction"] > 0 for info in infos)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_refresh_schedule_and_the_recursions_match_a_hand_loop():
    _, objective, theta = tiny_mlp()
    k, (b1, b2), lr, gamma, eps, wd, c = 3, (0.9, 0.8), 0.05, 0.3, 1e-8, 0.1, 1.0
    opt = Sophia(lr=lr, betas=(b1, b2), gamma=gamma, eps=eps, weight_decay=wd, update_each=k, clip=c,
                 estimator="exact")
    thetas, states, infos = run(opt, objective, theta, 10)
    assert [info["hessian_refreshed"] for info in infos] == [(t - 1) % k == 0 for t in range(1, 11)]
    assert [info["nhvp"] for info in infos] == [theta.size * ((t - 1) % k == 0) for t in range(1, 11)]
    assert [s["step"] for s in states] == list(range(11))
    x, m, h = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)
    for t in range(1, 11):
        _, g = objective.loss_and_grad(x)
        m = b1 * m + (1 - b1) * g
        if t in (1, 4, 7, 10):
            h_hat = np.diag(objective.hessian(x))
            h = b2 * h + (1 - b2) * h_hat
            assert infos[t - 1]["hessian_diag_mean"] == pytest.approx(h_hat.mean(), rel=1e-12)
        else:
            assert np.array_equal(states[t]["h"], states[t - 1]["h"])
        x = x - lr * wd * x - lr * np.clip(m / np.maximum(gamma * h, eps), -c, c)
        assert_close(states[t]["m"], m, rtol=1e-12, what=f"m at step {t}")
        assert_close(states[t]["h"], h, rtol=1e-12, what=f"h at step {t}")
        assert_close(thetas[t], x, rtol=1e-12, what=f"theta at step {t}")


# ---------------------------------------------------------------- seeded draws


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_estimate_is_u_times_hu_for_the_u_of_the_seed():
    _, objective, theta = tiny_mlp()
    seed = 7
    opt = newton_like(lr=0.01, estimator="hutchinson", seed=seed, gamma=1.0, clip=1.0)
    thetas, states, infos = run(opt, objective, theta, 3)
    for j in range(3):
        u = rademacher((theta.size,), seed=seed * 2**32 + j, dtype=np.float64)
        assert set(np.unique(u)) == {-1.0, 1.0}
        assert np.array_equal(u, AdaHessian.rademacher_draw(seed, j, theta.size, np.float64))
        h_hat = u * (objective.hessian(thetas[j]) @ u)
        assert_close(states[j + 1]["h"], h_hat, rtol=1e-12, what=f"h after draw {j}")
        assert states[j + 1]["draws"] == j + 1 and states[j + 1]["nhvp"] == j + 1 and infos[j]["nhvp"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("estimator", ["hutchinson", "gnb"])
def test_draws_are_seeded_and_a_resumed_state_continues_identically(estimator, tmp_path):
    model, objective, theta = tiny_mlp()
    if estimator == "gnb":
        objective = objective if HAS_CAPTURE else SampledLabels(model, objective)
    make = lambda seed: Sophia(lr=0.02, gamma=0.05, update_each=2, estimator=estimator, seed=seed)  # noqa: E731
    thetas_a, states_a, _ = run(make(3), objective, theta, 6)
    thetas_b, states_b, _ = run(make(3), objective, theta, 6)
    assert all(states_equal(s, r) for s, r in zip(states_a, states_b))
    assert thetas_a[-1].tobytes() == thetas_b[-1].tobytes()
    assert states_a[-1]["draws"] == 3 and states_a[-1]["seed"] == 3
    loaded = hdf5_round_trip(states_a[3], tmp_path / "sophia.h5")
    # resumed by an optimizer made with another seed: the seed and draw count come from the state
    thetas_c, states_c, _ = run(make(99), objective, thetas_a[3].copy(), 3, state=loaded)
    assert thetas_c[-1].tobytes() == thetas_a[-1].tobytes() and states_equal(states_c[-1], states_a[-1])
    _, states_d, _ = run(make(4), objective, theta, 6)
    assert not np.array_equal(states_d[-1]["h"], states_a[-1]["h"])


# ---------------------------------------------------------------- Gauss-Newton-Bartlett


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("objective", gnb_objectives())
def test_gnb_estimate_is_the_squared_sample_gradient_of_the_seeded_draw(objective):
    theta = tiny_mlp()[2]
    seed = 11
    opt = newton_like(lr=0.01, estimator="gnb", seed=seed, clip=1.0)
    thetas, states, infos = run(opt, objective, theta, 3)
    for j in range(3):
        sample = objective.capture(thetas[j], factor="sample", seed=seed * 2**32 + j).sample_grad
        assert sample.shape == (1, theta.size)
        assert np.array_equal(states[j + 1]["h"], sample[0] ** 2)
        assert infos[j]["nhvp"] == 0 and states[j + 1]["draws"] == j + 1 and states[j + 1]["nhvp"] == 0
    assert np.all(states[-1]["h"] >= 0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("objective", gnb_objectives())
def test_gnb_estimates_average_to_the_ggn_diagonal(objective):
    theta, S = tiny_mlp()[2], 400
    G = np.diag(objective.ggn(theta))
    draws = np.stack([Sophia(estimator="gnb").hessian_estimate(objective, theta, 0, j)[0] for j in range(S)])
    mean, sd = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    # each coordinate within 5 standard errors (plus rounding); the mean's error is ~1/√S of one draw's spread
    assert np.all(np.abs(mean - G) <= 5 * sd / math.sqrt(S) + 1e-12 * np.abs(G).max())
    assert_close(mean, G, rtol=0.25, what="mean of B ĝ⊙ĝ vs diag(GGN)")


def test_gnb_on_an_objective_without_a_loss_split_names_sophia_and_the_estimator():
    objective, theta0, _ = problem("quadratic")
    opt = Sophia(estimator="gnb")
    with pytest.raises(NotImplementedError, match=r"Sophia\(estimator='gnb'\).*'hutchinson'"):
        opt.step(objective, theta0, opt.init(theta0))


# ---------------------------------------------------------------- training


def test_decreases_a_convex_quadratic():
    objective, theta, f_star = problem("quadratic")
    thetas, _, infos = run(Sophia(lr=0.1, gamma=0.05, update_each=2, seed=3), objective, theta, 12)
    gaps = [objective.loss(x) - f_star for x in thetas]
    assert gaps[-1] < 0.6 * gaps[0]
    assert set(infos[0]) <= set(INFO_KEYS) | NEW_INFO_KEYS


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("estimator", ["hutchinson", "exact", "gnb"])
def test_decreases_the_loss_of_a_tiny_mlp(estimator):
    model, objective, theta = tiny_mlp(n=60)
    if estimator == "gnb":
        objective = objective if HAS_CAPTURE else SampledLabels(model, objective)
    thetas, _, infos = run(Sophia(lr=0.05, gamma=0.05, update_each=2, estimator=estimator), objective, theta, 30)
    losses = [info["loss"] for info in infos]
    assert objective.loss(thetas[-1]) < 0.9 * losses[0] and all(map(math.isfinite, losses))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("estimator", [
    "hutchinson", "exact",
    pytest.param("gnb", marks=pytest.mark.skipif(not HAS_CAPTURE, reason="Objective.capture not written yet"))])
def test_each_step_costs_one_loss_and_gradient_evaluation(estimator):
    # GNB refresh steps take the loss and gradient from the capture's own pass
    _, objective, theta = tiny_mlp()
    objective.reset_counts()
    thetas, _, infos = run(Sophia(lr=0.01, estimator=estimator, update_each=2), objective, theta, 4)
    assert objective.counts["nfev"] == 4 and objective.counts["ngev"] == 4
    assert objective.counts["nhvp"] == sum(info["nhvp"] for info in infos)
    for x, info in zip(thetas, infos):
        loss, g = objective.loss_and_grad(x)
        assert info["loss"] == loss and info["grad_norm"] == np.linalg.norm(g)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_info_and_state_keys():
    _, objective, theta = tiny_mlp()
    opt = Sophia()
    state = opt.init(theta)
    assert set(state) == {"optimizer", "theta_size", "step", "m", "h", "seed", "draws", "nhvp", "hessian_diag_mean"}
    _, state, info = opt.step(objective, theta, state)
    assert set(info) == {"loss", "grad_norm", "grad_norm_inf", "lr", "step_norm", "hessian_diag_mean",
                         "hessian_refreshed", "nhvp", "clipped_fraction"}
    assert set(info) - NEW_INFO_KEYS <= set(INFO_KEYS)
    with pytest.raises(ValueError, match=r"Sophia\.step: .*Adam\.init"):
        opt.step(objective, theta, Adam().init(theta))


# ---------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("kwargs, name, error", [
    (dict(lr=0.0), "lr", HyperparameterError),
    (dict(lr="0.1"), "lr", TypeError),
    (dict(betas=(1.0, 0.99)), r"betas.*\[0\]", HyperparameterError),
    (dict(betas=(0.9, -0.1)), r"betas.*\[1\]", HyperparameterError),
    (dict(betas=0.9), "betas", TypeError),
    (dict(gamma=0.0), "gamma", HyperparameterError),
    (dict(gamma=math.inf), "gamma", HyperparameterError),
    (dict(eps=0.0), "eps", HyperparameterError),
    (dict(weight_decay=-1e-3), "weight_decay", HyperparameterError),
    (dict(update_each=0), "update_each", HyperparameterError),
    (dict(update_each=2.0), "update_each", TypeError),
    (dict(clip=0.0), "clip", HyperparameterError),
    (dict(clip=math.nan), "clip", HyperparameterError),
    (dict(clip="1"), "clip", TypeError),
    (dict(estimator="gauss-newton"), "estimator", HyperparameterError),
    (dict(seed=-1), "seed", HyperparameterError),
    (dict(seed=2**31), "seed", HyperparameterError),
    (dict(seed=None), "seed", TypeError),
])
def test_bad_hyperparameters_raise_errors_naming_them(kwargs, name, error):
    with pytest.raises(error, match=rf"^Sophia: {name}"):
        Sophia(**kwargs)


def test_clip_may_be_infinite():
    assert Sophia(clip=math.inf).clip == math.inf
