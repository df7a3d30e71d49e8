"""Paper: "Second-order Optimization Methods in Deep Neural Networks Training".
Bibliographic details (authors, venue, year) are not known to this project:
it has the title and the setup as the reproduction brief quotes them.
The paper's runs: PyTorch on a GPU.

Experiment ``cnn-cifar10-quasi-newton``: SmallCNN on CIFAR-10 with SGD,
SGD-momentum, Adam, AdaHessian, SGD-BB and L-BFGS (the paper's L-BFGS
returned NaN), and an analysis of what happened inside the L-BFGS runs.
"""
from __future__ import annotations

import dataclasses

import numpy as np  # host-side only: summaries of the logged step series

from ..results import load_run
from .common import (CIFAR10_TEST, Experiment, _finite_or_none, _num, _pick, _save_json, _spec, plural, prose,
                     scale_label, scale_name)

CNN = "cnn-cifar10-quasi-newton"
CNN_BATCH = 64             # ours: the setup we reproduce from gives no batch size
CIFAR10_TRAIN = 50000      # training images of CIFAR-10 (the run's steps per epoch when no subset is taken)
CNN_TORCH_BATCHES = 20     # L-BFGS-torch costs 20 evaluations per batch: at the CPU default, 20 batches per epoch

CNN_METHODS = {
    "SGD-0.1": ("SGD", {"lr": 0.1}),
    "SGD-0.01": ("SGD", {"lr": 0.01}),
    "SGD-momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "Adam": ("Adam", {"lr": 5e-4}),
    "AdaHessian": ("AdaHessian", {"lr": 0.1}),
    "BB": ("BB", {"lr": 0.01}),  # steps_per_epoch is filled in from the data
    # ours: multi-batch L-BFGS (y on the batch that s was taken on) with a strong-Wolfe line search
    "L-BFGS": ("LBFGS", {"lr": 1.0, "history_size": 10, "line_search": "strong_wolfe", "batch_mode": "same_batch"}),
    # naive mini-batch L-BFGS: t = 1 without a line search, y across two batches, one iteration per batch
    "L-BFGS-naive": ("LBFGS", {"lr": 1.0, "history_size": 100, "line_search": None, "batch_mode": "fixed"}),
    # torch.optim.LBFGS's defaults called once per mini-batch (the paper's setup): 20 unit steps per batch, no
    # line search, the first pair of every call across two batches
    "L-BFGS-torch": ("LBFGS", {"lr": 1.0, "history_size": 100, "max_iter": 20, "line_search": None,
                               "batch_mode": "fixed"}),
    # beyond the paper: methods that define the field today (no paper numbers)
    "K-FAC": ("KFAC", {"damping": 1.0, "min_damping": 0.1, "factor": "sample"}),
    "Shampoo": ("Shampoo", {"lr": 0.003}),
    "Sophia-G": ("Sophia", {"lr": 0.001, "gamma": 1.0, "estimator": "gnb", "update_each": 10}),
}
BEYOND_THE_PAPER = ("K-FAC", "Shampoo", "Sophia-G")
# the paper's table: test accuracy and seconds per epoch (50,000 images on a GPU)
CNN_REPORTED = {
    "SGD-0.1": {"test_acc": 0.64, "seconds_per_epoch": 7.67},
    "SGD-0.01": {"test_acc": 0.58, "seconds_per_epoch": 6.88},
    "SGD-momentum": {"test_acc": 0.65, "seconds_per_epoch": 6.89},
    "Adam": {"test_acc": 0.62, "seconds_per_epoch": 7.00},
    "AdaHessian": {"test_acc": 0.51, "seconds_per_epoch": 8.28},
    "BB": {"test_acc": 0.42, "seconds_per_epoch": 7.23},
    "L-BFGS": {"test_acc": "NaN"},
    "L-BFGS-naive": {"test_acc": "NaN"},
    "L-BFGS-torch": {"test_acc": "NaN"},
}


