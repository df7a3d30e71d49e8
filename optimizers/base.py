"""The one optimizer interface, and the vocabulary every optimizer shares.

Interface
---------
An optimizer is an object of hyper-parameters with two methods::

    state = opt.init(theta)                                  # a plain dict
    theta, state, info = opt.step(objective, theta, state)   # one update

``theta`` is a flat ``xp`` array; ``objective`` is anything that has
:class:`tinygrad2.ObjectiveInterface`, the one written list of what an
optimizer may call (loss, gradients, curvature products, the layout, the
batch size, the counts; ``tests/optimizers/test_interface_only.py`` runs
every optimizer on objectives that expose nothing else); optimizers never
import ``nets``. Per-epoch methods also implement
``end_epoch(theta, state, metrics)`` (BB's step size, the Hybrid's switch);
the run loop calls it after every epoch with metrics such as ``val_loss``.
Full-batch methods also offer :meth:`Optimizer.minimize`, which returns an
:class:`OptimizeResult` with SciPy's fields and accepts a callback that can
stop the run.

State
-----
``state`` holds only arrays, numbers, strings, ``None`` and nested
dicts/lists of them, so it can be printed, compared and saved to HDF5
bit-exactly (:mod:`optimizers.state`). Every optimizer's state has

* ``step``: the number of ``step`` calls so far (0 after ``init``; methods
  that run several inner iterations per call, like L-BFGS, count those
  separately, e.g. ``inner_iterations``);
* ``optimizer``: the class name of the optimizer whose ``init`` made it, and
  ``theta_size``: the size of the theta it was made for. ``step`` checks both
  first (:meth:`Optimizer._check_state`) and raises a ValueError naming the
  optimizer when a state belongs to another optimizer or another theta.

Hyper-parameters shared by name
-------------------------------
* ``lr``: the step length multiplying the method's direction (the learning
  rate of SGD/Adam/AdaHessian/SGD-PH, η_0 of BB, the initial line-search step
  of L-BFGS, α of the Newton family).
* ``damping``: λ in (B + λI) d = -g (DampedNewton, HessianFree, GaussNewton);
  in units of the curvature B (loss per θ-unit²).
* ``adapt``: how λ changes between steps, the string ``"lm"``
  (Levenberg-Marquardt from ρ: ρ < 1/4 -> λ·3/2, ρ > 3/4 -> λ·2/3, see
  :func:`optimizers.newton.lm_update`) or ``"fixed"`` (λ stays at
  ``damping``). Both damped methods default to ``"lm"``.

Info keys
---------
``info`` is a dict of per-step figures, always ``loss`` and ``grad_norm``
(and ``grad_norm_inf``); every other key is one of the table below, with one
name per concept across optimizers. Units: [f] the loss, [θ] the parameters,
[1] dimensionless, [n] a count. :data:`INFO_KEYS` is read from this table
(the contract test checks every optimizer's info against it).

=========================  =====================================================================
key                        meaning [unit] (optimizers)
=========================  =====================================================================
``loss``                   f(θ) at the point where the step started [f] (all)
``grad_norm``              ||∇f(θ)||₂ at that point [f/θ] (all)
``grad_norm_inf``          ||∇f(θ)||_∞ at that point [f/θ] (all; ``minimize``'s gtol test)
``lr``                     step length applied this step, θ_new = θ + lr·d for the method's
                           direction d: the learning rate, BB's η_k, L-BFGS's line-search t
                           (last inner iteration), α of the Newton family (0 when the step was
                           rejected) [1] (all)
``step_norm``              ||θ_new - θ||₂ [θ] (all)
``loss_change``            f(θ_new) - f(θ) on this step's objective, 0 when rejected [f] (LBFGS,
                           Newton, DampedNewton, HessianFree)
``predicted``              q(lr·d) = lr gᵀd + ½ lr² dᵀBd, the undamped model's change [f]
                           (Newton, DampedNewton, HessianFree; KFAC when known, else None)
``actual``                 f(θ + lr·d) - f(θ) of the trial step, also when rejected [f] (Newton,
                           DampedNewton, HessianFree; KFAC when measured, else None)
``rho``                    actual / predicted; -inf if the loss rose, NaN if the model predicts
                           no decrease [1] (Newton, DampedNewton, HessianFree; KFAC when both are
                           known, else None)
``damping``                λ used in this step [f/θ²] (DampedNewton, HessianFree, KFAC)
``curvature``              curvature along the step: dᵀBd of the direction d (undamped B = H or
                           G), or the secant sᵀy of the last pair (L-BFGS) or epoch (BB) [f]
                           (Newton, DampedNewton, HessianFree, LBFGS, BB; None before BB's first
                           update)
``fallback``               None, or what replaced the plain step: "lstsq", "gradient",
                           "rejected", "steepest_descent", "line_search_failed", "non_finite"
                           (Newton, DampedNewton, HessianFree, KFAC)
``min_eig``                smallest eigenvalue of H [f/θ²] (Newton; DampedNewton with
                           saddle_free)
``max_eig``                largest eigenvalue of H [f/θ²] (Newton; DampedNewton with
                           saddle_free)
``status``                 definiteness of H: "positive_definite", "singular" or "indefinite"
                           (Newton)
``cond``                   max|λ(H)| / min|λ(H)| [1] (Newton)
``descent``                whether gᵀd < 0 (Newton)
``shift``                  τ added by the shifted Cholesky to make B + λI + τI positive definite
                           [f/θ²] (DampedNewton)
``cg_iters``               CG iterations [n] (HessianFree)
``cg_reason``              why CG stopped (HessianFree; see optimizers.cg)
``cg_residual``            ||r|| / ||g|| at CG's end [1] (HessianFree)
``cg_curvature``           pᵀ(B + λI)p of CG's last direction [f] (HessianFree)
``backtrack_iter``         CG iteration of the iterate chosen by CG backtracking [n]
                           (HessianFree)
``backtrack_evals``        loss evaluations of CG backtracking [n] (HessianFree)
``line_search_evals``      loss evaluations inside the line search [n] (LBFGS, HessianFree)
``line_search_status``     "wolfe", "armijo", "failed", "fixed", "exact" or "nan_revert" of the
                           last inner iteration (LBFGS)
``inner_iterations``       L-BFGS iterations run in this ``step`` call [n] (LBFGS)
``nfev``                   loss-and-gradient evaluations in this call [n] (LBFGS)
``skipped``                curvature pairs skipped in this call [n] (LBFGS)
``memory``                 curvature pairs kept after this call [n] (LBFGS)
``nan_reverts``            non-finite trial points reverted in this call [n] (LBFGS)
``epoch``                  BB's epoch index k of this step (0-based) [n] (BB)
``inner``                  steps taken so far in this epoch, this one included [n] (BB)
``bb_skipped``             step-size updates skipped so far (zero curvature) [n] (BB)
``bb_fallbacks``           BB step sizes replaced by τ_0/(k+1) so far [n] (BB)
``nhvp``                   Hessian-vector products in this step [n] (AdaHessian, SGDPH, Hybrid,
                           Sophia)
``hessian_diag_mean``      mean of the latest Hessian-diagonal estimate (AdaHessian: averaged
                           |z ⊙ Hz|; SGD-PH: h of the tensors visited; Sophia: ĥ of the latest
                           refresh) [f/θ²] (AdaHessian, SGDPH, Sophia)
``hessian_refreshed``      whether the Hessian estimate was recomputed this step (AdaHessian,
                           Sophia)
``clipped_fraction``       fraction of coordinates whose ratio |m / max(γh, ε)| exceeded the clip
                           this step [1] (Sophia)
``hessian_groups``         names of the 1-D tensors visited this step (SGDPH)
``hessian_momentum_mean``  mean of the Hessian momentum d over the 1-D tensors [f/θ²] (SGDPH)
``mu``                     momentum coefficient μ of δ = lr·Δ + μ·δ_prev, chosen with lr by the
                           quadratic model (0 on the first step or without momentum) [1] (KFAC)
``inverses_refreshed``     whether the damped Kronecker-factor inverses were recomputed this step
                           (KFAC)
``kfac_layers``            layers with a Kronecker-factored block (the rest use the diagonal
                           fallback) [n] (KFAC)
``preconditioner_refreshed``  whether Shampoo's eigh inverse 4th roots were recomputed this step
                           (Shampoo)
``matrix_tensors``         tensors preconditioned as matrices, L^{-1/4} G R^{-1/4} (2-D, and 3-D
                           or more reshaped to (d₀, rest)) [n] (Shampoo)
``diagonal_tensors``       1-D tensors on diagonal AdaGrad [n] (Shampoo)
``diagonal_sides``         matrix sides longer than ``max_preconditioner_dim``, which use the
                           diagonal of their preconditioner [n] (Shampoo)
``graft_scale_mean``       mean over tensors of ||D_graft|| / ||D||, the rescaling grafting applied;
                           None without grafting [1 for the Adam graft, f/θ for the SGD graft]
                           (Shampoo)
``phase``                  "sgd" or "adahessian" (Hybrid)
``switch_step``            steps taken before the first AdaHessian step, or None [n] (Hybrid)
``switch_epoch``           the epoch whose validation loss crossed the threshold, or None [n]
                           (Hybrid)
=========================  =====================================================================
"""
from __future__ import annotations

