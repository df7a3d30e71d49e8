"""Layer capture (tinygrad2.capture, Objective.capture) and the loss table's
Hessian factors and samples that K-FAC and Sophia-G seed it with.

The model here is written by hand and calls ``capture.record`` itself, so
these tests need no ``nets`` (tests/nets/test_capture.py covers its layers)."""
from __future__ import annotations

import numpy as np
import pytest

from tinygrad2 import Layout, Objective, Quadratic, Tensor, backend, capture, losses
from tinygrad2.memory import graph_elements
from tinygrad2.graph import reachable
from _helpers import D, host, npt

pytestmark = pytest.mark.usefixtures("float64")

LAYOUT = Layout([("w1", (4, 3), "weight"), ("b1", (4,), "bias"), ("w2", (3, 4), "weight")])


def two_layer(theta, X):
    """tanh MLP 3-4-3 (second layer without bias) that records both layers when capture is active."""
    p = LAYOUT.unflatten(theta)
    h = X @ p["w1"].T + p["b1"]
    if capture.active():
        h = capture.record("l1", "w1", "b1", X.data, h)
    a = h.tanh()
    z = a @ p["w2"].T
    if capture.active():
        z = capture.record("l2", "w2", None, a.data, z)
    return z


def objective(rng, loss="cross_entropy", batch=5):
    X = rng.standard_normal((batch, 3))
    y = rng.integers(0, 3, batch) if loss == "cross_entropy" else rng.standard_normal((batch, 3))
    return Objective(two_layer, loss, D(X), D(y), layout=LAYOUT), D(rng.standard_normal(LAYOUT.n))


def dense_output_hessian(table, z, y):
    """H_z as a (z.size, z.size) matrix from the closed-form product."""
    E = D(np.eye(z.size).reshape((z.size,) + z.shape))
    return table.hessian_vp(z, y, E).reshape(z.size, z.size)


# ---------------------------------------------------------------- the loss table's factors and samples


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_hessian_factor_squares_to_each_example_block(name, rng):
    table = losses.LOSSES[name]
    z = D(rng.standard_normal((4, 3)))
    y = D(rng.integers(0, 3, 4) if name == "cross_entropy" else rng.standard_normal((4, 3)))
    U = table.hessian_factor(z, y)
    H = dense_output_hessian(table, z, y).reshape(4, 3, 4, 3)
    for i in range(4):
        npt.assert_allclose(U[:, i, :].T @ U[:, i, :], H[i, :, i, :], rtol=1e-12, atol=1e-15)
        for j in range(4):
            if j != i:  # H_z is block-diagonal over examples
                assert np.abs(H[i, :, j, :]).max() == 0


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_hessian_sample_has_the_output_hessian_as_covariance(name, rng):
    table = losses.LOSSES[name]
    z = D(rng.standard_normal((3, 3)))
    y = D(rng.integers(0, 3, 3) if name == "cross_entropy" else rng.standard_normal((3, 3)))
    draws = 20000
    gen = backend.xp.random.default_rng(7)  # the backend's generator, as Objective.capture uses
    R = np.concatenate([host(table.hessian_sample(z, y, gen)) for _ in range(draws)]).reshape(draws, -1)
    cov = R.T @ R / draws
    H = host(dense_output_hessian(table, z, y))
    products = R[:, :, None] * R[:, None, :]
    stderr = products.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(cov - H) <= 5 * stderr + 1e-12), np.abs(cov - H).max()


def test_cross_entropy_sample_is_a_softmax_residual_of_one_sampled_label(rng):
    z = rng.standard_normal((6, 4))
    r = host(losses.LOSSES["cross_entropy"].hessian_sample(D(z), None, backend.xp.random.default_rng(0))[0]) * np.sqrt(6)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = p - r  # one 1 per row, zeros elsewhere
    npt.assert_allclose(np.sort(onehot, axis=1)[:, :-1], 0, atol=1e-15)
    npt.assert_allclose(onehot.max(axis=1), 1, rtol=1e-14)


def test_custom_losses_have_no_factor(rng):
    obj = Objective(two_layer, lambda out, y: (out * out).mean(), D(rng.standard_normal((4, 3))),
                    D(rng.standard_normal((4, 3))), layout=LAYOUT)
    theta = D(rng.standard_normal(LAYOUT.n))
    for factor in ("exact", "sample"):
        with pytest.raises(NotImplementedError, match="has no closed-form"):
            obj.capture(theta, factor=factor)
    assert obj.capture(theta).layers[0].seed_outputs is None


# ---------------------------------------------------------------- Objective.capture


@pytest.mark.parametrize("loss", sorted(losses.LOSSES))
def test_capture_gives_the_loss_gradient_and_per_row_cotangents(loss, rng):
    obj, theta = objective(rng, loss)
    value, grad = obj.loss_and_grad(theta)
    cap = obj.capture(theta, factor="exact")
    assert cap.loss == value and np.array_equal(cap.grad, grad)
    l1, l2 = cap.layers
    assert (l1.name, l1.weight, l1.bias, l2.bias) == ("l1", "w1", "b1", None)
    assert (l1.examples, l1.locations, l1.inputs.shape, l1.grad_outputs.shape) == (5, 1, (5, 3), (5, 4))
    parts = LAYOUT.unflatten(grad)
    npt.assert_allclose(l1.grad_outputs.T @ l1.inputs, parts["w1"], rtol=1e-12, atol=1e-15)
    npt.assert_allclose(l1.grad_outputs.sum(axis=0), parts["b1"], rtol=1e-12, atol=1e-15)
    npt.assert_allclose(l2.grad_outputs.T @ l2.inputs, parts["w2"], rtol=1e-12, atol=1e-15)


