"""The one optimizer interface.

An optimizer is an object of hyper-parameters with two methods::

    state = opt.init(theta)                                  # a plain dict
    theta, state, info = opt.step(objective, theta, state)   # one update

``theta`` is a flat ``xp`` array; ``objective`` is anything with the
Objective interface of ``tinygrad2`` (``loss``, ``grad``, ``loss_and_grad``,
``hvp``, ``ggn_vp``, ``hessian``, ``hessian_diag``, ``block_row_sums``,
``block_diag``, ``layout``, ``counts``); optimizers never import ``nets``.
Per-epoch methods also implement ``end_epoch(theta, state, metrics)``.
``state`` holds only arrays, numbers, strings, ``None`` and nested dicts/lists
of them, so it can be printed, compared and saved to HDF5 bit-exactly
(:mod:`optimizers.state`). ``info`` is a dict of per-step figures: always
``loss`` (at the point where the step started) and ``grad_norm``, plus what
the method has (damping, CG iterations, step size, curvature, ...).

Full-batch methods also offer :meth:`Optimizer.minimize`, which returns an
:class:`OptimizeResult` with SciPy's fields and accepts a callback that can
stop the run.
"""
from __future__ import annotations

import math
import time

from tinygrad2 import backend as B


class OptimizeResult(dict):
    """SciPy-style result: x, fun, jac, nit, nfev, njev, nhvp, success,
    status, message (and ``history``: the per-step info dicts). Fields are
    also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        keys = ("message", "success", "status", "fun", "nit", "nfev", "njev", "nhvp")
        body = ", ".join(f"{k}={self[k]!r}" for k in keys if k in self)
        return f"OptimizeResult({body})"


class Optimizer:
    """Base class: subclasses set ``name`` and implement ``init`` and ``step``."""

    name = "optimizer"

    def init(self, theta) -> dict:
        raise NotImplementedError

    def step(self, objective, theta, state):
        raise NotImplementedError

    def end_epoch(self, theta, state, metrics: dict) -> dict:
        """Called by the run loop after each epoch's evaluation with metrics
        such as ``val_loss``; per-epoch methods (BB's step size, the Hybrid's
        switch) act here. Returns the new state; the default changes nothing."""
        return state

    def hyperparameters(self) -> dict:
        """The constructor's settings (what a results file records)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def minimize(self, objective, theta0, maxiter=100, gtol=1e-8, ftol=0.0, callback=None):
        """Run ``step`` until ||g||_inf <= gtol, the loss change <= ftol·max(1, |f|),
        ``maxiter`` steps, a non-finite loss, or ``callback(theta, info)``
        returns True. Counts come from ``objective.counts`` when present."""
        theta = B.asarray(theta0)
        state = self.init(theta)
        counts = getattr(objective, "counts", None)
        start_counts = dict(counts) if counts is not None else {}
        history, status, message = [], 1, "maximum number of iterations reached"
        start = time.perf_counter()
        nit = 0
        for nit in range(1, maxiter + 1):
            theta_next, state, info = self.step(objective, theta, state)
            history.append(info)
            if not math.isfinite(info.get("loss", 0.0)):
                status, message = 3, f"non-finite loss {info['loss']} at iteration {nit}"
                break
            theta = theta_next
            if callback is not None and callback(theta, info):
                status, message = 2, "stopped by the callback"
                break
            if info.get("grad_norm_inf", math.inf) <= gtol:
                status, message = 0, "gradient norm below gtol"
                break
            change = info.get("loss_change")
            if ftol > 0 and change is not None and abs(change) <= ftol * max(1.0, abs(info["loss"])):
                status, message = 0, "loss change below ftol"
                break
        fun, jac = objective.loss_and_grad(theta)
        used = {k: counts[k] - start_counts.get(k, 0) for k in counts} if counts is not None else {}
        if float(B.xp.abs(jac).max()) <= gtol and status == 1:
            status, message = 0, "gradient norm below gtol"
        return OptimizeResult(
            x=theta, fun=float(fun), jac=jac, nit=nit, nfev=used.get("nfev", 0),
            njev=used.get("ngev", 0), nhvp=used.get("nhvp", 0), success=status == 0,
            status=status, message=message, history=history, state=state,
            time=time.perf_counter() - start,
        )


# ---------------------------------------------------------------- hyper-parameter checks


def check_positive(name, value, allow_zero=False):
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def check_fraction(name, value, closed_high=False):
    """value in [0, 1) (or [0, 1] with closed_high)."""
    ok = 0 <= value <= 1 if closed_high else 0 <= value < 1
    if not (isinstance(value, (int, float)) and ok):
        interval = "[0, 1]" if closed_high else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_int(name, value, minimum=1):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def norms(g):
    """(||g||_2, ||g||_inf) as floats."""
    return float(B.xp.linalg.norm(g)), float(B.xp.abs(g).max()) if g.size else 0.0


def base_info(loss, g):
    """The figures every step reports."""
    two, inf = norms(g)
    return {"loss": float(loss), "grad_norm": two, "grad_norm_inf": inf}