@dataclasses.dataclass(frozen=True)
class CnnScale:
    """One size of the experiment."""
    subset: tuple | None             # (train, validation, test) examples, stratified; None: all of CIFAR-10
    epochs: int
    batches_per_epoch: int | None    # None: all batches


CNN_SCALES = {
    "cpu": CnnScale(subset=(10000, 1000, 2000), epochs=5, batches_per_epoch=None),
    "full": CnnScale(subset=None, epochs=40, batches_per_epoch=None),
    "quick": CnnScale(subset=(64, 16, 32), epochs=1, batches_per_epoch=2),
}
CNN_DESCRIPTION = prose("""
    'Second-order Optimization Methods in Deep Neural Networks Training': SmallCNN on CIFAR-10, SGD /
    SGD-momentum / Adam / AdaHessian / SGD-BB / L-BFGS
""")
CNN_COLUMNS = ("method", "hyper", "test_acc", "train_loss", "seconds_per_epoch")  # the columns of the paper's table


def _cnn_scale_text(scale, epochs):
    """The data and length of one scale, e.g. "a stratified CIFAR-10 subset (...), per-channel normalization,
    batch 64 (...), 5 epochs"."""
    if scale.subset:
        train, val, test = scale.subset
        data = (f"a stratified CIFAR-10 subset ({train:,} train, {val:,} validation from the training set, "
                f"{test:,} test)")
    else:
        data = f"all {CIFAR10_TRAIN:,} / {CIFAR10_TEST:,}"
    limit = f", {plural(scale.batches_per_epoch, 'batch', 'batches')} per epoch" if scale.batches_per_epoch else ""
    return (f"{data}, per-channel normalization, batch {CNN_BATCH} (the setup we reproduce from gives no batch "
            f"size), {plural(epochs, 'epoch')}{limit}")


def cnn_notes(specs, scale):
    """The footnotes of this run: its scale (as --quick / --full / --epochs made it), the other scales, what
    seconds_per_epoch measures, and the L-BFGS variants among the methods run."""
    here = CNN_SCALES[scale]
    methods = {s.method: s for s in specs}
    parts = [f"{scale_label(scale)}: {_cnn_scale_text(here, specs[0].epochs)}."]
    if scale != "full":
        full = CNN_SCALES["full"]
        parts.append(f"--full: all {CIFAR10_TRAIN:,} / {CIFAR10_TEST:,}, {full.epochs} epochs.")
    if here.subset:
        parts.append(f"seconds_per_epoch is ours on the subset (the paper's is on {CIFAR10_TRAIN:,} images on a GPU).")
    else:
        parts.append("seconds_per_epoch is ours (the paper's is on a GPU).")
    beyond = [m for m in BEYOND_THE_PAPER if m in methods]
    if beyond:
        parts.append(f"{', '.join(beyond)}: beyond the paper, which did not run them (K-FAC with the Monte-Carlo "
                     f"Fisher factor, Shampoo grafted to Adam's step norm, Sophia with the Gauss-Newton-Bartlett "
                     f"estimator).")
    if "L-BFGS" in methods:
        parts.append("L-BFGS is ours: the pair (s, y) is formed on one batch (multi-batch L-BFGS) with a strong-Wolfe "
                     "line search.")
    torch = methods.get("L-BFGS-torch")
    if torch is not None:
        limit = torch.data.get("limit_batches")
        runs = (f"; here it runs {plural(limit, 'batch', 'batches')} per epoch: 20 evaluations each"
                if limit and limit != here.batches_per_epoch else "")
        parts.append("L-BFGS-torch is the paper's setup, torch.optim.LBFGS's defaults called on each mini-batch "
                     f"(lr 1, history 100, 20 iterations per batch, no line search{runs}).")
    if "L-BFGS-naive" in methods:
        parts.append("L-BFGS-naive is torch.optim.LBFGS's defaults with one iteration per batch.")
    if any(s.optimizer["name"] == "LBFGS" for s in specs):
        parts.append("Our LBFGS keeps the last finite point when a trial point is non-finite (a 'NaN revert'): the "
                     "analysis counts them.")
    return " ".join(parts)


