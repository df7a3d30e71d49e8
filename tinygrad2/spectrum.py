"""Spectral tools for a symmetric operator A known only through products.

Every function takes a *batched* matrix-vector product ``matvec(V)``: V is an
``xp`` array of shape (K, n) whose rows are vectors, and the result is the
(K, n) array whose row k is A v_k. With the engine that is, for example,

    matvec = lambda V: tinygrad2.hvp(f, theta, V)      # rows H v_k, one pass

so a block of K directions costs one forward-over-reverse pass. A must be
symmetric (a Hessian, a GGN); nothing here checks that. ``n`` is the size of A
and ``dtype`` the floating dtype of the vectors (default: the backend's
``default_dtype``; ask for float64 when verifying).

* :func:`linear_operator` — a ``scipy.sparse.linalg.LinearOperator`` view, so
  ``eigsh``, ``cg``, ``minres``, ``lobpcg`` apply directly. SciPy works on
  host NumPy arrays: each product is one explicit ``to_device`` /
  ``to_host`` pair.
* :func:`top_eigenvalues` — a few extreme eigenpairs, by Lanczos (ARPACK's
  implicitly restarted Lanczos through ``eigsh``) or by power / subspace
  iteration (written out below).
* :func:`trace_hutchinson`, :func:`trace_hutchpp` — stochastic trace
  estimators (Hutchinson 1989; Meyer, Musco, Musco, Woodruff 2021).
* :func:`lanczos`, :func:`gauss_quadrature`, :func:`slq_quadrature`,
  :func:`slq_density` — the Lanczos tridiagonalization with full
  reorthogonalization and the spectral density by stochastic Lanczos
  quadrature (Ubaru, Chen, Saad 2017; Ghorbani, Krishnan, Xiao 2019).

Conventions: vectors are rows, so eigenvectors come back as (k, n) and Lanczos
bases as (m, n). Results are ``xp`` arrays (scalars are Python floats); move
them to the host with ``backend.to_host``. ``seed`` is an int for reproducible
draws or None for fresh entropy; draws come from ``xp.random.default_rng``, so
NumPy and CuPy give different (equally valid) probes for the same seed.
"""
from __future__ import annotations

import math
import warnings

from scipy.sparse.linalg import LinearOperator, eigsh

from . import backend as B
from .directions import rademacher

POWER_TOL = 1e-10       # top_eigenvalues(method="power"): relative residual to stop at
POWER_MAXITER = 1000    # ... and the most iterations
DENSITY_SIGMA = 0.01    # slq_density: default broadening, a fraction of the nodes' spread
DENSITY_MARGIN = 5      # ... default grid reaches this many σ beyond the extreme nodes
DENSITY_POINTS = 1025   # ... with this many points

__all__ = [
    "linear_operator", "top_eigenvalues", "trace_hutchinson", "trace_hutchpp",
    "lanczos", "gauss_quadrature", "slq_quadrature", "slq_density",
]

_WHICH = ("LA", "LM", "SA")
_METHODS = ("lanczos", "power")


# ----------------------------------------------------------------------------
# checked access to the operator
# ----------------------------------------------------------------------------

class _Operator:
    """``matvec`` with its contract checked on every call and its work counted.

    ``n_matvec`` counts vectors (rows of V), the unit in which the
    estimators' budgets are stated; ``n_calls`` counts batched passes.
    """

    def __init__(self, matvec, n, dtype, op):
        if not callable(matvec):
            raise TypeError(f"{op}: matvec must be callable, got {type(matvec).__name__}")
        self.matvec, self.op = matvec, op
        self.n, self.dtype = _positive(n, "n", op), _dtype(dtype, op)
        self.n_matvec = 0
        self.n_calls = 0

    def __call__(self, V):
        W = self.matvec(V)
        if not isinstance(W, B.xp.ndarray):
            raise TypeError(
                f"{self.op}: matvec must return an {B.name} array, got {type(W).__name__}"
            )
        if W.shape != V.shape:
            raise ValueError(
                f"{self.op}: matvec returned shape {W.shape} for input of shape {V.shape}; "
                f"expected {V.shape} (K vectors of length n={self.n} in, K out)"
            )
        self.n_matvec += V.shape[0]
        self.n_calls += 1
        return W.astype(self.dtype, copy=False)

    def chunked(self, V, batch):
        """A V with at most ``batch`` rows per call (None: one call)."""
        if batch is None or V.shape[0] <= batch:
            return self(V)
        return B.xp.concatenate([self(V[i:i + batch]) for i in range(0, V.shape[0], batch)])


