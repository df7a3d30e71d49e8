"""DatasetObjective: whole-data quantities as weighted means of per-batch ones,
against the single-batch Objective on the concatenated data (float64)."""
from __future__ import annotations

import weakref

import numpy as np
import pytest

import nets
import tinygrad2 as tg
from optimizers import DampedNewton, GaussNewton, HessianFree, Newton
from tinygrad2 import (
    CurvatureMemoryError, DatasetObjective, Layout, NonFiniteError, Objective, ObjectiveInterface, spectrum,
)

from _helpers import D, host, npt

pytestmark = pytest.mark.usefixtures("float64")

SIZES = (7, 5, 3)  # unequal, so an unweighted mean of batch means is wrong
RNG = np.random.default_rng(0)
X = RNG.standard_normal((sum(SIZES), 3))
LABELS = RNG.integers(0, 3, sum(SIZES))
TARGETS = RNG.standard_normal((sum(SIZES), 3))
LAYOUT = Layout([("W1", (3, 4), "weight"), ("b1", (4,), "bias"), ("W2", (4, 3), "weight"), ("b2", (3,), "bias")])
THETA = np.random.default_rng(1).standard_normal(LAYOUT.n) * 0.7
_HOST = {"X": X, "LABELS": LABELS, "TARGETS": TARGETS, "THETA": THETA}


@pytest.fixture(autouse=True)
def _data_on_the_backend():
    """The module's data as backend arrays for each test (device arrays under a device backend)."""
    globals().update({k: D(v) for k, v in _HOST.items()})
    yield
    globals().update(_HOST)


def mlp(theta, X):
    p = LAYOUT.unflatten(theta)
    return (X @ p["W1"] + p["b1"]).tanh() @ p["W2"] + p["b2"]


def split(A):
    bounds = np.cumsum(SIZES)[:-1].tolist()
    return np.split(A, bounds)


def setup(loss):
    y = LABELS if loss == "cross_entropy" else TARGETS
    full = Objective(mlp, loss, X, y, layout=LAYOUT)
    return full, DatasetObjective(full, list(zip(split(X), split(y))))


def rel(a, b):
    a, b = np.asarray(host(a), float), np.asarray(host(b), float)
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), 1e-300)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_every_quantity_equals_the_single_batch_objective(loss):
    full, data = setup(loss)
    V = D(np.random.default_rng(2).standard_normal((4, LAYOUT.n)))
    assert data.batch_size == full.batch_size == 15
    assert abs(data.loss(THETA) - full.loss(THETA)) <= 1e-14 * abs(full.loss(THETA))
    pairs = [
        (data.grad(THETA), full.grad(THETA)),
        (data.loss_and_grad(THETA)[1], full.loss_and_grad(THETA)[1]),
        (data.hvp(THETA, V), full.hvp(THETA, V)),
        (data.hvp(THETA, V[0]), full.hvp(THETA, V[0])),
        (data.ggn_vp(THETA, V), full.ggn_vp(THETA, V)),
        (data.hessian(THETA), full.hessian(THETA)),
        (data.hessian(THETA, chunk=5), full.hessian(THETA)),
        (data.ggn(THETA), full.ggn(THETA)),
        (data.hessian_diag(THETA), full.hessian_diag(THETA)),
        (data.hessian_diag(THETA, chunk=3), full.hessian_diag(THETA)),
        (data.hessian_diag(THETA, "hutchinson", 10, seed=3), full.hessian_diag(THETA, "hutchinson", 10, seed=3)),
        (data.hessian_diag(THETA, "hutchinson", 10, seed=3, chunk=4),
         full.hessian_diag(THETA, "hutchinson", 10, seed=3)),
    ]
    for name in LAYOUT.names:
        pairs += [(data.block_diag(THETA, name), full.block_diag(THETA, name)),
                  (data.block_diag(THETA, name, chunk=2), full.block_diag(THETA, name)),
                  (data.block_row_sums(THETA, name), full.block_row_sums(THETA, name))]
    for i, (a, b) in enumerate(pairs):
        assert a.shape == b.shape and rel(a, b) < 1e-13, (i, rel(a, b))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_an_unweighted_mean_of_batch_means_would_fail(loss):
    full, data = setup(loss)
    objs = [full.with_batch(Xb, yb) for Xb, yb in zip(split(X), split(full.y))]
    plain_loss = np.mean([host(o.loss(THETA)) for o in objs])
    plain_H = np.mean([host(o.hessian(THETA)) for o in objs], axis=0)
    assert abs(plain_loss - full.loss(THETA)) > 1e-3 * abs(full.loss(THETA))
    assert rel(plain_H, full.hessian(THETA)) > 1e-3
    assert rel(data.hessian(THETA), full.hessian(THETA)) < 1e-13


