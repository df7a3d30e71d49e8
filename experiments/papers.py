"""The four papers' main tables, regenerated on the real data sets.

==============================  ==============================================================
``mlp-mnist-newton``            "Second-order Optimization Made Practical for Deep Learning"
                                (JAX, V100): MLP on MNIST, SGD vs dense Newton, damped Newton,
                                Hessian-free Newton and Hessian-free Gauss-Newton
``cnn-cifar10-quasi-newton``    "Second-order Optimization Methods in Deep Neural Networks
                                Training" (PyTorch): SmallCNN on CIFAR-10, SGD, SGD-momentum,
                                Adam, AdaHessian, SGD-BB, L-BFGS (theirs returned NaN)
``resnet18-mnist-hybrid``       "Discussion on the viability of a modern second order method"
                                (PyTorch, K80): ResNet18 on 2% MNIST, mean ± std over
                                repetitions, the SGD-momentum -> AdaHessian hybrid
``sgdph-cifar10``               "SGD with Partial Hessian": VGG11 with BN, without a norm and
                                with WN on CIFAR-10; SGD-PH with row sums (the paper) vs the exact
                                diagonal, and the measured off-diagonal mass of the BN γ blocks
==============================  ==============================================================

Each runs by one command (``python -m experiments run NAME``) with a default
sized for a 2-core CPU (minutes), ``--full`` for the paper's scale and
``--quick`` for a smoke test of a few batches. Every run writes its HDF5
results file; the experiment prints the table in the paper's shape with the
paper's numbers beside ours, an analysis (saved as ``NAME_analysis.json``
beside the runs) and the learning-curve PNG.

Nothing here changes an optimizer: the "paper" rows use the optimizers with
the paper's settings; rows marked "(ours)" in the notes are the remedies.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np  # host-side only: the analyses' small dense linear algebra and summaries

from tinygrad2 import Objective, backend as B, no_grad

from .runner import RunSpec, build_model

LN10 = math.log(10.0)


def _spec(experiment, method, optimizer, kwargs, *, model, data, epochs, batch_size, seed):
    return RunSpec(experiment=experiment, method=method, model=model,
                   optimizer={"name": optimizer, "kwargs": dict(kwargs)}, data=dict(data), epochs=epochs,
                   batch_size=batch_size, seed=seed)


def _pick(methods, wanted):
    """The methods to run: all, or those named (by base name) in ``wanted``."""
    return [m for m in methods if not wanted or m in wanted]


def _save_json(out, name, payload):
    path = Path(out) / f"{name}_analysis.json"
    path.write_text(json.dumps(payload, indent=1, default=_plain))
    return path


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _num(x, fmt=".4g"):
    return "-" if x is None else format(x, fmt)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


# =============================================================================================
# 1. mlp-mnist-newton
# =============================================================================================

NEWTON = "mlp-mnist-newton"
# method -> (optimizer, kwargs). The paper: SGD lr 0.1; step size 0.5 for every second-order
# method; damped Newton λ = 32, HF Newton λ = 32, HF Gauss-Newton λ = 4, all with fixed λ and no
# safeguard (no rejection of a step that raises the loss, no Levenberg-Marquardt adaptation).
NEWTON_METHODS = {
    "SGD": ("SGD", {"lr": 0.1}),
    "Newton": ("Newton", {"lr": 0.5, "fallback": "none"}),
    "DampedNewton": ("DampedNewton", {"lr": 0.5, "damping": 32.0, "adapt": "fixed", "reject_increase": False}),
    "HF-Newton": ("HessianFree", {"lr": 0.5, "damping": 32.0, "adapt": False, "curvature": "hessian",
                                  "reject_increase": False}),
    "HF-GaussNewton": ("GaussNewton", {"lr": 0.5, "damping": 4.0, "adapt": False, "reject_increase": False}),
    # ours, not in the paper: damped Newton with Levenberg-Marquardt λ and rejected uphill steps
    "DampedNewton-LM": ("DampedNewton", {"lr": 1.0, "damping": 1.0, "adapt": "lm", "reject_increase": True}),
}
NEWTON_REPORTED = {
    "SGD": {"wall_time": 222.0, "train_loss": 0.2121, "test_acc": 0.9138},
    "Newton": {"wall_time": 21257.0, "train_loss": 2.305, "test_acc": 0.1028},
    "DampedNewton": {"wall_time": 34933.0, "train_loss": 0.2837, "test_acc": 0.9003},
    "HF-Newton": {"wall_time": 244.0, "train_loss": 0.2614, "test_acc": 0.9099},
    "HF-GaussNewton": {"wall_time": 246.0, "train_loss": 0.2049, "test_acc": 0.9239},
}
# (hidden width, average pooling of the 28x28 images, batches per epoch or None = all)
NEWTON_SCALES = {
    "cpu": (16, 4, 100),     # 7x7 inputs, MLP 49-16-10: n = 970, a dense Newton step is ~0.2 s on a CPU core
    "full": (16, None, None),  # 28x28 inputs, MLP 784-16-10: n = 12,730, all 938 batches x 7 epochs
    "quick": (4, 4, 2),      # n = 250, two batches
}


def newton_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    hidden, pool, limit = NEWTON_SCALES["quick" if quick else "full" if full else "cpu"]
    side = 28 // (pool or 1)
    model = {"name": "MLP", "kwargs": {"sizes": [side * side, hidden, 10], "activation": "relu"}}
    data = {"name": "mnist", "reshape": [-1]}
    if pool:
        data["pool"] = pool
    if limit:
        data["limit_batches"] = limit
    n_epochs = epochs if epochs is not None else (1 if quick else 7)
    return [_spec(NEWTON, m, *NEWTON_METHODS[m], model=model, data=data, epochs=n_epochs, batch_size=64, seed=seed)
            for m in _pick(NEWTON_METHODS, methods)]


def _hidden_activity(layout, theta, X):
    """Per hidden layer of an MLP: (pre-activations (N, width) of every hidden Linear)."""
    parts = layout.unflatten(np.asarray(B.to_host(theta), dtype=np.float64))
    weights = [k for k in parts if k.endswith(".weight")]
    a, out = np.asarray(B.to_host(X), dtype=np.float64).reshape(len(X), -1), []
    for name in weights[:-1]:
        z = a @ parts[name].T + parts[name[:-len("weight")] + "bias"]
        out.append(z)
        a = np.maximum(z, 0.0)
    return out


def dead_relu_fraction(layout, theta, X) -> float:
    """Fraction of hidden ReLUs whose pre-activation is <= 0 on every row of X
    (dead: no gradient flows through them, and their weights get none)."""
    zs = _hidden_activity(layout, theta, X)
    dead = sum(int((z <= 0).all(axis=0).sum()) for z in zs)
    return dead / max(sum(z.shape[1] for z in zs), 1)


def _logit_spread(model, theta, X):
    """Mean over classes of the std of the logits across the inputs: 0 when the
    outputs no longer depend on the input."""
    with no_grad():
        out = np.asarray(B.to_host(model.eval().apply(theta, X).data), dtype=np.float64)
    model.train()
    return float(out.std(axis=0).mean())


def newton_analysis(specs, paths, splits_of, out):
    """Why undamped Newton fails, from measurements: the spectrum of H at the
    initial point on the first batch (negative and zero eigenvalues), what one
    Newton step does there, and dead ReLUs / input-independent outputs at the
    end of every run."""
    from .results import load_final, load_run

    spec = next((s for s in specs if s.method == "Newton"), specs[0])
    model, splits = build_model(spec.model), splits_of(spec)
    layout, n = model.layout(), model.num_parameters()
    X0, y0 = next(splits.train.batches(spec.batch_size, seed=spec.seed, epoch=0))
    Xtest = splits.test.X
    report = {"model": spec.model, "n_parameters": n, "batch_size": spec.batch_size, "seed": spec.seed}
    lines = [f"Why undamped Newton fails (measured at the initial point, on the first batch of "
             f"{spec.batch_size}; MLP {'-'.join(map(str, spec.model['kwargs']['sizes']))}, n = {n:,}, float64):"]
    theta32 = model.init_theta(spec.seed, "float32")
    with B.precision("float64"):
        theta = B.xp.asarray(theta32, dtype=B.xp.float64)
        obj = Objective(model.apply, spec.loss, X0, y0, layout=layout)
        f0, g = obj.loss_and_grad(theta)
        dead0_batch = dead_relu_fraction(layout, theta, X0)
        dead0_test = dead_relu_fraction(layout, theta, Xtest)
        width = sum(spec.model["kwargs"]["sizes"][1:-1])
        if n <= 6000:
            H = np.asarray(B.to_host(obj.hessian(theta)), dtype=np.float64)
            H = (H + H.T) / 2
            lam, Q = np.linalg.eigh(H)
            scale = float(np.abs(lam).max())
            tol = n * np.finfo(np.float64).eps * scale
            neg, zero = int((lam < -tol).sum()), int((np.abs(lam) <= tol).sum())
            pos = n - neg - zero
            d_in, n_out = spec.model["kwargs"]["sizes"][0], spec.model["kwargs"]["sizes"][-1]
            dead_units = int(round(dead0_batch * width))
            # the same count on a batch 8x larger: zeros that are only the mini-batch's blind spots vanish
            Xb, yb = next(splits.train.batches(8 * spec.batch_size, seed=spec.seed, epoch=0))
            Hb = np.asarray(B.to_host(obj.with_batch(Xb, yb).hessian(theta)), dtype=np.float64)
            lam_b = np.linalg.eigvalsh((Hb + Hb.T) / 2)
            tol_b = n * np.finfo(np.float64).eps * float(np.abs(lam_b).max())
            zero_b, neg_b = int((np.abs(lam_b) <= tol_b).sum()), int((lam_b < -tol_b).sum())
            report["init_spectrum"] = {"negative": neg, "zero": zero, "positive": pos, "tol": tol,
                                       "lambda_min": float(lam[0]), "lambda_max": float(lam[-1]),
                                       "softmax_null_directions": spec.model["kwargs"]["sizes"][-2] + 1,
                                       "dead_on_batch": dead_units,
                                       f"batch_{8 * spec.batch_size}": {"negative": neg_b, "zero": zero_b}}
            lines.append(f"  H at initialization: {neg} negative, {zero} zero (|λ| <= {tol:.1e}), {pos} positive "
                         f"eigenvalues; λ_min = {lam[0]:.3g}, λ_max = {lam[-1]:.3g}")
            lines.append(f"  on a batch of {8 * spec.batch_size} at the same point: {neg_b} negative, {zero_b} zero. "
                         f"Zeros: {spec.model['kwargs']['sizes'][-2] + 1} from softmax shift invariance (always), "
                         f"{d_in + 1 + n_out} per ReLU dead on the batch ({dead_units} dead), the rest are directions "
                         f"a small batch does not constrain; the negative ones are true saddle directions")
            # one undamped Newton step, as the Newton row takes it (solve; lstsq if singular)
            gh = np.asarray(B.to_host(g), dtype=np.float64)
            try:
                d = np.linalg.solve(H, -gh)
            except np.linalg.LinAlgError:
                d = np.linalg.lstsq(H, -gh, rcond=None)[0]
            lr = NEWTON_METHODS["Newton"][1]["lr"]
            theta1 = theta + B.xp.asarray(lr * d)
            f1 = obj.loss(theta1)
            dead1 = dead_relu_fraction(layout, theta1, Xtest)
            along = np.abs(Q.T @ d)  # |components| of d on the eigenvectors
            total = max(float(np.linalg.norm(along)), 1e-300)
            neg_share = float(np.linalg.norm(along[lam < -tol]) / total)
            flat_share = float(np.linalg.norm(along[np.abs(lam) < 1e-3 * scale]) / total)
            report["first_newton_step"] = {"gTd": float(gh @ d), "step_norm": float(lr * np.linalg.norm(d)),
                                           "loss_before": f0, "loss_after": _finite_or_none(f1),
                                           "dead_relu_test_after": dead1,
                                           "share_of_step_on_negative_eigenvectors": neg_share,
                                           "share_of_step_on_flat_eigenvectors": flat_share}
            lines.append(f"  the first Newton step (lr {lr}): gᵀd = {gh @ d:+.3g} "
                         f"({'descent' if gh @ d < 0 else 'NOT a descent direction'}), ||step|| = "
                         f"{lr * np.linalg.norm(d):.3g} ({flat_share:.0%} of it along eigenvectors with "
                         f"|λ| < 1e-3 λ_max, {neg_share:.0%} along negative ones); batch loss {f0:.4f} -> "
                         f"{f1:.4g}; dead ReLUs (test set) "
                         f"{dead0_test:.0%} -> {dead1:.0%}")
        else:
            lines.append(f"  (n = {n:,}: the dense eigen-decomposition is skipped at this scale; run the CPU "
                         f"default for the spectrum)")
    report["dead_relu_init"] = {"batch": dead0_batch, "test": dead0_test}
    rows = []
    for s, p in zip(specs, paths):
        run = load_run(p)
        theta_end = load_final(p)[0] if run.status in ("finished", "diverged") else None
        if theta_end is None:
            continue
        summ = run.summary()
        steps = run.steps
        entry = {"method": s.method, "status": run.status, "test_loss": summ.get("test_loss"),
                 "test_acc": summ.get("test_acc"), "dead_relu_test": dead_relu_fraction(layout, theta_end, Xtest),
                 "logit_std": _logit_spread(model, theta_end, Xtest)}
        if "min_eig" in steps:
            m = steps["min_eig"][np.isfinite(steps["min_eig"])]
            entry["steps_with_indefinite_H"] = float((m < 0).mean()) if len(m) else None
        if "actual" in steps:
            a = steps["actual"][np.isfinite(steps["actual"])]
            entry["steps_that_raised_the_loss"] = float((a > 0).mean()) if len(a) else None
        rows.append(entry)
    report["end_of_training"] = rows
    lines.append(f"  dead ReLUs at initialization: {dead0_batch:.0%} on the first batch, {dead0_test:.0%} on the "
                 f"test set")
    lines.append("  end of training         | dead ReLUs (test) | logit std over inputs | test loss | "
                 "steps with H indefinite | steps raising the loss")
    for e in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"  {e['method']:<23} | {e['dead_relu_test']:>17.0%} | {e['logit_std']:>21.4f} | "
                     f"{fmt(e['test_loss'], '9.4f')} | {fmt(e.get('steps_with_indefinite_H'), '23.0%')} | "
                     f"{fmt(e.get('steps_that_raised_the_loss'), '22.0%')}")
    lines.append(f"  (a test loss of ln 10 = {LN10:.4f} with logit std ~ 0 is the paper's 2.305: the network "
                 f"predicts the same distribution for every input)")
    path = _save_json(out, NEWTON, report)
    lines.append(f"  saved: {path}")
    return "\n".join(lines)


# =============================================================================================
# 2. cnn-cifar10-quasi-newton
# =============================================================================================

CNN = "cnn-cifar10-quasi-newton"
CNN_METHODS = {
    "SGD-0.1": ("SGD", {"lr": 0.1}),
    "SGD-0.01": ("SGD", {"lr": 0.01}),
    "SGD-momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "Adam": ("Adam", {"lr": 5e-4}),
    "AdaHessian": ("AdaHessian", {"lr": 0.1}),
    "BB": ("BB", {"lr0": 0.01}),  # steps_per_epoch is filled in from the data
    # ours: multi-batch L-BFGS (y on the batch that s was taken on) with a strong-Wolfe line search
    "L-BFGS": ("LBFGS", {"lr": 1.0, "history_size": 10, "line_search": "strong_wolfe", "batch_mode": "same_batch"}),
    # naive mini-batch L-BFGS: t = 1 without a line search, y across two batches, one iteration per batch
    "L-BFGS-naive": ("LBFGS", {"lr": 1.0, "history_size": 100, "line_search": None, "batch_mode": "fixed"}),
    # torch.optim.LBFGS's defaults called once per mini-batch (the paper's setup): 20 unit steps per batch, no
    # line search, the first pair of every call across two batches
    "L-BFGS-torch": ("LBFGS", {"lr": 1.0, "history_size": 100, "max_iter": 20, "line_search": None,
                               "batch_mode": "fixed"}),
}
CNN_TORCH_BATCHES = 20  # L-BFGS-torch costs 20 evaluations per batch: at the CPU default, 20 batches per epoch
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
# (subset [train, val, test] or None = all, epochs, limit_batches)
CNN_SCALES = {"cpu": ([10000, 1000, 2000], 5, None), "full": (None, 40, None), "quick": ([64, 16, 32], 1, 2)}
CNN_BATCH = 64


def cnn_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    subset, n_epochs, limit = CNN_SCALES["quick" if quick else "full" if full else "cpu"]
    data = {"name": "cifar10", "normalize": True}
    if subset:
        data["subset"] = subset
    if limit:
        data["limit_batches"] = limit
    n_train = subset[0] if subset else 50000
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
                           epochs=epochs if epochs is not None else n_epochs, batch_size=CNN_BATCH, seed=seed))
    return specs


def cnn_analysis(specs, paths, splits_of, out):
    """What happened inside the L-BFGS runs: curvature pairs kept or skipped,
    pairs with sᵀy <= 0, NaN reverts (each one a point where an unguarded
    implementation returns NaN), memory resets."""
    from .results import load_run

    lines, report = ["L-BFGS, measured per step (from the results files):"], {}
    for s, p in zip(specs, paths):
        if s.optimizer["name"] != "LBFGS":
            continue
        run = load_run(p)
        st = run.steps
        col = lambda k: st.get(k, np.array([]))  # noqa: E731
        curv = col("curvature")
        curv = curv[np.isfinite(curv)]
        loss = col("loss")
        iterations = int(np.nansum(col("iterations")))
        skipped = int(np.nansum(col("skipped")))
        entry = {"status": run.status, "steps": int(len(loss)), "iterations": iterations,
                 "pairs_kept": iterations - skipped, "pairs_skipped": skipped,
                 "steps_whose_last_pair_had_negative_curvature": int((curv <= 0).sum()),
                 "nan_reverts": int(np.nansum(col("nan_reverts"))),
                 "max_step_loss": _finite_or_none(np.nanmax(loss)) if len(loss) else None,
                 "final_test_acc": run.summary().get("test_acc")}
        first_nan = np.flatnonzero(np.nan_to_num(col("nan_reverts")) > 0)
        entry["first_nan_step"] = int(first_nan[0]) + 1 if len(first_nan) else None
        report[s.method] = entry
        lines.append(f"  {s.method:<13} {entry['steps']} steps, {iterations} iterations: {entry['pairs_kept']} "
                     f"curvature pairs kept, {skipped} skipped (sᵀy too small or negative); "
                     f"{entry['nan_reverts']} non-finite trial points"
                     + (f" (first at step {entry['first_nan_step']}: an unguarded L-BFGS returns NaN there)"
                        if entry["first_nan_step"] else "")
                     + f"; largest mini-batch loss {_num(entry['max_step_loss'])}")
    if report:
        lines.append(f"  saved: {_save_json(out, CNN, report)}")
    return "\n".join(lines)


# =============================================================================================
# 3. resnet18-mnist-hybrid
# =============================================================================================

RESNET = "resnet18-mnist-hybrid"
RESNET_METHODS = {
    "SGD": ("SGD", {"lr": 0.01}),
    "SGD-momentum": ("SGD", {"lr": 0.005, "momentum": 0.9}),
    "Adam": ("Adam", {"lr": 0.001}),
    "AdaHessian": ("AdaHessian", {"lr": 0.1}),
    "Hybrid": ("Hybrid", {"threshold": 1.0, "sgd_lr": 0.005, "sgd_momentum": 0.9, "ada_lr": 0.001}),
}
RESNET_REPORTED = {  # test accuracy mean ± std over 10 repetitions; training time in seconds
    "SGD": {"test_acc": (0.8745, 0.0142), "wall_time": 14.57},
    "SGD-momentum": {"test_acc": (0.935, 0.0135), "wall_time": 13.79},
    "Adam": {"test_acc": (0.9335, 0.0351), "wall_time": 11.30},
    "AdaHessian": {"test_acc": (0.93, 0.0228), "wall_time": 14.26},
    "Hybrid": {"test_acc": (0.942, 0.0079), "wall_time": 17.43},
}
# (width multiplier, repetitions, epochs, limit_batches)
RESNET_SCALES = {"cpu": (0.25, 3, 15, None), "full": (1.0, 10, 15, None), "quick": (0.0625, 2, 1, 2)}


def resnet_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    width, repeats, n_epochs, limit = RESNET_SCALES["quick" if quick else "full" if full else "cpu"]
    model = {"name": "ResNet18", "kwargs": {"in_channels": 1, "num_classes": 10, "stem": "imagenet", "width": width}}
    data = {"name": "mnist-2pct", "reshape": [1, 28, 28], "normalize": True}
    if limit:
        data["limit_batches"] = limit
    specs = []
    for m in _pick(RESNET_METHODS, methods):
        for r in range(repeats):
            specs.append(_spec(RESNET, f"{m}#{r + 1}", *RESNET_METHODS[m], model=model, data=data,
                               epochs=epochs if epochs is not None else n_epochs, batch_size=100, seed=seed + r))
    return specs


def resnet_analysis(specs, paths, splits_of, out):
    """When the Hybrid switched (epoch whose validation loss fell below t_l)."""
    from .results import load_run

    width, reps = specs[0].model["kwargs"]["width"], len({s.seed for s in specs})
    n = build_model(specs[0].model).num_parameters()
    lines = [f"ResNet18 at width {width:g}: {n:,} parameters (the paper's width 1: 11,175,370); "
             f"{reps} repetition(s) per method (seeds {specs[0].seed}..{specs[0].seed + reps - 1}: initialization "
             f"and batch order; the 2% split is the fixed seed-0 split); ± is the sample std."]
    switches = {}
    for s, p in zip(specs, paths):
        if s.optimizer["name"] != "Hybrid":
            continue
        col = load_run(p).steps.get("switch_epoch", np.array([]))
        col = col[np.isfinite(col)]
        switches[s.method] = int(col[0]) if len(col) else None
    if switches:
        lines.append("  Hybrid switch to AdaHessian (validation loss < t_l = 1.0) after epoch: "
                     + ", ".join(f"{k}: {'never' if v is None else v}" for k, v in switches.items()))
        lines.append(f"  saved: {_save_json(out, RESNET, {'switch_epoch': switches, 'width': width, 'n': n})}")
    return "\n".join(lines)


# =============================================================================================
# 4. sgdph-cifar10
# =============================================================================================

SGDPH = "sgdph-cifar10"
_PH = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.005, "hessian_momentum": 0.9, "eps": 1e-4,
       "second_order_lr": 1e-3}
_SGDM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.005}
# method -> (VGG norm, optimizer, kwargs)
SGDPH_METHODS = {
    "BN/SGD-momentum": ("bn", "SGD", _SGDM),
    "BN/Adam": ("bn", "Adam", {"lr": 1e-3, "weight_decay": 5e-4}),
    "BN/AdaHessian": ("bn", "AdaHessian", {"lr": 0.1, "weight_decay": 5e-4}),
    "BN/SGD-PH": ("bn", "SGDPH", dict(_PH, diag="row_sums")),
    "BN/SGD-PH-exact": ("bn", "SGDPH", dict(_PH, diag="exact")),  # ours: the true block diagonal
    "none/SGD-momentum": ("none", "SGD", _SGDM),
    "none/SGD-PH": ("none", "SGDPH", dict(_PH, diag="row_sums")),
    "WN/SGD-momentum": ("wn", "SGD", _SGDM),
    "WN/SGD-PH": ("wn", "SGDPH", dict(_PH, diag="row_sums")),
}
# The issue quotes no numbers of this paper, so none are printed beside ours (add them here).
SGDPH_REPORTED: dict = {}
# (VGG width, subset [train, val, test] or None, epochs, batch size, limit_batches)
SGDPH_SCALES = {"cpu": (0.125, [2560, 1000, 2000], 3, 64, None), "full": (1.0, [45000, 5000, None], 200, 128, None),
                "quick": (0.0625, [64, 16, 32], 1, 16, 2)}
OFFDIAG_CHUNK = 64   # HVP directions per pass in the off-diagonal measurement
OFFDIAG_BATCH = 32   # examples of the probe batch


def sgdph_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    width, subset, n_epochs, batch, limit = SGDPH_SCALES["quick" if quick else "full" if full else "cpu"]
    data = {"name": "cifar10", "normalize": True, "subset": subset}
    if limit:
        data["limit_batches"] = limit
    specs = []
    for m in _pick(SGDPH_METHODS, methods):
        norm, opt, kwargs = SGDPH_METHODS[m]
        model = {"name": "VGG", "kwargs": {"depth": 11, "norm": norm, "width": width}}
        specs.append(_spec(SGDPH, m, opt, kwargs, model=model, data=data,
                           epochs=epochs if epochs is not None else n_epochs, batch_size=batch, seed=seed))
    return specs


def bn_block_curvature(objective, theta, groups, chunk=OFFDIAG_CHUNK):
    """For each 1-D parameter group g: the dense block H_gg (from |g| HVPs with
    unit directions on g, batched across the groups in chunks), and from it
    ||offdiag||_F / ||diag||_F, the row sums H_gg·1 (what SGD-PH uses) against
    the diagonal, and the range of |row sum| / |diagonal| over the channels
    (SGD-PH's per-channel step relative to the exact-diagonal step is the
    inverse of that)."""
    xp, n = B.xp, len(theta)
    units = [(p, i) for p in groups for i in range(p.slice.start, p.slice.stop)]
    rows = {p.name: [] for p in groups}
    for a in range(0, len(units), chunk):
        part = units[a:a + chunk]
        V = xp.zeros((len(part), n), dtype=theta.dtype)
        V[xp.arange(len(part)), xp.asarray([i for _, i in part])] = 1
        HV = objective.hvp(theta, V)
        for r, (p, _) in enumerate(part):
            rows[p.name].append(B.to_host(HV[r, p.slice]))
    out = {}
    for p in groups:
        Hgg = np.asarray(rows[p.name], dtype=np.float64)
        Hgg = (Hgg + Hgg.T) / 2
        diag = np.diag(Hgg).copy()
        off = Hgg - np.diag(diag)
        rowsum = Hgg.sum(axis=1)
        dn = max(float(np.linalg.norm(diag)), 1e-300)
        ratio = np.abs(rowsum) / np.maximum(np.abs(diag), 1e-300)
        out[p.name] = {"offdiag_ratio": float(np.linalg.norm(off) / dn),
                       "rowsum_error": float(np.linalg.norm(rowsum - diag) / dn),
                       "abs_ratio_min": float(ratio.min()), "abs_ratio_median": float(np.median(ratio)),
                       "abs_ratio_max": float(ratio.max()), "size": len(diag)}
    return out


def sgdph_epoch_hook(spec):
    """For the SGD-PH run (row sums) on the BN network: the off-diagonal mass
    of every BN γ block along training (at initialization and after every
    epoch, on the first OFFDIAG_BATCH examples of the first training batch,
    always the same ones), logged in the run's epoch series."""
    if (spec.model["kwargs"].get("norm") != "bn" or spec.optimizer["name"] != "SGDPH"
            or spec.optimizer["kwargs"].get("diag", "row_sums") != "row_sums"):
        return None

    def hook(epoch, theta, model, objective):
        probe = objective.with_batch(objective.X[:OFFDIAG_BATCH], objective.y[:OFFDIAG_BATCH])
        blocks = bn_block_curvature(probe, theta, probe.layout.groups(kind="scale", ndim=1))
        metrics = {f"offdiag:{name}": v["offdiag_ratio"] for name, v in blocks.items()}
        metrics.update({f"rowsum_err:{name}": v["rowsum_error"] for name, v in blocks.items()})
        ratios = [v["offdiag_ratio"] for v in blocks.values()]
        metrics.update(offdiag_mean=float(np.mean(ratios)), offdiag_max=float(np.max(ratios)),
                       rowsum_err_mean=float(np.mean([v["rowsum_error"] for v in blocks.values()])),
                       rowsum_ratio_min=float(min(v["abs_ratio_min"] for v in blocks.values())),
                       rowsum_ratio_max=float(max(v["abs_ratio_max"] for v in blocks.values())))
        return metrics

    return hook


