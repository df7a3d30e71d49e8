"""Spectral tools against known spectra, in float64.

Ground truth: explicit symmetric matrices A = Q diag(λ) Q^T with chosen λ, and
the dense Hessian of a small tanh network assembled by the engine (compared
through ``numpy.linalg.eigvalsh``). The statistical estimators are checked for
unbiasedness against their own standard errors, and for the properties that
hold exactly (Hutchinson on a diagonal matrix, Hutch++ on a low-rank matrix,
Gauss quadrature moments of degree <= 2m - 1).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import tinygrad2
from tinygrad2 import Tensor, backend
from tinygrad2.spectrum import (
    gauss_quadrature, lanczos, linear_operator, slq_density, slq_quadrature, top_eigenvalues,
    trace_hutchinson, trace_hutchpp,
)


# ----------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------

def symmetric(eigenvalues, seed=0):
    """A = Q diag(λ) Q^T with a random orthogonal Q."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def rows(A):
    """The batched matvec of symmetric A: rows v_k -> rows A v_k."""
    return lambda V: V @ A


class Spy:
    """A matvec that records what it is asked to multiply."""

    def __init__(self, A):
        self.A, self.inputs = A, []

    def __call__(self, V):
        self.inputs.append(V.copy())
        return V @ self.A

    @property
    def n_matvec(self):
        return sum(V.shape[0] for V in self.inputs)


def close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    scale = np.abs(want).max()
    assert np.all(np.abs(got - want) <= rtol * np.abs(want) + 1e-13 * scale), (got, want)


@pytest.fixture
def net(float64):
    """A 4-5-3 tanh network with softmax cross-entropy on 12 points, as a
    function of one flat parameter vector (n = 35), and its dense Hessian."""
    rng = np.random.default_rng(7)
    N, d, h, C = 12, 4, 5, 3
    X, y = rng.standard_normal((N, d)), rng.integers(0, C, N)

    def f(theta):
        W1 = theta[: d * h].reshape(d, h)
        W2 = theta[d * h:].reshape(h, C)
        return ((Tensor(X) @ W1).tanh() @ W2).cross_entropy(y)

    theta = rng.standard_normal(d * h + h * C)
    H = tinygrad2.hessian(f, theta)
    matvec = lambda V: tinygrad2.hvp(f, theta, V)  # noqa: E731
    return matvec, theta.size, H


# ----------------------------------------------------------------------------
# top eigenvalues: Lanczos (eigsh)
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("which, k", [("LA", 3), ("SA", 2), ("LM", 4)])
def test_lanczos_eigenvalues_match_eigvalsh_on_a_known_spectrum(float64, which, k):
    lam = np.concatenate([np.linspace(-3.0, 2.0, 37), [4.0, -5.0, 6.5]])
    A = symmetric(lam, seed=1)
    want = {"LA": np.sort(lam)[::-1], "SA": np.sort(lam),
            "LM": lam[np.argsort(-np.abs(lam))]}[which][:k]
    close(np.linalg.eigvalsh(A)[np.argsort(np.linalg.eigvalsh(A))], np.sort(lam), 1e-12)
    values, vectors, info = top_eigenvalues(rows(A), lam.size, k, which=which, seed=0,
                                            return_eigenvectors=True, return_info=True)
    close(values, want, 1e-8)
    assert vectors.shape == (k, lam.size)
    np.testing.assert_allclose(vectors @ A, values[:, None] * vectors, atol=1e-8)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(k), atol=1e-10)
    assert info["method"] == "lanczos" and info["n_matvec"] > 0
    assert np.all(info["residuals"] <= 1e-8 * np.abs(values).max())


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("which, k", [("LA", 3), ("SA", 2), ("LM", 2)])
def test_lanczos_eigenvalues_of_a_network_hessian_match_its_dense_eigvalsh(net, which, k):
    matvec, n, H = net
    np.testing.assert_allclose(matvec(np.eye(n)[:5]), H[:5], rtol=1e-10, atol=1e-12)
    lam = np.linalg.eigvalsh(H)
    assert lam[0] < 0 < lam[-1], "the Hessian should be indefinite at a random point"
    want = {"LA": lam[::-1], "SA": lam, "LM": lam[np.argsort(-np.abs(lam))]}[which][:k]
    values, vectors = top_eigenvalues(matvec, n, k, which=which, seed=3,
                                      return_eigenvectors=True)
    close(values, want, 1e-8)
    np.testing.assert_allclose(vectors @ H, values[:, None] * vectors,
                               atol=1e-8 * np.abs(lam).max())