def test_mse_weighs_by_output_elements():
    # mse is a mean over all output elements: m_b = rows x outputs (here 3 per example)
    full = Objective(lambda th, X: X @ th.reshape(3, 3), "mse", X, TARGETS, layout=9)
    data = DatasetObjective.from_arrays(full, X, TARGETS, 4)  # 4, 4, 4, 3
    assert data._weight(data._held[0]) == 12 and data._weight(data._held[-1]) == 9
    assert rel(data.hessian(THETA[:9]), full.hessian(THETA[:9])) < 1e-13


def test_from_arrays_slices_into_batches():
    full, _ = setup("cross_entropy")
    data = DatasetObjective.from_arrays(full, X, LABELS, 6)
    assert [o.batch_size for o in data._held] == [6, 6, 3] and data.batch_size == 15
    assert rel(data.hessian(THETA), full.hessian(THETA)) < 1e-13
    assert "3 batches, 15 examples" in repr(data)


def test_a_streamed_source_is_read_once_per_product_and_never_held():
    full, held = setup("cross_entropy")
    calls, alive, peak = [0], [0], [0]

    def fresh(a):
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(a, lambda: alive.__setitem__(0, alive[0] - 1))
        return a

    def source():
        calls[0] += 1
        for Xb, yb in zip(split(X), split(LABELS)):
            yield fresh(Xb.copy()), yb

    data = DatasetObjective(full, source)
    assert calls[0] == 0 and data.streamed
    V = D(np.random.default_rng(4).standard_normal((3, LAYOUT.n)))
    results = [
        (data.loss(THETA), held.loss(THETA)),
        (data.grad(THETA), held.grad(THETA)),
        (data.loss_and_grad(THETA)[1], held.loss_and_grad(THETA)[1]),
        (data.hvp(THETA, V), held.hvp(THETA, V)),
        (data.ggn_vp(THETA, V), held.ggn_vp(THETA, V)),
        (data.hessian(THETA, chunk=8), held.hessian(THETA, chunk=8)),
        (data.ggn(THETA, chunk=8), held.ggn(THETA, chunk=8)),
        (data.hessian_diag(THETA, chunk=8), held.hessian_diag(THETA)),
        (data.block_diag(THETA, "W2", chunk=8), held.block_diag(THETA, "W2")),
        (data.block_row_sums(THETA, "W1"), held.block_row_sums(THETA, "W1")),
    ]
    for a, b in results:
        npt.assert_array_equal(a, b)  # same batches, same order: bit for bit
    assert calls[0] == len(results) == data.passes  # one pass per product
    assert peak[0] <= 2  # at most the batch in use and the one just released
    assert data.batch_size == 15 and calls[0] == len(results)  # known from the last pass
    assert isinstance(data, ObjectiveInterface)


def test_a_fresh_stream_counts_its_examples_on_demand():
    full, _ = setup("mse")
    data = DatasetObjective(full, lambda: zip(split(X), split(TARGETS)))
    assert data.batch_size == 15 and data.passes == 0


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_it_has_the_interface_and_whole_data_counts(loss):
    full, data = setup(loss)
    assert isinstance(data, ObjectiveInterface)
    V = D(np.ones((4, LAYOUT.n)))
    data.hvp(THETA, V)
    data.ggn_vp(THETA, V[:2])
    data.loss_and_grad(THETA)
    data.hessian(THETA)
    assert data.counts == {"nfev": 1, "ngev": 1, "nhvp": 4 + LAYOUT.n, "nggnvp": 2}
    assert data.batch_counts == {"nfev": 3, "ngev": 3, "nhvp": 3 * (4 + LAYOUT.n), "nggnvp": 6}
    data.reset_counts()
    assert set(data.counts.values()) == {0}
    one = data.with_batch(X[:4], full.y[:4])
    assert type(one) is Objective and one.batch_size == 4 and one.counts is data.counts
    shared = DatasetObjective(full, [(X, full.y)], counts=full.counts)
    shared.loss(THETA)
    assert full.counts["nfev"] >= 1 and shared.counts is full.counts


