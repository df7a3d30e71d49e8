"""Limited-memory BFGS (Nocedal 1980; Liu & Nocedal 1989), with a
strong-Wolfe line search, a scale-aware pair-skip rule, a NaN guard and a
multi-batch mode (Berahas, Nocedal & Takáč 2016).

Iteration (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 7.5)::

    d_k     = -H_k g_k                       (two-loop recursion, Alg. 7.4)
    θ_{k+1} = θ_k + t_k d_k                  (t_k from the line search)
    s_k = θ_{k+1} - θ_k,   y_k = g_{k+1} - g_k
    store (s_k, y_k) if s_kᵀy_k > ε_skip ||s_k|| ||y_k||, dropping the oldest
    beyond ``history_size`` (FIFO)

H_k is the BFGS update of H_k^0 = γ_k I, γ_k = sᵀy / yᵀy of the newest pair
(eq. 7.20), applied to the stored pairs oldest first (eq. 7.19):

    H <- (I - ρ s yᵀ) H (I - ρ y sᵀ) + ρ s sᵀ,   ρ = 1 / (yᵀs)      (eq. 6.17)

so that the newest pair satisfies the secant equation H y = s (eq. 6.6).

Symbols: t_k starts at ``lr`` (at lr·min(1, 1/||g||_1) when the memory is
empty, as in PyTorch), m = ``history_size``, c1/c2 = the Wolfe constants
``c1``, ``c2`` (eq. 3.7), ε_skip = ``skip_threshold`` (a cosine, so the test
does not depend on the scale of f; SciPy's L-BFGS-B is scale-aware in the
same sense, PyTorch's 1e-10 absolute test is not).

Line searches (``line_search``):

* None: t_k = lr (no search), one evaluation per iteration;
* "strong_wolfe": N&W Alg. 3.5 (bracketing) and Alg. 3.6 (zoom) with cubic
  interpolation (eq. 3.59), at most ``max_ls`` evaluations; if the strong
  Wolfe conditions are not met in time the best point with sufficient
  decrease is taken; with no decrease at all the step is refused and the
  memory reset;
* "exact": t = -gᵀd / dᵀHd from one Hessian-vector product: exact on a
  quadratic (used to check that L-BFGS then reproduces CG), one Newton step
  along d otherwise.

NaN guard: if the loss or gradient at a trial point is non-finite, the
iteration is abandoned: θ reverts to the last good point, the memory is
reset, the next initial step is halved (until an iteration succeeds) and
``nan_reverts`` is reported. Returned θ is always a point whose loss and
gradient were finite (or the input θ).

Batches (``batch_mode``): each ``step`` call runs ``max_iter`` iterations on
the objective it is given, so every pair (s, y) is formed on one objective.

* "fixed": the objective is assumed the same at every call (full batch, or a
  batch the caller keeps fixed); the loss and gradient at the returned θ are
  cached in the state and reused by the next call;
* "same_batch": the objective may change at every call (a new mini-batch);
  nothing is cached, the gradient at θ is recomputed on the new batch, so
  y = ∇f_B(θ_new) - ∇f_B(θ_old) uses one batch B (multi-batch L-BFGS with full
  overlap). Mixing batches inside y is what made naive mini-batch L-BFGS
  return NaN.
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B

from .base import HyperparameterError, Optimizer, base_info, check_choice, check_fraction, check_int, check_positive

WOLFE_C1, WOLFE_C2 = 1e-4, 0.9  # default Wolfe constants (N&W p. 62; PyTorch's and SciPy's too)
MAX_LS = 25  # default cap on loss evaluations per line search (PyTorch's max_ls)
SKIP_THRESHOLD = 1e-8  # default cosine below which a pair (s, y) is skipped: sᵀy <= this · ||s|| ||y||
EXTRAPOLATE_MIN, EXTRAPOLATE_MAX = 1.1, 10.0  # bracketing: the next trial step lies in [1.1 t, 10 t]
EXTRAPOLATE_NO_CUBIC = 4.0  # bracketing: the next trial is 4 t when the cubic has no minimizer
ZOOM_MARGIN = 0.01  # zoom: keep the cubic's minimizer 1% of the interval away from its ends
ZOOM_SLOW = 0.5  # zoom: bisect when the interval shrank by less than half in one trial
ZOOM_TOL = 1e-12  # zoom: stop when the interval is narrower than this · max(1, |t|)
NAN_SHRINK = 0.5  # after a NaN revert the next initial step is multiplied by this


# ---------------------------------------------------------------- two-loop recursion


def two_loop(g, S, Y, gamma=None):
    """H g for the L-BFGS inverse Hessian of the pairs S, Y (lists, oldest
    first) and H^0 = γ I, by N&W Alg. 7.4. γ None: sᵀy / yᵀy of the newest
    pair (1 with no pairs). The direction is -two_loop(g, S, Y)."""
    rho = [1.0 / (s @ y) for s, y in zip(S, Y)]
    alpha = [None] * len(S)
    q = g
    for i in reversed(range(len(S))):
        alpha[i] = rho[i] * (S[i] @ q)
        q = q - alpha[i] * Y[i]
    if gamma is None:
        gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0
    r = gamma * q
    for i in range(len(S)):
        beta = rho[i] * (Y[i] @ r)
        r = r + (alpha[i] - beta) * S[i]
    return r


# ---------------------------------------------------------------- line searches


class NonFinite(ArithmeticError):
    """The loss or gradient at a trial point is not finite."""


def _cubic_min(a, fa, ga, b, fb, gb):
    """Minimizer of the cubic through (a, fa, ga), (b, fb, gb) (N&W eq. 3.59),
    or None when it does not exist."""
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if not (math.isfinite(disc) and disc >= 0):
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = gb - ga + 2 * d2
    if denom == 0:
        return None
    t = b - (b - a) * (gb + d2 - d1) / denom
    return t if math.isfinite(t) else None


def strong_wolfe(phi, f0, dg0, t, c1=WOLFE_C1, c2=WOLFE_C2, max_evals=MAX_LS, tol=ZOOM_TOL):
    """A step t satisfying the strong Wolfe conditions (N&W eq. 3.7)

        f(t) <= f0 + c1 t φ'(0),    |φ'(t)| <= c2 |φ'(0)|,

    by N&W Alg. 3.5 (bracketing) and Alg. 3.6 (zoom, cubic interpolation).
    ``phi(t) -> (f, g, φ'(t))`` evaluates the objective at θ + t d (and may
    raise :class:`NonFinite`); ``dg0 = φ'(0) < 0``. Returns
    (t, f, g, evaluations, status) with status "wolfe", "armijo" (only
    sufficient decrease was reached) or "failed" (t = 0: no decrease)."""
    prev = (0.0, f0, dg0, None)   # (t, f, φ', g)
    evals = 0
    while evals < max_evals:
        f, g, dg = phi(t)
        evals += 1
        cur = (t, f, dg, g)
        if f > f0 + c1 * t * dg0 or (evals > 1 and f >= prev[1]):
            return _zoom(phi, f0, dg0, prev, cur, c1, c2, max_evals - evals, tol, evals)
        if abs(dg) <= -c2 * dg0:
            return t, f, g, evals, "wolfe"
        if dg >= 0:
            return _zoom(phi, f0, dg0, cur, prev, c1, c2, max_evals - evals, tol, evals)
        guess = _cubic_min(prev[0], prev[1], prev[2], t, f, dg)  # extrapolate within [1.1 t, 10 t]
        if guess is None:
            guess = EXTRAPOLATE_NO_CUBIC * t
        prev, t = cur, min(max(guess, EXTRAPOLATE_MIN * t), EXTRAPOLATE_MAX * t)
    return prev[0], prev[1], prev[3], evals, "armijo"


def _zoom(phi, f0, dg0, lo, hi, c1, c2, budget, tol, evals):
    """N&W Alg. 3.6: lo is the best point with sufficient decrease so far, and
    the interval between lo and hi contains strong-Wolfe points."""
    last_width = math.inf
    for _ in range(budget):
        a, b = lo[0], hi[0]
        width = abs(b - a)
        if width <= tol * max(1.0, abs(a)):
            break
        t = _cubic_min(a, lo[1], lo[2], b, hi[1], hi[2])
        if t is None or width > ZOOM_SLOW * last_width:  # safeguards: no cubic, or slow progress: bisect
            t = 0.5 * (a + b)
        else:  # keep the cubic's minimizer off the ends of the interval
            t = min(max(t, min(a, b) + ZOOM_MARGIN * width), max(a, b) - ZOOM_MARGIN * width)
        last_width = width
        f, g, dg = phi(t)
        evals += 1
        cur = (t, f, dg, g)
        if f > f0 + c1 * t * dg0 or f >= lo[1]:
            hi = cur
        else:
            if abs(dg) <= -c2 * dg0:
                return t, f, g, evals, "wolfe"
            if dg * (hi[0] - lo[0]) >= 0:
                hi = lo
            lo = cur
    if lo[0] > 0:
        return lo[0], lo[1], lo[3], evals, "armijo"
    return 0.0, f0, None, evals, "failed"


# ---------------------------------------------------------------- the optimizer


class LBFGS(Optimizer):
    """LBFGS(lr=1.0, history_size=10, max_iter=1, line_search=None, c1=1e-4,
    c2=0.9, skip_threshold=1e-8, batch_mode="fixed", max_ls=25,
    tolerance_grad=0.0).

    ``max_iter`` iterations per ``step`` call, stopping early once
    ||g||_inf <= ``tolerance_grad`` (an absolute test, so 0 by default: it
    then only catches g = 0).

    State: ``step`` (``step`` calls so far), ``S``, ``Y`` (lists of arrays,
    oldest first), ``inner_iterations`` (L-BFGS iterations so far, over all
    calls), ``skipped_total``, ``nan_reverts_total``, ``resets_total``, ``shrink``
    (the factor on the next initial step after a NaN revert), and in "fixed"
    mode the cache ``x``, ``f``, ``g`` (point, loss, gradient).

    Info per call: loss, grad_norm (at the starting θ), ``lr`` (the last
    iteration's step length t), ``step_norm`` (||θ_returned - θ||),
    ``line_search_evals`` (function evaluations inside line searches),
    ``nfev`` (all evaluations of this call), ``curvature`` (sᵀy of the last
    pair formed), ``skipped`` (pairs skipped in this call), ``memory`` (pairs
    kept), ``nan_reverts``, ``line_search_status``, ``inner_iterations``
    (iterations of this call) and ``loss_change`` (f at the returned θ minus
    f at the start, on this call's objective)."""

    def __init__(self, lr=1.0, history_size=10, max_iter=1, line_search=None, c1=WOLFE_C1, c2=WOLFE_C2,
                 skip_threshold=SKIP_THRESHOLD, batch_mode="fixed", max_ls=MAX_LS, tolerance_grad=0.0):
        self.lr = check_positive("lr", lr)
        self.history_size = check_int("history_size", history_size)
        self.max_iter = check_int("max_iter", max_iter)
        self.line_search = check_choice("line_search", line_search, (None, "strong_wolfe", "exact"))
        self.c1 = check_fraction("c1", c1)
        self.c2 = check_fraction("c2", c2)
        if not 0 < self.c1 < self.c2 < 1:
            raise HyperparameterError(f"c1, c2: the Wolfe constants need 0 < c1 < c2 < 1, got c1={c1!r}, c2={c2!r}")
        self.skip_threshold = check_fraction("skip_threshold", skip_threshold)
        self.batch_mode = check_choice("batch_mode", batch_mode, ("fixed", "same_batch"))
        self.max_ls = check_int("max_ls", max_ls)
        self.tolerance_grad = check_positive("tolerance_grad", tolerance_grad, allow_zero=True)

    def init(self, theta):
        return self._new_state(theta, S=[], Y=[], inner_iterations=0, skipped_total=0, nan_reverts_total=0,
                               resets_total=0, shrink=1.0, x=None, f=None, g=None)

    # ---- one call --------------------------------------------------------
    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        state = dict(state, S=list(state["S"]), Y=list(state["Y"]), step=state["step"] + 1)
        nfev = [0]

        def evaluate(x):
            nfev[0] += 1
            if not bool(xp.isfinite(x).all()):  # the objective refuses a non-finite point
                raise NonFinite("non-finite trial point")
            f, g = objective.loss_and_grad(x)
            if not (math.isfinite(f) and bool(xp.isfinite(g).all())):
                raise NonFinite(f"non-finite loss or gradient (loss {f})")
            return f, g

        cached = (self.batch_mode == "fixed" and state["x"] is not None
                  and state["x"].shape == theta.shape and bool(xp.array_equal(state["x"], theta)))
        if cached:
            f, g = state["f"], state["g"]
        else:
            nfev[0] += 1
            f, g = objective.loss_and_grad(theta)
        info = base_info(f, g)
        counts = dict(lr=0.0, line_search_evals=0, curvature=None, skipped=0, nan_reverts=0,
                      line_search_status=None, inner_iterations=0)
        x, f_start = theta, f
        if not (math.isfinite(f) and bool(xp.isfinite(g).all())):  # nowhere to revert to
            self._reset(state)
            counts["nan_reverts"] += 1
            state["nan_reverts_total"] += 1
            f = f_start = math.nan
        else:
            for _ in range(self.max_iter):
                if float(xp.abs(g).max()) <= self.tolerance_grad:
                    break
                try:
                    moved = self._iterate(objective, x, f, g, state, counts, evaluate)
                except NonFinite:
                    self._reset(state)
                    state["shrink"] *= NAN_SHRINK
                    counts["nan_reverts"] += 1
                    state["nan_reverts_total"] += 1
                    counts["line_search_status"] = "nan_revert"
                    break
                if moved is None:
                    break
                x, f, g = moved
        if self.batch_mode == "fixed" and math.isfinite(f):
            state.update(x=x, f=f, g=g)
        else:
            state.update(x=None, f=None, g=None)
        info.update(counts, step_norm=float(xp.linalg.norm(x - theta)), nfev=nfev[0], memory=len(state["S"]),
                    loss_change=f - f_start)
        return x, state, info

    def _iterate(self, objective, x, f, g, state, counts, evaluate):
        """One L-BFGS iteration from (x, f, g); returns the new (x, f, g),
        or None if the line search found no decrease."""
        xp, S, Y = B.xp, state["S"], state["Y"]
        d = -two_loop(g, S, Y)
        dg0 = float(g @ d)
        if not (math.isfinite(dg0) and dg0 < 0):  # not a descent direction: restart
            self._reset(state)
            d, dg0 = -g, -float(g @ g)
        t = self.lr if S else self.lr * min(1.0, 1.0 / float(xp.abs(g).sum()))
        t *= state["shrink"]

        def phi(step):
            f_t, g_t = evaluate(x + step * d)
            return f_t, g_t, float(g_t @ d)

        if self.line_search == "strong_wolfe":
            t, f_new, g_new, evals, status = strong_wolfe(phi, f, dg0, t, self.c1, self.c2, self.max_ls)
        else:
            if self.line_search == "exact":
                dHd = float(d @ objective.hvp(x, d))
                if math.isfinite(dHd) and dHd > 0:
                    t = -dg0 / dHd
            f_new, g_new, _ = phi(t)
            evals, status = 1, "fixed" if self.line_search is None else "exact"
        counts["line_search_evals"] += evals
        counts["line_search_status"] = status
        if status == "failed":
            self._reset(state)
            return None
        x_new = x + t * d
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        counts["curvature"] = sy
        if math.isfinite(sy) and sy > self.skip_threshold * float(xp.linalg.norm(s)) * float(xp.linalg.norm(y)):
            S.append(s)
            Y.append(y)
            if len(S) > self.history_size:
                del S[0], Y[0]
        else:
            counts["skipped"] += 1
            state["skipped_total"] += 1
        state["inner_iterations"] += 1
        state["shrink"] = 1.0
        counts["inner_iterations"] += 1
        counts["lr"] = t
        return x_new, f_new, g_new

    @staticmethod
    def _reset(state):
        if state["S"]:
            state["resets_total"] += 1
        state["S"].clear()
        state["Y"].clear()
