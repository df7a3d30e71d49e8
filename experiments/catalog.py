"""The experiments ``python -m experiments run NAME`` knows.

An :class:`Experiment` turns command-line settings into a list of
:class:`~experiments.runner.RunSpec` (one per method, or one per method and
repetition: methods named ``"SGD#1"``, ``"SGD#2"``, ... are one method
repeated, and the table shows their mean ± std) and knows how to print its
table, with the numbers a paper reported beside ours where there is one
(a number, a ``(mean, std)`` pair, or a string such as ``"NaN"``).

The four paper reproductions live in the package :mod:`experiments.papers`
(one module per paper) and are registered here at import. :class:`Experiment`,
:func:`base_method` and the one RunSpec builder ``_spec`` live in
:mod:`experiments.papers.common`; the dependency is one-way (this module
imports the papers, nothing there imports this module).
"""
from __future__ import annotations

import math

from .curvature_study import EXPERIMENT as STUDY_EXPERIMENT
from .papers import paper_experiments
from .papers.common import Experiment, _spec, base_method, plural  # noqa: F401  (re-exported: catalog.Experiment, ...)

QUICK_BATCHES = 2      # batches per epoch of a --quick run, and of the dense Newton methods in the main job
LOSS_FIXED_MAX = 1e5   # a loss at least this large prints in %.3g instead of %.4f


# ---------------------------------------------------------------- the main job: digits


DIGITS_MODEL = {"name": "MLP", "kwargs": {"sizes": [64, 32, 10], "activation": "relu"}}
DIGITS_DATA = {"name": "digits", "reshape": [-1]}

# method -> (optimizer class, kwargs, batch size, epochs at full length)
DIGITS_METHODS = {
    "SGD": ("SGD", {"lr": 0.1}, 64, 10),
    "SGD-momentum": ("SGD", {"lr": 0.05, "momentum": 0.9}, 64, 10),
    "Adam": ("Adam", {"lr": 0.003}, 64, 10),
    "Newton": ("Newton", {"lr": 0.5, "fallback": "none"}, 256, 1),
    "DampedNewton": ("DampedNewton", {"lr": 1.0, "damping": 1.0, "adapt": "lm"}, 256, 1),
    "HF-Newton": ("HessianFree", {"damping": 1.0, "curvature": "hessian"}, 256, 10),
    "HF-GaussNewton": ("GaussNewton", {"damping": 1.0}, 256, 10),
    "BB": ("BB", {"lr": 0.1, "beta": 0.5}, 64, 10),
    "L-BFGS": ("LBFGS", {"lr": 1.0, "history_size": 10, "line_search": "strong_wolfe",
                         "batch_mode": "same_batch"}, 256, 10),
    "AdaHessian": ("AdaHessian", {"lr": 0.05}, 64, 10),
    "SGD-PH": ("SGDPH", {"lr": 0.05}, 64, 10),
    "Hybrid": ("Hybrid", {"threshold": 1.0, "sgd_lr": 0.05, "sgd_momentum": 0.9, "ada_lr": 0.01}, 64, 10),
    "K-FAC": ("KFAC", {"damping": 0.01}, 64, 10),
    "Shampoo": ("Shampoo", {"lr": 0.03}, 64, 10),
    "Sophia-G": ("Sophia", {"lr": 0.01, "gamma": 1.0, "estimator": "gnb", "update_each": 10}, 64, 10),
}


DIGITS_DENSE = ("Newton", "DampedNewton")  # O(n^3) per step: two steps of batch 256 in the main job


def digits_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    specs = []
    for method, (opt, kwargs, batch, full_epochs) in DIGITS_METHODS.items():
        if methods and method not in methods:
            continue
        n_epochs = epochs if epochs is not None else (1 if quick else full_epochs)
        data = dict(DIGITS_DATA, limit_batches=QUICK_BATCHES) if quick or method in DIGITS_DENSE else DIGITS_DATA
        specs.append(_spec("digits", method, opt, kwargs, model=DIGITS_MODEL, data=data, epochs=n_epochs,
                           batch_size=batch, seed=seed))
    return specs