def _dtype(dtype, op):
    dt = B.default_dtype if dtype is None else B.xp.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"{op}: dtype must be floating, got {dt}")
    return dt


def _positive(value, name, op, minimum=1):
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {name}={int(value)}")
    return int(value)


def _batch(batch, op):
    return None if batch is None else _positive(batch, "batch", op)


def _orthonormal_rows(Y):
    """Rows spanning the rows of Y (K, n), orthonormal: reduced QR of Y^T."""
    Q, _ = B.xp.linalg.qr(Y.T)
    return Q.T


def _rowdot(X, Y):
    """(K,) inner products <x_k, y_k>."""
    return (X * Y).sum(axis=1)


def _order(values, which):
    """Indices that put the most extreme values first: LA descending, SA
    ascending, LM by decreasing magnitude."""
    key = {"LA": -values, "SA": values, "LM": -B.xp.abs(values)}[which]
    return B.xp.argsort(key)


# ----------------------------------------------------------------------------
# SciPy view
# ----------------------------------------------------------------------------

class _HostOperator(LinearOperator):
    """A as a SciPy LinearOperator on host arrays; symmetric, so its adjoint
    is itself. SciPy hands in (n,) or (n, K) host arrays; each product moves
    the K columns to the device as K rows, applies ``matvec`` once, and moves
    the result back: one explicit transfer each way."""

    def __init__(self, op: _Operator):
        super().__init__(dtype=op.dtype, shape=(op.n, op.n))
        self._op = op

    @property
    def n_matvec(self):
        """Vectors multiplied so far (each column of a matmat counts)."""
        return self._op.n_matvec

    def _matmat(self, X):
        V = B.to_device(X.T).astype(self._op.dtype)  # (K, n) rows, a fresh device array
        return B.to_host(self._op(V)).T

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).reshape(-1)

    _rmatvec = _matvec
    _rmatmat = _matmat

    def _adjoint(self):
        return self


def linear_operator(matvec, n, dtype=None):
    """``scipy.sparse.linalg.LinearOperator`` of shape (n, n) for symmetric A.

    ``L @ x`` and ``L.matvec(x)`` for host x (n,), ``L @ X`` / ``L.matmat(X)``
    for host X (n, K) (one batched ``matvec`` call for all K columns), and the
    adjoint equal to L. So ``scipy.sparse.linalg.eigsh(L, k)``,
    ``cg(L, b)`` (A positive definite), ``minres(L, b)`` (A symmetric
    indefinite) and ``lobpcg(L, X)`` run on a Hessian that is never formed.
    ``L.n_matvec`` counts the vectors multiplied so far.
    """
    return _HostOperator(_Operator(matvec, n, dtype, "linear_operator"))


# ----------------------------------------------------------------------------
# extreme eigenvalues
# ----------------------------------------------------------------------------

