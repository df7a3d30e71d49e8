"""Exactness report: ``python -m tinygrad2.verify``.

On real data (scikit-learn's 1,797 handwritten 8x8 digits, pixels scaled to
[0, 1]) and in float64, every curvature quantity the library produces is
compared with ground truth:

* closed-form Hessians: least squares X^T X / n, logistic regression
  X^T diag(p (1 - p)) X / n, softmax regression
  (1/n) Σ_i (x_i x_i^T) ⊗ (diag(p_i) - p_i p_i^T);
* a two-layer tanh network (through :class:`tinygrad2.Objective`): the
  assembled Hessian against finite differences of the gradient, HVPs
  forward-over-reverse against reverse-over-reverse and against finite
  differences, symmetry, the softmax shift-invariance null directions,
  GGN PSD, GGN = H on the linear (softmax-regression) model;
* estimates against the exact dense H: the Hutchinson diagonal's error
  for growing sample counts (it should fall like 1/√S), the trace by
  Hutchinson and Hutch++, the top eigenvalues by Lanczos and power iteration;
* K-FAC's Kronecker blocks Γ ⊗ Ω against the exact Gauss-Newton blocks of a
  two-layer tanh network, and KFC's of a convolution: equal on one example
  and one location (the identity that pins the order of the product and
  every normalisation), the error on the batch, and the Monte-Carlo Fisher
  factor against the exact one;
* a two-layer ReLU network: gradient and HVPs against kink-safe finite
  differences.

Rows with a tolerance are exact quantities: the command exits with status 1
if any of them is off. Rows without one report an estimator's error.
"""
from __future__ import annotations

import sys
import time

from . import backend as B
from .check import check_grad, check_hessian, check_hvp
from .functional import hessian, hvp, hvp_reverse_over_reverse
from .tensor import Tensor


def digits_arrays(limit=None):
    """scikit-learn's digits as float64 ``xp`` arrays, the report's real data: X (n, 64)
    in [0, 1], integer labels y. (Splits for training: ``experiments.data.load_digits``.)"""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    X, y = data.data / 16.0, data.target
    if limit is not None:
        X, y = X[:limit], y[:limit]
    return B.to_device(X.astype("float64")), B.to_device(y.astype("int64"))


def relative_error(got, want):
    den = max(float(B.xp.linalg.norm(want)), 1e-300)
    return float(B.xp.linalg.norm(got - want)) / den


def _closed_form_rows(X, y):
    xp = B.xp
    n, d = X.shape
    rng = xp.random.default_rng(0)
    rows = []

    # least squares: f(w) = ½ mean((Xw - t)²), H = X^T X / n
    t = (y % 2).astype(X.dtype)
    f = lambda w: ((Tensor(X) @ w - Tensor(t)) ** 2).mean() * 0.5
    H = hessian(f, rng.standard_normal(d) * 0.1)
    rows.append(("least squares Hessian vs X^T X / n", relative_error(H, X.T @ X / n), 1e-10))

    # logistic regression: mean log-loss of sigmoid(Xw), H = X^T diag(p(1-p)) X / n
    w0 = rng.standard_normal(d) * 0.1
    sign = 2 * t - 1
    f = lambda w: (-(Tensor(X) @ w) * Tensor(sign)).softplus().mean()
    p = 1 / (1 + xp.exp(-(X @ w0)))
    H_true = (X * (p * (1 - p))[:, None]).T @ X / n
    rows.append(("logistic regression Hessian vs closed form", relative_error(hessian(f, w0), H_true), 1e-10))

    # softmax regression: W (d, C) flattened row-major, mean cross-entropy
    C = 10
    W0 = rng.standard_normal(d * C) * 0.1
    idx = xp.arange(n)
    f = lambda w: -(Tensor(X) @ w.reshape(d, C)).log_softmax(axis=1)[idx, y].mean()
    Z = X @ W0.reshape(d, C)
    P = xp.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    # Σ_i x_i x_i^T ⊗ (diag p_i - p_i p_i^T): the diag part and the outer-product part
    diag_part = xp.einsum("ia,ib,ic->acb", X, X, P).reshape(d, C, d)  # (a, c, b) with c == c'
    H_true = xp.zeros((d, C, d, C))
    for c in range(C):
        H_true[:, c, :, c] = diag_part[:, c, :]
    XP = (X[:, :, None] * P[:, None, :]).reshape(n, d * C)
    H_true = H_true.reshape(d * C, d * C) - XP.T @ XP
    H_true /= n
    rows.append(("softmax regression Hessian vs closed form", relative_error(hessian(f, W0), H_true), 1e-10))
    return rows