def digits_notes(specs, scale):
    """The footnotes of this run: per group of methods, the epochs, batches and batch size that ran (as
    --quick, --epochs and --optimizers made them), and why the dense Newton methods take a few steps."""
    groups = {}
    for spec in specs:
        limit = spec.data.get("limit_batches")
        groups.setdefault((spec.epochs, limit, spec.batch_size), []).append(spec.method)
    sizes = DIGITS_MODEL["kwargs"]["sizes"]
    n = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    parts = []
    if any(s.method in DIGITS_DENSE for s in specs):
        parts.append(f"Dense Newton and damped Newton take O(n^3) per step (n = {n:,}): they run "
                     f"{QUICK_BATCHES} batches per epoch.")
    for (epochs, limit, batch), methods in groups.items():
        length = (f"{plural(epochs, 'epoch')} x {limit} batches of {batch} = {plural(epochs * limit, 'step')}"
                  if limit else f"{plural(epochs, 'epoch')} of batch {batch} (every batch)")
        parts.append(f"{', '.join(methods)}: {length}.")
    if scale == "quick":
        parts.append(f"--quick: a smoke test of {QUICK_BATCHES} batches per epoch for every method.")
    return " ".join(parts)


EXPERIMENTS = {
    "digits": Experiment(
        "digits",
        "the main job: first- and second-order optimizers on an MLP 64-32-10 (ReLU) on scikit-learn's digits "
        "(1,257 train / 270 val / 270 test), float32",
        digits_specs,
        notes=digits_notes,
    ),
}


def get(name) -> Experiment:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; `python -m experiments list` shows them: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def learning_rate(optimizer: dict) -> str:
    kw = optimizer.get("kwargs", {})
    for key in ("lr", "lr0", "sgd_lr"):  # lr0: BB's learning rate in results files recorded before its rename
        if key in kw:
            text = f"{kw[key]:g}"
            if optimizer["name"] == "Hybrid":
                text += f" -> {kw.get('ada_lr', '?'):g}"
            return text
    return "-"


# kwarg -> its short name in the tables; "lr0" is BB's learning rate in results files recorded before its rename
HYPER_NAMES = {"lr": "lr", "lr0": "lr", "momentum": "μ", "damping": "λ", "weight_decay": "wd",
               "second_order_lr": "τ", "hessian_momentum": "μ_h", "eps": "ε", "history_size": "m",
               "max_iter": "iters", "line_search": "ls", "batch_mode": "batches", "diag": "diag",
               "threshold": "t_l", "sgd_lr": "SGDM lr", "sgd_momentum": "μ", "ada_lr": "AdaHessian lr",
               "adapt": "adapt", "fallback": "fallback", "decoupled": "decoupled",
               "reject_increase": "reject uphill"}


def hyperparameters(optimizer: dict) -> str:
    """A short description of an optimizer's settings, e.g. "lr 0.5, λ 32, adapt fixed"."""
    parts = []
    for key, value in optimizer.get("kwargs", {}).items():
        if key not in HYPER_NAMES or value is None:
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{HYPER_NAMES[key]} {text}")
    return ", ".join(parts) or "-"


def format_value(value, column):
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):  # (mean, std)
        mean, std = value
        return f"{format_value(mean, column)} ± {format_value(std, column)}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.endswith("acc"):
        return f"{value:.4f}"
    if column.endswith("loss"):
        return f"{value:.4f}" if abs(value) < LOSS_FIXED_MAX else f"{value:.3g}"
    if "second" in column or column.endswith("time"):
        return f"{value:.2f}"
    return str(value)


# ---------------------------------------------------------------- the papers (experiments/papers/)

EXPERIMENTS.update(paper_experiments())
EXPERIMENTS[STUDY_EXPERIMENT.name] = STUDY_EXPERIMENT
