"""Paper: "Second-order Optimization Made Practical for Deep Learning".
Bibliographic details (authors, venue, year) are not known to this project:
it has the title and the setup as the reproduction brief quotes them.
The paper's runs: JAX on a V100.

Experiment ``mlp-mnist-newton``: an MLP on MNIST, SGD against dense Newton,
damped Newton, Hessian-free Newton and Hessian-free Gauss-Newton (batch 64,
7 epochs), and an analysis of why undamped Newton fails (the spectrum of H at
the initial point, what one Newton step does there, dead ReLUs and
input-independent outputs at the end of every run).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np  # host-side only: the analysis' small dense linear algebra and summaries

from tinygrad2 import Objective, backend as B

from ..results import load_final, load_run
from ..runner import build_model
from .common import (MNIST_SIDE, N_CLASSES, Experiment, _finite_or_none, _num, _pick, _save_json, _spec, plural,
                     prose, scale_label, scale_name)
from .newton_probes import (Spectrum, dead_relu_fraction, logit_spread, newton_direction, sign_counts, step_shares,
                            symmetric_hessian)

NEWTON = "mlp-mnist-newton"
NEWTON_BATCH = 64              # the paper's batch size
LN10 = math.log(10.0)          # the cross-entropy of a uniform prediction over ten classes
DENSE_SPECTRUM_MAX_N = 6000    # above this many parameters the analysis skips the dense eigen-decomposition
LARGE_BATCH_FACTOR = 8         # the second spectrum is taken on a batch this many times the training batch

# method -> (optimizer, kwargs). The paper: SGD lr 0.1; step size 0.5 for every second-order
# method; damped Newton λ = 32, HF Newton λ = 32, HF Gauss-Newton λ = 4, all with fixed λ and no
# safeguard (no rejection of a step that raises the loss, no Levenberg-Marquardt adaptation).
NEWTON_METHODS = {
    "SGD": ("SGD", {"lr": 0.1}),
    "Newton": ("Newton", {"lr": 0.5, "fallback": "none"}),
    "DampedNewton": ("DampedNewton", {"lr": 0.5, "damping": 32.0, "adapt": "fixed", "reject_increase": False}),
    "HF-Newton": ("HessianFree", {"lr": 0.5, "damping": 32.0, "adapt": "fixed", "curvature": "hessian",
                                  "reject_increase": False}),
    "HF-GaussNewton": ("GaussNewton", {"lr": 0.5, "damping": 4.0, "adapt": "fixed", "reject_increase": False}),
    # ours, not in the paper: damped Newton with Levenberg-Marquardt λ and rejected uphill steps
    "DampedNewton-LM": ("DampedNewton", {"lr": 1.0, "damping": 1.0, "adapt": "lm", "reject_increase": True}),
}
# the paper's table: wall time in seconds on a V100, final training loss, test accuracy
NEWTON_REPORTED = {
    "SGD": {"wall_time": 222.0, "train_loss": 0.2121, "test_acc": 0.9138},
    "Newton": {"wall_time": 21257.0, "train_loss": 2.305, "test_acc": 0.1028},
    "DampedNewton": {"wall_time": 34933.0, "train_loss": 0.2837, "test_acc": 0.9003},
    "HF-Newton": {"wall_time": 244.0, "train_loss": 0.2614, "test_acc": 0.9099},
    "HF-GaussNewton": {"wall_time": 246.0, "train_loss": 0.2049, "test_acc": 0.9239},
}


@dataclasses.dataclass(frozen=True)
class NewtonScale:
    """One size of the experiment."""
    width: int                       # hidden width of the MLP
    pool: int | None                 # k x k average pooling of the 28x28 images; None: full resolution
    batches_per_epoch: int | None    # None: all batches
    epochs: int


NEWTON_SCALES = {
    # 7x7 inputs, MLP 49-16-10: n = 970, a dense Newton step is ~0.2 s on a CPU core
    "cpu": NewtonScale(width=16, pool=4, batches_per_epoch=100, epochs=7),
    # 28x28 inputs, MLP 784-16-10: n = 12,730, all 938 batches x 7 epochs
    "full": NewtonScale(width=16, pool=None, batches_per_epoch=None, epochs=7),
    # n = 250, two batches
    "quick": NewtonScale(width=4, pool=4, batches_per_epoch=2, epochs=1),
}
NEWTON_DESCRIPTION = prose("""
    'Second-order Optimization Made Practical for Deep Learning': MLP on MNIST, SGD vs dense (damped)
    Newton and Hessian-free Newton / Gauss-Newton (the paper: batch 64, 7 epochs)
