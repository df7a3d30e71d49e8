from __future__ import annotations
import math
import numpy as np
import pytest
import nets
import tinygrad2 as tg
from optimizers import KFAC
from optimizers.kfac import _solve_small
from tinygrad2 import rademacher


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


def test_kfac_solve_small_solves_and_falls_back_to_least_squares_then_to_zero():
    M = np.array([[2.0, 1.0], [1.0, 3.0]])
    np.testing.assert_allclose(_solve_small(M, M @ np.array([1.5, -0.5])), [1.5, -0.5], rtol=1e-14)
    # singular: np.linalg.solve raises; least squares gives the minimum-norm solution of x + y = 2
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])
    coef = _solve_small(singular, np.array([2.0, 2.0]))
    assert coef.shape == (2,)
    np.testing.assert_allclose(coef, [1.0, 1.0], rtol=1e-14)
    # no finite solution (an overflowed Gram matrix): c = 0, no step (the docstring's promise)
    for bad in (np.full((2, 2), np.inf), np.array([[np.inf, np.inf], [np.inf, 1.0]]), np.array([[np.nan, 1.0], [1.0, 1.0]])):
        coef = _solve_small(bad, np.array([2.0, 2.0]))
        assert coef.shape == (2,) and coef.dtype == np.float64
        np.testing.assert_array_equal(coef, [0.0, 0.0])
    np.testing.assert_array_equal(_solve_small(np.array([[0.0]]), np.array([0.0])), [0.0])


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


@pytest.mark.usefixtures("float64")
def test_kfac_on_layers_only_draws_one_seed_per_step_and_keeps_no_diagonal():
    obj, theta = _kfac_mlp()
    opt = KFAC(lr=0.1, adapt="fixed")
    state = opt.init(theta)
    for k in (1, 2):
        theta, state, info = opt.step(obj, theta, state)
        assert state["draws"] == k and info["kfac_layers"] == 2  # the factor sample's draw only
        assert not state["diag"].any()


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