# ----------------------------------------------------------------------------
# top eigenvalues: power / subspace iteration
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_power_iteration_finds_the_dominant_eigenvalue_and_reports_its_iterations(float64):
    # |λ2 / λ1| = 0.5: the residual shrinks by 0.5 per iteration
    lam = np.concatenate([[-10.0, 5.0, -4.5], np.linspace(-4.0, 4.0, 47)])
    A = symmetric(lam, seed=2)
    tol = 1e-10
    values, vector, info = top_eigenvalues(rows(A), lam.size, 1, method="power", which="LM",
                                           tol=tol, seed=0, return_eigenvectors=True,
                                           return_info=True)
    close(values, [-10.0], 1e-6)
    assert abs(values[0] + 10.0) <= 1e-12 * 10  # in fact to its square: the residual²/gap
    assert info["converged"] and info["method"] == "power"
    predicted = math.log(tol) / math.log(0.5)  # ~33
    assert 0.5 * predicted <= info["nit"] <= 1.5 * predicted + 5, info["nit"]
    assert info["n_matvec"] == info["nit"]  # one vector per iteration, nothing else
    assert info["residuals"][0] <= tol * 10
    np.testing.assert_allclose(np.abs(vector @ A @ vector.T), 10.0, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_power_iteration_needs_more_iterations_for_a_smaller_gap(float64):
    counts = []
    for ratio in (0.3, 0.9):
        lam = np.concatenate([[10.0, 10.0 * ratio], np.linspace(-2.0, 2.0, 28)])
        _, info = top_eigenvalues(rows(symmetric(lam, 3)), lam.size, method="power",
                                  which="LM", seed=1, return_info=True)
        counts.append(info["nit"])
    assert counts[0] * 3 < counts[1], counts


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
def test_subspace_iteration_finds_k_extreme_eigenvalues(float64, which):
    lam = np.concatenate([[9.0, -7.0, 6.0, -3.0], np.linspace(-1.0, 1.0, 36)])
    A = symmetric(lam, seed=4)
    want = {"LA": np.sort(lam)[::-1], "SA": np.sort(lam),
            "LM": lam[np.argsort(-np.abs(lam))]}[which][:2]
    values, vectors, info = top_eigenvalues(rows(A), lam.size, 2, method="power", which=which,
                                            seed=5, return_eigenvectors=True, return_info=True)
    close(values, want, 1e-6)
    assert info["converged"] and info["n_matvec"] == 2 * info["nit"]
    np.testing.assert_allclose(vectors @ A, values[:, None] * vectors, atol=1e-8)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_power_iteration_on_a_network_hessian(net):
    matvec, n, H = net
    lam = np.linalg.eigvalsh(H)
    top = top_eigenvalues(matvec, n, method="power", which="LA", seed=0, maxiter=5000)
    close(top, lam[-1:], 1e-6)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_power_iteration_warns_when_it_runs_out_of_iterations(float64):
    lam = np.concatenate([[1.0, 0.99], np.linspace(0, 0.5, 20)])
    with pytest.warns(RuntimeWarning, match="top_eigenvalues: power iteration"):
        _, info = top_eigenvalues(rows(symmetric(lam)), lam.size, method="power", which="LM",
                                  maxiter=3, seed=0, return_info=True)
    assert not info["converged"] and info["nit"] == 3


# ----------------------------------------------------------------------------
# trace estimators
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_probes_are_plus_and_minus_one_with_both_signs(float64):
    A = symmetric(np.linspace(1, 2, 50))
    spy = Spy(A)
    trace_hutchinson(spy, 50, samples=40, seed=0)
    V = np.concatenate(spy.inputs)
    assert V.shape == (40, 50)
    assert set(np.unique(V)) == {-1.0, 1.0}
    assert 0.4 < (V > 0).mean() < 0.6


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_is_exact_on_a_diagonal_matrix(float64):
    d = np.random.default_rng(0).standard_normal(30)
    estimate, error = trace_hutchinson(lambda V: V * d, 30, samples=7, seed=1)
    assert abs(estimate - d.sum()) <= 1e-12 and error <= 1e-12


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_is_unbiased_with_the_predicted_standard_error(float64):
    A = symmetric(np.linspace(-1.0, 3.0, 40), seed=5)
    N = 4000
    estimate, error = trace_hutchinson(rows(A), 40, samples=N, seed=2, batch=999)
    predicted = math.sqrt(2 * (np.sum(A * A) - np.sum(np.diag(A) ** 2)) / N)
    assert abs(error / predicted - 1) < 0.1, (error, predicted)
    assert abs(estimate - np.trace(A)) <= 4 * error
    # and averaged over many independent runs
    runs = [trace_hutchinson(rows(A), 40, samples=10, seed=s)[0] for s in range(400)]
    assert abs(np.mean(runs) - np.trace(A)) <= 4 * np.std(runs) / math.sqrt(len(runs))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchinson_on_a_network_hessian(net):
    matvec, n, H = net
    estimate, error = trace_hutchinson(matvec, n, samples=500, seed=0)
    assert 0 < error and abs(estimate - np.trace(H)) <= 4 * error


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchpp_uses_exactly_its_budget_and_is_exact_for_low_rank(float64):
    lam = np.zeros(60)
    lam[:5] = [5.0, 3.0, -2.0, 1.0, 0.5]
    spy = Spy(symmetric(lam, seed=6))
    estimate, error = trace_hutchpp(spy, 60, matvecs=31, seed=0)   # s = 10 >= rank 5
    assert spy.n_matvec == 31
    assert abs(estimate - lam.sum()) <= 1e-10 and error <= 1e-10


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hutchpp_beats_hutchinson_at_equal_matvecs_on_a_decaying_spectrum(float64):
    n, m, seeds = 100, 30, 200
    lam = 1.0 / np.arange(1, n + 1) ** 2
    A = symmetric(lam, seed=7)
    hutch = np.array([trace_hutchinson(rows(A), n, samples=m, seed=s)[0] for s in range(seeds)])
    hpp = np.array([trace_hutchpp(rows(A), n, matvecs=m, seed=s)[0] for s in range(seeds)])
    mse_hutch = np.mean((hutch - lam.sum()) ** 2)
    mse_hpp = np.mean((hpp - lam.sum()) ** 2)
    assert mse_hpp < mse_hutch / 20, (mse_hpp, mse_hutch)
    assert abs(hpp.mean() - lam.sum()) <= 4 * hpp.std() / math.sqrt(seeds)  # unbiased


# ----------------------------------------------------------------------------
# Lanczos and stochastic Lanczos quadrature
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lanczos_basis_is_orthonormal_and_tridiagonalizes(float64):
    lam = np.linspace(-2.0, 5.0, 30) ** 3
    A = symmetric(lam, seed=8)
    v0 = np.random.default_rng(0).standard_normal(30)
    alphas, betas, Q = lanczos(rows(A), 30, 30, v0, return_basis=True)
    assert alphas.shape == (30,) and betas.shape == (29,) and Q.shape == (30, 30)
    np.testing.assert_allclose(Q @ Q.T, np.eye(30), atol=1e-12)
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    np.testing.assert_allclose(Q @ A @ Q.T, T, atol=1e-10 * np.abs(lam).max())
    np.testing.assert_allclose(Q[0], v0 / np.linalg.norm(v0), atol=1e-15)
    close(np.linalg.eigvalsh(T), np.sort(lam), 1e-9)  # steps = n: all of the spectrum


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lanczos_steps_beyond_n_are_capped(float64):
    A = symmetric(np.arange(1.0, 9.0))
    alphas, betas = lanczos(rows(A), 8, 50, seed=0)
    assert alphas.shape == (8,) and betas.shape == (7,)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("steps", [2, 3, 40])
def test_gauss_quadrature_moments_are_exact_per_probe_up_to_degree_2m_minus_1(float64, steps):
    lam = np.linspace(-1.0, 2.0, 40) + 0.05 * np.sin(np.arange(40))
    A = symmetric(lam, seed=9)
    u = np.random.default_rng(1).integers(0, 2, 40) * 2.0 - 1.0
    u /= np.linalg.norm(u)
    nodes, weights = gauss_quadrature(*lanczos(rows(A), 40, steps, u))
    assert abs(weights.sum() - 1) <= 1e-13
    m = min(steps, 40)
    for k in range(1, 9):
        exact = u @ np.linalg.matrix_power(A, k) @ u
        error = abs(weights @ nodes ** k - exact)
        if k <= 2 * m - 1:
            assert error <= 1e-12 * max(1.0, abs(exact)), (k, error)
        else:
            assert error > 1e-8, f"degree {k} > 2m - 1 = {2 * m - 1} should not be exact"


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_lanczos_stops_cleanly_on_an_invariant_subspace(float64):
    lam = np.repeat([-1.0, 0.5, 3.0], [7, 6, 7])        # 3 distinct eigenvalues
    A = symmetric(lam, seed=10)
    u = np.random.default_rng(2).standard_normal(20)
    u /= np.linalg.norm(u)
    alphas, betas = lanczos(rows(A), 20, 10, u)
    assert np.all(betas[:2] > 1e-3) and np.all(betas[2:] == 0) and np.all(alphas[3:] == 0)
    nodes, weights = gauss_quadrature(alphas, betas)
    for k in range(1, 12):
        close(weights @ nodes ** k, u @ np.linalg.matrix_power(A, k) @ u, 1e-12)
    support = nodes[weights > 1e-14]
    close(np.sort(support), [-1.0, 0.5, 3.0], 1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_slq_per_probe_moments_are_exact_and_the_average_is_within_its_error(float64):
    n, samples = 30, 60
    lam = np.linspace(-2.0, 4.0, n) + 0.1 * np.cos(3 * np.arange(n))
    A = symmetric(lam, seed=11)
    spy = Spy(A)
    nodes, weights = slq_quadrature(spy, n, steps=n, samples=samples, seed=0)
    assert nodes.shape == weights.shape == (samples, n)
    assert abs(weights.sum() - 1) <= 1e-12
    U = spy.inputs[0]                      # the first Lanczos step multiplies the probes
    np.testing.assert_allclose(np.abs(U) * math.sqrt(n), 1.0, rtol=1e-15)  # ±1 / sqrt(n)
    for k in (1, 2, 3):
        Ak = np.linalg.matrix_power(A, k)
        per_probe = samples * np.sum(weights * nodes ** k, axis=1)
        np.testing.assert_allclose(per_probe, np.einsum("li,ij,lj->l", U, Ak, U),
                                   rtol=1e-10, atol=1e-12 * np.abs(lam).max() ** k)
        estimate = np.sum(weights * nodes ** k)
        error = per_probe.std(ddof=1) / math.sqrt(samples)
        assert abs(estimate - np.trace(Ak) / n) <= 4 * error, (k, estimate, np.trace(Ak) / n)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_slq_moments_of_a_network_hessian(net):
    matvec, n, H = net
    nodes, weights = slq_quadrature(matvec, n, steps=8, samples=200, seed=1, batch=64)
    for k in (1, 2, 3):
        per_probe = 200 * np.sum(weights * nodes ** k, axis=1)
        want = np.trace(np.linalg.matrix_power(H, k)) / n
        assert abs(per_probe.mean() - want) <= 4 * per_probe.std(ddof=1) / math.sqrt(200)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_slq_density_integrates_to_one_and_matches_the_broadened_spectrum(float64):
    n = 40
    lam = np.concatenate([np.linspace(0.0, 1.0, 30), np.linspace(3.0, 3.5, 10)])
    A = symmetric(lam, seed=12)
    grid, density, nodes, weights = slq_density(rows(A), n, steps=n, samples=300, seed=0,
                                                sigma=0.1, return_quadrature=True)
    dx = np.diff(grid)
    assert grid.ndim == 1 and np.all(dx > 0) and density.shape == grid.shape
    assert np.all(density >= 0)
    assert abs(np.sum((density[1:] + density[:-1]) * dx) / 2 - 1) <= 1e-12
    # steps = n: the nodes are the eigenvalues; the weights average to 1/n each
    z = (grid[:, None] - lam) / 0.1
    exact = np.exp(-0.5 * z * z).sum(1) / (n * 0.1 * np.sqrt(2 * np.pi))
    l1 = np.sum(np.abs(density - exact)[1:] * dx)
    assert l1 < 0.05, l1
    assert grid[0] <= lam.min() - 0.4 and grid[-1] >= lam.max() + 0.4
    mass_high = np.sum(weights[np.abs(nodes - 3.25) < 0.5])
    assert abs(mass_high - 10 / 40) < 0.03


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_slq_density_on_a_given_grid_and_default_sigma(float64):
    A = symmetric(np.linspace(-1.0, 1.0, 20), seed=13)
    grid = np.linspace(-3.0, 3.0, 601)
    g, density = slq_density(rows(A), 20, steps=10, samples=20, seed=0, grid=grid)
    assert g.shape == (601,) and np.allclose(g, grid)
    assert abs(np.sum((density[1:] + density[:-1]) * np.diff(grid)) / 2 - 1) <= 1e-12
    assert density[np.abs(grid) > 1.5].max() < 1e-6 * density.max()


# ----------------------------------------------------------------------------
# SciPy LinearOperator
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_linear_operator_solves_an_spd_system_with_cg(float64):
    lam = np.linspace(1.0, 10.0, 50)
    A = symmetric(lam, seed=14)
    b = np.random.default_rng(0).standard_normal(50)
    L = linear_operator(rows(A), 50, "float64")
    assert L.shape == (50, 50) and L.dtype == np.float64
    x, status = spla.cg(L, b, rtol=1e-12, maxiter=200)
    assert status == 0
    np.testing.assert_allclose(A @ x, b, atol=1e-9)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-9)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_linear_operator_matmat_adjoint_and_solvers(net):
    matvec, n, H = net
    L = linear_operator(matvec, n)
    X = np.random.default_rng(1).standard_normal((n, 4))
    before = L.n_matvec
    np.testing.assert_allclose(L @ X, H @ X, rtol=1e-10, atol=1e-12)
    assert L.n_matvec - before == 4
    np.testing.assert_allclose(L.H @ X[:, 0], H @ X[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(L.rmatvec(X[:, 1]), H @ X[:, 1], rtol=1e-10, atol=1e-12)
    top = spla.eigsh(L, k=2, which="LA", return_eigenvectors=False)
    close(np.sort(top), np.linalg.eigvalsh(H)[-2:], 1e-8)
    b = H @ X[:, 2]                                       # indefinite: MINRES
    x, status = spla.minres(L, b, rtol=1e-12, maxiter=500)
    assert status == 0
    np.testing.assert_allclose(H @ x, b, atol=1e-7 * np.linalg.norm(b))


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------

@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_matvec_returning_the_wrong_shape_is_a_clear_error(float64):
    A = symmetric(np.arange(1.0, 7.0))
    bad = lambda V: (V @ A)[:, :-1]  # noqa: E731
    with pytest.raises(ValueError, match=r"top_eigenvalues: matvec returned shape \(1, 5\) "
                                         r"for input of shape \(1, 6\)"):
        top_eigenvalues(bad, 6, method="power")
    with pytest.raises(ValueError, match=r"trace_hutchinson: matvec returned shape \(3, 5\)"):
        trace_hutchinson(bad, 6, samples=3, seed=0)
    with pytest.raises(ValueError, match=r"linear_operator: matvec returned shape \(1, 5\)"):
        linear_operator(bad, 6) @ np.ones(6)
    with pytest.raises(ValueError, match=r"slq_density: matvec returned shape"):
        slq_density(bad, 6, steps=3, samples=2)
    with pytest.raises(TypeError, match=r"lanczos: matvec must return"):
        lanczos(lambda V: (V @ A).tolist(), 6, 3)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bad_sizes_are_clear_errors(float64):
    A = symmetric(np.arange(1.0, 6.0))
    with pytest.raises(ValueError, match=r"top_eigenvalues: .*k < n, got k=5, n=5"):
        top_eigenvalues(rows(A), 5, k=5)
    with pytest.raises(ValueError, match=r"top_eigenvalues: k must be <= n, got k=6, n=5"):
        top_eigenvalues(rows(A), 5, k=6, method="power")
    with pytest.raises(ValueError, match=r"top_eigenvalues: which must be one of"):
        top_eigenvalues(rows(A), 5, which="BE")
    with pytest.raises(ValueError, match=r"trace_hutchinson: samples must be >= 1, got samples=0"):
        trace_hutchinson(rows(A), 5, samples=0)
    with pytest.raises(ValueError, match=r"slq_density: samples must be >= 1, got samples=0"):
        slq_density(rows(A), 5, steps=3, samples=0)
    with pytest.raises(ValueError, match=r"trace_hutchpp: matvecs must be >= 3, got matvecs=2"):
        trace_hutchpp(rows(A), 5, matvecs=2)
    with pytest.raises(ValueError, match=r"lanczos: steps must be >= 1, got steps=0"):
        lanczos(rows(A), 5, 0)
    with pytest.raises(ValueError, match=r"lanczos: v0 has shape \(4,\)"):
        lanczos(rows(A), 5, 3, np.ones(4))
    with pytest.raises(ValueError, match=r"linear_operator: n must be >= 1, got n=0"):
        linear_operator(rows(A), 0)
    with pytest.raises(ValueError, match=r"slq_density: sigma must be > 0"):
        slq_density(rows(A), 5, steps=3, samples=2, sigma=-1.0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_dtype_follows_the_backend_default_and_can_be_given():
    A = symmetric(np.arange(1.0, 6.0)).astype(np.float32)
    with backend.precision("float32"):
        values = top_eigenvalues(rows(A), 5, k=2, seed=0)
        assert values.dtype == np.float32
    with backend.precision("float32"):
        alphas, _ = lanczos(rows(A.astype(np.float64)), 5, 3, dtype="float64", seed=0)
    assert alphas.dtype == np.float64