def cnn_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    scale = CNN_SCALES[scale_name(quick, full)]
    subset, limit = scale.subset, scale.batches_per_epoch
    data = {"name": "cifar10", "normalize": True}
    if subset:
        data["subset"] = list(subset)
    if limit:
        data["limit_batches"] = limit
    n_train = subset[0] if subset else CIFAR10_TRAIN
    steps = -(-n_train // CNN_BATCH) if limit is None else min(limit, -(-n_train // CNN_BATCH))
    model = {"name": "SmallCNN", "kwargs": {}}
    specs = []
    for m in _pick(CNN_METHODS, methods):
        opt, kwargs = CNN_METHODS[m]
        if opt == "BB":
            kwargs = dict(kwargs, steps_per_epoch=steps)
        run_data = data
        if m == "L-BFGS-torch" and not full and not quick:
            run_data = dict(data, limit_batches=CNN_TORCH_BATCHES)
        specs.append(_spec(CNN, m, opt, kwargs, model=model, data=run_data,
                           epochs=epochs if epochs is not None else scale.epochs, batch_size=CNN_BATCH, seed=seed))
    return specs


def lbfgs_run_summary(run):
    """One L-BFGS run from its step series: curvature pairs kept and skipped,
    steps whose last pair had sᵀy <= 0, NaN reverts and the first of them."""
    st = run.steps
    col = lambda k: st.get(k, np.array([]))  # noqa: E731
    curv = col("curvature")
    curv = curv[np.isfinite(curv)]
    loss = col("loss")
    # LBFGS logs "inner_iterations"; results files recorded before that rename say "iterations"
    iterations = int(np.nansum(col("inner_iterations" if "inner_iterations" in st else "iterations")))
    skipped = int(np.nansum(col("skipped")))
    entry = {"status": run.status, "steps": int(len(loss)), "iterations": iterations,
             "pairs_kept": iterations - skipped, "pairs_skipped": skipped,
             "steps_whose_last_pair_had_negative_curvature": int((curv <= 0).sum()),
             "nan_reverts": int(np.nansum(col("nan_reverts"))),
             "max_step_loss": _finite_or_none(np.nanmax(loss)) if len(loss) else None,
             "final_test_acc": run.summary().get("test_acc")}
    first_nan = np.flatnonzero(np.nan_to_num(col("nan_reverts")) > 0)
    entry["first_nan_step"] = int(first_nan[0]) + 1 if len(first_nan) else None
    return entry


def _lbfgs_line(method, entry):
    return (f"  {method:<13} {entry['steps']} steps, {entry['iterations']} iterations: {entry['pairs_kept']} "
            f"curvature pairs kept, {entry['pairs_skipped']} skipped (sᵀy too small or negative); "
            f"{entry['nan_reverts']} non-finite trial points"
            + (f" (first at step {entry['first_nan_step']}: an unguarded L-BFGS returns NaN there)"
               if entry["first_nan_step"] else "")
            + f"; largest mini-batch loss {_num(entry['max_step_loss'])}")


def cnn_analysis(specs, paths, splits_of, out):
    """What happened inside the L-BFGS runs: curvature pairs kept or skipped,
    pairs with sᵀy <= 0, NaN reverts (each one a point where an unguarded
    implementation returns NaN), memory resets."""
    lines, report = ["L-BFGS, measured per step (from the results files):"], {}
    for s, p in zip(specs, paths):
        if s.optimizer["name"] != "LBFGS":
            continue
        report[s.method] = entry = lbfgs_run_summary(load_run(p))
        lines.append(_lbfgs_line(s.method, entry))
    if not report:  # no L-BFGS method ran (e.g. --optimizers K-FAC)
        return ""
    lines.append(f"  saved: {_save_json(out, CNN, report)}")
    return "\n".join(lines)


EXPERIMENT = Experiment(CNN, CNN_DESCRIPTION, cnn_specs, columns=CNN_COLUMNS, reported=CNN_REPORTED, notes=cnn_notes,
                        analysis=cnn_analysis)
