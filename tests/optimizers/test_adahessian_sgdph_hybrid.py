"""AdaHessian, SGD-PH and the SGD -> AdaHessian hybrid: closed-form
properties, finite-difference checks of the curvature they use, exact state
round trips through HDF5, and a smoke run on scikit-learn's digits."""
from __future__ import annotations

import numpy as np
import pytest

from optimizers import states_equal

from _helpers import hdf5_round_trip
from optimizers.adahessian import AdaHessian
from optimizers.hybrid import Hybrid
from optimizers.sgdph import SGDPH
from tinygrad2 import Tensor
from tinygrad2 import BaseObjective, Layout, Objective, Quadratic

# ---------------------------------------------------------------- problems


def mlp_layout(sizes, with_bias=True):
    spec = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        spec.append((f"W{i}", (a, b), "weight"))
        if with_bias:
            spec.append((f"b{i}", (b,), "bias"))
    return Layout(spec)


def mlp(sizes, X, y, with_bias=True, seed=0):
    """A tanh MLP with softmax cross-entropy; returns (objective, theta0)."""
    layout = mlp_layout(sizes, with_bias)
    depth = len(sizes) - 1

    def model(theta, X):
        p, h = layout.unflatten(theta), X
        for i in range(1, depth + 1):
            h = h @ p[f"W{i}"] + p[f"b{i}"] if with_bias else h @ p[f"W{i}"]
            if i < depth:
                h = h.tanh()
        return h

    rng = np.random.default_rng(seed)
    parts = {}
    for p in layout:
        fan_in = p.shape[0]
        parts[p.name] = rng.normal(size=p.shape) / np.sqrt(fan_in) if p.ndim == 2 else 0.1 * rng.normal(size=p.shape)
    return Objective(model, "cross_entropy", X, y, layout), layout.flatten(parts)


def digits(n=300):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X[:n] / 16.0).astype(np.float64), y[:n].astype(np.int64)


def small_data(n=40, d=5, c=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, c, size=n)


class DiagonalQuadratic(BaseObjective):
    """f(x) = ½ Σ a_i x_i² - bᵀx on an arbitrary layout: H = diag(a)."""

    def __init__(self, layout, a, b):
        super().__init__(layout)
        self.a, self.b = np.asarray(a, float), np.asarray(b, float)

    def _scalar(self, x):
        return (x * x * Tensor(self.a)).sum() * 0.5 - (x * Tensor(self.b)).sum()


def record_hvps(objective):
    """Make every HVP of ``objective`` (also those made inside block_row_sums)
    append its directions to the returned list."""
    calls, inner = [], objective.hvp

    def hvp(theta, V):
        calls.append(np.array(V, copy=True))
        return inner(theta, V)

    objective.hvp = hvp
    return calls


def run(opt, objective, theta, steps, state=None):
    state = opt.init(theta) if state is None else state
    infos = []
    for _ in range(steps):
        theta, state, info = opt.step(objective, theta, state)
        infos.append(info)
    return theta, state, infos


