"""K-FAC and KFC against exact curvature.

* With one example (and one spatial location), Γ ⊗ Ω is the layer's exact
  Gauss-Newton block: the identity that pins the order of the Kronecker
  product and every normalisation (dense layer, conv layer with a 1 x 1
  output).
* The sampled (Monte-Carlo Fisher) Γ averages to the exact one.
* The step: the damped Kronecker inverse applied to the gradient matrix equals
  a dense solve with (Γ + γ/π I) ⊗ (Ω + πγ I); α and μ minimise the quadratic
  model; λ follows the Levenberg-Marquardt rule with ω₁ = (19/20)^T₁; the
  factor averages follow ε = min(1 - 1/k, decay); parameters outside the
  layers take the diagonal fallback.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import nets
from optimizers import KFAC, states_equal
from optimizers.base import HyperparameterError
from tinygrad2 import Quadratic, capture

from _helpers import hdf5_round_trip

pytestmark = pytest.mark.usefixtures("float64")


def block_indices(layout, weight, bias):
    return capture.block_indices(layout, weight, bias)


def kfac_blocks(obj, theta, factor="exact", seed=0):
    cap = obj.capture(theta, factor=factor, seed=seed)
    return [(layer, *capture.kronecker_factors(layer)) for layer in cap.layers]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_example_dense_blocks_are_the_exact_gauss_newton_blocks(loss, rng):
    model = nets.MLP((5, 4, 3), activation="tanh")
    X = rng.standard_normal((1, 5))
    y = rng.integers(0, 3, 1) if loss == "cross_entropy" else rng.standard_normal((1, 3))
    obj = model.objective(loss, X, y)
    theta = model.init_theta(2)
    G = obj.ggn(theta)
    for layer, omega, gamma in kfac_blocks(obj, theta):
        idx = block_indices(obj.layout, layer.weight, layer.bias)
        np.testing.assert_allclose(np.kron(gamma, omega), G[np.ix_(idx, idx)], rtol=1e-10, atol=1e-14)
        # the other order is wrong (it is the column-major block)
        assert not np.allclose(np.kron(omega, gamma), G[np.ix_(idx, idx)], atol=1e-8)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_one_location_conv_block_is_the_exact_gauss_newton_block(rng):
    """KFC with T = 1: a 3 x 3 kernel over a 3 x 3 input gives one output location."""
    model = nets.Sequential(nets.Conv2d(2, 4, 3), nets.Tanh(), nets.Flatten(), nets.Linear(4, 3))
    obj = model.objective("cross_entropy", rng.standard_normal((1, 2, 3, 3)), rng.integers(0, 3, 1))
    theta = model.init_theta(3)
    G = obj.ggn(theta)
    (conv, omega, gamma), _ = kfac_blocks(obj, theta)
    assert (conv.examples, conv.locations) == (1, 1)
    idx = block_indices(obj.layout, conv.weight, conv.bias)
    np.testing.assert_allclose(np.kron(gamma, omega), G[np.ix_(idx, idx)], rtol=1e-10, atol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_kfc_normalisation_over_locations(rng):
    """T > 1: Ω sums over locations and is averaged over examples; Γ averages over
    locations. Both are checked on their own definitions, and on a batch the Kronecker
    block is only an approximation of G (relative error printed by the curvature report)."""
    model = nets.Sequential(nets.Conv2d(1, 2, 2), nets.Tanh(), nets.Flatten(), nets.Linear(8, 3))
    X, y = rng.standard_normal((2, 1, 3, 3)), rng.integers(0, 3, 2)
    obj = model.objective("cross_entropy", X, y)
    theta = model.init_theta(0)
    (conv, omega, gamma), _ = kfac_blocks(obj, theta)
    assert (conv.examples, conv.locations) == (2, 4)
    patches = np.array([[X[n, 0, p:p + 2, q:q + 2].reshape(-1) for p in range(2) for q in range(2)] for n in range(2)])
    patches = np.concatenate([patches, np.ones((2, 4, 1))], axis=2)
    np.testing.assert_allclose(omega, np.einsum("ntk,ntl->kl", patches, patches) / 2, rtol=1e-12)
    g = conv.seed_outputs.reshape(3, 2, 4, 2)
    np.testing.assert_allclose(gamma, np.einsum("knto,kntp->op", g, g) / 4, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_the_sampled_factor_averages_to_the_exact_one(rng):
    model = nets.MLP((3, 4, 3), activation="tanh")
    obj = model.objective("cross_entropy", rng.standard_normal((4, 3)), rng.integers(0, 3, 4))
    theta = model.init_theta(0)
    exact = [gamma for _, _, gamma in kfac_blocks(obj, theta)]
    draws = 400
    samples = [[gamma for _, _, gamma in kfac_blocks(obj, theta, "sample", seed)] for seed in range(draws)]
    for i, want in enumerate(exact):
        stack = np.stack([s[i] for s in samples])
        stderr = stack.std(axis=0) / math.sqrt(draws)
        assert np.all(np.abs(stack.mean(axis=0) - want) <= 5 * stderr + 1e-12)


# ---------------------------------------------------------------- the step


def mlp_problem(rng, batch=16):
    model = nets.MLP((4, 5, 3), activation="tanh")
    X = rng.standard_normal((batch, 4))
    obj = model.objective("cross_entropy", X, (X @ rng.standard_normal((4, 3))).argmax(axis=1))  # learnable labels
    return obj, model.init_theta(0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_damped_inverses_use_the_pi_correction():
    omega, gamma = 4 * np.eye(2), np.eye(3)  # mean eigenvalues 4 and 1: π = 2
    inv_omega, inv_gamma = KFAC.damped_inverses(omega, gamma, 0.09)  # γ = 0.3
    np.testing.assert_allclose(inv_omega, np.eye(2) / (4 + 2 * 0.3), rtol=1e-14)
    np.testing.assert_allclose(inv_gamma, np.eye(3) / (1 + 0.3 / 2), rtol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_the_direction_is_the_dense_kronecker_solve(rng):
    obj, theta = mlp_problem(rng)
    opt = KFAC(damping=0.3, lr=1.0)
    state = opt.init(theta)
    _, state, _ = opt.step(obj, theta, state)
    cap = obj.capture(theta)
    g = cap.grad
    covered = np.ones(theta.shape, bool)
    Delta = opt.direction(obj, g, cap.layers, covered, state)
    for layer in cap.layers:
        omega, gamma = state["omega"][layer.weight], state["gamma"][layer.weight]
        pi = math.sqrt((np.trace(omega) / len(omega)) / (np.trace(gamma) / len(gamma)))
        damped = np.kron(gamma + math.sqrt(0.3) / pi * np.eye(len(gamma)), omega + pi * math.sqrt(0.3) * np.eye(len(omega)))
        idx = block_indices(obj.layout, layer.weight, layer.bias)
        np.testing.assert_allclose(Delta[idx], -np.linalg.solve(damped, g[idx]), rtol=1e-10)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_alpha_and_mu_minimise_the_quadratic_model(rng):
    obj, theta = mlp_problem(rng)
    opt = KFAC(damping=0.1, adapt="fixed")
    state = opt.init(theta)
    theta1, state, info1 = opt.step(obj, theta, state)
    prev = state["delta"]
    theta2, state2, info2 = opt.step(obj, theta1, state)
    assert info1["mu"] == 0.0 and info2["mu"] != 0.0
    delta = theta2 - theta1
    g = obj.grad(theta1)
    residual = g + obj.ggn_vp(theta1, delta) + 0.1 * delta  # ∇M(δ) with M = gᵀδ + ½ δᵀ(G + λI)δ
    cap = obj.capture(theta1)
    Delta = opt.direction(obj, g, cap.layers, np.ones(theta.shape, bool), state2)
    assert abs(Delta @ residual) < 1e-10 * np.linalg.norm(Delta) * np.linalg.norm(g)
    assert abs(prev @ residual) < 1e-10 * np.linalg.norm(prev) * np.linalg.norm(g)
    np.testing.assert_allclose(delta, info2["lr"] * Delta + info2["mu"] * prev, rtol=1e-10, atol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_factor_averages_follow_the_papers_decay(rng):
    obj, theta = mlp_problem(rng)
    opt = KFAC(factor_decay=0.95, lr=0.1, adapt="fixed")
    states = [opt.init(theta)]
    thetas = [theta]
    for _ in range(3):
        t, s, _ = opt.step(obj, thetas[-1], states[-1])
        thetas.append(t), states.append(s)
    key = obj.layout.names[0]
    fresh = [dict((layer.weight, (o, g)) for layer, o, g in kfac_blocks(obj, t))[key] for t in thetas[:3]]
    np.testing.assert_allclose(states[1]["omega"][key], fresh[0][0], rtol=1e-12)
    want = 0.5 * fresh[0][1] + 0.5 * fresh[1][1]  # ε = min(1 - 1/2, 0.95)
    np.testing.assert_allclose(states[2]["gamma"][key], want, rtol=1e-12)
    want = (2 / 3) * want + (1 / 3) * fresh[2][0 + 1]
    np.testing.assert_allclose(states[3]["gamma"][key], want, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_levenberg_marquardt_uses_omega_to_the_t1(rng):
    obj, theta = mlp_problem(rng)
    opt = KFAC(damping=0.5, adapt_every=2)
    state = opt.init(theta)
    infos = []
    for _ in range(6):
        theta, state, info = opt.step(obj, theta, state)
        infos.append(info)
    assert all(i["fallback"] is None for i in infos)  # no rejection here: λ moves only on steps 2, 4, 6
    for k, info in enumerate(infos[:-1]):
        rho = info["rho"]
        assert rho == pytest.approx(info["actual"] / info["predicted"], rel=1e-14)
        factor = (19 / 20) ** 2 if rho > 0.75 else (20 / 19) ** 2 if rho < 0.25 else 1.0
        want = info["damping"] * (factor if (k + 1) % 2 == 0 else 1.0)
        assert infos[k + 1]["damping"] == pytest.approx(want, rel=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_damping_never_falls_below_its_floor():
    """On a quadratic the model is exact (ρ = 1), so λ falls by 19/20 per step (T₁ = 1) to the floor."""
    q = Quadratic(np.diag([1.0, 4.0, 9.0]), np.array([1.0, -2.0, 3.0]))
    theta = np.array([3.0, 3.0, 3.0])
    opt = KFAC(damping=0.02, min_damping=0.0175, adapt_every=1)
    state = opt.init(theta)
    dampings, rhos = [], []
    for _ in range(3):  # then θ is at the minimum to round-off, where ρ is noise
        theta, state, info = opt.step(q, theta, state)
        dampings.append(state["damping"]), rhos.append(info["rho"])
    assert rhos == pytest.approx([1.0] * 3, rel=1e-6)
    assert dampings == pytest.approx([0.019, 0.01805, 0.0175], rel=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_step_that_raises_the_loss_is_rejected():
    q = Quadratic(np.diag([1.0, 4.0]), np.array([1.0, -2.0]))
    theta = np.array([3.0, 3.0])
    opt = KFAC(lr=10.0, damping=0.01)  # ten times the damped Newton step: overshoots
    new, state, info = opt.step(q, theta, opt.init(theta))
    assert info["fallback"] == "rejected" and info["actual"] > 0 and info["lr"] == 0.0
    assert np.array_equal(new, theta) and not state["delta"].any()
    assert state["damping"] == pytest.approx(0.01 * (20 / 19) ** 5, rel=1e-14)
    assert state["stale"]  # the raised λ reaches the inverses at the next step
    _, after, info = opt.step(q, theta, state)
    assert info["inverses_refreshed"]
    paper = KFAC(lr=10.0, damping=0.01, reject=False)
    new, _, info = paper.step(q, theta, paper.init(theta))
    assert info["fallback"] is None and q.loss(new) > q.loss(theta)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_parameters_outside_the_layers_take_the_diagonal_fallback():
    A = np.diag([1.0, 4.0, 9.0])
    q = Quadratic(A, np.array([1.0, -2.0, 3.0]))
    theta = np.array([0.5, 0.5, 0.5])
    opt = KFAC(damping=0.25, lr=1.0, adapt="fixed")
    new, state, info = opt.step(q, theta, opt.init(theta))
    # z ⊙ (A z) = diag(A) exactly for a diagonal A, whatever the signs z
    np.testing.assert_allclose(state["diag"], np.diag(A), rtol=1e-14)
    np.testing.assert_allclose(new - theta, -q.grad(theta) / (np.diag(A) + 0.25), rtol=1e-14)
    assert info["kfac_layers"] == 0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_non_finite_direction_keeps_the_statistics_of_before_and_raises_damping(rng, monkeypatch):
    import optimizers.kfac as kfac_module

    obj, theta = mlp_problem(rng)
    opt = KFAC(damping=0.1, adapt_every=2, inverse_every=1)
    theta, state, _ = opt.step(obj, theta, opt.init(theta))
    real = kfac_module.kronecker_factors
    monkeypatch.setattr(kfac_module, "kronecker_factors", lambda layer: tuple(f * np.nan for f in real(layer)))
    new, after, info = opt.step(obj, theta, state)  # this step's factors are NaN
    assert info["fallback"] == "non_finite" and np.array_equal(new, theta)
    assert all(np.array_equal(after["omega"][k], state["omega"][k]) for k in state["omega"])  # not poisoned
    assert after["damping"] == pytest.approx(0.1 * (20 / 19) ** 2) and after["stale"]
    monkeypatch.setattr(kfac_module, "kronecker_factors", real)
    _, ok, info = opt.step(obj, theta, after)
    assert info["fallback"] is None and info["inverses_refreshed"]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_inverses_are_refreshed_every_t3_steps(rng):
    obj, theta = mlp_problem(rng)
    opt = KFAC(inverse_every=3, adapt="fixed")
    state = opt.init(theta)
    refreshed = []
    for _ in range(7):
        theta, state, info = opt.step(obj, theta, state)
        refreshed.append(info["inverses_refreshed"])
    assert refreshed == [True, False, False, True, False, False, True]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_state_round_trip_and_identical_next_step(rng, tmp_path):
    obj, theta = mlp_problem(rng)
    opt = KFAC(factor="sample", seed=5)
    state = opt.init(theta)
    for _ in range(2):
        theta, state, _ = opt.step(obj, theta, state)
    back = hdf5_round_trip(state, tmp_path / "state.h5")
    assert states_equal(back, state)
    a, sa, _ = opt.step(obj, theta, state)
    b, sb, _ = opt.step(obj, theta, back)
    assert np.array_equal(a, b) and states_equal(sa, sb)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_trains_a_small_mlp(rng):
    obj, theta = mlp_problem(rng, batch=64)
    opt = KFAC()
    state = opt.init(theta)
    start = obj.loss(theta)
    for _ in range(15):
        theta, state, _ = opt.step(obj, theta, state)
    assert obj.loss(theta) < 0.5 * start


@pytest.mark.parametrize("kwargs, message", [
    ({"damping": 0}, "damping"), ({"factor": "fisher"}, "factor"), ({"factor_decay": 1.0}, "factor_decay"),
    ({"inverse_every": 0}, "inverse_every"), ({"adapt": True}, "adapt"), ({"lr": -1.0}, "lr"),
    ({"momentum": "yes"}, "momentum"), ({"reject": 1}, "reject"), ({"seed": -1}, "seed"),
    ({"damping": 0.01, "min_damping": 0.1}, r"min_damping \(0.1\) must not exceed damping"),
])
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises((HyperparameterError, TypeError), match=rf"KFAC: {message}"):
        KFAC(**kwargs)
