"""Sophia (Liu, Li, Hall, Liang, Ma 2023, "Sophia: A Scalable Stochastic
Second-order Optimizer for Language Model Pre-training", arXiv:2305.14342).

A momentum method whose step is the momentum divided by a lazily refreshed
diagonal-curvature EMA, clipped per coordinate. Step t = 1, 2, ... (the
paper's Algorithm 3, in its order)::

    g    = ∇f(θ)                                      mini-batch gradient
    m    = β₁ m + (1 - β₁) g                          first moment
    if t ≡ 1 (mod k):                                 t = 1, 1 + k, 1 + 2k, ...
        ĥ = estimator(θ)                              see below
        h = β₂ h + (1 - β₂) ĥ                         (h_t = β₂ h_{t-k} + (1 - β₂) ĥ_t)
    (otherwise h is kept: h_t = h_{t-1})
    θ    = θ - η λ θ                                  decoupled weight decay
    θ    = θ - η clip(m / max(γ h, ε), c)            clip(z, c) = max(min(z, c), -c) per entry

m and h start at 0 and there is no bias correction (as in the official
SophiaG; an early official SophiaH divided the step by 1 - β₁ᵗ), so the first
refresh gives h = (1 - β₂) ĥ: early steps are mostly clipped, i.e.
sign-momentum steps of length η·c per coordinate.

==============  ==============================================================
symbol          argument
==============  ==============================================================
η               ``lr`` (1e-4, the official code's default; a research run sets it)
β₁, β₂          ``betas`` ((0.965, 0.99), the official code's)
γ               ``gamma`` (0.04: the official code calls it ``rho``; its default)
ε               ``eps`` (1e-12, a floor > 0 of the denominator)
λ               ``weight_decay`` (0; the official code's default is 0.1)
k               ``update_each`` (10, the official README's and configs' interval)
c               ``clip`` (1.0, the paper's; ``math.inf`` = no clipping)
estimator       ``estimator`` ("hutchinson", "gnb" or "exact")
==============  ==============================================================

**Estimators** (``estimator=``):

* ``"hutchinson"`` (Sophia-H): ĥ = u ⊙ (H u), u Rademacher, one HVP. ĥ (and
  h) may be negative; then max(γh, ε) = ε and that coordinate takes a
  clipped (sign) step (the early official SophiaH used γ·relu(h) + 1e-12,
  the same up to ε).
* ``"gnb"`` (Sophia-G, Gauss-Newton-Bartlett): ĥ = B · ĝ ⊙ ĝ with ĝ the
  mini-batch gradient of the loss at labels ŷ sampled from the model's own
  predictive distribution. It comes from ``objective.capture(theta,
  factor="sample", seed=...)``, whose ``sample_grad`` (1, n) is Jᵀ r with r a
  sample whose covariance is the loss's output Hessian (mean cross-entropy:
  r_i = (p_i - e_{ŷ_i}) / √B), so ĥ = ``sample_grad[0]**2`` = B ĝ ⊙ ĝ and
  E[ĥ] = diag(GGN). No HVP; on refresh steps the same pass also gives the
  loss and gradient (``cap.loss``, ``cap.grad``, at the true labels), so such
  a step costs one forward and one backward pass like any other. Objectives
  without a model/loss split (the closed-form problems) raise
  NotImplementedError naming Sophia and the estimator.
* ``"exact"``: ĥ = ``objective.hessian_diag(theta, "exact")`` (n HVPs; for
  small problems and tests).

**Random draws.** The j-th random draw of a run (j = 0, 1, ..., counted over
refreshes; the Rademacher u of "hutchinson", the label sample of "gnb") is
seeded with ``seed * 2**32 + j`` -- the Rademacher vectors are those of
:class:`~optimizers.adahessian.AdaHessian` with the same seed, drawn with
:func:`tinygrad2.rademacher` (both signs; see ALGORITHMS.md). ``seed`` and
``j`` live in the state, so a saved state resumes with exactly the draws an
uninterrupted run would have made.

**Official code vs. paper** (Liuhong99/Sophia, ``sophia.py``; we implement
the paper's form above):

* The official SophiaG keeps h as the EMA of ĝ ⊙ ĝ (no B) and divides by
  ``rho * bs * h + 1e-15`` with ``bs`` the tokens per batch; with our ĥ = B ĝ⊙ĝ
  that is γ h with γ = ``rho``, so ``gamma`` takes the official ``rho``
  values. It adds the 1e-15 to the denominator where the paper takes
  max(γh, ε); the two agree up to ε wherever γh ≥ 0.
* It writes the step as ``sign(m) · min(|m| / (rho·bs·h + 1e-15), 1)``, which
  equals clip(m / (γh + ε), 1) for a non-negative denominator.
* It refreshes h *after* the optimizer step of iterations k, 2k, ... (so the
  first k steps use h = 0, i.e. are pure sign steps); the paper, and this
  class, refresh *before* the step on t = 1, 1 + k, ...
* Its README calls its lr "ρ·η_t in the paper" (a re-parameterisation of
  the update; the paper's text was not checked here). In the form above,
  with γ = ``rho``, ``lr`` is the official lr: the bound on each
  coordinate's move (times ``clip``).

State: ``step`` (t), ``m``, ``h`` (the EMA), ``seed``, ``draws`` (random draws so
far), ``nhvp`` (HVPs so far), ``hessian_diag_mean`` (mean of the latest ĥ).
Per-step info: ``loss``, ``grad_norm``, ``grad_norm_inf``, ``lr``, ``step_norm``,
``hessian_diag_mean`` (mean of the latest ĥ, this step's when refreshed),
``hessian_refreshed``, ``nhvp`` (HVPs this step: 1 for "hutchinson", n for
"exact", 0 for "gnb" on refresh steps, else 0), ``clipped_fraction`` (fraction
of coordinates with |m / max(γh, ε)| > c; the official code's "win rate" is
about 1 minus it).
"""
from __future__ import annotations