def test_spectrum_on_the_whole_data_set():
    full, data = setup("cross_entropy")
    H = full.hessian(THETA)
    exact = np.linalg.eigvalsh(host(H))[::-1][:3]
    top = spectrum.top_eigenvalues(lambda V: data.hvp(THETA, V), LAYOUT.n, k=3, dtype=np.float64, seed=0)
    npt.assert_allclose(top, exact, rtol=1e-9, atol=1e-12)
    trace, _ = spectrum.trace_hutchinson(lambda V: data.hvp(THETA, V), LAYOUT.n, 8, dtype=np.float64, seed=1)
    trace_full, _ = spectrum.trace_hutchinson(lambda V: full.hvp(THETA, V), LAYOUT.n, 8, dtype=np.float64, seed=1)
    assert abs(trace - trace_full) <= 1e-12 * abs(trace_full)
    trace_pp, _ = spectrum.trace_hutchpp(lambda V: data.hvp(THETA, V), LAYOUT.n, 12, dtype=np.float64, seed=1)
    trace_pp_full, _ = spectrum.trace_hutchpp(lambda V: full.hvp(THETA, V), LAYOUT.n, 12, dtype=np.float64, seed=1)
    assert abs(trace_pp - trace_pp_full) <= 1e-10 * abs(np.trace(H))
    grid, density = spectrum.slq_density(lambda V: data.hvp(THETA, V), LAYOUT.n, 10, 2, dtype=np.float64, seed=2)
    grid_f, density_f = spectrum.slq_density(lambda V: full.hvp(THETA, V), LAYOUT.n, 10, 2, dtype=np.float64,
                                             seed=2)
    assert rel(grid, grid_f) < 1e-10 and rel(density, density_f) < 1e-8


def softmax_regression():
    """Convex: logits X W P with the last class's logit fixed at 0 (P = [I 0]),
    so the Hessian is positive definite."""
    P = tg.Tensor(D(np.eye(2, 3)))

    def model(theta, X):
        return X @ theta.reshape(3, 2) @ P

    full = Objective(model, "cross_entropy", X, LABELS, layout=6)
    return full, DatasetObjective(full, list(zip(split(X), split(LABELS))))


@pytest.mark.parametrize("make", [Newton, DampedNewton, HessianFree, GaussNewton,
                                  lambda: Newton(curvature="ggn")])
def test_full_batch_optimizers_take_the_same_step(make):
    full, data = softmax_regression()
    theta0 = D(np.full(6, 0.1))
    opt = make()
    a, _, info_a = opt.step(data, theta0, opt.init(theta0))
    b, _, info_b = opt.step(full, theta0, opt.init(theta0))
    assert rel(a, b) < 1e-10 and abs(info_a["loss"] - info_b["loss"]) < 1e-13
    if isinstance(opt, Newton) and opt.curvature == "hessian":
        assert info_a["status"] == "positive_definite"
        assert data.loss(a) < data.loss(theta0)


def bn_setup(train):
    model = nets.Sequential(nets.Linear(3, 4), nets.BatchNorm1d(4), nets.Tanh(), nets.Linear(4, 2))
    if not train:
        model.eval()
    theta = model.init_theta(seed=3, dtype=np.float64)
    y = LABELS % 2
    full = model.objective("cross_entropy", X, y)
    return model, theta, full, DatasetObjective(full, list(zip(split(X), split(y))))


def test_batchnorm_running_statistics_are_never_touched():
    model, theta, _, data = bn_setup(train=True)
    before = {k: v.copy() for k, v in model.named_buffers().items()}
    data.loss_and_grad(theta)
    data.hvp(theta, D(np.ones(theta.shape[0])))
    data.hessian(theta)
    data.hessian_diag(theta, "hutchinson", 4, seed=0)
    after = model.named_buffers()
    assert all(np.array_equal(host(before[k]), host(after[k])) for k in before)


def test_batchnorm_in_train_mode_is_the_mean_of_per_batch_hessians():
    _, theta, full, data = bn_setup(train=True)
    per_batch = [full.with_batch(Xb, yb) for Xb, yb in zip(split(X), split(full.y))]
    mean_H = sum(o.batch_size * o.hessian(theta) for o in per_batch) / 15
    assert rel(data.hessian(theta), mean_H) < 1e-13
    assert rel(data.hessian(theta), full.hessian(theta)) > 1e-3  # not the concatenated batch's