def top_eigenvalues(matvec, n, k=1, *, dtype=None, method="lanczos", which="LA", tol=None,
                    maxiter=None, seed=None, return_eigenvectors=False, return_info=False):
    """The k extreme eigenvalues of symmetric A: A x_i = λ_i x_i.

    ``which``: "LA" largest algebraic (the top of a Hessian's spectrum),
    "SA" smallest algebraic (its most negative curvature), "LM" largest in
    magnitude. Values come back most extreme first: LA descending, SA
    ascending, LM by decreasing |λ|.

    ``method="lanczos"``: ``scipy.sparse.linalg.eigsh`` (ARPACK's implicitly
    restarted Lanczos; Lehoucq, Sorensen, Yang 1998) on :func:`linear_operator`.
    It builds an orthonormal Krylov basis of span{v0, A v0, A² v0, ...}
    and takes Ritz values of the projected tridiagonal matrix; extreme
    eigenvalues converge first, at a rate set by the gap relative to the
    spread of the spectrum (Kaniel-Paige-Saad bounds). ARPACK asks for one
    vector at a time, and needs ``k < n``. ``tol``: relative accuracy of the
    eigenvalues (default 0: machine precision); ``maxiter``: ARPACK restarts
    (default 10 n).

    ``method="power"``: subspace iteration (block power method with
    Rayleigh-Ritz; Golub & Van Loan, *Matrix Computations*, §8.2), k rows at
    a time in one batched product:

        Y = A X,  H = X Y^T (k x k),  H = U diag(θ) U^T,
        X <- U^T X,  Y <- U^T Y   (Ritz vectors; θ_i is the Rayleigh quotient
                                   x_i^T A x_i of the unit row x_i),
        stop when ||y_i - θ_i x_i|| <= tol |θ_i| for every i,
        else X <- orth(Y).

    It converges to the k eigenvalues of largest magnitude at the rate
    |λ_{k+1} / λ_k| per iteration (the eigenvalue error goes as its square).
    For "LA" it iterates on A + ρ I and for "SA" on ρ I - A, with ρ the
    spectral radius from a first "LM" run (both shifted operators are
    positive semidefinite, so their dominant eigenvalues are the wanted end of
    A's spectrum); for k = 1 and "LA" / "SA" the first run's answer is taken
    directly when it already has the wanted sign. The shift slows
    convergence to |λ_{k+1} + ρ| / |λ_k + ρ|. ``tol`` (default 1e-10) bounds
    the relative residual; ``maxiter`` (default 1000) bounds the iterations
    of each run; not converging gives a ``RuntimeWarning`` and
    ``info["converged"] = False``. For a pair λ, -λ of equal magnitude use
    k >= 2 or "LA" / "SA".

    Returns ``values`` (k,); ``(values, vectors)`` with ``return_eigenvectors``
    (vectors (k, n), unit rows); and an ``info`` dict appended with
    ``return_info``: method, which, ``nit`` (power iterations, both runs;
    for Lanczos the number of operator applications), ``n_matvec``
    (vectors multiplied), ``converged``, ``residuals`` ||A x_i - λ_i x_i||.
    """
    op = _Operator(matvec, n, dtype, "top_eigenvalues")
    n = op.n
    k = _positive(k, "k", "top_eigenvalues")
    if method not in _METHODS:
        raise ValueError(f"top_eigenvalues: method must be one of {_METHODS}, got {method!r}")
    if which not in _WHICH:
        raise ValueError(f"top_eigenvalues: which must be one of {_WHICH}, got {which!r}")
    rng = B.xp.random.default_rng(seed)
    if method == "lanczos":
        if k >= n:
            raise ValueError(
                f"top_eigenvalues: method='lanczos' (ARPACK eigsh) needs k < n, got k={k}, n={n}; "
                f"use method='power' or eigvalsh of the dense matrix"
            )
        values, vectors, info = _eigsh(op, k, which, tol, maxiter, rng)
        if return_info:  # one more batched product, to report the residuals
            info["residuals"] = B.xp.linalg.norm(op(vectors) - values[:, None] * vectors, axis=1)
            info["n_matvec"] = op.n_matvec
    else:
        if k > n:
            raise ValueError(f"top_eigenvalues: k must be <= n, got k={k}, n={n}")
        maxiter = POWER_MAXITER if maxiter is None else _positive(maxiter, "maxiter", "top_eigenvalues")
        values, vectors, info = _power(op, k, which, POWER_TOL if tol is None else float(tol),
                                       maxiter, rng)
    out = (values,)
    if return_eigenvectors:
        out += (vectors,)
    if return_info:
        out += (info,)
    return out[0] if len(out) == 1 else out


def _eigsh(op, k, which, tol, maxiter, rng):
    v0 = B.to_host(rng.standard_normal(op.n, dtype=op.dtype))
    values, vectors = eigsh(_HostOperator(op), k=k, which=which, v0=v0,
                            tol=0 if tol is None else tol, maxiter=maxiter)
    values, vectors = B.to_device(values), B.to_device(vectors.T)
    idx = _order(values, which)
    info = {"method": "lanczos", "which": which, "nit": op.n_matvec, "n_matvec": op.n_matvec,
            "converged": True}
    return values[idx].astype(op.dtype), vectors[idx].astype(op.dtype), info