""")
NEWTON_COLUMNS = ("method", "hyper", "wall_time", "train_loss", "test_acc")  # the columns of the paper's table
MNIST_TRAIN_BATCHES = 938      # batches of 64 in MNIST's 60,000 training images


def _newton_scale_text(sizes, pool, batches, epochs):
    """The data, model and length of one scale, e.g. "MNIST average-pooled 4x4 to 7x7, MLP 49-16-10 (n = 970),
    100 batches of 64 per epoch (...), 7 epochs"."""
    n = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    side = MNIST_SIDE // (pool or 1)
    inputs = f"MNIST average-pooled {pool}x{pool} to {side}x{side}" if pool else f"{side}x{side} inputs"
    per_epoch = (f"{batches} batches of {NEWTON_BATCH} per epoch ({batches * NEWTON_BATCH:,} images, drawn afresh "
                 f"each epoch)" if batches else f"all {MNIST_TRAIN_BATCHES} batches of {NEWTON_BATCH} per epoch")
    return f"{inputs}, MLP {'-'.join(map(str, sizes))} (n = {n:,}), {per_epoch}, {plural(epochs, 'epoch')}"


def newton_notes(specs, scale):
    """The footnotes of this run: its scale (as --quick / --full / --epochs made it), the cost of dense Newton,
    the other scales, and which rows are ours."""
    spec = specs[0]
    sizes = spec.model["kwargs"]["sizes"]
    here = _newton_scale_text(sizes, spec.data.get("pool"), spec.data.get("limit_batches"), spec.epochs)
    parts = [f"{scale_label(scale)}: {here}; test on all 10,000 test images."]
    if sizes[0] != MNIST_SIDE * MNIST_SIDE and any(s.optimizer["name"] in ("Newton", "DampedNewton") for s in specs):
        parts.append("A dense Newton step costs n HVPs plus an O(n^3) eigen-decomposition and solve; at the paper's "
                     "MLP on 784 inputs that is minutes per step on a 2-core CPU.")
    full = NEWTON_SCALES["full"]
    width = "the paper's hidden width is not in the setup we reproduce from"
    if scale == "full":
        parts.append(f"(Hidden width {full.width}: {width}.)")
    else:
        n_full = (MNIST_SIDE * MNIST_SIDE + 1) * full.width + (full.width + 1) * N_CLASSES
        parts.append(f"--full: 28x28 inputs, MLP {MNIST_SIDE * MNIST_SIDE}-{full.width}-{N_CLASSES} (n = {n_full:,}; "
                     f"{width}), all {MNIST_TRAIN_BATCHES} batches x {full.epochs} epochs.")
    parts.append("wall_time: our seconds of training (paper: seconds on a V100).")
    if any(s.method == "DampedNewton-LM" for s in specs):
        parts.append("DampedNewton-LM is ours (Levenberg-Marquardt λ, uphill steps rejected), not in the paper.")
    return " ".join(parts)


def newton_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    scale = NEWTON_SCALES[scale_name(quick, full)]
    side = MNIST_SIDE // (scale.pool or 1)
    model = {"name": "MLP", "kwargs": {"sizes": [side * side, scale.width, N_CLASSES], "activation": "relu"}}
    data = {"name": "mnist", "reshape": [-1]}
    if scale.pool:
        data["pool"] = scale.pool
    if scale.batches_per_epoch:
        data["limit_batches"] = scale.batches_per_epoch
    n_epochs = epochs if epochs is not None else scale.epochs
    return [_spec(NEWTON, m, *NEWTON_METHODS[m], model=model, data=data, epochs=n_epochs, batch_size=NEWTON_BATCH,
                  seed=seed)
            for m in _pick(NEWTON_METHODS, methods)]


# ---------------------------------------------------------------- the analysis


