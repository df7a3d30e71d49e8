"""Hessian-free optimization (Martens 2010, "Deep learning via Hessian-free
optimization", ICML; Algorithm 1 and Section 4; the products are those of
Section 4.1).

Each step minimizes the damped quadratic model of f at θ,

    q_λ(p) = gᵀp + ½ pᵀ (B + λI) p,     B = H (``curvature="hessian"``)
                                         or G = Jᵀ H_z J (``"ggn"``),

by truncated CG (:func:`optimizers.cg.cg`), which only needs products
B v = ``objective.hvp(θ, v)`` or ``objective.ggn_vp(θ, v)``:

1. CG on (B + λI) p = -g, warm-started at ζ · p_prev (ζ =
   ``warm_start_decay``, 0.95; p_prev the *final* CG iterate of the previous
   step, Section 4.5), stopped by Martens' relative-progress rule (Section
   4.4), ``cg_max_iter`` (250), non-positive curvature or ``cg_tol``.
2. CG backtracking (Section 4.6): iterates were kept at i = ⌈5·1.3^j⌉; start
   at the last and walk back while the true loss f(θ + lr·p_i) keeps
   decreasing; the best iterate on that walk is the step p.
3. ρ = [f(θ + lr p) - f(θ)] / q(lr p) with the *undamped* model
   q(s) = gᵀs + ½ sᵀ B s (one extra curvature product); ρ = -inf if the loss
   rose. Levenberg-Marquardt (Section 4.2): ρ < ¼ -> λ ·= ``boost`` (3/2),
   ρ > ¾ -> λ ·= ``drop`` (2/3). Martens starts at λ = 45.
4. Optional Armijo line search on p (Martens' code: α from ``lr``, shrink
   0.8, c₁ = 1e-2, up to 60 tries; α = 0 if none decreases f). Without it,
   a step that raises the loss is rejected when ``reject_increase``.
5. θ <- θ + α p.

Preconditioner (``preconditioner="martens"``, Section 4.7): the diagonal

    M = (diag(Σ_i ∇f_i ⊙ ∇f_i) + λ)^κ,   κ = ``precond_exponent`` = 0.75,

with, for a mean loss f = (1/N) Σ_i ℓ_i, diag = (1/N) Σ_i (∇ℓ_i)² (what
Martens' code computes for an averaged objective). If the objective offers
``per_example_grad_sq(theta)`` returning exactly that, it is used. The
Objectives of tinygrad2 do not (they see the batch only through one scalar
loss), so it is **approximated by N · g ⊙ g** with g the batch gradient and
N the batch size (``objective.batch_size``; 1 for closed-form problems):
if per-example gradients scatter with mean μ and variance σ², then
E[N g²] = N μ² + σ² against (1/N) Σ (∇ℓ_i)² ≈ μ² + σ², so the two agree
when the gradient noise dominates (near a minimum) and the approximation
over-weights the gradient by up to N far from one. M changes CG's path (so
the truncated solution), never the exact solution of (B + λI) p = -g.

Arguments map to the paper: ``damping`` = λ, ``warm_start_decay`` = ζ,
``martens_eps`` = ε, ``precond_exponent`` = κ (the exponent α of Section 4.7).

``info`` per step: base_info plus ``damping`` (λ used), ``rho``,
``cg_iters``, ``cg_residual`` (||r|| / ||g||), ``cg_reason``,
``cg_curvature`` (pᵀ(B+λI)p of CG's last direction), ``backtrack_iter`` (CG
iteration of the chosen iterate), ``backtrack_evals``, ``lr`` (the step
length α taken: lr, the line search's α, or 0 when the step was rejected),
``curvature`` pᵀBp, ``predicted`` q(lr p), ``actual`` f(θ + lr p) - f(θ),
``loss_change``, ``line_search_evals``, ``step_norm``, ``fallback`` (None,
"steepest_descent" (CG met negative curvature on its first direction),
"rejected" or "line_search_failed").
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B

from .base import (HyperparameterError, Optimizer, base_info, check_bool, check_choice, check_fraction, check_int,
                   check_positive)
from .cg import CG_MAX_ITER, CG_TOL, MARTENS_EPS, cg
from .newton import LM_BOOST, LM_DROP, MAX_DAMPING, check_adapt, check_lm, lm_update, reduction_ratio

MARTENS_DAMPING = 45.0  # Martens' initial λ (Section 4.2)
WARM_START_DECAY = 0.95  # ζ: CG starts from ζ · (the previous step's final CG iterate) (Section 4.5)
PRECOND_EXPONENT = 0.75  # κ of the preconditioner (diag + λ)^κ (Section 4.7)
ARMIJO_C1 = 1e-2  # line search: sufficient-decrease constant c₁ of Martens' code
ARMIJO_SHRINK = 0.8  # line search: α ·= this after each failed trial
ARMIJO_MAX = 60  # line search: at most this many trials


class HessianFree(Optimizer):
    """Martens' Hessian-free method (the update and ``info``: module docstring).

    lr: initial step length α₀ (the step is α p); damping: λ₀ (45); adapt:
    "lm" (default: Levenberg-Marquardt on λ, boost 3/2, drop 2/3, clipped to
    [min_damping, max_damping]) or "fixed" (λ stays at damping; a bool is
    refused); curvature: "hessian" (HF Newton) or "ggn" (HF
    Gauss-Newton); cg_max_iter, cg_tol, martens_eps: CG's stops;
    warm_start_decay: ζ; backtracking: Martens' CG backtracking (else the
    last iterate); preconditioner: None or "martens", with
    precond_exponent κ; line_search (+ _c1, _shrink, _max): Armijo on the
    chosen direction; reject_increase: stay put when the loss would rise
    (without a line search)."""

    def __init__(self, lr=1.0, damping=MARTENS_DAMPING, adapt="lm", curvature="hessian", cg_max_iter=CG_MAX_ITER,
                 cg_tol=CG_TOL, martens_eps=MARTENS_EPS, warm_start_decay=WARM_START_DECAY, backtracking=True,
                 preconditioner=None, precond_exponent=PRECOND_EXPONENT, line_search=False,
                 line_search_c1=ARMIJO_C1, line_search_shrink=ARMIJO_SHRINK, line_search_max=ARMIJO_MAX,
                 boost=LM_BOOST, drop=LM_DROP, min_damping=0.0, max_damping=MAX_DAMPING, reject_increase=True):
        self.lr = check_positive("lr", lr)
        self.damping = check_positive("damping", damping, allow_zero=True)
        self.adapt = check_adapt(adapt)
        self.curvature = check_choice("curvature", curvature, ("hessian", "ggn"))
        self.cg_max_iter = check_int("cg_max_iter", cg_max_iter)
        self.cg_tol = check_positive("cg_tol", cg_tol, allow_zero=True)
        self.martens_eps = None if martens_eps is None else check_positive("martens_eps", martens_eps)
        self.warm_start_decay = check_fraction("warm_start_decay", warm_start_decay, closed_high=True)
        self.backtracking = check_bool("backtracking", backtracking)
        self.preconditioner = check_choice("preconditioner", preconditioner, (None, "martens"))
        self.precond_exponent = check_fraction("precond_exponent", precond_exponent, closed_high=True)
        self.line_search = check_bool("line_search", line_search)
        self.line_search_c1 = check_fraction("line_search_c1", line_search_c1)
        self.line_search_shrink = check_fraction("line_search_shrink", line_search_shrink)
        if line_search_shrink == 0:
            raise HyperparameterError("line_search_shrink must lie in (0, 1), got 0")
        self.line_search_max = check_int("line_search_max", line_search_max)
        self.boost, self.drop, self.min_damping, self.max_damping = check_lm(boost, drop, min_damping, max_damping)
        self.reject_increase = check_bool("reject_increase", reject_increase)

    def init(self, theta):
        theta = B.asarray(theta)
        return self._new_state(theta, damping=float(self.damping), cg_x=B.xp.zeros_like(theta))

    # ---- pieces ----------------------------------------------------------
    def _product(self, objective):
        return objective.hvp if self.curvature == "hessian" else objective.ggn_vp

    def _precond(self, objective, theta, g, lam):
        """The diagonal of M (module docstring), or None."""
        if self.preconditioner is None:
            return None
        exact = getattr(objective, "per_example_grad_sq", None)
        if exact is not None:
            sq = exact(theta)
        else:
            sq = objective.batch_size * g * g
        M = (sq + lam) ** self.precond_exponent
        # with λ = 0 an entry can be 0: floor at eps · max M so that M stays invertible
        floor = float(M.max()) * float(B.xp.finfo(M.dtype).eps) if M.size else 0.0
        return B.xp.maximum(M, floor if floor > 0 else 1.0)

    def _backtrack(self, objective, theta, iterates):
        """Martens' CG backtracking: from the last saved iterate walk back
        while f(θ + lr p_i) decreases. Returns (i, p, f, evaluations)."""
        i_best, p_best = iterates[-1]
        f_best, evals = _loss_at(objective, theta + self.lr * p_best), 1
        if self.backtracking:
            for i, p in reversed(iterates[:-1]):
                value = _loss_at(objective, theta + self.lr * p)
                evals += 1
                if not value < f_best:
                    break
                i_best, p_best, f_best = i, p, value
        return i_best, p_best, f_best, evals

    def _armijo(self, objective, theta, p, slope, loss, f_first):
        """Backtracking from α = lr until f(θ + α p) <= f + c₁ α gᵀp.
        Returns (α, f(θ + α p), evaluations); α = 0 when no trial passed."""
        alpha, value, evals = self.lr, f_first, 0
        while True:
            if value <= loss + self.line_search_c1 * alpha * min(slope, 0.0):
                return alpha, value, evals
            if evals >= self.line_search_max:
                return 0.0, loss, evals
            alpha *= self.line_search_shrink
            value = _loss_at(objective, theta + alpha * p)
            evals += 1

    # ---- the step --------------------------------------------------------
    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        lam = state["damping"]
        loss, g = objective.loss_and_grad(theta)
        product = self._product(objective)
        x0 = self.warm_start_decay * state["cg_x"]
        if not bool(xp.all(xp.isfinite(x0))):
            x0 = xp.zeros_like(theta)
        res = cg(lambda v: product(theta, v) + lam * v, -g, x0=x0,
                 M=self._precond(objective, theta, g, lam), max_iter=self.cg_max_iter,
                 tol=self.cg_tol, martens_eps=self.martens_eps)
        i_best, p, f_p, bt_evals = self._backtrack(objective, theta, res.iterates)
        Bp = product(theta, p)
        curv = float(p @ Bp)
        slope = float(g @ p)
        predicted = self.lr * slope + 0.5 * self.lr**2 * curv
        actual = f_p - loss
        rho = reduction_ratio(actual, predicted)
        fallback, ls_evals = res.fallback, 0
        if self.line_search:
            alpha, f_new, ls_evals = self._armijo(objective, theta, p, slope, loss, f_p)
            if alpha == 0.0:
                fallback = "line_search_failed"
        elif self.reject_increase and not f_p <= loss:
            alpha, f_new, fallback = 0.0, loss, "rejected"
        else:
            alpha, f_new = self.lr, f_p
        new_lam = (lm_update(lam, rho, self.boost, self.drop, self.min_damping, self.max_damping)
                   if self.adapt == "lm" else lam)
        g_norm = float(xp.linalg.norm(g))
        info = base_info(loss, g)
        info.update(
            damping=lam, rho=rho, cg_iters=res.iterations, cg_reason=res.reason,
            cg_residual=res.residual_norm / g_norm if g_norm > 0 else 0.0, cg_curvature=res.curvature,
            backtrack_iter=i_best, backtrack_evals=bt_evals, lr=alpha, curvature=curv,
            predicted=predicted, actual=actual, loss_change=f_new - loss if alpha else 0.0,
            line_search_evals=ls_evals, step_norm=alpha * float(xp.linalg.norm(p)), fallback=fallback,
        )
        cg_x = xp.zeros_like(theta) if res.fallback == "steepest_descent" else res.x
        state = {**state, "step": state["step"] + 1, "damping": new_lam, "cg_x": cg_x}
        theta_next = theta.copy() if alpha == 0.0 else theta + alpha * p
        return theta_next, state, info


def _loss_at(objective, theta):
    """f(θ), with a non-finite value read as +inf (a failed trial); a
    non-finite θ is not evaluated (the objective refuses it)."""
    if not bool(B.xp.isfinite(theta).all()):
        return math.inf
    value = objective.loss(theta)
    return value if math.isfinite(value) else math.inf