import functools
import math
import numbers
import re
import time

import numpy  # type checks of hyper-parameters only (NumPy scalars); no array math

from tinygrad2 import backend as B


def _read_info_table(doc):
    """{key: meaning} from the "Info keys" table of a docstring: the rows
    between the table's second and third border lines, continuation lines
    appended to the row above (empty when docstrings are stripped, python -OO)."""
    if not doc:
        return {}
    lines = doc[doc.index("\nInfo keys\n"):].splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("====")]
    table, key = {}, None
    for line in lines[borders[1] + 1 : borders[2]]:
        row = re.match(r"``(\w+)``\s+(.*)", line)
        if row:
            key = row.group(1)
            table[key] = row.group(2).strip()
        else:
            table[key] += " " + line.strip()
    return table


#: The shared info keys and their meanings, read from the module docstring's table.
INFO_KEYS = _read_info_table(__doc__)
#: The keys every optimizer's state has (see "State" above).
STATE_KEYS = ("optimizer", "theta_size", "step")


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
    """Base class: subclasses implement ``init`` (through :meth:`_new_state`)
    and ``step`` (which starts with :meth:`_check_state`), and check every
    constructor argument with the ``check_*`` helpers of this module; a
    :class:`HyperparameterError` raised there gets the class name in front."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked(self, *args, **kw):
            try:
                init(self, *args, **kw)
            except HyperparameterError as err:
                me = type(self).__name__
                if str(err).startswith(f"{me}:"):
                    raise
                raise type(err)(f"{me}: {err}") from None

        cls.__init__ = checked

    def init(self, theta) -> dict:
        raise NotImplementedError

    def step(self, objective, theta, state):
        raise NotImplementedError

    def _new_state(self, theta, **fields) -> dict:
        """A fresh state: the stamp (``optimizer``, ``theta_size``), ``step`` = 0
        and the method's own ``fields``."""
        return {"optimizer": type(self).__name__, "theta_size": int(theta.size), "step": 0, **fields}

    def _check_state(self, state, theta, method="step") -> None:
        """Raise a TypeError/ValueError naming this optimizer (and ``method``,
        the caller) when ``state`` was not made by its ``init`` for a theta of
        this size (another optimizer's state, a state for another model, a
        hand-made dict), instead of a KeyError or a broadcast error from deep
        inside ``step``."""
        me = type(self).__name__
        where = f"{me}.{method}"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: state must be the dict returned by {me}.init(theta), "
                            f"got {type(state).__name__}")
        made_by = state.get("optimizer")
        if made_by != me:
            origin = ("has no 'optimizer' entry (not made by an init of this version)" if made_by is None
                      else f"was made by {made_by}.init")
            raise ValueError(f"{where}: the state {origin}, not by {me}.init; start from {me}.init(theta)")
        size = getattr(theta, "size", None)
        if state.get("theta_size") != size:
            raise ValueError(f"{where}: the state was made for a theta of size {state.get('theta_size')}, "
                             f"but theta has size {size}; start from {me}.init(theta)")

    def end_epoch(self, theta, state, metrics: dict) -> dict:
        """Called by the run loop after each epoch's evaluation with metrics
        such as ``val_loss``; per-epoch methods (BB's step size, the Hybrid's
        switch) act here. Returns the new state; the default changes nothing."""
        self._check_state(state, theta, "end_epoch")
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
            if not bool(B.xp.isfinite(theta_next).all()):  # the objective would refuse it
                status, message = 3, f"non-finite parameters after iteration {nit}"
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
#
# Every constructor validates each argument with one of the helpers below. A
# wrong type raises HyperparameterTypeError (a TypeError and a ValueError), a
# value out of range HyperparameterError (a ValueError); Optimizer subclasses
# prefix the message with the class name ("SGD: lr must be ...").