def _power(op, k, which, tol, maxiter, rng):
    X0 = rng.standard_normal((k, op.n), dtype=op.dtype)
    values, X, residuals, nit, converged, radius = _subspace_iteration(op, X0, 1.0, 0.0, tol,
                                                                      maxiter)
    wanted_sign = {"LA": 1.0, "SA": -1.0, "LM": None}[which]
    if which != "LM" and not (k == 1 and converged and float(values[0]) * wanted_sign > 0):
        # LA: A + ρI, SA: ρI - A; both PSD, their dominant end is the wanted one
        values, X, residuals, nit2, converged, _ = _subspace_iteration(
            op, X0, wanted_sign, radius, tol, maxiter)
        nit += nit2
    if not converged:
        warnings.warn(
            f"top_eigenvalues: power iteration did not reach tol={tol} in maxiter={maxiter} "
            f"iterations (which={which!r}, k={k})", RuntimeWarning, stacklevel=3,
        )
    idx = _order(values, which)
    values, X, residuals = values[idx], X[idx], residuals[idx]
    info = {"method": "power", "which": which, "nit": nit, "n_matvec": op.n_matvec,
            "converged": converged, "residuals": residuals}
    return values, X, info


def _subspace_iteration(op, X, sign, shift, tol, maxiter):
    """Block power iteration on C = sign * A + shift * I. Returns A's Ritz
    values (not C's), the Ritz vectors, their residuals ||A x - λ x|| (equal
    to ||C x - μ x||), the iteration count, whether it converged, and the
    estimate max_i ||C x_i|| of C's spectral radius."""
    xp = B.xp
    X = _orthonormal_rows(X)
    tiny = xp.finfo(op.dtype).tiny
    for it in range(1, maxiter + 1):
        Y = sign * op(X) + shift * X                  # one batched product
        H = X @ Y.T
        mu, U = xp.linalg.eigh((H + H.T) / 2)         # Rayleigh-Ritz on span(X)
        idx = xp.argsort(-xp.abs(mu))
        mu, U = mu[idx], U[:, idx]
        X, Y = U.T @ X, U.T @ Y
        residual = xp.linalg.norm(Y - mu[:, None] * X, axis=1)
        converged = bool(xp.all(residual <= tol * xp.maximum(xp.abs(mu), tiny)))
        if converged or it == maxiter:
            break
        X = _orthonormal_rows(Y)
    radius = float(xp.linalg.norm(Y, axis=1).max())
    return (mu - shift) / sign, X, residual, it, converged, radius


# ----------------------------------------------------------------------------
# trace estimation
# ----------------------------------------------------------------------------

def trace_hutchinson(matvec, n, samples, *, dtype=None, seed=None, batch=None):
    """Hutchinson's estimator of tr(A) (Hutchinson 1989):

        tr(A) ≈ (1/N) Σ_{l=1..N} v_l^T A v_l,   v_l with i.i.d. ±1 entries,

    unbiased because E[v v^T] = I. With Rademacher probes its variance per
    probe is 2 (||A||_F² - Σ_i a_ii²), the smallest of all i.i.d. probe
    distributions (exact for diagonal A). ``samples`` = N probes, pushed
    ``batch`` at a time (default all in one batched product).

    Returns ``(estimate, standard_error)`` as floats; the standard error is
    the sample standard deviation of v_l^T A v_l over sqrt(N) (nan for N = 1).
    """
    op = _Operator(matvec, n, dtype, "trace_hutchinson")
    samples = _positive(samples, "samples", "trace_hutchinson")
    batch = _batch(batch, "trace_hutchinson") or samples
    rng = B.xp.random.default_rng(seed)
    quads = []
    for start in range(0, samples, batch):
        V = rademacher((min(batch, samples - start), op.n), rng, op.dtype)
        quads.append(_rowdot(V, op(V)))
    return _mean_and_error(B.xp.concatenate(quads))


def _mean_and_error(values):
    mean = float(values.mean())
    if values.shape[0] < 2:
        return mean, math.nan
    return mean, float(values.std(ddof=1)) / math.sqrt(values.shape[0])