from tinygrad2 import backend as B
from tinygrad2 import rademacher

from .adahessian import SEED_LIMIT, SEED_STRIDE
from .base import (HyperparameterError, Optimizer, base_info, check_choice, check_fraction, check_int, check_pair,
                   check_positive, check_real)

ESTIMATORS = ("hutchinson", "gnb", "exact")


class Sophia(Optimizer):
    """Sophia(lr=1e-4, betas=(0.965, 0.99), gamma=0.04, eps=1e-12,
    weight_decay=0, update_each=10, clip=1.0, estimator="hutchinson", seed=0);
    the update, state and info: module docstring."""

    def __init__(self, lr=1e-4, betas=(0.965, 0.99), gamma=0.04, eps=1e-12, weight_decay=0.0, update_each=10,
                 clip=1.0, estimator="hutchinson", seed=0):
        self.lr = check_positive("lr", lr)
        self.betas = check_pair("betas (beta1, beta2)", betas, check_fraction)
        self.gamma = check_positive("gamma", gamma)
        self.eps = check_positive("eps", eps)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.update_each = check_int("update_each", update_each, minimum=1)
        check_real("clip", clip)
        if not clip > 0:
            raise HyperparameterError(f"clip must be > 0 (math.inf: no clipping), got {clip!r}")
        self.clip = clip
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.seed = check_int("seed", seed, minimum=0)
        if seed >= SEED_LIMIT:
            raise HyperparameterError(f"seed must be < 2**31, got {seed!r}")

    def init(self, theta) -> dict:
        zeros = B.xp.zeros_like(theta)
        return self._new_state(theta, m=zeros, h=zeros.copy(), seed=self.seed, draws=0, nhvp=0,
                               hessian_diag_mean=0.0)

    @staticmethod
    def draw_seed(seed, draw):
        """The seed of the j-th random draw (j = ``draw``) of a run seeded ``seed``."""
        return seed * SEED_STRIDE + draw

    def hessian_estimate(self, objective, theta, seed, draw):
        """(ĥ, HVPs used, random draws used) of the chosen estimator at θ, for
        the j-th draw (j = ``draw``) of a run seeded ``seed``."""
        if self.estimator == "exact":
            return objective.hessian_diag(theta, "exact"), int(theta.shape[0]), 0
        if self.estimator == "hutchinson":
            u = rademacher(theta.shape, seed=self.draw_seed(seed, draw), dtype=theta.dtype)
            return u * objective.hvp(theta, u), 1, 1
        return self.gnb_estimate(self.sample_capture(objective, theta, seed, draw), theta), 0, 1

    @staticmethod
    def sample_capture(objective, theta, seed, draw):
        """``objective.capture(theta, factor="sample")`` for the j-th draw: labels
        sampled from the model's own predictions; also the loss and gradient."""
        where = "Sophia(estimator='gnb')"
        capture = getattr(objective, "capture", None)
        if capture is None:
            raise NotImplementedError(
                f"{where}: {type(objective).__name__} has no capture(theta, factor='sample', seed=...), which the "
                f"Gauss-Newton-Bartlett estimator needs; use estimator='hutchinson' or 'exact'")
        try:
            return capture(theta, factor="sample", seed=Sophia.draw_seed(seed, draw))
        except NotImplementedError as err:
            raise NotImplementedError(
                f"{where}: {type(objective).__name__} cannot sample labels from its own predictions (no "
                f"model/loss split); use estimator='hutchinson' or 'exact' ({err})") from None

    @staticmethod
    def gnb_estimate(cap, theta):
        """ĥ = B ĝ ⊙ ĝ = sample_grad[0]² of a sampled-label capture."""
        sample = B.asarray(cap.sample_grad)
        if sample.shape != (1, theta.shape[0]):
            raise ValueError(f"Sophia(estimator='gnb'): capture(...).sample_grad has shape {sample.shape}, "
                             f"expected (1, {theta.shape[0]})")
        return sample[0] * sample[0]

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        beta1, beta2 = self.betas
        t = state["step"] + 1
        refresh = (t - 1) % self.update_each == 0
        h, draws, nhvp, hmean = state["h"], state["draws"], state["nhvp"], state["hessian_diag_mean"]
        used = 0
        if refresh and self.estimator == "gnb":  # the capture's pass also gives the loss and gradient
            cap = self.sample_capture(objective, theta, state["seed"], draws)
            loss, g = cap.loss, B.asarray(cap.grad)
        else:
            loss, g = objective.loss_and_grad(theta)
        if refresh:
            if self.estimator == "gnb":
                h_hat, used, drawn = self.gnb_estimate(cap, theta), 0, 1
            else:
                h_hat, used, drawn = self.hessian_estimate(objective, theta, state["seed"], draws)
            h = beta2 * h + (1 - beta2) * h_hat
            draws, nhvp = draws + drawn, nhvp + used
            hmean = float(h_hat.mean()) if h_hat.size else 0.0
        m = beta1 * state["m"] + (1 - beta1) * g
        ratio = m / xp.maximum(self.gamma * h, self.eps)
        clipped = xp.abs(ratio) > self.clip
        direction = xp.clip(ratio, -self.clip, self.clip)
        decayed = theta * (1 - self.lr * self.weight_decay) if self.weight_decay else theta
        theta_new = decayed - self.lr * direction
        info = base_info(loss, g)
        info.update(
            lr=self.lr,
            step_norm=float(xp.linalg.norm(theta_new - theta)),
            hessian_diag_mean=hmean,
            hessian_refreshed=refresh,
            nhvp=used,
            clipped_fraction=float(clipped.sum()) / clipped.size if clipped.size else 0.0,
        )
        new_state = {**state, "step": t, "m": m, "h": h, "draws": draws, "nhvp": nhvp, "hessian_diag_mean": hmean}
        return theta_new, new_state, info

