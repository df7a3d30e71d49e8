"""Stochastic gradient descent with momentum, Nesterov momentum and L2 decay.

PyTorch's ``torch.optim.SGD`` semantics, step t = 1, 2, ...::

    g_t   = ∇f(θ_{t-1}) + wd · θ_{t-1}                  (L2 weight decay)
    b_1   = g_1                                           (first step: no dampening)
    b_t   = μ b_{t-1} + (1 - dampening) g_t               (t > 1)
    d_t   = g_t + μ b_t   if nesterov   else   b_t        (d_t = g_t when μ = 0)
    θ_t   = θ_{t-1} - lr · d_t

Symbols: lr = ``lr``, μ = ``momentum``, wd = ``weight_decay``, dampening =
``dampening``; b is the momentum buffer. Nesterov's form is Sutskever et al.
(2013), eq. (3)-(4), rewritten on the look-ahead point as PyTorch does.

Under a constant gradient g (μ > 0, no dampening, no decay) the buffer is the
geometric series b_t = Σ_{k<t} μ^k g = (1 - μ^t)/(1 - μ) g.
"""
from __future__ import annotations

from tinygrad2 import backend as B

from .base import HyperparameterError, Optimizer, base_info, check_bool, check_fraction, check_positive


class SGD(Optimizer):
    """SGD(lr, momentum=0, nesterov=False, weight_decay=0, dampening=0).

    State: ``step`` (int) and ``momentum_buffer`` (None before the first
    step or when μ = 0). Info: loss, grad_norm (of ∇f, without decay),
    ``lr`` and ``step_norm`` = ||θ_t - θ_{t-1}||."""

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        self.lr = check_positive("lr", lr, allow_zero=True)
        self.momentum = check_fraction("momentum", momentum)
        self.nesterov = check_bool("nesterov", nesterov)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.dampening = check_fraction("dampening", dampening, closed_high=True)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise HyperparameterError(
                f"nesterov: Nesterov momentum needs momentum > 0 and dampening = 0, "
                f"got momentum={momentum!r}, dampening={dampening!r}"
            )

    def init(self, theta):
        return self._new_state(theta, momentum_buffer=None)

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        loss, grad = objective.loss_and_grad(theta)
        info = base_info(loss, grad)
        g = grad + self.weight_decay * theta if self.weight_decay else grad
        buf = state["momentum_buffer"]
        if self.momentum:
            buf = g.copy() if buf is None else self.momentum * buf + (1 - self.dampening) * g
            d = g + self.momentum * buf if self.nesterov else buf
        else:
            d = g
        update = self.lr * d
        info.update(lr=self.lr, step_norm=float(B.xp.linalg.norm(update)))
        return theta - update, {**state, "step": state["step"] + 1, "momentum_buffer": buf}, info