def trace_hutchpp(matvec, n, matvecs, *, dtype=None, seed=None, batch=None):
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021, Algorithm 1): tr(A) with
    a budget of ``matvecs`` = m products, split in thirds:

        S: n x s Rademacher, s = m // 3;   Q = orth(A S)          (s products)
        tr(A) = tr(Q^T A Q) + tr((I - QQ^T) A (I - QQ^T))
              ≈ tr(Q^T A Q)                                      (s products)
                + (1/g) Σ_l g_l^T (I - QQ^T) A (I - QQ^T) g_l    (g = m - 2s)

    with Rademacher g_l. The sketch captures the top of the spectrum exactly
    and Hutchinson only sees the deflated remainder, whose Frobenius norm is
    small when eigenvalues decay: error O(1/m) against Hutchinson's
    O(1/sqrt(m)) for positive semidefinite A. Exact when rank(A) <= s.

    Returns ``(estimate, standard_error)``; the error is that of the
    Hutchinson part, conditional on the sketch (nan when g = 1).
    """
    op = _Operator(matvec, n, dtype, "trace_hutchpp")
    m = _positive(matvecs, "matvecs", "trace_hutchpp", minimum=3)
    batch = _batch(batch, "trace_hutchpp")
    s = m // 3
    g = m - 2 * s
    rng = B.xp.random.default_rng(seed)
    S = rademacher((s, op.n), rng, op.dtype)
    Q = _orthonormal_rows(op.chunked(S, batch))                   # (s, n) orthonormal rows
    exact = float(_rowdot(Q, op.chunked(Q, batch)).sum())          # tr(Q^T A Q)
    G = rademacher((g, op.n), rng, op.dtype)
    G = G - (G @ Q.T) @ Q                                          # (I - QQ^T) g_l
    mean, error = _mean_and_error(_rowdot(G, op.chunked(G, batch)))
    return exact + mean, error


# ----------------------------------------------------------------------------
# Lanczos and stochastic Lanczos quadrature
# ----------------------------------------------------------------------------

def lanczos(matvec, n, steps, v0=None, *, dtype=None, seed=None, return_basis=False):
    """Lanczos tridiagonalization with full reorthogonalization.

    From q_1 = v0 / ||v0|| the three-term recurrence

        β_j q_{j+1} = A q_j - α_j q_j - β_{j-1} q_{j-1},   α_j = q_j^T A q_j,

    builds an orthonormal basis Q_m = [q_1 .. q_m] of the Krylov space
    span{q_1, A q_1, .., A^{m-1} q_1} with Q_m^T A Q_m = T_m, the symmetric
    tridiagonal matrix with diagonal α and off-diagonal β (Lanczos 1950;
    Golub & Van Loan §10.1). In floating point the q_j lose orthogonality as
    Ritz values converge, so each new vector is also orthogonalized against
    all previous ones, twice ("twice is enough"): O(m² n) extra work, and
    the m x n basis kept in memory. If β_j falls to rounding level the Krylov
    space is invariant (A has at most j distinct eigenvalues along q_1): the
    recurrence stops for that start vector and the remaining α, β are 0,
    which only adds quadrature nodes of weight 0 (see
    :func:`gauss_quadrature`). ``steps`` is capped at n.

    ``v0``: (n,) or a batch (K, n) of start vectors run together, one
    batched product per step; default one Gaussian vector drawn from
    ``seed``. Returns ``(alphas, betas)`` of shapes (m,), (m-1,) — or
    (K, m), (K, m-1) for a batch — and with ``return_basis`` also Q of
    shape (m, n) or (K, m, n), rows q_j.
    """
    if dtype is None and getattr(v0, "dtype", None) is not None and v0.dtype.kind == "f":
        dtype = v0.dtype                                      # a floating v0 sets the dtype
    op = _Operator(matvec, n, dtype, "lanczos")
    steps = _positive(steps, "steps", "lanczos")
    if v0 is None:
        v0 = B.xp.random.default_rng(seed).standard_normal(op.n, dtype=op.dtype)
    v0 = B.asarray(v0, op.dtype)
    single = v0.ndim == 1
    V0 = v0[None] if single else v0
    if V0.ndim != 2 or V0.shape[1] != op.n:
        raise ValueError(f"lanczos: v0 has shape {v0.shape}; expected ({op.n},) or (K, {op.n})")
    alphas, betas, basis = _lanczos(op, V0, min(steps, op.n))
    if single:
        alphas, betas, basis = alphas[0], betas[0], basis[0]
    return (alphas, betas, basis) if return_basis else (alphas, betas)


def _lanczos(op, V0, m):
    xp = B.xp
    K, n = V0.shape
    norms = xp.linalg.norm(V0, axis=1)
    if bool(xp.any(norms == 0)):
        raise ValueError("lanczos: a start vector v0 is zero")
    Q = xp.zeros((K, m, n), dtype=op.dtype)
    alphas = xp.zeros((K, m), dtype=op.dtype)
    betas = xp.zeros((K, max(m - 1, 0)), dtype=op.dtype)
    Q[:, 0] = V0 / norms[:, None]
    rounding = 10 * math.sqrt(n) * float(xp.finfo(op.dtype).eps)
    for j in range(m):
        q = Q[:, j]
        w = op(q)                                             # A q_j, all K at once
        scale = xp.linalg.norm(w, axis=1)
        alphas[:, j] = _rowdot(q, w)
        w = w - alphas[:, j, None] * q
        if j > 0:
            w = w - betas[:, j - 1, None] * Q[:, j - 1]
        for _ in range(2):                                    # full reorthogonalization
            Qj = Q[:, :j + 1]                                 # (K, j+1, n)
            w = w - (Qj.transpose(0, 2, 1) @ (Qj @ w[:, :, None]))[:, :, 0]
        if j == m - 1:
            break
        beta = xp.linalg.norm(w, axis=1)
        alive = beta > rounding * scale                       # else: invariant subspace
        betas[:, j] = xp.where(alive, beta, 0)
        Q[:, j + 1] = xp.where(alive[:, None], w / xp.where(alive, beta, 1)[:, None], 0)
    return alphas, betas, Q


def gauss_quadrature(alphas, betas):
    """Gauss quadrature rule of a Lanczos tridiagonal T (Golub & Welsch 1969).

    With T = U diag(θ) U^T, the nodes are the Ritz values θ_j and the weights
    τ_j² = U_{1j}², which sum to 1. For the unit start vector q_1,

        q_1^T f(A) q_1 ≈ Σ_j τ_j² f(θ_j),

    exact for every polynomial f of degree <= 2m - 1 (m = len(alphas)); in
    particular q_1^T A^k q_1 = Σ_j τ_j² θ_j^k for k <= 2m - 1, and for all k
    once the Krylov space is invariant. Accepts (m,), (m-1,) or batches
    (K, m), (K, m-1); returns ``(nodes, weights)`` of the same leading shape.
    """
    xp = B.xp
    alphas, betas = B.asarray(alphas), B.asarray(betas)
    single = alphas.ndim == 1
    A2 = alphas[None] if single else alphas
    B2 = betas[None] if single else betas
    K, m = A2.shape
    if B2.shape != (K, max(m - 1, 0)):
        raise ValueError(
            f"gauss_quadrature: alphas {tuple(alphas.shape)} needs betas of shape "
            f"{(m - 1,) if single else (K, m - 1)}, got {tuple(betas.shape)}"
        )
    T = xp.zeros((K, m, m), dtype=A2.dtype)
    i = xp.arange(m)
    T[:, i, i] = A2
    T[:, i[:-1], i[1:]] = B2
    T[:, i[1:], i[:-1]] = B2
    nodes, U = xp.linalg.eigh(T)
    weights = U[:, 0, :] ** 2
    return (nodes[0], weights[0]) if single else (nodes, weights)


def slq_quadrature(matvec, n, steps, samples, *, dtype=None, seed=None, batch=None):
    """Stochastic Lanczos quadrature nodes and weights (Ubaru, Chen, Saad 2017).

    For unit probes u_l = v_l / sqrt(n) with Rademacher v_l, E[u u^T] = I / n,
    so the spectral density φ(t) = (1/n) Σ_i δ(t - λ_i) satisfies

        ∫ f dφ = tr f(A) / n = E[u^T f(A) u] ≈ (1/N) Σ_l Σ_j τ_lj² f(θ_lj),

    with (θ_lj, τ_lj²) the Gauss rule of a ``steps``-step Lanczos run from u_l
    (:func:`gauss_quadrature`). Returns ``(nodes, weights)`` of shape
    (samples, m) with weights[l, j] = τ_lj² / N, so all weights sum to 1 and

        Σ_{l,j} weights[l, j] * nodes[l, j] ** k   estimates   tr(A^k) / n,

    while ``samples * weights[l]`` is probe l's own rule, exact for
    u_l^T A^k u_l with k <= 2m - 1. The probes run ``batch`` at a time as one
    batched Lanczos (default all together; memory samples * m * n).
    """
    op = _Operator(matvec, n, dtype, "slq_quadrature")
    return _slq(op, steps, samples, seed, batch, "slq_quadrature")


def _slq(op, steps, samples, seed, batch, name):
    steps = _positive(steps, "steps", name)
    samples = _positive(samples, "samples", name)
    batch = _batch(batch, name) or samples
    rng = B.xp.random.default_rng(seed)
    nodes, weights = [], []
    for start in range(0, samples, batch):
        U = rademacher((min(batch, samples - start), op.n), rng, op.dtype) / math.sqrt(op.n)
        alphas, betas, _ = _lanczos(op, U, min(steps, op.n))
        theta, tau2 = gauss_quadrature(alphas, betas)
        nodes.append(theta)
        weights.append(tau2 / samples)
    return B.xp.concatenate(nodes), B.xp.concatenate(weights)


def slq_density(matvec, n, steps, samples, *, dtype=None, seed=None, grid=None, sigma=None,
                batch=None, return_quadrature=False):
    """Spectral density of A by stochastic Lanczos quadrature with Gaussian
    broadening (Ubaru, Chen, Saad 2017; Ghorbani, Krishnan, Xiao 2019, "An
    investigation into neural net optimization via Hessian eigenvalue
    density", §2):

        φ_σ(t) = Σ_{l,j} w_lj  N(t; θ_lj, σ²),
        N(t; θ, σ²) = exp(-(t - θ)² / (2σ²)) / (σ sqrt(2π)),

    with the nodes θ and weights w of :func:`slq_quadrature`. ``sigma``
    defaults to 1% of the spread of the nodes; ``grid`` (1-D, increasing)
    defaults to 1025 points from the smallest node - 5σ to the largest + 5σ.
    The density is normalized so that its trapezoidal integral over the grid
    is 1 (as in PyHessian); with the default grid that factor is 1 up to
    discretization error.

    Returns ``(grid, density)``, and with ``return_quadrature`` also
    ``(nodes, weights)``, from which moments are exact sums:
    Σ w θ^k estimates tr(A^k) / n.
    """
    xp = B.xp
    op = _Operator(matvec, n, dtype, "slq_density")
    nodes, weights = _slq(op, steps, samples, seed, batch, "slq_density")
    seen = nodes[weights > xp.finfo(op.dtype).eps * weights.max()]  # drop weight-0 nodes
    low, high = float(seen.min()), float(seen.max())
    if sigma is None:
        spread = high - low
        sigma = DENSITY_SIGMA * (spread if spread > 0 else max(abs(high), 1.0))
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"slq_density: sigma must be > 0, got sigma={sigma}")
    if grid is None:
        grid = xp.linspace(low - DENSITY_MARGIN * sigma, high + DENSITY_MARGIN * sigma, DENSITY_POINTS, dtype=op.dtype)
    grid = B.asarray(grid, op.dtype)
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool(xp.all(grid[1:] > grid[:-1])):
        raise ValueError(
            f"slq_density: grid must be 1-D, increasing, with >= 2 points; got shape {grid.shape}"
        )
    density = xp.zeros_like(grid)
    for theta, w in zip(nodes, weights):                   # one probe at a time: (G, m)
        z = (grid[:, None] - theta[None, :]) / sigma
        density = density + xp.exp(-0.5 * z * z) @ w
    density = density / (sigma * math.sqrt(2 * math.pi))
    mass = float(((density[1:] + density[:-1]) * (grid[1:] - grid[:-1])).sum()) / 2
    if not mass > 0:
        raise ValueError(
            f"slq_density: the grid [{float(grid[0])}, {float(grid[-1])}] misses the spectrum "
            f"[{low}, {high}] (broadened by sigma={sigma}); the density has no mass on it"
        )
    density = density / mass
    return (grid, density, nodes, weights) if return_quadrature else (grid, density)
