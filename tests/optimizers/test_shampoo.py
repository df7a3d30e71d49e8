"""Shampoo: one step against L^{-1/4} G R^{-1/4} computed here with SciPy,
closed forms for orthogonal and rank-one gradients, the diagonal fallbacks
(1-D parameters: diagonal AdaGrad; a side over the size limit: the diagonal
of its preconditioner), grafting's step norms, the root-recomputation
schedule, conv kernels as (out, in·kh·kw) matrices, loss decrease on a small
MLP and a quadratic, the HDF5 round trip, and bad hyper-parameters.

float64, NumPy backend. The parameter structure comes from a
``tinygrad2.Layout`` put on a closed-form objective (the optimizer reads
only ``objective.layout``), or from a ``nets`` model.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import fractional_matrix_power

import nets
from optimizers import Adam, states_equal
from optimizers.base import HyperparameterError
from optimizers.shampoo import Shampoo
from tinygrad2 import Layout, Quadratic

from _helpers import hdf5_round_trip

pytestmark = pytest.mark.usefixtures("float64")


def on_layout(objective, layout):
    """The objective with its parameters described by ``layout`` (same n)."""
    assert layout.n == objective.layout.n
    objective.layout = layout
    return objective


def quadratic_on(layout, seed=0):
    """½ θᵀAθ - bᵀθ, A symmetric positive definite (eigenvalues in [1, ~5]), on ``layout``."""
    rng = np.random.default_rng(seed)
    n = layout.n
    M = rng.normal(size=(n, n))
    return on_layout(Quadratic(M @ M.T / n + np.eye(n), rng.normal(size=n)), layout)


def linear_on(layout, c):
    """f(θ) = cᵀθ (a quadratic with A = 0): the gradient is c everywhere."""
    return on_layout(Quadratic(np.zeros((layout.n, layout.n)), -c), layout)


def inv_root(S, p=4):
    """S^{-1/p} by SciPy (real part; S is symmetric positive definite here)."""
    return np.real(fractional_matrix_power(S, -1.0 / p))


def steps(opt, objective, theta, k):
    """(thetas, states, infos, grads) of k steps; grads[i] is the gradient at thetas[i]."""
    state, thetas, states, infos, grads = opt.init(theta), [theta], [], [], []
    for _ in range(k):
        grads.append(objective.grad(theta))
        theta, state, info = opt.step(objective, theta, state)
        thetas.append(theta)
        states.append(state)
        infos.append(info)
    return thetas, states, infos, grads


# ---------------------------------------------------------------- the matrix update


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("beta2", [None, 0.9])
def test_two_steps_on_a_matrix_are_L_inv_quarter_G_R_inv_quarter(beta2):
    layout = Layout([("W", (3, 5), "weight")])
    objective, eps, lr = quadratic_on(layout), 1e-2, 0.5
    theta0 = np.random.default_rng(1).normal(size=15)
    opt = Shampoo(lr=lr, eps=eps, beta2=beta2, graft=None)
    thetas, _, infos, grads = steps(opt, objective, theta0, 2)
    L, R = eps * np.eye(3), eps * np.eye(5)
    for t in range(2):
        G = grads[t].reshape(3, 5)
        if beta2 is None:  # the paper's Algorithm 1: sums
            L, R = L + G @ G.T, R + G.T @ G
        else:
            L, R = beta2 * L + (1 - beta2) * G @ G.T, beta2 * R + (1 - beta2) * G.T @ G
        expected = thetas[t] - lr * (inv_root(L) @ G @ inv_root(R)).reshape(-1)
        np.testing.assert_allclose(thetas[t + 1], expected, rtol=1e-10, atol=1e-12)
        assert infos[t]["matrix_tensors"] == 1 and infos[t]["diagonal_tensors"] == 0
        assert infos[t]["preconditioner_refreshed"] is True and infos[t]["graft_scale_mean"] is None


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_scaled_orthogonal_gradient_is_divided_by_sqrt_of_eps_plus_s_squared():
    # G = s Q: G Gᵀ = Gᵀ G = s² I, so L = R = (ε + s²) I and D = G / √(ε + s²)
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))
    s, eps = 3.0, 0.25
    layout = Layout([("W", (4, 4), "weight")])
    theta0 = np.zeros(16)
    theta1, _, _ = Shampoo(lr=1.0, eps=eps, graft=None).step(linear_on(layout, s * Q.reshape(-1)), theta0,
                                                            Shampoo(graft=None).init(theta0))
    np.testing.assert_allclose(theta1, -s * Q.reshape(-1) / np.sqrt(eps + s**2), rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_rank_one_gradient_keeps_its_direction_with_length_s_over_sqrt_eps_plus_s_squared():
    # G = s u vᵀ (unit u, v): L^{-1/4} u = (ε + s²)^{-1/4} u, vᵀ R^{-1/4} = (ε + s²)^{-1/4} vᵀ
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=3), rng.normal(size=6)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    s, eps = 2.0, 1e-2
    G = s * np.outer(u, v)
    layout = Layout([("W", (3, 6), "weight")])
    opt = Shampoo(lr=1.0, eps=eps, graft=None)
    theta0 = np.zeros(18)
    theta1, state, _ = opt.step(linear_on(layout, G.reshape(-1)), theta0, opt.init(theta0))
    np.testing.assert_allclose(theta1, -(s / np.sqrt(eps + s**2)) * np.outer(u, v).reshape(-1), rtol=1e-10)
    np.testing.assert_allclose(state["tensors"][0]["L"], eps * np.eye(3) + G @ G.T, rtol=1e-15)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_eigenvalues_are_floored_at_eps_so_roundoff_gives_no_nan():
    # G = s u vᵀ with s = 1e8: L = εI + s² u uᵀ has eigenvalues >= ε = 1e-12 exactly, but eigh's
    # round-off is ~ 1e-16 · ||L|| = 1, so computed eigenvalues come out negative
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=4), rng.normal(size=3)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    s, eps = 1e8, 1e-12
    L = eps * np.eye(4) + s**2 * np.outer(u, u)
    assert np.linalg.eigvalsh(L).min() < 0  # what the floor guards against: a NaN root
    opt = Shampoo(lr=1.0, eps=eps, graft=None)
    assert np.isfinite(opt.inverse_root(L)).all()
    layout = Layout([("W", (4, 3), "weight")])
    theta1, _, _ = opt.step(linear_on(layout, s * np.outer(u, v).reshape(-1)), np.zeros(12), opt.init(np.zeros(12)))
    assert np.isfinite(theta1).all()  # and near the exact -u vᵀ (the ε-directions' round-off is amplified)
    np.testing.assert_allclose(theta1, -np.outer(u, v).reshape(-1), atol=1e-2)


# ---------------------------------------------------------------- diagonal fallbacks


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_1d_parameter_gets_diagonal_adagrad_and_a_matrix_next_to_it_shampoo():
    layout = Layout([("W", (2, 3), "weight"), ("b", (3,), "bias")])
    objective, eps, lr = quadratic_on(layout, seed=4), 1e-4, 0.1
    thetas, states, infos, grads = steps(Shampoo(lr=lr, eps=eps, graft=None), objective,
                                         np.random.default_rng(5).normal(size=9), 4)
    h = np.full(3, eps)
    for t in range(4):
        g = grads[t][6:]
        h = h + g * g  # AdaGrad's accumulator, started at ε
        np.testing.assert_allclose(thetas[t + 1][6:], thetas[t][6:] - lr * g / np.sqrt(h), rtol=1e-12)
        np.testing.assert_allclose(states[t]["tensors"][1]["h"], h, rtol=1e-12)
        assert infos[t]["matrix_tensors"] == 1 and infos[t]["diagonal_tensors"] == 1
    assert [e["path"] for e in states[-1]["tensors"]] == ["matrix", "diagonal"]


class WithoutLayout:
    """An objective whose ``layout`` is None (everything else delegated)."""

    layout = None

    def __init__(self, objective):
        self.objective = objective

    def __getattr__(self, name):
        return getattr(self.objective, name)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_objective_without_layout_is_one_1d_parameter():
    objective = WithoutLayout(quadratic_on(Layout.single(5), seed=6))
    theta0 = np.ones(5)
    opt = Shampoo(lr=0.3, eps=1e-3, graft=None)
    theta1, state, info = opt.step(objective, theta0, opt.init(theta0))
    g = objective.grad(theta0)
    np.testing.assert_allclose(theta1, theta0 - 0.3 * g / np.sqrt(1e-3 + g * g), rtol=1e-12)
    assert [e["name"] for e in state["tensors"]] == ["theta"]
    assert info["diagonal_tensors"] == 1 and info["matrix_tensors"] == 0
    assert info["preconditioner_refreshed"] is False


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("limit, full_sides", [(5, "L"), (2, "")])
def test_a_side_over_the_size_limit_uses_the_diagonal_of_its_preconditioner(limit, full_sides):
    layout = Layout([("W", (3, 7), "weight")])
    objective, eps, lr = quadratic_on(layout, seed=7), 1e-3, 0.2
    opt = Shampoo(lr=lr, eps=eps, graft=None, max_preconditioner_dim=limit)
    thetas, states, infos, grads = steps(opt, objective, np.random.default_rng(8).normal(size=21), 3)
    L, r = eps * np.eye(3), np.full(7, eps)
    for t in range(3):
        G = grads[t].reshape(3, 7)
        L, r = L + G @ G.T, r + (G * G).sum(axis=0)  # r = diag(R): column sums of G∘G
        left = inv_root(L) if "L" in full_sides else np.diag(np.diag(L) ** -0.25)
        expected = thetas[t] - lr * (left @ G * r**-0.25).reshape(-1)
        np.testing.assert_allclose(thetas[t + 1], expected, rtol=1e-10)
        assert infos[t]["diagonal_sides"] == 2 - len(full_sides)
    entry = states[-1]["tensors"][0]
    assert entry["R"].shape == (7,) and entry["R_root"] is None
    assert entry["L"].shape == ((3, 3) if full_sides else (3,))


# ---------------------------------------------------------------- grafting


def per_tensor_step_norms(layout, before, after):
    return np.array([np.linalg.norm(after[p.slice] - before[p.slice]) for p in layout])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sgd_grafting_gives_each_tensor_the_sgd_step_norm():
    layout = Layout([("W", (3, 4), "weight"), ("b", (4,), "bias"), ("K", (2, 2, 2, 2), "weight")])
    objective, lr = quadratic_on(layout, seed=9), 0.05
    thetas, _, infos, grads = steps(Shampoo(lr=lr, graft="sgd"), objective,
                                    np.random.default_rng(10).normal(size=layout.n), 4)
    for t in range(4):
        sgd = np.array([lr * np.linalg.norm(grads[t][p.slice]) for p in layout])
        np.testing.assert_allclose(per_tensor_step_norms(layout, thetas[t], thetas[t + 1]), sgd, rtol=1e-10)
        assert infos[t]["graft_scale_mean"] > 0


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adam_grafting_gives_each_tensor_adams_step_norm():
    layout = Layout([("W", (3, 4), "weight"), ("b", (4,), "bias")])
    objective, lr, (b1, b2), eps_a = quadratic_on(layout, seed=11), 0.01, (0.8, 0.95), 1e-6
    opt = Shampoo(lr=lr, graft="adam", graft_betas=(b1, b2), graft_eps=eps_a)
    thetas, _, _, grads = steps(opt, objective, np.random.default_rng(12).normal(size=layout.n), 5)
    m = v = np.zeros(layout.n)
    for t, g in enumerate(grads, start=1):  # Adam's step, computed here from the same gradients
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        adam = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps_a)
        expected = np.array([np.linalg.norm(adam[p.slice]) for p in layout])
        np.testing.assert_allclose(per_tensor_step_norms(layout, thetas[t - 1], thetas[t]), expected, rtol=1e-10)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adam_graft_on_a_1d_problem_matches_adam_step_norm_of_optimizers_adam():
    objective = quadratic_on(Layout.single(6), seed=13)
    theta0 = np.random.default_rng(14).normal(size=6)
    shampoo, adam = Shampoo(lr=0.01), Adam(lr=0.01)
    theta_s, _, _ = shampoo.step(objective, theta0, shampoo.init(theta0))
    theta_a, _, _ = adam.step(objective, theta0, adam.init(theta0))
    assert np.linalg.norm(theta_s - theta0) == pytest.approx(np.linalg.norm(theta_a - theta0), rel=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_zero_gradient_tensor_takes_no_step_and_no_nan():
    layout = Layout([("W", (2, 3), "weight"), ("b", (2,), "bias")])
    c = np.concatenate([np.zeros(6), [1.0, -2.0]])
    for graft in ("adam", "sgd", None):
        opt = Shampoo(lr=0.1, graft=graft)
        theta1, _, _ = opt.step(linear_on(layout, c), np.zeros(8), opt.init(np.zeros(8)))
        assert np.isfinite(theta1).all() and not theta1[:6].any() and theta1[6:].all()


# ---------------------------------------------------------------- schedule, conv, momentum


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_roots_are_recomputed_exactly_on_steps_1_plus_multiples_of_T():
    T, k, lr = 3, 8, 0.1
    layout = Layout([("W", (3, 2), "weight")])
    objective = quadratic_on(layout, seed=15)
    opt = Shampoo(lr=lr, eps=1e-3, graft=None, precondition_every=T)
    thetas, states, infos, grads = steps(opt, objective, np.random.default_rng(16).normal(size=6), k)
    refreshed = [t % T == 1 for t in range(1, k + 1)]  # steps 1, 4, 7
    assert [info["preconditioner_refreshed"] for info in infos] == refreshed
    assert [s["refreshes"] for s in states] == list(np.cumsum(refreshed))
    for t in range(k):
        entry = states[t]["tensors"][0]
        if refreshed[t]:
            np.testing.assert_allclose(entry["L_root"], inv_root(entry["L"]), rtol=1e-10)
            np.testing.assert_allclose(entry["R_root"], inv_root(entry["R"]), rtol=1e-10)
        else:  # the last roots reused bit for bit, while L and R keep accumulating
            before = states[t - 1]["tensors"][0]
            assert states_equal(entry["L_root"], before["L_root"]) and states_equal(entry["R_root"], before["R_root"])
            assert not np.array_equal(entry["L"], before["L"])
        G = grads[t].reshape(3, 2)
        expected = thetas[t] - lr * (entry["L_root"] @ G @ entry["R_root"]).reshape(-1)
        np.testing.assert_allclose(thetas[t + 1], expected, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_conv_kernel_is_preconditioned_as_out_by_in_kh_kw():
    layout = Layout([("conv", (2, 3, 2, 2), "weight"), ("bias", (2,), "bias")])
    objective, eps, lr = quadratic_on(layout, seed=17), 1e-3, 0.1
    theta0 = np.random.default_rng(18).normal(size=layout.n)
    opt = Shampoo(lr=lr, eps=eps, graft=None)
    theta1, state, info = opt.step(objective, theta0, opt.init(theta0))
    G = objective.grad(theta0)[:24].reshape(2, 12)  # row-major (out, in·kh·kw)
    expected = inv_root(eps * np.eye(2) + G @ G.T) @ G @ inv_root(eps * np.eye(12) + G.T @ G)
    np.testing.assert_allclose(theta1[:24], theta0[:24] - lr * expected.reshape(-1), rtol=1e-10)
    conv = state["tensors"][0]
    assert conv["shape"] == [2, 3, 2, 2] and conv["L"].shape == (2, 2) and conv["R"].shape == (12, 12)
    assert info["matrix_tensors"] == 1 and info["diagonal_tensors"] == 1


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_heavy_ball_momentum_and_decoupled_weight_decay():
    layout = Layout([("W", (2, 2), "weight")])
    objective, lr, mu, wd = quadratic_on(layout, seed=19), 0.1, 0.5, 0.01
    theta0 = np.random.default_rng(20).normal(size=4)
    d1 = (theta0 - steps(Shampoo(lr=lr, graft="sgd"), objective, theta0, 1)[0][1]) / lr  # grafted D at θ0
    thetas, states, _, grads = steps(Shampoo(lr=lr, graft="sgd", momentum=mu, weight_decay=wd), objective, theta0, 2)
    np.testing.assert_allclose(states[0]["momentum_buffer"], d1, rtol=1e-12)  # b_1 = D_1
    np.testing.assert_allclose(thetas[1], theta0 - lr * (d1 + wd * theta0), rtol=1e-12)
    b2 = states[1]["momentum_buffer"]  # b_2 = μ b_1 + D_2 with ||D_2|| = ||g_2|| (SGD graft)
    assert np.linalg.norm(b2 - mu * d1) == pytest.approx(np.linalg.norm(grads[1]), rel=1e-12)
    np.testing.assert_allclose(thetas[2], thetas[1] - lr * (b2 + wd * thetas[1]), rtol=1e-12)


# ---------------------------------------------------------------- it trains


def mlp_objective(seed=0):
    rng = np.random.default_rng(seed)
    model = nets.MLP((4, 8, 3))
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
    return model.objective("cross_entropy", X, y), model.init_theta(seed, dtype=np.float64)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("kw", [{}, {"graft": "sgd", "lr": 0.5}, {"graft": None, "lr": 0.05},
                                {"precondition_every": 3, "beta2": 0.99, "momentum": 0.5}])
def test_decreases_the_loss_of_a_small_mlp(kw):
    objective, theta = mlp_objective()
    opt = Shampoo(**{"lr": 0.01, **kw})
    thetas, _, infos, _ = steps(opt, objective, theta, 10)
    losses = [info["loss"] for info in infos] + [objective.loss(thetas[-1])]
    assert losses[-1] < 0.95 * losses[0], losses
    assert infos[0]["matrix_tensors"] == 2 and infos[0]["diagonal_tensors"] == 2


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("layout", [Layout.single(12), Layout([("W", (3, 4), "weight")]),
                                    Layout([("W", (2, 5), "weight"), ("b", (2,), "bias")])])
def test_decreases_a_convex_quadratic(layout):
    objective = quadratic_on(layout, seed=21)
    x_star = np.linalg.solve(objective.A, objective.b)
    f_star, theta0 = objective.loss(x_star), np.random.default_rng(22).normal(size=12)
    thetas = steps(Shampoo(lr=0.05), objective, theta0, 20)[0]
    assert objective.loss(thetas[-1]) - f_star < 0.5 * (objective.loss(theta0) - f_star)


# ---------------------------------------------------------------- state


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_state_round_trips_through_hdf5_with_an_identical_next_step(tmp_path):
    objective, theta = mlp_objective(seed=1)
    opt = Shampoo(lr=0.01, momentum=0.9, precondition_every=2, max_preconditioner_dim=6)
    thetas, states, _, _ = steps(opt, objective, theta, 3)
    state = states[-1]
    assert [e["path"] for e in state["tensors"]] == ["matrix", "diagonal", "matrix", "diagonal"]
    assert state["tensors"][0]["L"].shape == (8,) and state["tensors"][2]["L"].shape == (3, 3)
    loaded = hdf5_round_trip(state, tmp_path / "state.h5")
    theta_a, state_a, info_a = opt.step(objective, thetas[-1], state)
    theta_b, state_b, info_b = opt.step(objective, thetas[-1].copy(), loaded)
    assert theta_a.tobytes() == theta_b.tobytes() and states_equal(state_a, state_b) and info_a == info_b
    fresh = hdf5_round_trip(opt.init(theta), tmp_path / "fresh.h5")
    assert fresh["tensors"] == [] and fresh["exp_avg"].shape == theta.shape


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_state_for_another_layout_is_refused():
    theta = np.zeros(6)
    opt = Shampoo()
    _, state, _ = opt.step(quadratic_on(Layout([("W", (2, 3), "weight")])), theta, opt.init(theta))
    with pytest.raises(ValueError, match=r"Shampoo\.step: the state's tensors .* do not match the layout"):
        opt.step(quadratic_on(Layout([("W", (3, 2), "weight")])), theta, state)


def test_defaults_and_unused_state():
    opt = Shampoo()
    assert (opt.lr, opt.eps, opt.beta2, opt.precondition_every, opt.max_preconditioner_dim, opt.graft) == \
        (1e-3, 1e-6, None, 1, 1024, "adam")
    state = Shampoo(graft="sgd").init(np.zeros(3))
    assert state["exp_avg"] is None and state["exp_avg_sq"] is None and state["momentum_buffer"] is None
    assert state["step"] == 0 and state["optimizer"] == "Shampoo" and state["theta_size"] == 3


# ---------------------------------------------------------------- bad hyper-parameters


@pytest.mark.parametrize("kw, error", [
    ({"lr": 0.0}, HyperparameterError), ({"lr": "0.1"}, TypeError),
    ({"eps": 0.0}, HyperparameterError), ({"eps": -1e-6}, HyperparameterError),
    ({"beta2": 1.0}, HyperparameterError), ({"beta2": 0.0}, HyperparameterError), ({"beta2": "0.9"}, TypeError),
    ({"precondition_every": 0}, HyperparameterError), ({"precondition_every": 2.0}, TypeError),
    ({"precondition_every": True}, TypeError), ({"max_preconditioner_dim": 0}, HyperparameterError),
    ({"graft": "adagrad"}, HyperparameterError), ({"graft": True}, HyperparameterError),
    ({"graft_betas": (0.9,)}, TypeError), ({"graft_betas": (0.9, 1.0)}, HyperparameterError),
    ({"graft_eps": 0.0}, HyperparameterError), ({"momentum": 1.0}, HyperparameterError),
    ({"momentum": -0.1}, HyperparameterError), ({"weight_decay": -1.0}, HyperparameterError),
])
def test_bad_hyperparameters_raise_naming_the_argument(kw, error):
    (name,) = kw
    with pytest.raises(error, match=rf"^Shampoo: {name}"):
        Shampoo(**kw)


# ---------------------------------------------------------------- dtype and overflow


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_float32_parameters_keep_float32_state_and_steps():
    layout = Layout([("W", (3, 4), "weight"), ("b", (4,), "bias")])
    objective = quadratic_on(layout, seed=23)
    opt = Shampoo(lr=0.01, momentum=0.9, max_preconditioner_dim=3)
    thetas, states, _, _ = steps(opt, objective, np.ones(16, dtype=np.float32), 2)
    assert thetas[-1].dtype == np.float32
    arrays = [states[-1][k] for k in ("exp_avg", "exp_avg_sq", "momentum_buffer")]
    arrays += [a for e in states[-1]["tensors"] for a in e.values() if isinstance(a, np.ndarray)]
    assert len(arrays) == 3 + 3 + 1 and all(a.dtype == np.float32 for a in arrays)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_an_overflowed_gradient_gives_a_nan_step_not_an_eigh_error():
    layout = Layout([("W", (2, 2), "weight")])
    opt = Shampoo(graft=None)
    with np.errstate(over="ignore", invalid="ignore"):  # g gᵀ overflows: the point of the test
        theta1, _, info = opt.step(linear_on(layout, np.full(4, 1e200)), np.zeros(4), opt.init(np.zeros(4)))
    assert np.isnan(theta1).all() and info["preconditioner_refreshed"] is True