def init_spectrum(objective, theta, spec, splits, n, dead_on_batch):
    """The spectrum of H at the initial point on the first batch, and its sign
    counts on a batch LARGE_BATCH_FACTOR times larger (zeros that are only the
    mini-batch's blind spots vanish there): (spectrum, report entry, lines)."""
    sizes = spec.model["kwargs"]["sizes"]
    H = symmetric_hessian(objective, theta)
    lam, Q = np.linalg.eigh(H)
    tol, neg, zero = sign_counts(lam, n)
    pos = n - neg - zero
    dead_units = int(round(dead_on_batch * sum(sizes[1:-1])))
    big = LARGE_BATCH_FACTOR * spec.batch_size
    Xb, yb = next(splits.train.batches(big, seed=spec.seed, epoch=0))
    _, neg_b, zero_b = sign_counts(np.linalg.eigvalsh(symmetric_hessian(objective.with_batch(Xb, yb), theta)), n)
    entry = {"negative": neg, "zero": zero, "positive": pos, "tol": tol,
             "lambda_min": float(lam[0]), "lambda_max": float(lam[-1]),
             "softmax_null_directions": sizes[-2] + 1,
             "dead_on_batch": dead_units,
             f"batch_{big}": {"negative": neg_b, "zero": zero_b}}
    lines = [f"  H at initialization: {neg} negative, {zero} zero (|λ| <= {tol:.1e}), {pos} positive "
             f"eigenvalues; λ_min = {lam[0]:.3g}, λ_max = {lam[-1]:.3g}",
             f"  on a batch of {big} at the same point: {neg_b} negative, {zero_b} zero. "
             f"Zeros: {sizes[-2] + 1} from softmax shift invariance (always), "
             f"{sizes[0] + 1 + sizes[-1]} per ReLU dead on the batch ({dead_units} dead), the rest are directions "
             f"a small batch does not constrain; the negative ones are true saddle directions"]
    return Spectrum(H, lam, Q, tol), entry, lines


def first_newton_step(objective, theta, f0, g, spectrum, model, Xtest, dead_before):
    """One undamped Newton step from the initial point: (report entry, line)."""
    gh = np.asarray(B.to_host(g), dtype=np.float64)
    d = newton_direction(spectrum.H, gh)
    lr = NEWTON_METHODS["Newton"][1]["lr"]
    theta1 = theta + B.xp.asarray(lr * d)
    f1 = objective.loss(theta1)
    dead1 = dead_relu_fraction(model, theta1, Xtest)
    neg_share, flat_share = step_shares(spectrum, d)
    entry = {"gTd": float(gh @ d), "step_norm": float(lr * np.linalg.norm(d)),
             "loss_before": f0, "loss_after": _finite_or_none(f1),
             "dead_relu_test_after": dead1,
             "share_of_step_on_negative_eigenvectors": neg_share,
             "share_of_step_on_flat_eigenvectors": flat_share}
    line = (f"  the first Newton step (lr {lr}): gᵀd = {gh @ d:+.3g} "
            f"({'descent' if gh @ d < 0 else 'NOT a descent direction'}), ||step|| = "
            f"{lr * np.linalg.norm(d):.3g} ({flat_share:.0%} of it along eigenvectors with "
            f"|λ| < 1e-3 λ_max, {neg_share:.0%} along negative ones); batch loss {f0:.4f} -> "
            f"{f1:.4g}; dead ReLUs (test set) {dead_before:.0%} -> {dead1:.0%}")
    return entry, line


def at_initialization(spec, model, splits, Xtest):
    """Measurements at the initial point on the first batch, in float64: dead
    ReLUs and, when n is small enough, the spectrum and the first Newton step.
    Returns (dead on the batch, dead on the test set, report entries, lines)."""
    layout, n = model.layout(), model.num_parameters()
    X0, y0 = next(splits.train.batches(spec.batch_size, seed=spec.seed, epoch=0))
    theta32 = model.init_theta(spec.seed, "float32")
    report = {}
    with B.precision("float64"):
        theta = B.xp.asarray(theta32, dtype=B.xp.float64)
        obj = Objective(model.apply, spec.loss, X0, y0, layout=layout)
        f0, g = obj.loss_and_grad(theta)
        dead_batch = dead_relu_fraction(model, theta, X0)
        dead_test = dead_relu_fraction(model, theta, Xtest)
        if n > DENSE_SPECTRUM_MAX_N:
            return dead_batch, dead_test, report, [
                f"  (n = {n:,}: the dense eigen-decomposition is skipped at this scale; run the CPU "
                f"default for the spectrum)"]
        spectrum, report["init_spectrum"], lines = init_spectrum(obj, theta, spec, splits, n, dead_batch)
        report["first_newton_step"], line = first_newton_step(obj, theta, f0, g, spectrum, model, Xtest, dead_test)
    return dead_batch, dead_test, report, lines + [line]