class HyperparameterError(ValueError):
    """A hyper-parameter with a value out of its range."""


class HyperparameterTypeError(TypeError, HyperparameterError):
    """A hyper-parameter of the wrong type ("0.1" for a number, None for a fraction, ...)."""


def _show(value):
    return f"{value!r} ({type(value).__name__})"


def check_real(name, value):
    """A real number (int, float, NumPy scalar), not a bool, not NaN."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Real):
        raise HyperparameterTypeError(f"{name} must be a real number, got {_show(value)}")
    if math.isnan(value):
        raise HyperparameterError(f"{name} must be a number, got NaN")
    return value


def check_positive(name, value, allow_zero=False):
    """A finite number > 0 (>= 0 with allow_zero)."""
    check_real(name, value)
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise HyperparameterError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def check_fraction(name, value, closed_high=False):
    """value in [0, 1) (or [0, 1] with closed_high)."""
    check_real(name, value)
    if not (0 <= value <= 1 if closed_high else 0 <= value < 1):
        interval = "[0, 1]" if closed_high else "[0, 1)"
        raise HyperparameterError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_int(name, value, minimum=1):
    """An integer (Python or NumPy, not a bool) >= minimum, returned as int."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral):
        raise HyperparameterTypeError(f"{name} must be an integer >= {minimum}, got {_show(value)}")
    if value < minimum:
        raise HyperparameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name, value):
    """True or False (a NumPy bool too), returned as bool; 0, 1, "no" are refused."""
    if not isinstance(value, (bool, numpy.bool_)):
        raise HyperparameterTypeError(f"{name} must be True or False, got {_show(value)}")
    return bool(value)


def check_choice(name, value, choices):
    """One of ``choices``, compared by type and value (True is not 1, "1" is not 1)."""
    if not any(isinstance(value, type(c)) and (type(c) is bool) == isinstance(value, bool) and value == c
               for c in choices):
        raise HyperparameterError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_pair(name, value, check=check_fraction):
    """A pair (tuple or list of two), each entry checked by ``check`` as name[0], name[1]."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise HyperparameterTypeError(f"{name} must be a pair (tuple of two), got {_show(value)}")
    return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))


def norms(g):
    """(||g||_2, ||g||_inf) as floats."""
    return float(B.xp.linalg.norm(g)), float(B.xp.abs(g).max()) if g.size else 0.0


def base_info(loss, g):
    """The figures every step reports."""
    two, inf = norms(g)
    return {"loss": float(loss), "grad_norm": two, "grad_norm_inf": inf}