def sgdph_analysis(specs, paths, splits_of, out):
    """The measured off-diagonal mass of the BN γ blocks along training."""
    from .results import load_run

    lines = [f"Off-diagonal mass of the BN γ blocks of the Hessian (probe: {OFFDIAG_BATCH} training images; per block "
             "||H_gg - diag||_F / ||diag||_F, and ||H_gg·1 - diag|| / ||diag|| for the row sums SGD-PH uses):"]
    report = {}
    for s, p in zip(specs, paths):
        run = load_run(p)
        ep = run.epochs
        if "offdiag_mean" not in ep:
            continue
        layers = sorted((k.split(":", 1)[1] for k in ep if k.startswith("offdiag:")),
                        key=lambda name: int(name.split(".")[1]) if name.split(".")[1].isdigit() else 0)
        entry = {"epoch": ep["epoch"].tolist(), "offdiag_mean": ep["offdiag_mean"].tolist(),
                 "offdiag_max": ep["offdiag_max"].tolist(), "rowsum_err_mean": ep["rowsum_err_mean"].tolist(),
                 "rowsum_ratio_min": ep["rowsum_ratio_min"].tolist(),
                 "rowsum_ratio_max": ep["rowsum_ratio_max"].tolist(),
                 "per_layer": {name: ep[f"offdiag:{name}"].tolist() for name in layers}}
        report[s.method] = entry
        lines.append(f"  {s.method}: epoch | offdiag mean | offdiag max | row-sum error mean | "
                     f"|row sum|/|diag| range over channels")
        for i, e in enumerate(entry["epoch"]):
            lines.append(f"    {int(e):>5} | {entry['offdiag_mean'][i]:12.3f} | {entry['offdiag_max'][i]:11.3f} | "
                         f"{entry['rowsum_err_mean'][i]:18.3f} | {entry['rowsum_ratio_min'][i]:.3g} .. "
                         f"{entry['rowsum_ratio_max'][i]:.3g}")
        lines.append("    per layer (init -> end): " + ", ".join(
            f"{name} {v[0]:.2f}->{v[-1]:.2f}" for name, v in entry["per_layer"].items()))
    if report:
        lines.append("  (0 would mean the block is diagonal, as the paper claims; row sums equal the diagonal "
                     "only then)")
        lines.append(f"  saved: {_save_json(out, SGDPH, report)}")
    return "\n".join(lines)