# ---------------------------------------------------------------- AdaHessian


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_draws_contain_both_signs(float64):
    obj = Quadratic(np.diag(np.arange(1.0, 65.0)))
    calls = record_hvps(obj)
    run(AdaHessian(), obj, np.ones(64), 5)
    assert len(calls) == 5
    for z in calls:
        assert set(np.unique(z)) == {-1.0, 1.0}
        assert 10 < (z > 0).sum() < 54  # about half of each sign
    assert not np.array_equal(calls[0], calls[1])  # a fresh vector per step


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_estimate_is_exact_when_the_hessian_is_diagonal(float64):
    a = np.array([3.0, -0.5, 7.0, 1e-3, -2.0, 11.0])  # indefinite on purpose
    obj = Quadratic(np.diag(a), np.ones(6))
    _, state, info = run(AdaHessian(), obj, np.linspace(-1, 1, 6), 1)
    np.testing.assert_array_equal(state["D"], np.abs(a))
    assert info[0]["hessian_diag_mean"] == pytest.approx(np.abs(a).mean())


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_is_newton_on_a_diagonal_spd_quadratic(float64):
    a = np.array([0.5, 2.0, 9.0, 40.0])
    obj = Quadratic(np.diag(a), np.array([1.0, -2.0, 3.0, 0.5]))
    opt = AdaHessian(lr=1.0, betas=(0.0, 0.999), eps=0.0, hessian_power=1.0)
    theta, state, _ = run(opt, obj, np.array([5.0, -3.0, 2.0, 1.0]), 1)
    # v_1 = (1 - β2) a², so √(v_1 / (1 - β2¹)) = a: the step is -g / a
    np.testing.assert_allclose(theta, obj.minimizer, rtol=1e-13, atol=1e-14)
    theta, _, _ = run(opt, obj, theta, 3, state)  # and it stays there
    np.testing.assert_allclose(theta, obj.minimizer, rtol=1e-13, atol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_with_power_zero_is_bias_corrected_momentum_sgd(float64):
    rng = np.random.default_rng(3)
    M = rng.normal(size=(6, 6))
    obj = Quadratic(M @ M.T + np.eye(6), rng.normal(size=6))
    lr, b1 = 0.05, 0.8
    theta0 = rng.normal(size=6)
    got, _, _ = run(AdaHessian(lr=lr, betas=(b1, 0.99), eps=0.0, hessian_power=0.0), obj, theta0, 8)
    x, m = theta0.copy(), np.zeros(6)
    for t in range(1, 9):
        m = b1 * m + (1 - b1) * (obj.A @ x - obj.b)
        x = x - lr * m / (1 - b1**t)
    np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-14)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_averages_4d_params_over_kh_kw_and_blocks_only_when_asked(float64):
    layout = Layout([("K", (2, 3, 2, 2), "weight"), ("W", (3, 4), "weight"), ("b", (4,), "bias"),
                     ("T", (2, 2, 2), "weight")])
    rng = np.random.default_rng(0)
    a = rng.uniform(-5, 5, size=layout.n)
    obj = DiagonalQuadratic(layout, a, np.zeros(layout.n))
    theta = rng.normal(size=layout.n)
    parts = layout.unflatten(np.abs(a))

    _, s, _ = run(AdaHessian(spatial_average=False), obj, theta, 1)
    np.testing.assert_array_equal(s["D"], np.abs(a))

    _, s, _ = run(AdaHessian(), obj, theta, 1)
    D = layout.unflatten(s["D"])
    K = np.broadcast_to(parts["K"].mean(axis=(2, 3), keepdims=True), (2, 3, 2, 2))
    np.testing.assert_allclose(D["K"], K, rtol=1e-15)
    assert not np.allclose(D["K"], parts["K"])  # it really averaged
    for name in ("W", "b", "T"):  # 2-D, 1-D and 3-D: untouched
        np.testing.assert_array_equal(D[name], parts[name])

    _, s, _ = run(AdaHessian(block_size=3), obj, theta, 1)
    D = layout.unflatten(s["D"])
    np.testing.assert_allclose(D["K"], K, rtol=1e-15)
    W = np.repeat(parts["W"].reshape(-1, 3).mean(axis=1), 3).reshape(3, 4)
    np.testing.assert_allclose(D["W"], W, rtol=1e-15)
    b = np.r_[np.full(3, parts["b"][:3].mean()), parts["b"][3:]]
    np.testing.assert_allclose(D["b"], b, rtol=1e-15)
    np.testing.assert_array_equal(D["T"], parts["T"])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_adahessian_update_each_reuses_the_estimate(float64):
    obj, theta = mlp((5, 4, 3), *small_data())
    calls = record_hvps(obj)
    _, state, infos = run(AdaHessian(update_each=3), obj, theta, 7)
    assert len(calls) == 3 and state["draws"] == 3 and state["nhvp"] == 3
    assert [i["hessian_refreshed"] for i in infos] == [True, False, False, True, False, False, True]
    assert [i["hessian_diag_mean"] for i in infos[:3]] == [infos[0]["hessian_diag_mean"]] * 3