def two_layer(X, y, hidden, activation):
    """Mean cross-entropy of a d-hidden-10 network on flat parameters."""
    n, d = X.shape
    idx = B.xp.arange(n)
    sizes = (d * hidden, hidden, hidden * 10, 10)
    cuts = [sum(sizes[:i]) for i in range(5)]

    def f(theta):
        W1 = theta[cuts[0] : cuts[1]].reshape(d, hidden)
        b1 = theta[cuts[1] : cuts[2]]
        W2 = theta[cuts[2] : cuts[3]].reshape(hidden, 10)
        b2 = theta[cuts[3] : cuts[4]]
        h = getattr(Tensor(X) @ W1 + b1, activation)()
        return -(h @ W2 + b2).log_softmax(axis=1)[idx, y].mean()

    return f, cuts[4]


def report(samples=300, hidden=6, seed=0):
    """All rows as (check, error, tolerance or None for an estimate's error)."""
    with B.precision("float64"):
        X, y = digits_arrays(samples)
        rows = _closed_form_rows(X, y)
        rng = B.xp.random.default_rng(seed)

        f, n = two_layer(X, y, hidden, "tanh")
        theta = rng.standard_normal(n) * 0.3
        fd = check_hessian(f, theta)
        H = hessian(f, theta)
        rows.append((f"tanh MLP 64-{hidden}-10 ({n} params) Hessian vs finite differences", fd.rel_error, 1e-8))
        rows.append(("tanh MLP Hessian symmetry ||H - H^T|| / ||H||", fd.symmetry, 1e-12))
        V = rng.standard_normal((8, n))
        HV = hvp(f, theta, V)
        rows.append(("tanh MLP HVP forward-over-reverse vs reverse-over-reverse",
                     relative_error(HV, hvp_reverse_over_reverse(f, theta, V)), 1e-12))
        rows.append(("tanh MLP HVP forward-over-reverse vs finite differences",
                     check_hvp(f, theta, V).rel_error, 1e-8))
        rows += _objective_rows(X, y, hidden, theta, H, rng)
        rows += _kronecker_rows(X, y, hidden, rng)

        f, n = two_layer(X, y, hidden, "relu")
        theta = rng.standard_normal(n) * 0.3
        rows.append(("ReLU MLP gradient vs kink-safe finite differences", check_grad(f, theta).rel_error, 1e-8))
        rows.append(("ReLU MLP HVP vs kink-safe finite differences of the gradient",
                     check_hvp(f, theta, rng.standard_normal((16, n))).rel_error, 1e-8))
    return rows


def _kronecker_rows(X, y, hidden, rng):
    """K-FAC's Kronecker blocks Γ ⊗ Ω (:func:`tinygrad2.capture.kronecker_factors`)
    against the exact Gauss-Newton blocks of a tanh MLP whose layers record
    themselves: equal on one example, an approximation on a batch."""
    from . import capture
    from .layout import Layout
    from .objective import Objective

    xp = B.xp
    d = X.shape[1]
    layout = Layout([("W1", (hidden, d), "weight"), ("b1", (hidden,), "bias"),
                     ("W2", (10, hidden), "weight"), ("b2", (10,), "bias")])

    def model(th, inputs):
        p = layout.unflatten(th)
        h = inputs @ p["W1"].T + p["b1"]
        h = capture.record("layer 1", "W1", "b1", inputs.data, h) if capture.active() else h
        a = h.tanh()
        z = a @ p["W2"].T + p["b2"]
        return capture.record("layer 2", "W2", "b2", a.data, z) if capture.active() else z

    theta = rng.standard_normal(layout.n) * 0.3
    rows = []
    for examples in (1, X.shape[0]):
        obj = Objective(model, "cross_entropy", X[:examples], y[:examples], layout=layout)
        G = obj.ggn(theta)
        for layer in obj.capture(theta, factor="exact").layers:
            omega, gamma = capture.kronecker_factors(layer)
            idx = capture.block_indices(layout, layer.weight, layer.bias)
            err = relative_error(xp.kron(gamma, omega), G[xp.ix_(idx, idx)])
            if examples == 1:
                rows.append((f"K-FAC Γ ⊗ Ω = exact GGN block, one example, {layer.name}", err, 1e-10))
            else:
                rows.append((f"  K-FAC Γ ⊗ Ω vs GGN block, batch {examples}, {layer.name}: rel error", err, None))
    rows += _kfc_rows(X, y, rng)
    draws = 200
    exact = [capture.kronecker_factors(layer)[1] for layer in obj.capture(theta, factor="exact").layers]
    sampled = [xp.zeros_like(g) for g in exact]
    for seed in range(draws):
        for i, layer in enumerate(obj.capture(theta, factor="sample", seed=seed).layers):
            sampled[i] += capture.kronecker_factors(layer)[1] / draws
    for i, (got, want) in enumerate(zip(sampled, exact)):
        rows.append((f"  Monte-Carlo Fisher Γ, {draws} samples, vs exact Γ, layer {i + 1}: rel error (~1/sqrt(S))",
                     relative_error(got, want), None))
    return rows


