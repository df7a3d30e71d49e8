"""SGD with a Barzilai-Borwein step size per epoch (SGD-BB; Tan, Ma, Dai,
Qian, "Barzilai-Borwein step size for stochastic gradient descent", NIPS
2016, Algorithm 2), with the step-size bounds of the CIFAR comparison.

Inner step t of epoch k (m steps per epoch), stochastic gradient g_t::

    θ_{t+1} = θ_t - η_k g_t
    ĝ       <- β g_t + (1 - β) ĝ                  (moving average, ĝ = 0 at start)

At the end of epoch k-1 (x_k = the last iterate of epoch k-1, ĝ_j = the
average as it stood at the end of epoch j)::

    η_k = ||s||² / (m |sᵀy|),  s = x_k - x_{k-1},  y = ĝ_{k-1} - ĝ_{k-2}   (k >= 2)
    η_0 = η_1 = lr

(the paper's eq. for η_k in Algorithm 2; the BB step (Barzilai & Borwein 1988)
divided by m). Optional safeguards:

* ``smoothing``: the paper's smoothing of η_k (Section 3; on by default in the
  official code, off here), a geometric mean with φ(k) = k,
  c_k = c_{k-1}^{(k-2)/(k-1)} (η_k φ(k))^{1/(k-1)}, η_k <- c_k / φ(k);
* bounds (``tau_min``/``tau_max``): keep η_k if it lies in
  [τ_min/(k+1), τ_max/(k+1)], else use τ_0/(k+1);
* a near-zero curvature guard: if |sᵀy| <= ``curvature_eps``·||s||·||y||
  (or s = 0, or anything is non-finite) the previous η is kept.

Symbols: lr = η_0 (the step size of epochs 0 and 1), m = ``steps_per_epoch`` (or the counted number of steps
of the epoch), β = ``beta``, τ_min, τ_max, τ_0 = ``tau_min``, ``tau_max``,
``tau0``.

Choices, following the authors' official code (tanconghui/Stochastic_BB):
ĝ is one moving average carried across epochs (not restarted at 0 each
epoch); the index shift above (η_0 in epochs 0 and 1); |sᵀy| as in the paper;
β defaults to 10/m. Epoch boundaries come from :meth:`end_epoch`, which the run
loop calls after each epoch; if ``steps_per_epoch`` is given the optimizer
instead closes an epoch itself after that many steps and ``end_epoch`` does
nothing (so it also runs under :meth:`Optimizer.minimize`).

On a quadratic with y = A s, ||s||²/(sᵀy) is an inverse Rayleigh quotient of
A, so m η lies in [1/λ_max, 1/λ_min] (:func:`bb_step_size`).
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B

from .base import HyperparameterError, Optimizer, base_info, check_bool, check_int, check_positive, check_real

BETA_STEPS = 10.0  # default β = BETA_STEPS / m (capped at 1), the official code's choice
CURVATURE_EPS = 1e-12  # default near-zero guard: skip the update if |sᵀy| <= this · ||s|| ||y||


def bb_step_size(s, y, m=1):
    """||s||² / (m |sᵀy|) as a float (inf when sᵀy = 0)."""
    sy = abs(float(s @ y))
    return float(s @ s) / (m * sy) if sy > 0 else math.inf


class BB(Optimizer):
    """BB(lr, steps_per_epoch=None, beta=None, tau_min=None, tau_max=None,
    tau0=None, smoothing=False, curvature_eps=1e-12).

    ``lr`` is η_0, the step size of epochs 0 and 1.

    ``beta`` None means 10/steps_per_epoch (capped at 1); it must then be
    given when ``steps_per_epoch`` is None. ``tau0`` None means lr.

    State: ``step`` (steps so far), ``epoch`` k, ``inner`` (steps so far in
    this epoch), ``lr`` η_k (the step size of the current epoch),
    ``g_hat`` ĝ, ``x_prev``/``g_hat_prev`` (x and ĝ at the end of the previous
    epoch, None before), ``smooth_c``, counters ``bb_skipped`` and
    ``bb_fallbacks``, and ``epoch_info`` (the figures of the last step-size
    update: raw BB value, sᵀy, m, whether it was skipped or replaced).
    Info per step: loss, grad_norm, ``lr`` (η_k), ``step_norm``, ``epoch``,
    ``inner`` plus the counters and ``curvature`` (sᵀy of the last update,
    None before the first)."""

    def __init__(self, lr, steps_per_epoch=None, beta=None, tau_min=None, tau_max=None, tau0=None,
                 smoothing=False, curvature_eps=CURVATURE_EPS):
        self.lr = check_positive("lr", lr)
        self.steps_per_epoch = None if steps_per_epoch is None else check_int("steps_per_epoch", steps_per_epoch)
        if beta is None:
            if steps_per_epoch is None:
                raise HyperparameterError("beta: give beta explicitly when steps_per_epoch is None (its default is 10/m)")
            beta = min(1.0, BETA_STEPS / steps_per_epoch)
        if not 0 < check_real("beta", beta) <= 1:
            raise HyperparameterError(f"beta must lie in (0, 1], got {beta!r}")
        self.beta = float(beta)
        self.tau_min = None if tau_min is None else check_positive("tau_min", tau_min, allow_zero=True)
        self.tau_max = None if tau_max is None else check_positive("tau_max", tau_max)
        if tau_min is not None and tau_max is not None and tau_min > tau_max:
            raise HyperparameterError(f"tau_min must be <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")
        self.tau0 = self.lr if tau0 is None else check_positive("tau0", tau0)
        self.smoothing = check_bool("smoothing", smoothing)
        self.curvature_eps = check_positive("curvature_eps", curvature_eps, allow_zero=True)

    def init(self, theta):
        return self._new_state(
            theta, epoch=0, inner=0, lr=float(self.lr), g_hat=B.xp.zeros_like(theta),
            x_prev=None, g_hat_prev=None, smooth_c=1.0, bb_skipped=0, bb_fallbacks=0, epoch_info={},
        )

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        loss, g = objective.loss_and_grad(theta)
        info = base_info(loss, g)
        lr = state["lr"]
        state = dict(state, g_hat=self.beta * g + (1 - self.beta) * state["g_hat"], inner=state["inner"] + 1,
                     step=state["step"] + 1)
        info.update(lr=lr, step_norm=lr * info["grad_norm"], epoch=state["epoch"], inner=state["inner"],
                    bb_skipped=state["bb_skipped"], bb_fallbacks=state["bb_fallbacks"],
                    curvature=state["epoch_info"].get("s_dot_y"))
        theta = theta - lr * g
        if self.steps_per_epoch is not None and state["inner"] >= self.steps_per_epoch:
            state = self._close_epoch(theta, state)
        return theta, state, info

    def end_epoch(self, theta, state, metrics=None):
        """Close the epoch (the run loop's hook); a no-op when the optimizer
        counts ``steps_per_epoch`` itself."""
        self._check_state(state, theta, "end_epoch")
        return state if self.steps_per_epoch is not None else self._close_epoch(theta, state)

    def _close_epoch(self, theta, state):
        """End epoch k-1 at x_k = theta and choose η_k."""
        state = dict(state)
        k, m = state["epoch"] + 1, self.steps_per_epoch or state["inner"]
        epoch_info = {"epoch": k, "m": m}
        if state["x_prev"] is not None and m > 0:  # k >= 2
            s, y = theta - state["x_prev"], state["g_hat"] - state["g_hat_prev"]
            sy, ns, ny = float(s @ y), float(B.xp.linalg.norm(s)), float(B.xp.linalg.norm(y))
            epoch_info["s_dot_y"] = sy
            if not (math.isfinite(sy) and ns > 0 and abs(sy) > self.curvature_eps * ns * ny):
                state["bb_skipped"] += 1
                epoch_info["skipped"] = True
            else:
                lr = ns * ns / (m * abs(sy))
                epoch_info["bb"] = lr
                if self.smoothing:  # official code: geometric mean of η_j φ(j), φ(j) = j
                    state["smooth_c"] = state["smooth_c"] ** ((k - 2) / (k - 1)) * (lr * k) ** (1 / (k - 1))
                    lr = state["smooth_c"] / k
                low = -math.inf if self.tau_min is None else self.tau_min / (k + 1)
                high = math.inf if self.tau_max is None else self.tau_max / (k + 1)
                if not low <= lr <= high:
                    lr = self.tau0 / (k + 1)
                    state["bb_fallbacks"] += 1
                    epoch_info["fallback"] = True
                state["lr"] = float(lr)
        state.update(epoch=k, inner=0, x_prev=theta.copy(), g_hat_prev=state["g_hat"].copy(), epoch_info=epoch_info)
        return state