def test_exact_factor_seeds_rebuild_the_gauss_newton_block_of_each_example(rng):
    """With the exact factor, Σ_k Σ_rows (g_k ⊗ ā)(g_k ⊗ ā)ᵀ per example is that example's
    Gauss-Newton block; averaged over the batch, the layer's block of G."""
    obj, theta = objective(rng, batch=4)
    G = obj.ggn(theta)
    cap = obj.capture(theta, factor="exact")
    for layer, names in ((cap.layers[0], ("w1", "b1")), (cap.layers[1], ("w2",))):
        a = layer.inputs if layer.bias is None else np.hstack([layer.inputs, D(np.ones((4, 1)))])
        # the per-example weight gradients of seed k, as rows of the layer's (out, in [+1]) matrix
        per = np.einsum("kio,ia->kioa", layer.seed_outputs, a)
        out, width = per.shape[2], per.shape[3]
        cols = [LAYOUT[names[0]].slice]
        flat = per[..., : width - (layer.bias is not None)].reshape(per.shape[0], 4, -1)
        if layer.bias is not None:
            flat = np.concatenate([flat, per[..., -1]], axis=2)
            cols.append(LAYOUT[names[1]].slice)
        idx = D(np.concatenate([np.arange(n)[s] for s, n in zip(cols, [LAYOUT.n] * 2)]))
        block = np.einsum("kip,kiq->pq", flat, flat)
        npt.assert_allclose(block, G[np.ix_(idx, idx)], rtol=1e-10, atol=1e-13)
        assert out == LAYOUT[names[0]].shape[0]


def test_sample_grad_is_the_backpropagated_sample(rng):
    obj, theta = objective(rng)
    cap = obj.capture(theta, factor="sample", seed=11)
    z = obj.outputs(theta)
    r = losses.LOSSES["cross_entropy"].hessian_sample(z, obj.y, backend.xp.random.default_rng(11))
    th = Tensor(theta, requires_grad=True)
    two_layer(th, Tensor(obj.X)).backward(grad=Tensor(r[0]))
    assert cap.sample_grad.shape == (1, LAYOUT.n)
    npt.assert_allclose(cap.sample_grad[0], th.grad.data, rtol=1e-12, atol=1e-15)
    again = obj.capture(theta, factor="sample", seed=11)
    assert np.array_equal(again.sample_grad, cap.sample_grad)
    assert not np.array_equal(obj.capture(theta, factor="sample", seed=12).sample_grad, cap.sample_grad)


def test_capture_counts_one_loss_and_one_gradient(rng):
    obj, theta = objective(rng)
    obj.reset_counts()
    obj.capture(theta, factor="exact")
    assert obj.counts == {"nfev": 1, "ngev": 1, "nhvp": 0, "nggnvp": 0}


def test_closed_form_problems_have_no_layers_and_no_sample():
    q = Quadratic(D(np.diag([1.0, 2.0])), D(np.ones(2)))
    theta = D(np.array([0.5, -1.0]))
    cap = q.capture(theta, factor="exact")
    assert cap.layers == [] and cap.loss == q.loss(theta) and np.array_equal(cap.grad, q.grad(theta))
    with pytest.raises(NotImplementedError, match="Quadratic.capture: factor='sample' needs a model"):
        q.capture(theta, factor="sample")


@pytest.mark.parametrize("factor", ["fisher", True, "EXACT"])
def test_an_unknown_factor_is_refused(factor, rng):
    obj, theta = objective(rng)
    with pytest.raises(ValueError, match=r"capture: factor must be None, 'exact' or 'sample', got"):
        obj.capture(theta, factor=factor)


# ---------------------------------------------------------------- costs nothing when unused


def test_outside_a_recording_nothing_is_recorded_or_added_to_the_graph(rng):
    obj, theta = objective(rng)
    X = Tensor(obj.X)
    plain = graph_elements(two_layer(Tensor(theta, requires_grad=True), X))
    nodes_plain = len(reachable(two_layer(Tensor(theta, requires_grad=True), X))[0])
    with capture.recording() as records:
        out = two_layer(Tensor(theta, requires_grad=True), X)
    assert len(records) == 2 and not capture.active()
    assert len(reachable(out)[0]) == nodes_plain + 2  # one add per layer (the probe is a leaf)
    assert graph_elements(two_layer(Tensor(theta, requires_grad=True), X)) == plain
    with pytest.raises(RuntimeError, match="no recording"):
        capture.record("l1", "w1", "b1", obj.X, Tensor(D(np.zeros((5, 4)))))


def test_record_checks_the_input_rows(rng):
    with capture.recording():
        with pytest.raises(ValueError, match=r"layer 'c' inputs have shape \(5, 3\); expected \(20, k\)"):
            capture.record("c", "w", None, np.zeros((5, 3)), Tensor(D(np.zeros((5, 2, 2, 2)))))