def test_batchnorm_in_eval_mode_equals_the_concatenated_batch():
    _, theta, full, data = bn_setup(train=False)
    assert rel(data.hessian(theta), full.hessian(theta)) < 1e-13


# ---------------------------------------------------------------- errors

def test_errors_are_clear():
    full, data = setup("cross_entropy")
    with pytest.raises(ValueError, match="DatasetObjective: batches is empty"):
        DatasetObjective(full, [])
    with pytest.raises(ValueError, match="returned no \\(X, y\\) pair"):
        DatasetObjective(full, lambda: iter([])).loss(THETA)
    with pytest.raises(TypeError, match="one-shot iterator"):
        DatasetObjective(full, (pair for pair in [(X, LABELS)]))
    with pytest.raises(TypeError, match="template must be an Objective"):
        DatasetObjective(object(), [(X, LABELS)])
    with pytest.raises(TypeError, match="batch 1 must be an \\(X, y\\) pair"):
        DatasetObjective(full, [(X, LABELS), X[0, 0]])
    bad = host(X).copy()
    bad[2, 1] = np.nan
    bad = D(bad)
    with pytest.raises(NonFiniteError, match="DatasetObjective: batch 1: .*X has 1 non-finite"):
        DatasetObjective(full, [(X, LABELS), (bad, LABELS)])
    streamed = DatasetObjective(full, lambda: iter([(X, LABELS), (bad, LABELS)]))  # checked on use
    with pytest.raises(NonFiniteError, match="batch 1"):
        streamed.loss(THETA)
    with pytest.raises(ValueError, match="batch 0: .*y must be integer labels"):
        DatasetObjective(full, [(X, LABELS[:3])])
    with pytest.raises(ValueError, match=r"DatasetObjective.hvp: theta has shape \(5,\), expected \(31,\)"):
        data.hvp(D(np.zeros(5)), D(np.zeros(5)))
    with pytest.raises(ValueError, match=r"DatasetObjective.hvp: V has shape"):
        data.hvp(THETA, D(np.zeros(5)))
    with pytest.raises(NonFiniteError, match="DatasetObjective.loss: theta"):
        data.loss(D(np.full(LAYOUT.n, np.inf)))
    with pytest.raises(NotImplementedError, match="DatasetObjective.capture: .*with_batch"):
        data.capture(THETA)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        DatasetObjective.from_arrays(full, X, LABELS, 0)
    with pytest.raises(ValueError, match="same number of rows"):
        DatasetObjective.from_arrays(full, X, LABELS[:4], 2)
    with pytest.raises(ValueError, match="method must be"):
        data.hessian_diag(THETA, "diagonal")
    assert data.counts == {"nfev": 0, "ngev": 0, "nhvp": 0, "nggnvp": 0}


def test_dense_products_refuse_beyond_the_budget_before_allocating():
    full, _ = setup("cross_entropy")
    data = DatasetObjective(full, list(zip(split(X), split(LABELS))), memory_budget=1000)
    with pytest.raises(CurvatureMemoryError, match="DatasetObjective.hessian: n = 31 parameters"):
        data.hessian(THETA)
    with pytest.raises(CurvatureMemoryError, match="DatasetObjective.hessian_diag"):
        data.hessian_diag(THETA, "hutchinson", 4)


def test_an_unbound_layout_is_bound_on_first_use():
    full = Objective(lambda th, X: X @ th.reshape(3, 3), "cross_entropy", X, LABELS)
    data = DatasetObjective(full, list(zip(split(X), split(LABELS))))
    theta = D(np.linspace(-1, 1, 9))
    assert data.n is None and rel(data.hessian(theta), full.hessian(theta)) < 1e-13 and data.n == 9


def test_streamed_hutchinson_reads_the_source_once_per_block():
    full, held = setup("cross_entropy")
    data = DatasetObjective(full, lambda: zip(split(X), split(LABELS)))
    d = data.hessian_diag(THETA, "hutchinson", 10, seed=5, chunk=4)
    assert data.passes == 1 + 3  # the memory forecast, then blocks of 4, 4, 2 draws
    npt.assert_array_equal(d, held.hessian_diag(THETA, "hutchinson", 10, seed=5, chunk=4))
    assert data.counts["nhvp"] == 10
