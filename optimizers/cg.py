"""Truncated, preconditioned conjugate gradient with Martens' stopping rule.

Solves A x = b for a symmetric operator A given only as a matrix-vector
product ``matvec(v) -> A v`` (in Hessian-free optimization A = B + λI with
B = H or G applied through ``objective.hvp`` / ``objective.ggn_vp``, and
b = -∇f). CG minimizes the quadratic

    φ(x) = ½ xᵀ A x - bᵀ x,        ∇φ(x) = A x - b = -r,

over growing Krylov subspaces (Nocedal & Wright, Algorithm 5.3 for the
preconditioned form; Martens 2010, Algorithm 1 and Section 4.4):

    r_0 = b - A x_0,  z_0 = M⁻¹ r_0,  p_0 = z_0
    α_i = r_iᵀ z_i / p_iᵀ A p_i
    x_{i+1} = x_i + α_i p_i,          r_{i+1} = r_i - α_i A p_i
    z_{i+1} = M⁻¹ r_{i+1},            β_i = r_{i+1}ᵀ z_{i+1} / r_iᵀ z_i
    p_{i+1} = z_{i+1} + β_i p_i

φ costs nothing extra: φ(x) = -½ xᵀ (b + r) because A x = b - r.

In exact arithmetic CG terminates in at most n iterations, and in k if A
has k distinct eigenvalues (N&W Theorems 5.1 and 5.4); in floating point an
ill-conditioned A loses conjugacy and needs more.

Stopping (whichever comes first, checked after every iteration i, i.e. with
x_i the iterate after i updates):

* ``"converged"``: ||r_i|| <= tol · ||b||;
* ``"martens"`` (Martens 2010, Section 4.4): i > k, φ_i < 0 and
  (φ_i - φ_{i-k}) / φ_i < k ε with k = max(10, ⌈0.1 i⌉), ε = ``martens_eps``
  (5e-4): the relative reduction of φ over the last k iterations has become
  too small to be worth k more products;
* ``"max_iter"``: i = ``max_iter`` (Martens: 250);
* ``"negative_curvature"``: pᵀ A p <= 0 for the next direction p (A is not
  positive definite along p, so φ is unbounded below along it). CG returns
  the current iterate x_i; if no step has been taken yet and x_0 makes no
  progress (φ(x_0) >= 0) it returns the preconditioned steepest-descent
  direction M⁻¹ b instead (this is -M⁻¹∇f in HF; its length is arbitrary,
  so callers should line-search or backtrack on it). This is the rule of
  N&W Algorithm 7.1 (line-search Newton-CG).

Iterates x_i are saved at i = ⌈5 · 1.3^j⌉ (5, 7, 9, 11, 15, 19, 25, ...) and
at the last iteration, for Martens' CG backtracking (Section 4.6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from tinygrad2 import backend as B

from .base import HyperparameterError, check_int, check_positive

CG_MAX_ITER = 250  # Martens' cap on CG iterations per solve
CG_TOL = 1e-10  # default relative residual tolerance ||r|| <= tol · ||b||
MARTENS_EPS = 5e-4  # ε of Martens' relative-progress stop
MARTENS_MIN_GAP = 10  # k = max(MARTENS_MIN_GAP, ⌈MARTENS_GAP_FRACTION · i⌉) in that stop
MARTENS_GAP_FRACTION = 0.1
SAVE_START, SAVE_GROWTH = 5, 1.3  # iterates kept for backtracking at i = ⌈5 · 1.3^j⌉


@dataclass
class CGResult:
    """What :func:`cg` returns.

    x: the solution (n,); iterates: [(i, x_i)] saved at i = ⌈5·1.3^j⌉ and the
    final one (last entry is always (iterations, x)); iterations: CG updates
    taken; residual_norm: ||b - A x|| by the recurrence; reason: why it stopped
    ("converged", "martens", "max_iter", "negative_curvature", "zero_rhs");
    phi: [φ(x_0), ..., φ(x_iterations)]; curvature: pᵀAp of the last direction
    tried (the non-positive one after "negative_curvature"); fallback: None,
    or "steepest_descent" when x is M⁻¹b (negative curvature on the first
    direction)."""

    x: object
    iterates: list = field(default_factory=list)
    iterations: int = 0
    residual_norm: float = 0.0
    reason: str = ""
    phi: list = field(default_factory=list)
    curvature: float = math.nan
    fallback: str | None = None

    def __repr__(self):
        return (f"CGResult(reason={self.reason!r}, iterations={self.iterations}, "
                f"residual_norm={self.residual_norm:.3g}, phi={self.phi[-1] if self.phi else None!r}, "
                f"saved={[i for i, _ in self.iterates]})")


def save_points(max_iter):
    """The iterations ⌈5 · 1.3^j⌉ <= max_iter at which CG keeps its iterate."""
    points, j = [], 0
    while math.ceil(SAVE_START * SAVE_GROWTH**j) <= max_iter:
        points.append(math.ceil(SAVE_START * SAVE_GROWTH**j))
        j += 1
    return points


def _preconditioner(M):
    """M -> the function r -> M⁻¹ r. M: None (identity), an (n,) array (the
    diagonal of M ≈ A: z = r / M), or a callable that applies M⁻¹ (≈ A⁻¹)."""
    if M is None:
        return lambda r: r
    if callable(M):
        return M
    d = B.asarray(M)
    if d.ndim != 1:
        raise ValueError(f"cg: M must be None, an (n,) diagonal or a callable, got an array of shape {d.shape}")
    if not bool(B.xp.all(d > 0)):
        raise ValueError("cg: the diagonal preconditioner M must be positive")
    return lambda r: r / d


def cg(matvec, b, x0=None, M=None, max_iter=CG_MAX_ITER, tol=CG_TOL, martens_eps=MARTENS_EPS,
       martens_min_gap=MARTENS_MIN_GAP):
    """Solve A x = b by truncated preconditioned CG (see the module docstring).

    matvec: v (n,) -> A v (n,); b: (n,); x0: warm start (None: zeros);
    M: preconditioner (None, diagonal of M ≈ A, or a callable applying M⁻¹);
    max_iter: cap on CG updates; tol: relative residual tolerance;
    martens_eps: ε of Martens' relative-progress test (None disables it);
    martens_min_gap: the 10 in k = max(10, ⌈0.1 i⌉). Returns a CGResult."""
    try:
        check_int("max_iter", max_iter, minimum=1)
        check_positive("tol", tol, allow_zero=True)
        if martens_eps is not None:
            check_positive("martens_eps", martens_eps)
        check_int("martens_min_gap", martens_min_gap, minimum=1)
    except HyperparameterError as err:
        raise type(err)(f"cg: {err}") from None
    xp = B.xp
    b = B.asarray(b)
    if b.ndim != 1:
        raise ValueError(f"cg: b must be a vector (n,), got shape {b.shape}")
    apply_Minv = _preconditioner(M)
    b_norm = float(xp.linalg.norm(b))
    if x0 is None or not bool(xp.any(x0 != 0)):
        x, r = xp.zeros_like(b), b.copy()
    else:
        x = B.asarray(x0, b.dtype).copy()
        if x.shape != b.shape:
            raise ValueError(f"cg: x0 has shape {x.shape} but b has shape {b.shape}")
        r = b - matvec(x)
    phi = [float(-0.5 * (x @ (b + r)))]
    if b_norm == 0.0:
        return CGResult(xp.zeros_like(b), [(0, xp.zeros_like(b))], 0, 0.0, "zero_rhs", [0.0])
    saves = set(save_points(max_iter))
    iterates, reason, fallback, curvature = [], "max_iter", None, math.nan
    z = apply_Minv(r)
    p = z
    rz = float(r @ z)
    i = 0
    while True:
        if float(xp.linalg.norm(r)) <= tol * b_norm:
            reason = "converged"
            break
        if i >= max_iter:
            break
        Ap = matvec(p)
        curvature = float(p @ Ap)
        if not curvature > 0:  # also catches NaN
            reason = "negative_curvature"
            if i == 0 and phi[0] >= 0:
                x, fallback = apply_Minv(b), "steepest_descent"
            break
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        i += 1
        phi.append(float(-0.5 * (x @ (b + r))))
        if i in saves:
            iterates.append((i, x))
        if martens_eps is not None:
            k = max(martens_min_gap, math.ceil(MARTENS_GAP_FRACTION * i))
            if i > k and phi[i] < 0 and (phi[i] - phi[i - k]) / phi[i] < k * martens_eps:
                reason = "martens"
                break
        z = apply_Minv(r)
        rz_next = float(r @ z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    if not iterates or iterates[-1][1] is not x:
        iterates.append((i, x))
    return CGResult(x, iterates, i, float(xp.linalg.norm(r)), reason, phi, curvature, fallback)
