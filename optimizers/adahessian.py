"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney 2020,
"ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning").

Adam with the squared gradient replaced by a squared, spatially averaged
Hutchinson estimate of the Hessian diagonal. Step t = 1, 2, ... (the paper's
Algorithm 1 and its three ingredients: the Hutchinson diagonal, spatial
averaging, and Hessian momentum (the root-mean-square average); the operations
in the official code's order):

    z ~ Rademacher (±1 with probability ½ each, one vector for all parameters)
    D   = |z ⊙ H z|                          Hutchinson, E[z ⊙ Hz] = diag(H); one HVP
    D   = spatial/block average of D         spatial averaging D⁽ˢ⁾
    m   = β₁ m + (1 - β₁) g                  first moment
    v   = β₂ v + (1 - β₂) D²                 Hessian momentum (RMS average)
    den = (√v / √(1 - β₂ᵗ))ᵏ + ε
    θ   = θ - lr (m / (1 - β₁ᵗ) / den + wd θ)  decoupled weight decay

==============  =====================================================
symbol          argument
==============  =====================================================
lr              ``lr`` (0.15)
β₁, β₂          ``betas`` ((0.9, 0.999))
ε               ``eps`` (1e-4; 0 is allowed, then an entry with D = 0 divides by 0)
wd              ``weight_decay`` (0, decoupled as in AdamW / the official code)
k               ``hessian_power`` (1; k = 0 turns the method into bias-corrected
                averaged-momentum SGD, step lr m / (1 - β₁ᵗ) / (1 + ε))
refresh period  ``update_each`` (1)
==============  =====================================================

**Averaging** (eq. 9). With ``spatial_average`` every 4-D parameter of the
objective's layout, shape (out, in, kh, kw), has |z ⊙ Hz| averaged over
(kh, kw) *after* the absolute value, as in the official code. With
``block_size = b`` every 1-D and 2-D parameter is flattened (row-major) and
averaged over consecutive blocks of b entries (the last block may be shorter
and is averaged over its own entries), as in the NLP variants. Other tensors
are not averaged.

**Rademacher draws.** z is drawn with :func:`tinygrad2.rademacher`
(integers in {0, 1} mapped by 2b - 1, so it contains both signs; the widely
copied ``randint(0, 1) * 2 - 1`` is always -1 and gives row sums instead).
The generator of the j-th draw (j = 0, 1, ...) is seeded with
``seed * 2**32 + j``; ``seed`` and ``j`` live in the state, so a saved state
resumes with exactly the draws an uninterrupted run would have made.

**Refresh period.** The Hessian estimate is recomputed on steps
t = 1, 1 + u, 1 + 2u, ... (u = ``update_each``); in between the latest D is
reused, and v is still updated *every* step with that D (the choice of the
``update_each`` implementations, e.g. torch-optimizer's). v is therefore an
ordinary exponential average of one value per step, so the bias correction
1 - β₂ᵗ uses the step count t, as for u = 1. (Updating v only on refreshes
would need a separate counter in the correction.)

State: ``step`` (steps taken, the t above), ``m``, ``v``, ``D`` (latest estimate), ``seed``,
``draws`` (Rademacher vectors drawn so far), ``nhvp`` (HVPs so far).
Per-step info: ``loss``, ``grad_norm``, ``grad_norm_inf``, ``lr``,
``hessian_diag_mean`` (mean of the averaged D used this step),
``hessian_refreshed``, ``nhvp`` (HVPs this step), ``step_norm``.
"""
from __future__ import annotations

from tinygrad2 import backend as B
from tinygrad2 import rademacher

from .base import (HyperparameterError, Optimizer, base_info, check_bool, check_fraction, check_int, check_pair,
                   check_positive)

SEED_STRIDE = 2**32  # the j-th Rademacher draw of a run seeded s uses the seed s · SEED_STRIDE + j
SEED_LIMIT = 2**31  # seeds must be below this, so that s · SEED_STRIDE + j stays distinct per run


class AdaHessian(Optimizer):
    """AdaHessian(lr=0.15, betas=(0.9, 0.999), eps=1e-4, weight_decay=0,
    hessian_power=1, update_each=1, spatial_average=True, block_size=None,
    seed=0); the update, state and info: module docstring."""

    def __init__(self, lr=0.15, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.0, hessian_power=1.0,
                 update_each=1, spatial_average=True, block_size=None, seed=0):
        self.lr = check_positive("lr", lr)
        self.betas = check_pair("betas (beta1, beta2)", betas)
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.hessian_power = check_fraction("hessian_power", hessian_power, closed_high=True)
        self.update_each = check_int("update_each", update_each, minimum=1)
        self.spatial_average = check_bool("spatial_average", spatial_average)
        self.block_size = None if block_size is None else check_int("block_size", block_size, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        if seed >= SEED_LIMIT:
            raise HyperparameterError(f"seed must be < 2**31, got {seed!r}")

    def init(self, theta) -> dict:
        zeros = B.xp.zeros_like(theta)
        return self._new_state(theta, m=zeros, v=zeros.copy(), D=zeros.copy(), seed=self.seed, draws=0, nhvp=0)

    @staticmethod
    def rademacher_draw(seed, draw, n, dtype):
        """The j-th Rademacher vector (j = ``draw``) of a run seeded ``seed``."""
        return rademacher((n,), seed=seed * SEED_STRIDE + draw, dtype=dtype)

    def hessian_estimate(self, objective, theta, z):
        """D = average(|z ⊙ H z|): one joint HVP for all parameters."""
        D = B.xp.abs(z * objective.hvp(theta, z))
        return self.average(D, objective.layout)

    def average(self, D, layout):
        """Spatial averaging of 4-D parameters over (kh, kw) and, with
        ``block_size``, block averaging of flattened 1-D/2-D parameters."""
        xp = B.xp
        if layout is None or not (self.spatial_average or self.block_size):
            return D
        D = D.copy()
        for p in layout:
            if self.spatial_average and p.ndim == 4:
                d = D[p.slice].reshape(p.shape)
                D[p.slice] = xp.broadcast_to(d.mean(axis=(2, 3), keepdims=True), p.shape).reshape(-1)
            elif self.block_size and p.ndim in (1, 2) and p.size:
                d, b = D[p.slice], self.block_size
                full = (p.size // b) * b
                out = xp.empty_like(d)
                if full:
                    out[:full] = xp.repeat(d[:full].reshape(-1, b).mean(axis=1), b)
                if full < p.size:
                    out[full:] = d[full:].mean()
                D[p.slice] = out
        return D

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        beta1, beta2 = self.betas
        loss, g = objective.loss_and_grad(theta)
        t = state["step"] + 1
        refresh = (t - 1) % self.update_each == 0
        D, draws, nhvp = state["D"], state["draws"], state["nhvp"]
        if refresh:
            z = self.rademacher_draw(state["seed"], draws, theta.shape[0], theta.dtype)
            D = self.hessian_estimate(objective, theta, z)
            draws, nhvp = draws + 1, nhvp + 1
        m = beta1 * state["m"] + (1 - beta1) * g
        v = beta2 * state["v"] + (1 - beta2) * D * D
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        denom = (xp.sqrt(v) / (bias2 ** 0.5)) ** self.hessian_power + self.eps
        update = m / bias1 / denom + self.weight_decay * theta
        theta_new = theta - self.lr * update
        info = base_info(loss, g)
        info.update(
            lr=self.lr,
            hessian_diag_mean=float(D.mean()) if D.size else 0.0,
            hessian_refreshed=refresh,
            nhvp=int(refresh),
            step_norm=float(xp.linalg.norm(theta_new - theta)),
        )
        new_state = {**state, "step": t, "m": m, "v": v, "D": D, "draws": draws, "nhvp": nhvp}
        return theta_new, new_state, info
