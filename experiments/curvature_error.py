"""How far each method's curvature model is from the exact one, along training:
``python -m experiments.curvature_error``.

The digits MLP of the main job (64-32-10, ReLU, batch 64, float64 here) is
trained by K-FAC, Shampoo and Sophia-G with the main job's settings. At
chosen steps, on a fixed probe batch of training examples, the exact
Gauss-Newton matrix G (dense, n = 2,410) at the point θ_t where step t
started is compared with what each method holds in its state after step t,
i.e. the curvature model that step t preconditioned with:

* K-FAC: per layer, its averaged Γ ⊗ Ω (the factors it preconditions with)
  against the layer's block of G; also the Kronecker block of fresh factors
  on the probe batch itself (the error of the Kronecker form alone, without
  averaging over training batches);
* Shampoo: per weight matrix, its implied curvature (L^{1/4} ⊗ R^{1/4})² =
  L^{1/2} ⊗ R^{1/2} (the matrix whose inverse square root it applies; a
  sum of gradient outer products, full-matrix AdaGrad's, not G) against the
  block of G on that matrix;
* Sophia-G: its averaged diagonal h against diag(G) (h is an EMA with
  β₂ = 0.99 and no bias correction, so its raw error stays near 1 for the
  first hundred steps or so: read the shape error).

Two errors per comparison: ``raw`` = ||A - G|| / ||G|| (Frobenius), and
``shape`` = min_c ||c A - G|| / ||G|| = √(1 - cos²(A, G)), which ignores the
overall scale (Shampoo's and AdaGrad's statistics have no fixed scale
relative to G). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np  # host-side: dense comparisons of small matrices

import nets
import optimizers
from tinygrad2 import backend as B
from tinygrad2 import capture

from . import catalog, data

METHODS = ("K-FAC", "Shampoo", "Sophia-G")


def errors(approx, exact):
    """(raw, shape) relative errors of ``approx`` against ``exact`` (module docstring)."""
    approx, exact = np.asarray(approx, float).ravel(), np.asarray(exact, float).ravel()
    norm_a, norm_e = np.linalg.norm(approx), np.linalg.norm(exact)
    raw = np.linalg.norm(approx - exact) / norm_e
    cos = float(approx @ exact) / (norm_a * norm_e) if norm_a > 0 else 0.0
    return float(raw), math.sqrt(max(0.0, 1.0 - cos * cos))


def block_indices(layout, weight, bias=None):
    """θ indices of [W | b] in row-major order, on the host."""
    return B.to_host(capture.block_indices(layout, weight, bias))


def _psd_power(M, power):
    vals, vecs = np.linalg.eigh((M + M.T) / 2)
    return (vecs * np.maximum(vals, 0.0) ** power) @ vecs.T


def measure(method, opt, state, probe, theta, G):
    """Rows (method, model, layer, raw, shape) for one method's state at θ."""
    layout = probe.layout
    rows = []
    if method == "K-FAC":
        layers = probe.capture(theta, "exact").layers
        for layer in layers:
            weight = layer.weight
            idx = block_indices(layout, weight, layer.bias)
            block = G[np.ix_(idx, idx)]
            omega, gamma = B.to_host(state["omega"][weight]), B.to_host(state["gamma"][weight])
            rows.append((method, "Γ ⊗ Ω (its averages)", weight, *errors(np.kron(gamma, omega), block)))
            f_omega, f_gamma = (B.to_host(f) for f in capture.kronecker_factors(layer))
            rows.append((method, "Γ ⊗ Ω (probe batch)", weight, *errors(np.kron(f_gamma, f_omega), block)))
    elif method == "Shampoo":
        for tensor in state["tensors"]:
            if tensor["path"] != "matrix" or tensor["L_root"] is None or tensor["R_root"] is None:
                continue
            implied = np.kron(_psd_power(B.to_host(tensor["L"]), 0.5), _psd_power(B.to_host(tensor["R"]), 0.5))
            idx = block_indices(layout, tensor["name"])
            rows.append((method, "L^½ ⊗ R^½", tensor["name"], *errors(implied, G[np.ix_(idx, idx)])))
    elif method == "Sophia-G":
        rows.append((method, "diagonal h", "all", *errors(B.to_host(state["h"]), np.diag(G))))
    return rows


def run(steps=(1, 20, 100, 300), probe_size=256, seed=0, out=sys.stdout):
    """Train each method and print the table of errors at the given steps."""
    with B.precision("float64"):
        splits = data.load_digits().reshape(-1)  # host arrays: the batches are drawn on the host, moved explicitly
        X, y = splits.train.X.astype(np.float64), splits.train.y
        model = nets.MLP(**catalog.DIGITS_MODEL["kwargs"])
        rng = np.random.default_rng(seed)
        probe_idx = rng.choice(len(y), probe_size, replace=False)
        table = []
        for method in METHODS:
            name, kwargs, batch, _ = catalog.DIGITS_METHODS[method]
            opt = getattr(optimizers, name)(**kwargs)
            theta = model.init_theta(seed)
            state = opt.init(theta)
            order = np.random.default_rng([seed, 1])
            perm, pos = order.permutation(len(y)), 0
            for step in range(1, max(steps) + 1):
                if pos + batch > len(y):
                    perm, pos = order.permutation(len(y)), 0
                idx = perm[pos: pos + batch]
                pos += batch
                objective = model.objective("cross_entropy", B.to_device(X[idx]), B.to_device(y[idx]))
                before = theta
                theta, state, _ = opt.step(objective, theta, state)
                if step in steps:  # the curvature this step preconditioned with, at the point it was taken
                    probe = model.objective("cross_entropy", B.to_device(X[probe_idx]), B.to_device(y[probe_idx]))
                    G = B.to_host(probe.ggn(before))
                    table += [(step,) + row for row in measure(method, opt, state, probe, before, G)]
    print(f"Curvature models against the exact Gauss-Newton matrix: digits MLP 64-32-10 (n = "
          f"{model.num_parameters():,}), float64, probe batch of {probe_size} training examples, seed {seed}; "
          f"main-job settings (batch 64).\n", file=out)
    print("| step | method | model | parameters | raw error | shape error |", file=out)
    print("|---:|---|---|---|---:|---:|", file=out)
    for step, method, what, layer, raw, shape in table:
        print(f"| {step} | {method} | {what} | {layer} | {raw:.3f} | {shape:.3f} |", file=out)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.curvature_error", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 20, 100, 300],
                        help="training steps after which to measure (default: 1 20 100 300)")
    parser.add_argument("--probe-size", type=int, default=256, help="probe batch size (default: 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or not 1 <= args.probe_size <= 1257:
        parser.error("--steps must be >= 1 and --probe-size in 1..1257 (the digits training set)")
    run(tuple(sorted(set(args.steps))), args.probe_size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