def _kfc_rows(X, y, rng):
    """KFC (the convolution case): a 4-filter 3 x 3 convolution over the digits'
    8 x 8 images (stride 1, no padding), tanh, then a linear classifier. On one
    example cut to its top-left 3 x 3 corner (one output location) Γ ⊗ Ω is the
    exact Gauss-Newton block; on whole images (36 locations) an approximation."""
    from . import capture
    from .layout import Layout
    from .objective import Objective
    from .primitives import im2col

    xp = B.xp

    def conv_objective(images):
        n, side = images.shape[0], images.shape[-1]
        out = side - 2
        layout = Layout([("K", (4, 1, 3, 3), "weight"), ("c", (4,), "bias"),
                         ("W", (10, 4 * out * out), "weight"), ("b", (10,), "bias")])

        def model(th, inputs):
            p = layout.unflatten(th)
            rows = im2col(inputs, kernel=(3, 3), stride=(1, 1), padding=(0, 0)).reshape(n * out * out, 9)
            h = (rows @ p["K"].reshape(4, 9).T + p["c"]).reshape(n, out, out, 4).transpose(0, 3, 1, 2)
            if capture.active():
                h = capture.record("conv", "K", "c", rows.data, h)
            return h.tanh().reshape(n, -1) @ p["W"].T + p["b"]

        return Objective(model, "cross_entropy", images, y[:n], layout=layout), layout

    images = X.reshape(-1, 1, 8, 8)
    rows = []
    for examples, side in ((1, 3), (X.shape[0], 8)):
        obj, layout = conv_objective(images[:examples, :, :side, :side])
        theta = rng.standard_normal(layout.n) * 0.3
        conv = obj.capture(theta, factor="exact").layers[0]
        omega, gamma = capture.kronecker_factors(conv)
        idx = capture.block_indices(layout, "K", "c")
        G = obj.ggn(theta)
        err = relative_error(xp.kron(gamma, omega), G[xp.ix_(idx, idx)])
        if examples == 1:
            rows.append(("KFC Γ ⊗ Ω = exact GGN block, one example, one location (conv 3x3)", err, 1e-10))
        else:
            rows.append((f"  KFC Γ ⊗ Ω vs GGN block, batch {examples}, {conv.locations} locations: rel error",
                         err, None))
    return rows


