"""Hybrid SGD-momentum -> AdaHessian, from "Discussion on the viability of a
modern second order method" (MNIST, ResNet-18): train with SGD-momentum until
the validation loss falls below a threshold t_l, then switch to AdaHessian
for the rest of the run. The switch is one-way.

Phase 1, SGD-momentum (:class:`optimizers.sgd.SGD`: PyTorch form, dampening 0,
no weight decay):

    b = μ b + g,     θ = θ - lr_sgd b

Switch: at the end of an epoch (``end_epoch(theta, state, metrics)``), if
``metrics["val_loss"] < t_l`` (a NaN never switches) the phase becomes
AdaHessian from the next step on.

Phase 2, AdaHessian (:mod:`optimizers.adahessian`) with lr = ``ada_lr`` and
the remaining keyword arguments.

==============  ================================================
symbol          argument
==============  ================================================
t_l             ``threshold`` (1.0, as in the paper)
lr_sgd, μ       ``sgd_lr`` (0.005), ``sgd_momentum`` (0.9)
lr (AdaHessian) ``ada_lr`` (0.001)
the rest        ``**ada_kwargs``: betas, eps, weight_decay, hessian_power,
                update_each, spatial_average, block_size, seed
==============  ================================================

**How state carries over** (the paper publishes no code; these are our
choices). AdaHessian starts *fresh* at the switch: m = v = 0, step 0, its own
Rademacher stream from draw 0, and SGD's momentum buffer is dropped. Why:
SGD's buffer is a sum Σ μ^j g (about g / (1 - μ) in size) while AdaHessian's
m is an average (about g), so carrying it over would need a rescaling the
paper does not give; v has no SGD counterpart at all, and AdaHessian's bias
corrections 1 - βᵗ are only right for moments that start at zero at t = 0.
A fresh start is exactly "AdaHessian for the rest of training", so a run
after the switch can be compared step for step with plain AdaHessian from the
switch point. Learning rates are used as given: ``sgd_lr`` before,
``ada_lr`` after; there is no mapping between them (the AdaHessian step is
lr · m̂ / |D̂|, a Newton-like step, not a multiple of the SGD step).

State: ``phase`` ("sgd" or "adahessian"), ``step`` (steps taken), ``epoch``
(epochs ended), ``switch_step`` (steps taken before the first AdaHessian step,
or None), ``switch_epoch`` (the epoch whose validation loss crossed, 1-based,
or None), ``sgd`` (the SGD state in phase 1, None after), ``ada`` (the AdaHessian
state in phase 2, None before).
Info: the phase's own info plus ``phase``, ``switch_step``, ``switch_epoch``.
"""
from __future__ import annotations

from .adahessian import AdaHessian
from .base import HyperparameterError, Optimizer, check_fraction, check_positive, check_real
from .sgd import SGD


class Hybrid(Optimizer):
    """Hybrid(threshold=1.0, sgd_lr=0.005, sgd_momentum=0.9, ada_lr=0.001,
    **ada_kwargs); the switch, state and info: module docstring."""

    def __init__(self, threshold=1.0, sgd_lr=0.005, sgd_momentum=0.9, ada_lr=0.001, **ada_kwargs):
        if not check_real("threshold", threshold) >= 0:
            raise HyperparameterError(f"threshold must be a number >= 0 (inf allowed), got {threshold!r}")
        self.threshold = threshold
        self.sgd_lr = check_positive("sgd_lr", sgd_lr)
        self.sgd_momentum = check_fraction("sgd_momentum", sgd_momentum)
        self._sgd = SGD(lr=self.sgd_lr, momentum=self.sgd_momentum)
        self.ada_lr = check_positive("ada_lr", ada_lr)
        self.ada_kwargs = dict(ada_kwargs)
        if "lr" in ada_kwargs:
            raise HyperparameterError("Hybrid: give AdaHessian's learning rate as ada_lr, not lr")
        try:
            self._ada = AdaHessian(lr=ada_lr, **ada_kwargs)
        except TypeError as err:
            if isinstance(err, HyperparameterError):
                raise
            raise HyperparameterError(f"Hybrid: unknown AdaHessian argument in ada_kwargs: {err}") from None

    def init(self, theta) -> dict:
        return self._new_state(theta, phase="sgd", epoch=0, switch_step=None, switch_epoch=None,
                               sgd=self._sgd.init(theta), ada=None)

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        if state["phase"] == "sgd":
            theta_new, sgd, info = self._sgd.step(objective, theta, state["sgd"])
            info["nhvp"] = 0
            state = {**state, "sgd": sgd}
        else:
            theta_new, ada, info = self._ada.step(objective, theta, state["ada"])
            state = {**state, "ada": ada}
        state["step"] += 1
        info.update(phase=state["phase"], switch_step=state["switch_step"], switch_epoch=state["switch_epoch"])
        return theta_new, state, info

    def end_epoch(self, theta, state, metrics: dict) -> dict:
        """Count the epoch; switch to a fresh AdaHessian the first time
        ``metrics["val_loss"] < threshold``."""
        self._check_state(state, theta, "end_epoch")
        if "val_loss" not in metrics:
            raise ValueError(f"Hybrid.end_epoch: metrics must contain 'val_loss', got keys {sorted(metrics)}")
        state = {**state, "epoch": state["epoch"] + 1}
        if state["phase"] == "sgd" and float(metrics["val_loss"]) < self.threshold:
            state.update(phase="adahessian", switch_step=state["step"], switch_epoch=state["epoch"],
                         sgd=None, ada=self._ada.init(theta))
        return state
