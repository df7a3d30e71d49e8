"""Newton's method with a dense curvature matrix, plain and damped.

:class:`Newton` solves H d = -g exactly (Nocedal & Wright 2006, eq. 2.15); its
safeguards only report and fall back. :class:`DampedNewton` solves
(H + λI) d = -g (Levenberg-Marquardt / Tikhonov damping; N&W Section 4.3 and
10.3), adding multiples of I until a Cholesky factorization shows H + λI to be
positive definite (N&W Algorithm 3.3), adapts λ from the agreement ρ between
the actual and the predicted reduction (Martens 2010, Section 4.2; ρ as in N&W eq. 4.4), and can
use the saddle-free |H| (Dauphin et al. 2014) instead of H.

Both form the dense n x n matrix from ``objective.hessian`` (or
``objective.ggn`` with ``curvature="ggn"``): n batched curvature products
and O(n³) linear algebra per step, so they suit up to a few thousand
parameters.
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B

from .base import HyperparameterError, HyperparameterTypeError, Optimizer, base_info, check_bool, check_choice, check_positive

_CURVATURES = ("hessian", "ggn")

# Levenberg-Marquardt adaptation of λ (Martens 2010, Section 4.2), shared with HessianFree
LM_LOW_RHO = 0.25  # ρ below this: the model over-promised, λ grows by LM_BOOST
LM_HIGH_RHO = 0.75  # ρ above this: the model is trustworthy, λ shrinks by LM_DROP
LM_BOOST = 1.5  # default λ factor after a poor step (3/2)
LM_DROP = 2 / 3  # default λ factor after a good step (2/3)
MAX_DAMPING = 1e10  # default upper clip of λ
ADAPT_CHOICES = ("lm", "fixed")  # the values of ``adapt``: Levenberg-Marquardt, or λ kept at ``damping``

# Cholesky with added multiples of I (N&W Algorithm 3.3)
CHOLESKY_SHIFT_FRACTION = 1e-3  # first shift β' = this · mean|a_ii| (N&W's β = 10⁻³)
CHOLESKY_MAX_TRIES = 100  # shifts tried (each doubling τ) before giving up


def dense_curvature(objective, theta, curvature):
    """The symmetrized dense H (or G): ½(M + Mᵀ) removes round-off asymmetry."""
    M = objective.hessian(theta) if curvature == "hessian" else objective.ggn(theta)
    return 0.5 * (M + M.T)


def quadratic_model(g, d, Md):
    """q(d) = gᵀd + ½ dᵀ M d: the model's change of f along the step d (the
    *undamped* model: M is H or G without λI). Returns (q, dᵀMd)."""
    curv = float(d @ Md)
    return float(g @ d) + 0.5 * curv, curv


def new_loss(objective, theta, d, lr):
    """f(θ + lr·d), with NaN/inf read as +inf (a loss increase); a trial
    point that is itself non-finite is not evaluated (the objective refuses it)."""
    trial = theta + lr * d
    if not bool(B.xp.isfinite(trial).all()):
        return math.inf
    value = objective.loss(trial)
    return value if math.isfinite(value) else math.inf


def finite(loss, g, M):
    """Whether the loss, the gradient and the curvature matrix are all finite."""
    return math.isfinite(loss) and bool(B.xp.all(B.xp.isfinite(g))) and bool(B.xp.all(B.xp.isfinite(M)))


def non_finite_step(theta, state, loss, g):
    """Stay at θ and report (the step still counts); ``minimize`` stops on the
    non-finite loss."""
    info = base_info(loss, g)
    info.update(fallback="non_finite", loss_change=math.nan)
    return theta.copy(), {**state, "step": state["step"] + 1}, info


def check_adapt(adapt):
    """``adapt`` must be the string "lm" or "fixed" (a bool is refused with a
    TypeError that says which string to use)."""
    if isinstance(adapt, bool):
        raise HyperparameterTypeError(f"adapt must be the string 'lm' (Levenberg-Marquardt) or 'fixed', got the bool {adapt!r}; "
                        f"use adapt={'lm' if adapt else 'fixed'!r}")
    return check_choice("adapt", adapt, ADAPT_CHOICES)


def check_lm(boost, drop, min_damping, max_damping):
    """Validate the Levenberg-Marquardt settings of :func:`lm_update`:
    boost >= 1, 0 < drop <= 1, 0 <= min_damping <= max_damping."""
    check_positive("boost", boost)
    if boost < 1:
        raise HyperparameterError(f"boost must be >= 1, got {boost!r}")
    check_positive("drop", drop)
    if drop > 1:
        raise HyperparameterError(f"drop must be <= 1, got {drop!r}")
    check_positive("min_damping", min_damping, allow_zero=True)
    check_positive("max_damping", max_damping)
    if min_damping > max_damping:
        raise HyperparameterError(f"min_damping ({min_damping!r}) must not exceed max_damping ({max_damping!r})")
    return boost, drop, min_damping, max_damping


def lm_update(damping, rho, boost=LM_BOOST, drop=LM_DROP, min_damping=0.0, max_damping=math.inf):
    """Levenberg-Marquardt rule (Martens 2010, Section 4.2):
    ρ < ¼ -> λ·boost, ρ > ¾ -> λ·drop, clipped to [min_damping, max_damping]."""
    if rho < LM_LOW_RHO or math.isnan(rho):
        damping *= boost
    elif rho > LM_HIGH_RHO:
        damping *= drop
    return min(max(damping, min_damping), max_damping)


def reduction_ratio(actual, predicted):
    """ρ = actual / predicted reduction; -inf if the loss rose (or is not
    finite), NaN if the model predicts no decrease."""
    if not math.isfinite(actual) or actual > 0:
        return -math.inf
    return actual / predicted if predicted < 0 else math.nan


class Newton(Optimizer):
    """Plain Newton: θ <- θ + lr · d,  H d = -g  (N&W eq. 2.15).

    Arguments: ``lr`` = α (1.0: the full Newton step); ``curvature``: "hessian"
    (H, default) or "ggn" (G: Gauss-Newton); ``fallback``: what to do when H
    is not positive definite, i.e. λ_min(H) <= ``rcond`` · max|λ(H)|
    (rcond None: n · machine epsilon of theta's dtype):

    * "lstsq" (default): d = -H⁺g, the minimum-norm least-squares solution
      (xp.linalg.lstsq with that rcond) -- the Newton step restricted to the
      range of H; on an indefinite H it heads for the saddle, which the
      ``descent`` flag (gᵀd < 0) reveals;
    * "gradient": d = -g (steepest descent with step lr);
    * "none": xp.linalg.solve anyway, also on an indefinite H (the
      minimum-norm solution when H is numerically singular: some
      |λ_i| <= rcond·max|λ|) -- plain Newton, for reproducing how it fails.
    Minimum-norm solutions come from the step's eigendecomposition
    (d = -Σ_{kept i} q_i q_iᵀ g / λ_i), not from a second factorization.

    The eigen-decomposition of H is computed every step (xp.linalg.eigh), so a
    numerically singular or indefinite H is always reported, never solved
    silently. ``info``: base_info
    plus ``lr``, ``status`` ("positive_definite", "singular" or "indefinite"),
    ``min_eig``, ``max_eig``, ``cond`` = max|λ| / min|λ|, ``fallback`` (None,
    "lstsq", "gradient", or "non_finite" when f, g or H is not finite:
    θ is then left unchanged), ``descent``, ``step_norm``, ``curvature`` dᵀHd,
    ``predicted`` q(lr·d) = lr gᵀd + ½ lr² dᵀHd, ``actual`` f(θ+lr d) - f(θ),
    ``loss_change`` (= actual), ``rho`` = actual / predicted.
    """

    def __init__(self, lr=1.0, curvature="hessian", fallback="lstsq", rcond=None):
        self.lr = check_positive("lr", lr)
        self.curvature = check_choice("curvature", curvature, _CURVATURES)
        self.fallback = check_choice("fallback", fallback, ("lstsq", "gradient", "none"))
        self.rcond = None if rcond is None else check_positive("rcond", rcond)

    def init(self, theta):
        return self._new_state(theta)

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        loss, g = objective.loss_and_grad(theta)
        H = dense_curvature(objective, theta, self.curvature)
        if not finite(loss, g, H):
            return non_finite_step(theta, state, loss, g)
        eig, Q = xp.linalg.eigh(H)  # one decomposition: the diagnostics and the solve
        lo, hi, top = float(eig[0]), float(eig[-1]), float(xp.abs(eig).max())
        rcond = self.rcond if self.rcond is not None else theta.shape[0] * float(xp.finfo(theta.dtype).eps)
        if lo > rcond * top:
            status = "positive_definite"
        else:
            status = "singular" if lo >= -rcond * top else "indefinite"
        fallback = None
        kept = xp.abs(eig) > rcond * top
        if status == "positive_definite" or (self.fallback == "none" and bool(kept.all())):
            d = -xp.linalg.solve(H, g)
        elif self.fallback in ("none", "lstsq"):
            # d = -H⁺ g = -Σ_{|λ_i| > rcond·max|λ|} q_i (q_iᵀ g) / λ_i: the minimum-norm
            # least-squares solution (numpy.linalg.lstsq's), from the decomposition already at hand
            d, fallback = -(Q @ xp.where(kept, (Q.T @ g) / xp.where(kept, eig, 1), 0)), "lstsq"
        else:
            d, fallback = -g, "gradient"
        predicted, curv = quadratic_model(g, self.lr * d, self.lr * (H @ d))
        value = new_loss(objective, theta, d, self.lr)
        actual = value - loss
        smallest = float(xp.abs(eig).min())
        info = base_info(loss, g)
        info.update(
            lr=self.lr, status=status, min_eig=lo, max_eig=hi, cond=top / smallest if smallest > 0 else math.inf,
            fallback=fallback, descent=bool(float(g @ d) < 0), step_norm=self.lr * float(xp.linalg.norm(d)),
            curvature=curv / self.lr**2, predicted=predicted, actual=actual, loss_change=actual,
            rho=reduction_ratio(actual, predicted),
        )
        return theta + self.lr * d, {**state, "step": state["step"] + 1}, info


def cholesky_shifted(A, beta=CHOLESKY_SHIFT_FRACTION, max_tries=CHOLESKY_MAX_TRIES):
    """The smallest τ in {0, τ_0, 2τ_0, ...} for which A + τI has a Cholesky
    factor (N&W Algorithm 3.3, "Cholesky with added multiple of the
    identity"): τ_0 = 0 if min a_ii > 0 else -min a_ii + β', β' = β ·
    mean|a_ii| (scale-aware), doubling (at least β') on each failure.
    Returns (A + τI, τ). A factor L is accepted only if it is finite and
    L Lᵀ v reproduces (A + τI) v for a probe v to within √eps (so a backend
    that does not raise on a failed factorization cannot slip garbage
    through)."""
    xp = B.xp
    n = A.shape[0]
    diag = xp.diagonal(A)
    step = beta * max(float(xp.abs(diag).mean()), float(xp.finfo(A.dtype).tiny))
    low = float(diag.min())
    tau = 0.0 if low > 0 else -low + step
    eye = xp.eye(n, dtype=A.dtype)
    probe = xp.cos(xp.arange(n, dtype=A.dtype))
    tol = math.sqrt(float(xp.finfo(A.dtype).eps))
    for _ in range(max_tries):
        shifted = A + tau * eye
        try:
            L = xp.linalg.cholesky(shifted)
        except xp.linalg.LinAlgError:  # not positive definite (NumPy raises; CuPy returns NaNs, caught below)
            L = None
        ok = L is not None and bool(xp.all(xp.isfinite(L))) and float(
            xp.linalg.norm(L @ (L.T @ probe) - shifted @ probe)) <= (
            tol * float(xp.linalg.norm(shifted)) * float(xp.linalg.norm(probe)))
        if ok:
            return shifted, tau
        tau = max(2 * tau, step)
    raise FloatingPointError(f"cholesky_shifted: no positive definite A + τI found up to τ = {tau:g}")


class DampedNewton(Optimizer):
    """Damped Newton: θ <- θ + lr · d with

        (B + λ I) d = -g,        B = H, G (``curvature="ggn"``), or |H|,

    |H| = Q |Λ| Qᵀ from the eigendecomposition H = Q Λ Qᵀ when
    ``saddle_free`` (Dauphin et al. 2014, saddle-free Newton): negative-curvature
    directions are then followed downhill instead of toward the saddle.
    Along eigenvector q_i of B (eigenvalue a_i) the step is the Newton step's
    component scaled by a_i / (a_i + λ).

    B + λI is made positive definite by Cholesky with added multiples τ of I
    (N&W Algorithm 3.3: τ = 0 if the factorization succeeds); τ is reported
    as ``shift``, and (B + (λ + τ) I) d = -g is then solved by
    xp.linalg.solve (the array API has no triangular solve).

    ``adapt="lm"`` (the default, as in HessianFree; Levenberg-Marquardt,
    Martens 2010 Section 4.2): with ρ = [f(θ + lr d) - f(θ)] / q(lr d), q the
    *undamped* quadratic model q(s) = gᵀs + ½ sᵀ H s (H or G itself, also
    when saddle_free), ρ = -inf if the loss rose: ρ < ¼ -> λ ·= ``boost``
    (3/2), ρ > ¾ -> λ ·= ``drop`` (2/3), clipped to [``min_damping``,
    ``max_damping``]. ``adapt="fixed"`` keeps λ = ``damping`` throughout.
    The default adapts because the default λ = 1 is far too large on a small
    network, where the useful curvature is much smaller than 1: on a 64-16-10
    tanh MLP on 300 of scikit-learn's digits (float64, full batch), 30 steps
    from loss 2.28 reach 0.21 with λ fixed at 1 (0.70 after 10 steps), but
    below 1e-4 with LM (0.05 after 10 steps; λ falls to about 5e-6, so the
    steps become Newton steps). Pass ``adapt="fixed"`` for the fixed-λ
    method.

    ``reject_increase`` (default True): if f(θ + lr d) > f(θ) (or is not
    finite) θ is left unchanged and ``info["fallback"] = "rejected"``.

    ``info``: base_info plus ``damping`` (λ used), ``shift`` (τ), ``rho``,
    ``curvature`` dᵀBd (undamped, B = H or G), ``predicted``, ``actual``,
    ``loss_change``, ``step_norm``, ``lr`` (the step length: lr, or 0 if rejected),
    ``fallback`` (None or "rejected"), and with saddle_free ``min_eig``,
    ``max_eig``.
    """

    def __init__(self, lr=1.0, damping=1.0, adapt="lm", saddle_free=False, curvature="hessian",
                 boost=LM_BOOST, drop=LM_DROP, min_damping=0.0, max_damping=MAX_DAMPING, reject_increase=True):
        self.lr = check_positive("lr", lr)
        self.damping = check_positive("damping", damping, allow_zero=True)
        self.adapt = check_adapt(adapt)
        self.saddle_free = check_bool("saddle_free", saddle_free)
        self.curvature = check_choice("curvature", curvature, _CURVATURES)
        self.boost, self.drop, self.min_damping, self.max_damping = check_lm(boost, drop, min_damping, max_damping)
        self.reject_increase = check_bool("reject_increase", reject_increase)

    def init(self, theta):
        return self._new_state(theta, damping=float(self.damping))

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        lam = state["damping"]
        loss, g = objective.loss_and_grad(theta)
        H = dense_curvature(objective, theta, self.curvature)
        if not finite(loss, g, H):
            return non_finite_step(theta, state, loss, g)
        extra = {}
        if self.saddle_free:
            eig, Q = xp.linalg.eigh(H)
            absB = (Q * xp.abs(eig)) @ Q.T
            extra = {"min_eig": float(eig[0]), "max_eig": float(eig[-1])}
            A = absB
        else:
            A = H
        shifted, shift = cholesky_shifted(A + lam * xp.eye(A.shape[0], dtype=A.dtype))
        d = -xp.linalg.solve(shifted, g)
        predicted, curv = quadratic_model(g, self.lr * d, self.lr * (H @ d))
        value = new_loss(objective, theta, d, self.lr)
        actual = value - loss
        rho = reduction_ratio(actual, predicted)
        rejected = self.reject_increase and not value <= loss
        alpha = 0.0 if rejected else self.lr
        new_lam = (lm_update(lam, rho, self.boost, self.drop, self.min_damping, self.max_damping)
                   if self.adapt == "lm" else lam)
        info = base_info(loss, g)
        info.update(
            damping=lam, shift=shift, rho=rho, curvature=curv / self.lr**2, predicted=predicted,
            actual=actual, loss_change=0.0 if rejected else actual, lr=alpha,
            step_norm=alpha * float(xp.linalg.norm(d)), fallback="rejected" if rejected else None, **extra,
        )
        theta_next = theta.copy() if rejected else theta + alpha * d
        return theta_next, {**state, "step": state["step"] + 1, "damping": new_lam}, info