# =============================================================================================
# registration
# =============================================================================================


def paper_experiments() -> dict:
    """{name: Experiment} of the four papers (catalog registers them)."""
    from .catalog import Experiment

    return {
        NEWTON: Experiment(
            NEWTON,
            "'Second-order Optimization Made Practical for Deep Learning': MLP on MNIST, SGD vs dense "
            "(damped) Newton and Hessian-free Newton / Gauss-Newton, batch 64, 7 epochs",
            newton_specs,
            columns=("method", "hyper", "wall_time", "train_loss", "test_acc"),
            reported=NEWTON_REPORTED,
            notes="CPU default: MNIST average-pooled 4x4 to 7x7, MLP 49-16-10 (n = 970), 100 batches of 64 per epoch "
                  "(6,400 images, drawn afresh each epoch), 7 epochs; test on all 10,000 test images. A dense "
                  "Newton step costs n HVPs plus "
                  "an O(n^3) eigen-decomposition and solve; at the paper's MLP on 784 inputs that is minutes per "
                  "step on a 2-core CPU. --full: 28x28 inputs, MLP 784-16-10 (n = 12,730; the issue does not give "
                  "the paper's hidden width), all 938 batches x 7 epochs. wall_time: our seconds of training "
                  "(paper: seconds on a V100). DampedNewton-LM is ours (Levenberg-Marquardt λ, uphill steps "
                  "rejected), not in the paper.",
            analysis=newton_analysis,
        ),
        CNN: Experiment(
            CNN,
            "'Second-order Optimization Methods in Deep Neural Networks Training': SmallCNN on CIFAR-10, "
            "SGD / SGD-momentum / Adam / AdaHessian / SGD-BB / L-BFGS",
            cnn_specs,
            columns=("method", "hyper", "test_acc", "train_loss", "seconds_per_epoch"),
            reported=CNN_REPORTED,
            notes="CPU default: a stratified CIFAR-10 subset (10,000 train, 1,000 validation from the training "
                  "set, 2,000 test), per-channel normalization, batch 64 (the issue does not give the paper's), "
                  "5 epochs. --full: all 50,000 / 10,000, 40 epochs. seconds_per_epoch is ours on the subset (the "
                  "paper's is on 50,000 images on a GPU). L-BFGS is ours: the pair (s, y) is formed on one batch "
                  "(multi-batch L-BFGS) with a strong-Wolfe line search. L-BFGS-torch is the paper's setup, "
                  "torch.optim.LBFGS's defaults called on each mini-batch (lr 1, history 100, 20 iterations per "
                  "batch, no line search; at the CPU default it runs 20 batches per epoch: 20 evaluations each); "
                  "L-BFGS-naive is the same with one iteration per batch. Our LBFGS keeps the last finite point "
                  "when a trial point is non-finite (a 'NaN revert'): the analysis counts them.",
            analysis=cnn_analysis,
        ),
        RESNET: Experiment(
            RESNET,
            "'Discussion on the viability of a modern second order method': ResNet18 on 2% MNIST (1,200 / 200 "
            "/ 200), 15 epochs, batch 100, mean ± std over repetitions",
            resnet_specs,
            columns=("method", "hyper", "test_acc", "test_loss", "wall_time"),
            reported=RESNET_REPORTED,
            notes="CPU default: ResNet18 at width 0.25 (channels 16-32-64-128, 701,818 parameters; the paper's "
                  "width 1 has 11,175,370) and 3 repetitions (the paper: 10). --full: width 1, 10 repetitions. "
                  "wall_time: our seconds of training per run (paper: K80 GPU).",
            analysis=resnet_analysis,
        ),
        SGDPH: Experiment(
            SGDPH,
            "'SGD with Partial Hessian': VGG11 with BN / no norm / WN on CIFAR-10; SGD-PH with row sums (the "
            "paper) vs the exact block diagonal, and the off-diagonal mass of the BN γ blocks",
            sgdph_specs,
            columns=("method", "hyper", "test_acc", "train_loss", "seconds_per_epoch"),
            reported=SGDPH_REPORTED,
            notes="CPU default: VGG11 at width 0.125 (channels 8..64), a stratified CIFAR-10 subset (2,560 train, "
                  "1,000 validation, 2,000 test), batch 64, 3 epochs, no learning-rate schedule. --full: width 1, "
                  "45,000 / 5,000 / 10,000, batch 128, 200 epochs. The issue quotes none of this paper's numbers, "
                  "so no paper column is printed. BN/SGD-PH-exact is ours: SGD-PH with the exact diagonal of each "
                  "1-D block (|g| HVPs per visit) instead of the row sums H_gg·1.",
            epoch_hook=sgdph_epoch_hook,
            analysis=sgdph_analysis,
        ),
    }