# ---------------------------------------------------------------- SGD-PH


def momentum_sgd(obj, theta, lr, mu, wd, steps):
    buf = np.zeros_like(theta)
    for _ in range(steps):
        buf = mu * buf + (obj.grad(theta) + wd * theta)
        theta = theta - lr * buf
    return theta


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_sgdph_without_1d_params_is_momentum_sgd(float64, wd):
    obj, theta0 = mlp((5, 4, 3), *small_data(), with_bias=False)
    calls = record_hvps(obj)
    got, state, infos = run(SGDPH(lr=0.1, momentum=0.9, weight_decay=wd), obj, theta0, 6)
    assert calls == [] and state["nhvp"] == 0 and all(i["nhvp"] == 0 for i in infos)
    np.testing.assert_array_equal(got, momentum_sgd(obj, theta0, 0.1, 0.9, wd, 6))
    try:
        from optimizers.sgd import SGD
    except ImportError:
        return
    ref, _, _ = run(SGD(lr=0.1, momentum=0.9, weight_decay=wd), obj, theta0, 6)
    np.testing.assert_array_equal(got, ref)


def fd_hessian_product(obj, theta, v, h=1e-5):
    return (obj.grad(theta + h * v) - obj.grad(theta - h * v)) / (2 * h)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sgdph_row_sums_and_exact_diagonal_match_finite_differences(float64):
    obj, theta = mlp((5, 4, 3), *small_data())
    for name in ("b1", "b2"):
        s = obj.layout[name].slice
        rows, _ = SGDPH().curvature(obj, theta, [name])
        fd_rows = fd_hessian_product(obj, theta, obj.layout.indicator(name))[s]
        np.testing.assert_allclose(rows[0], np.abs(fd_rows), rtol=1e-6, atol=1e-9)
        diag, nhvp = SGDPH(diag="exact").curvature(obj, theta, [name])
        assert nhvp == obj.layout[name].size
        fd_diag = [fd_hessian_product(obj, theta, np.eye(obj.n)[i])[i] for i in range(s.start, s.stop)]
        np.testing.assert_allclose(diag[0], np.abs(fd_diag), rtol=1e-6, atol=1e-9)
    # the b1 block is not diagonal (W2 mixes the hidden units): row sums are not the diagonal
    rows, _ = SGDPH().curvature(obj, theta, ["b1"])
    diag, _ = SGDPH(diag="exact").curvature(obj, theta, ["b1"])
    assert np.abs(rows[0] - diag[0]).max() > 0.1 * np.abs(diag[0]).max()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sgdph_row_sums_of_a_softmax_output_bias_vanish(float64):
    """Why the official code hands the last 1-D tensor to SGD: adding a constant
    to every output bias leaves softmax cross-entropy unchanged, so H_kk · 1 = 0
    there, while the exact diagonal p (1 - p) averaged over the batch is not."""
    obj, theta = mlp((5, 4, 3), *small_data())
    rows, _ = SGDPH().curvature(obj, theta, ["b2"])
    diag, _ = SGDPH(diag="exact").curvature(obj, theta, ["b2"])
    assert np.abs(rows[0]).max() < 1e-14 and diag[0].min() > 1e-2


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sgdph_visits_1d_tensors_round_robin_with_one_row_sum_hvp_each(float64):
    obj, theta = mlp((5, 4, 4, 3), *small_data())  # 1-D: b1, b2, b3
    calls = record_hvps(obj)
    _, state, infos = run(SGDPH(), obj, theta, 7)
    order = ["b1", "b2", "b3", "b1", "b2", "b3", "b1"]
    assert [i["hessian_groups"] for i in infos] == [[k] for k in order]
    assert len(calls) == 7
    for V, name in zip(calls, order):
        np.testing.assert_array_equal(V, obj.layout.indicator(name))
    assert state["visits"] == [3, 2, 2] and state["cursor"] == 1
    # schedule "all": every 1-D tensor every step, in one batched HVP
    calls.clear()
    _, state, infos = run(SGDPH(schedule="all"), obj, theta, 2)
    assert len(calls) == 2 and calls[0].shape == (3, obj.n) and state["visits"] == [2, 2, 2]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("quirk", [False, True])