def _fraction_of_steps(steps, column, holds):
    """Fraction of the finite values of a step column where ``holds`` is true (None if none)."""
    values = steps[column][np.isfinite(steps[column])]
    return float(holds(values).mean()) if len(values) else None


def end_of_training(specs, paths, model, layout, Xtest):
    """Per finished or diverged run: dead ReLUs and logit spread on the test
    set, and the fractions of steps with H indefinite or raising the loss."""
    rows = []
    for s, p in zip(specs, paths):
        run = load_run(p)
        theta_end = load_final(p)[0] if run.status in ("finished", "diverged") else None
        if theta_end is None:
            continue
        summ, steps = run.summary(), run.steps
        entry = {"method": s.method, "status": run.status, "test_loss": summ.get("test_loss"),
                 "test_acc": summ.get("test_acc"), "dead_relu_test": dead_relu_fraction(model, theta_end, Xtest),
                 "logit_std": logit_spread(model, theta_end, Xtest)}
        if "min_eig" in steps:
            entry["steps_with_indefinite_H"] = _fraction_of_steps(steps, "min_eig", lambda m: m < 0)
        if "actual" in steps:
            entry["steps_that_raised_the_loss"] = _fraction_of_steps(steps, "actual", lambda a: a > 0)
        rows.append(entry)
    return rows


def end_of_training_table(rows):
    lines = ["  end of training         | dead ReLUs (test) | logit std over inputs | test loss | "
             "steps with H indefinite | steps raising the loss"]
    for e in rows:
        lines.append(f"  {e['method']:<23} | {e['dead_relu_test']:>17.0%} | {e['logit_std']:>21.4f} | "
                     f"{_num(e['test_loss'], '9.4f')} | {_num(e.get('steps_with_indefinite_H'), '23.0%')} | "
                     f"{_num(e.get('steps_that_raised_the_loss'), '22.0%')}")
    return lines


def newton_analysis(specs, paths, splits_of, out):
    """Why undamped Newton fails, from measurements: the spectrum of H at the
    initial point on the first batch (negative and zero eigenvalues), what one
    Newton step does there, and dead ReLUs / input-independent outputs at the
    end of every run."""
    spec = next((s for s in specs if s.method == "Newton"), specs[0])
    model, splits = build_model(spec.model), splits_of(spec)
    layout, n, Xtest = model.layout(), model.num_parameters(), splits.test.X
    report = {"model": spec.model, "n_parameters": n, "batch_size": spec.batch_size, "seed": spec.seed}
    lines = [f"Why undamped Newton fails (measured at the initial point, on the first batch of "
             f"{spec.batch_size}; MLP {'-'.join(map(str, spec.model['kwargs']['sizes']))}, n = {n:,}, float64):"]
    dead_batch, dead_test, init_report, init_lines = at_initialization(spec, model, splits, Xtest)
    report.update(init_report)
    lines += init_lines
    report["dead_relu_init"] = {"batch": dead_batch, "test": dead_test}
    report["end_of_training"] = rows = end_of_training(specs, paths, model, layout, Xtest)
    lines.append(f"  dead ReLUs at initialization: {dead_batch:.0%} on the first batch, {dead_test:.0%} on the "
                 f"test set")
    lines += end_of_training_table(rows)
    lines.append(f"  (a test loss of ln 10 = {LN10:.4f} with logit std ~ 0 is the paper's 2.305: the network "
                 f"predicts the same distribution for every input)")
    lines.append(f"  saved: {_save_json(out, NEWTON, report)}")
    return "\n".join(lines)


EXPERIMENT = Experiment(NEWTON, NEWTON_DESCRIPTION, newton_specs, columns=NEWTON_COLUMNS, reported=NEWTON_REPORTED,
                        notes=newton_notes, analysis=newton_analysis)