def _objective_rows(X, y, hidden, theta, H, rng):
    """Curvature through the Objective seam, against the dense H of the same network."""
    from .layout import Layout, Param
    from .objective import Objective
    from . import spectrum

    xp = B.xp
    n_in = X.shape[1]
    shapes = [("W1", (n_in, hidden), "weight"), ("b1", (hidden,), "bias"),
              ("W2", (hidden, 10), "weight"), ("b2", (10,), "bias")]
    params, start = [], 0
    for name, shape, kind in shapes:
        size = 1
        for s in shape:
            size *= s
        params.append(Param(name, shape, kind, slice(start, start + size)))
        start += size
    layout = Layout(params)

    def model(th, inputs):
        p = layout.unflatten(th)
        return (inputs @ p["W1"] + p["b1"]).tanh() @ p["W2"] + p["b2"]

    obj = Objective(model, "cross_entropy", X, y, layout=layout)
    n = theta.shape[0]
    rows = [("Objective.hessian vs functional hessian", relative_error(obj.hessian(theta), H), 1e-12)]

    # softmax shift invariance: the same vector added to every class's output weights
    shift = xp.zeros(n)
    w2 = layout["W2"].slice
    shift[w2] = xp.repeat(rng.standard_normal(hidden), 10)
    shift[layout["b2"].slice] = 1.0
    rows.append(("H w = 0 along softmax shift-invariance directions",
                 float(xp.linalg.norm(H @ shift) / (xp.linalg.norm(H) * xp.linalg.norm(shift))), 1e-12))

    G = obj.ggn(theta)
    lam = xp.linalg.eigvalsh(G)
    rows.append(("GGN positive semi-definite: -min eig / max eig", max(0.0, -float(lam[0] / lam[-1])), 1e-12))
    eig_h = xp.linalg.eigvalsh(H)
    rows.append(("  (for contrast, H's min eig / max eig; H is indefinite)", float(eig_h[0] / eig_h[-1]), None))

    lin = Objective(lambda th, inputs: inputs @ th.reshape(n_in, 10), "cross_entropy", X, y)
    w = rng.standard_normal(n_in * 10) * 0.1
    rows.append(("GGN = H on a linear model (softmax regression)",
                 relative_error(lin.ggn(w), lin.hessian(w)), 1e-12))

    exact_diag = obj.hessian_diag(theta, method="exact")
    rows.append(("exact Hessian diagonal vs diag(dense H)", relative_error(exact_diag, xp.diag(H)), 1e-12))
    for samples in (10, 100, 1000):
        est = obj.hessian_diag(theta, method="hutchinson", samples=samples, seed=1)
        rows.append((f"Hutchinson diagonal, {samples} samples: rel error (~1/sqrt(S))",
                     relative_error(est, xp.diag(H)), None))

    matvec = lambda V: obj.hvp(theta, V)
    trace = float(xp.trace(H))
    hutch, _ = spectrum.trace_hutchinson(matvec, n, 90, seed=2)
    hpp, _ = spectrum.trace_hutchpp(matvec, n, 90, seed=2)
    rows.append(("trace by Hutchinson, 90 matvecs: rel error", abs(hutch - trace) / abs(trace), None))
    rows.append(("trace by Hutch++, 90 matvecs: rel error", abs(hpp - trace) / abs(trace), None))

    top = spectrum.top_eigenvalues(matvec, n, k=3, which="LA", seed=3)
    rows.append(("top-3 eigenvalues by Lanczos vs eigvalsh(H)",
                 relative_error(xp.asarray(top), eig_h[::-1][:3]), 1e-8))
    power = spectrum.top_eigenvalues(matvec, n, k=1, which="LM", method="power", seed=3, tol=1e-10)
    lm = eig_h[xp.argmax(xp.abs(eig_h))]
    rows.append(("largest-magnitude eigenvalue by power iteration vs eigvalsh(H)",
                 abs(float(power[0]) - float(lm)) / abs(float(lm)), 1e-6))
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tinygrad2.verify",
        description="The exactness report: every curvature quantity of the library against closed "
                    "forms, finite differences and dense eigen-decompositions, in float64 on "
                    "scikit-learn's digits (about 2 s). Exit status 1 if an exact check fails.",
    )
    parser.parse_args(argv)
    start = time.perf_counter()
    rows = report()
    width = max(len(r[0]) for r in rows)
    print(f"tinygrad2 exactness report (float64, scikit-learn digits, backend {B.name})\n")
    print(f"{'check':<{width}}  {'value':>9}  {'tolerance':>9}  status")
    failed = 0
    for name, err, tol in rows:
        if tol is None:
            print(f"{name:<{width}}  {err:9.2e}  {'estimate':>9}")
            continue
        ok = err <= tol
        failed += not ok
        print(f"{name:<{width}}  {err:9.2e}  {tol:9.0e}  {'ok' if ok else 'FAIL'}")
    exact = sum(tol is not None for _, _, tol in rows)
    print(f"\n{exact - failed}/{exact} exact checks passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
