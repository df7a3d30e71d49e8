"""Adam (Kingma & Ba 2015, Algorithm 1) and AdamW (Loshchilov & Hutter 2019,
Algorithm 2), with PyTorch's ``torch.optim.Adam`` / ``AdamW`` semantics.

Step t = 1, 2, ...::

    θ'    = θ_{t-1} (1 - lr·wd)          if decoupled (AdamW)   else θ_{t-1}
    g_t   = ∇f(θ_{t-1}) + wd θ_{t-1}     if not decoupled (L2)  else ∇f(θ_{t-1})
    m_t   = β1 m_{t-1} + (1 - β1) g_t                             (Alg. 1, line 7)
    v_t   = β2 v_{t-1} + (1 - β2) g_t²                            (Alg. 1, line 8)
    θ_t   = θ' - (lr / (1 - β1^t)) · m_t / (sqrt(v_t) / sqrt(1 - β2^t) + ε)

Symbols: lr = ``lr``, (β1, β2) = ``betas``, ε = ``eps``, wd =
``weight_decay``, ``decoupled`` selects AdamW. The bias corrections are those
of Alg. 1, lines 9-11, with ε added to the corrected sqrt(v̂) as PyTorch does
(the paper's "ε-hat" form in Section 2 differs by a factor sqrt(1 - β2^t) on ε).

First step: m̂_1 = g, v̂_1 = g², so θ_1 = θ_0 - lr g / (|g| + ε) ≈ -lr·sign(g).
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B

from .base import Optimizer, base_info, check_bool, check_pair, check_positive


class Adam(Optimizer):
    """Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled=False).

    State: ``step`` (int), ``exp_avg`` m and ``exp_avg_sq`` v (arrays).
    Info: loss, grad_norm, ``lr`` and ``step_norm`` = ||θ_t - θ_{t-1}||."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.lr = check_positive("lr", lr, allow_zero=True)
        self.betas = check_pair("betas", betas)
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.decoupled = check_bool("decoupled", decoupled)

    def init(self, theta):
        zeros = B.xp.zeros_like(theta)
        return self._new_state(theta, exp_avg=zeros, exp_avg_sq=zeros.copy())

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        loss, g = objective.loss_and_grad(theta)
        info = base_info(loss, g)
        (b1, b2), lr, wd, t = self.betas, self.lr, self.weight_decay, state["step"] + 1
        if wd and self.decoupled:
            theta_d = theta * (1 - lr * wd)
        else:
            theta_d = theta
            if wd:
                g = g + wd * theta
        m = b1 * state["exp_avg"] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
        step_size = lr / (1 - b1**t)
        denom = B.xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        new = theta_d - step_size * (m / denom)
        info.update(lr=lr, step_norm=float(B.xp.linalg.norm(new - theta)))
        return new, {**state, "step": t, "exp_avg": m, "exp_avg_sq": v}, info


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, PyTorch's defaults
    (lr 1e-3, weight_decay 1e-2): θ <- θ (1 - lr·wd) before the Adam step."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, decoupled=True):
        super().__init__(lr, betas, eps, weight_decay, decoupled)
