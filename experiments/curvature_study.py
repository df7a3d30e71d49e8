"""Experiment ``curvature-study``: the probes' worked example on real MNIST.

``python -m experiments run curvature-study`` trains a tanh MLP 49-32-10 (MNIST
average-pooled 4x4 to 7x7, n = 1,930) on 5,000 training images with

* SGD at two learning rates (2 and 1.5), to watch λ_max rise to 2/lr
  (Cohen et al. 2021) and stop there;
* AdaHessian, to watch the error of its Hessian-diagonal estimate;
* SGD-momentum and K-FAC, beside the others, for the angle of every step to
  the exact damped Newton and Gauss-Newton steps,

all at batch 1,000 (close to gradient descent, where the edge of stability
is cleanest), with the probes lambda_max, sharpness_ratio, diag_error and
newton_cosine on a fixed probe batch of 500 training images every 10 steps. The analysis
after the table prints, per method, the sharpness against 2/lr over the last
third of training, the diagonal error at the start and the end, the median
cosines to the Newton steps, and each probe's cost in training steps.
"""
from __future__ import annotations

import numpy as np  # host-side only: summaries of the probe series

from .papers.common import Experiment, _spec, _pick
from .results import load_run

STUDY = "curvature-study"
STUDY_PROBES = {"names": ["lambda_max", "sharpness_ratio", "diag_error", "newton_cosine"], "every": 10, "batch": 500}
STUDY_MODEL = {"name": "MLP", "kwargs": {"sizes": [49, 32, 10], "activation": "tanh"}}
STUDY_DATA = {"name": "mnist", "reshape": [-1], "pool": 4, "subset": [5000, 500, 1000]}
STUDY_BATCH = 1000  # of 5,000 images: close to gradient descent, where the edge of stability is cleanest
# method -> (optimizer, kwargs)
STUDY_METHODS = {
    "SGD-lr2": ("SGD", {"lr": 2.0}),
    "SGD-lr1.5": ("SGD", {"lr": 1.5}),
    "AdaHessian": ("AdaHessian", {"lr": 0.05}),
    "SGD-momentum": ("SGD", {"lr": 0.2, "momentum": 0.9}),
    "K-FAC": ("KFAC", {"damping": 0.1, "min_damping": 0.01}),
}
STUDY_EPOCHS = {"cpu": 30, "quick": 1, "full": 30}


def study_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    scale = "quick" if quick else "full" if full else "cpu"
    data = dict(STUDY_DATA, subset=[2000, 50, 100], limit_batches=2) if quick else STUDY_DATA
    specs = []
    for m in _pick(STUDY_METHODS, methods):
        opt, kwargs = STUDY_METHODS[m]
        spec = _spec(STUDY, m, opt, kwargs, model=STUDY_MODEL, data=data,
                     epochs=epochs if epochs is not None else STUDY_EPOCHS[scale], batch_size=STUDY_BATCH, seed=seed)
        spec.probes = dict(STUDY_PROBES)
        if quick:  # a smoke test: every step, a small probe batch, no dense Newton solves
            spec.probes.update(names=[n for n in STUDY_PROBES["names"] if n != "newton_cosine"], every=1, batch=100)
        specs.append(spec)
    return specs


def _series(run, name):
    if name not in run.probes:
        return None
    values = run.probes[name]
    return values[np.isfinite(values)]


def study_analysis(specs, paths, splits_of, out):
    probes = specs[0].probes
    lines = [f"Probes (probe batch of {probes['batch']:,} training images; every {probes['every']} steps, the "
             f"first and last step too):"]
    for spec, path in zip(specs, paths):
        run = load_run(path)
        parts = []
        lam, ratio = _series(run, "lambda_max:0"), _series(run, "sharpness_ratio")
        if lam is not None and len(lam):
            tail = ratio[len(ratio) * 2 // 3:] if ratio is not None and len(ratio) else np.array([])
            lr = spec.optimizer["kwargs"].get("lr")
            parts.append(f"λ_max {lam[0]:.3g} -> {lam[-1]:.3g}" + (f" (2/lr = {2 / lr:.3g})" if lr else ""))
            if len(tail):
                parts.append(f"lr·λ_max over the last third {np.median(tail):.2f} (median)")
        diag = _series(run, "diag_error")
        if diag is not None and len(diag):
            rms = _series(run, "diag_error:rms")
            parts.append(f"diag error {diag[0]:.2f} -> {diag[-1]:.2f}"
                         + (f" (of its RMS average {rms[0]:.2f} -> {rms[-1]:.2f})" if rms is not None and len(rms) else ""))
        for key, label in (("newton_cosine:newton", "cos to Newton"), ("newton_cosine:gauss_newton", "to Gauss-Newton")):
            cos = _series(run, key)
            if cos is not None and len(cos):
                parts.append(f"{label} {np.median(cos):+.2f} (median)")
        step_time = np.nanmean(run.steps["step_time"]) if "step_time" in run.steps else np.nan
        costs = [f"{k.partition(':')[2]} {np.nanmean(run.probes[k]) / step_time:.0f}"
                 for k in run.probes if k.startswith("time:")]
        if costs and np.isfinite(step_time):
            parts.append("cost in training steps: " + ", ".join(costs))
        lines.append(f"  {spec.method}: " + "; ".join(parts))
    return "\n".join(lines)


def study_notes(specs, scale):
    train, val, test = specs[0].data["subset"]
    return (f"MNIST average-pooled 4x4 to 7x7, {train:,} / {val:,} / {test:,} images, tanh MLP 49-32-10 "
            f"(n = 1,930), {specs[0].epochs} epochs of batch {STUDY_BATCH:,}.")


EXPERIMENT = Experiment(STUDY, "the probes' worked example: the edge of stability, AdaHessian's diagonal error and "
                        "the angle of each step to Newton's, on MNIST", study_specs, notes=study_notes,
                        analysis=study_analysis)