def test_sgdph_first_step_follows_the_update_rule(float64, quirk):
    obj, theta = mlp((5, 4, 3), *small_data())
    lr, mu, mu_h, eps, tau, wd = 0.1, 0.9, 0.8, 1e-4, 1e-3, 0.01
    opt = SGDPH(lr=lr, momentum=mu, hessian_momentum=mu_h, eps=eps, second_order_lr=tau,
                weight_decay=wd, official_last_1d_sgd=quirk)
    new, state, _ = opt.step(obj, theta, opt.init(theta))
    g, L = obj.grad(theta), obj.layout
    expected = theta - lr * (g + wd * theta)  # weights (and, with the quirk, b2): SGD
    h1 = np.abs(obj.block_row_sums(theta, "b1"))
    diag = (1 - mu_h) * h1
    np.testing.assert_allclose(state["diag"][L["b1"].slice], diag, rtol=1e-14)
    c = 1 - mu_h ** (1 // 2 + 1)
    s = L["b1"].slice
    expected[s] = theta[s] - lr * (tau * c * g[s] / (diag + eps) + wd * theta[s])
    if not quirk:  # b2 not visited yet: diag 0
        s = L["b2"].slice
        expected[s] = theta[s] - lr * (tau * c * g[s] / eps + wd * theta[s])
    np.testing.assert_allclose(new, expected, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------- Hybrid


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hybrid_switches_once_then_is_a_fresh_adahessian(float64):
    obj, theta0 = mlp((5, 4, 3), *small_data())
    hyb = Hybrid(threshold=1.0, sgd_lr=0.05, sgd_momentum=0.9, ada_lr=0.02, seed=7)
    theta, state = theta0, hyb.init(theta0)
    thetas = []
    for epoch, val in enumerate([2.0, 1.5, 0.9, 1.2, 0.5, float("nan")], start=1):
        for _ in range(2):
            theta, state, info = hyb.step(obj, theta, state)
            thetas.append(theta)
        state = hyb.end_epoch(theta, state, {"val_loss": val})
        if epoch == 3:
            switch_theta = theta
    assert state["phase"] == "adahessian" and state["switch_step"] == 6 and state["switch_epoch"] == 3
    assert info["phase"] == "adahessian" and info["switch_step"] == 6 and state["epoch"] == 6
    # SGD-momentum for the first 6 steps ...
    np.testing.assert_array_equal(thetas[5], momentum_sgd(obj, theta0, 0.05, 0.9, 0.0, 6))
    # ... then AdaHessian from scratch at the switch point
    ref, ref_state, _ = run(AdaHessian(lr=0.02, seed=7), obj, switch_theta, 6)
    np.testing.assert_array_equal(theta, ref)
    assert states_equal(state["ada"], ref_state)
    with pytest.raises(ValueError, match="val_loss"):
        hyb.end_epoch(theta, state, {"loss": 0.1})


# ---------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("make, name", [
    (lambda: AdaHessian(lr=-0.1), "lr"),
    (lambda: AdaHessian(betas=(1.0, 0.999)), "beta1"),
    (lambda: AdaHessian(betas=(0.9, -0.1)), "beta2"),
    (lambda: AdaHessian(betas=0.9), "betas"),
    (lambda: AdaHessian(eps=-1e-8), "eps"),
    (lambda: AdaHessian(weight_decay=-1.0), "weight_decay"),
    (lambda: AdaHessian(hessian_power=1.5), "hessian_power"),
    (lambda: AdaHessian(hessian_power=-0.1), "hessian_power"),
    (lambda: AdaHessian(update_each=0), "update_each"),
    (lambda: AdaHessian(block_size=0), "block_size"),
    (lambda: AdaHessian(seed=-1), "seed"),
    (lambda: SGDPH(lr=0.0), "lr"),
    (lambda: SGDPH(momentum=1.0), "momentum"),
    (lambda: SGDPH(hessian_momentum=-0.5), "hessian_momentum"),
    (lambda: SGDPH(eps=0.0), "eps"),
    (lambda: SGDPH(second_order_lr=-1e-3), "second_order_lr"),
    (lambda: SGDPH(weight_decay=-1e-4), "weight_decay"),
    (lambda: SGDPH(diag="hutchinson"), "diag"),
    (lambda: SGDPH(schedule="random"), "schedule"),
    (lambda: Hybrid(threshold=-1.0), "threshold"),
    (lambda: Hybrid(sgd_lr=-0.1), "sgd_lr"),
    (lambda: Hybrid(sgd_momentum=1.2), "sgd_momentum"),
    (lambda: Hybrid(ada_lr=0.0), "ada_lr"),
    (lambda: Hybrid(hessian_power=2.0), "hessian_power"),
    (lambda: Hybrid(lr=0.1), "ada_lr"),
    (lambda: Hybrid(bogus=1), "ada_kwargs"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(make, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[")):
        make()


# ---------------------------------------------------------------- state round trip


def _hybrid_switched(obj, theta):
    hyb = Hybrid(threshold=1.0, sgd_lr=0.05, ada_lr=0.02, seed=3)
    theta, state, _ = run(hyb, obj, theta, 2)
    state = hyb.end_epoch(theta, state, {"val_loss": 0.5})
    return hyb, theta, state


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("case", ["adahessian", "adahessian_update_each", "sgdph", "sgdph_exact_all",
                                  "hybrid_sgd", "hybrid_switched"])
def test_state_round_trips_through_hdf5_with_an_identical_next_step(float64, tmp_path, case):
    obj, theta = mlp((5, 4, 4, 3), *small_data())
    if case == "hybrid_switched":
        opt, theta, state = _hybrid_switched(obj, theta)
    else:
        opt = {
            "adahessian": AdaHessian(lr=0.05, weight_decay=1e-3, seed=11),
            "adahessian_update_each": AdaHessian(lr=0.05, update_each=2),
            "sgdph": SGDPH(weight_decay=1e-3),
            "sgdph_exact_all": SGDPH(diag="exact", schedule="all", official_last_1d_sgd=False),
            "hybrid_sgd": Hybrid(sgd_lr=0.05),
        }[case]
        state = opt.init(theta)
    theta, state, _ = run(opt, obj, theta, 3, state)
    loaded = hdf5_round_trip(state, tmp_path / "state.h5")
    a, sa, _ = opt.step(obj, theta, state)
    b, sb, _ = opt.step(obj, theta, loaded)
    np.testing.assert_array_equal(a, b)
    assert states_equal(sa, sb)


# ---------------------------------------------------------------- digits


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", ["adahessian", "sgdph", "sgdph_exact", "hybrid"])
def test_each_optimizer_decreases_the_loss_of_an_mlp_on_digits(float64, name):
    obj, theta = mlp((64, 16, 10), *digits())
    opt = {
        "adahessian": AdaHessian(lr=0.15),
        "sgdph": SGDPH(lr=0.1),
        "sgdph_exact": SGDPH(lr=0.1, diag="exact"),
        "hybrid": Hybrid(threshold=2.2, sgd_lr=0.1, ada_lr=0.05),
    }[name]
    state, start = opt.init(theta), obj.loss(theta)
    for step in range(1, 11):
        theta, state, info = opt.step(obj, theta, state)
        assert np.isfinite(info["loss"])
        if step % 3 == 0:
            state = opt.end_epoch(theta, state, {"val_loss": obj.loss(theta)})
    if name == "hybrid":
        assert state["phase"] == "adahessian" and 0 < state["switch_step"] < 10
    assert obj.loss(theta) < 0.9 * start
