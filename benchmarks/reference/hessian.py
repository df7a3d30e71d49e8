"""Hand-written NumPy reference: the dense Hessian of a one-hidden-layer MLP
classifier by Pearlmutter's R-operator, K directions at once.

Model (N examples, D inputs, H hidden units, C classes; act = tanh or relu)::

    z1 = X W1 + b1        (N, H)         a1 = act(z1)
    z2 = a1 W2 + b2       (N, C)         p  = softmax(z2)
    L  = -(1/N) Σ_n log p[n, y_n]

theta is laid out as (W1, b1, W2, b2), each row-major, back to back: the same
order as the tinygrad2 layout in ``benchmarks.curvature``.

R{·} = d/dr (·)(θ + r v) at r = 0. Applying R to every line of the forward
pass and then of the backward pass gives R{∇L} = H v. Here every R-quantity
carries a direction axis K, stored *beside* the batch axis as (N, K, ·) so that
every product with a weight matrix or with X is ONE GEMM over all K
directions (N·K rows, or K·H columns), not K small ones. The Hessian is
assembled from chunks of K unit vectors: rows start..stop-1 of H.

No autodiff, no unit-vector tricks: the R-pass is the general dense one and
does the same work for unit and for arbitrary directions (``hvp``). tinygrad2
differs in one respect: its engine treats a parameter block whose tangent is
zero in every direction as a symbolic zero and skips the products with it,
which unit directions on one block produce. ``benchmarks.curvature`` therefore
also times both on dense random directions, where neither can skip anything.
"""
from __future__ import annotations

import numpy as np

from tinygrad2.memory import preferred_chunk


def sizes(D, Hd, C):
    """Parameter slices of (W1, b1, W2, b2) in flat theta and n."""
    cuts = np.cumsum([0, D * Hd, Hd, Hd * C, C])
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])], int(cuts[-1])


def _act(z, activation):
    """act(z), act'(z), act''(z) (None where it is zero)."""
    if activation == "tanh":
        a = np.tanh(z)
        d1 = 1 - a * a
        return a, d1, -2 * a * d1
    if activation == "relu":
        mask = (z > 0).astype(z.dtype)
        return z * mask, mask, None
    raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")


def hessian(theta, X, y, shape, activation="tanh", chunk=preferred_chunk, rows=None, tick=None):
    """Dense (n, n) Hessian of the mean cross-entropy at theta, or only the
    rows ``rows = (start, stop)`` of it (shape (stop - start, n)).

    shape = (D, H, C). chunk = K directions per R-pass. ``tick(label)``, if
    given, is called after each step of the R-pass (for profiling)."""
    tick = tick or (lambda label: None)
    n = sizes(*shape)[1]
    first, last = (0, n) if rows is None else rows
    primal = _primal(theta, X, y, shape, activation)
    Hess = np.empty((last - first, n), theta.dtype)
    for start in range(first, last, chunk):
        stop = min(last, start + chunk)
        V = np.zeros((stop - start, n), theta.dtype)
        V[np.arange(stop - start), np.arange(start, stop)] = 1
        tick("unit directions V")
        _r_pass(primal, V, Hess[start - first:stop - first], tick)
    return Hess


def hvp(theta, X, y, shape, V, activation="tanh", tick=None):
    """H V for directions V (K, n), any directions (the same R-pass)."""
    primal = _primal(theta, X, y, shape, activation)
    out = np.empty(V.shape, theta.dtype)
    _r_pass(primal, V, out, tick or (lambda label: None))
    return out


def _primal(theta, X, y, shape, activation):
    """The forward and backward pass once: everything the R-pass reuses."""
    D, Hd, C = shape
    slices, n = sizes(D, Hd, C)
    sW1, sb1, sW2, sb2 = slices
    if theta.shape != (n,):
        raise ValueError(f"theta has shape {theta.shape}, expected ({n},)")
    N = X.shape[0]
    W1, b1 = theta[sW1].reshape(D, Hd), theta[sb1]
    W2, b2 = theta[sW2].reshape(Hd, C), theta[sb2]
    z1 = X @ W1 + b1
    a1, d1, d2 = _act(z1, activation)
    z2 = a1 @ W2 + b2
    p = np.exp(z2 - z2.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz2 = p.copy()
    dz2[np.arange(N), y] -= 1
    dz2 /= N                                   # dL/dz2 = (p - Y) / N
    da1 = dz2 @ W2.T                           # dL/da1
    return dict(shape=shape, slices=slices, X=X, W2=W2, a1=a1, d1=d1, d2=d2, p=p, dz2=dz2, da1=da1)


def _r_pass(primal, V, out, tick):
    """out[k] = H V[k] for the K rows of V, one R-pass in the (N, K, ·) layout."""
    (D, Hd, C), (sW1, sb1, sW2, sb2) = primal["shape"], primal["slices"]
    X, W2, a1, d1, d2, p = (primal[k] for k in ("X", "W2", "a1", "d1", "d2", "p"))
    dz2, da1 = primal["dz2"], primal["da1"]
    N, K = X.shape[0], V.shape[0]
    VW1 = V[:, sW1].reshape(K, D, Hd)
    Vb1 = V[:, sb1]
    VW2 = V[:, sW2].reshape(K, Hd, C)
    Vb2 = V[:, sb2]
    # ---- forward R-pass, (N, K, ·) layout, one GEMM per product
    # R{z1} = X VW1 + Vb1
    Rz1 = (X @ VW1.transpose(1, 0, 2).reshape(D, K * Hd)).reshape(N, K, Hd)
    Rz1 += Vb1
    tick("R{z1} = X VW1 + Vb1")
    # R{a1} = act'(z1) R{z1}
    Ra1 = Rz1 * d1[:, None, :]
    tick("R{a1} = act' R{z1}")
    # R{z2} = R{a1} W2 + a1 VW2 + Vb2
    Rz2 = (Ra1.reshape(N * K, Hd) @ W2).reshape(N, K, C)
    Rz2 += (a1 @ VW2.transpose(1, 0, 2).reshape(Hd, K * C)).reshape(N, K, C)
    Rz2 += Vb2
    tick("R{z2} = R{a1} W2 + a1 VW2 + Vb2")
    # R{dz2} = R{p} / N = p (R{z2} - Σ_c p R{z2}) / N
    Rdz2 = Rz2
    Rdz2 -= (p[:, None, :] * Rz2).sum(axis=2, keepdims=True)
    Rdz2 *= p[:, None, :] / N
    tick("R{dz2} = p (R{z2} - <p, R{z2}>) / N")

    # ---- backward R-pass
    # R{dW2} = R{a1}ᵀ dz2 + a1ᵀ R{dz2}
    RdW2 = (Ra1.reshape(N, K * Hd).T @ dz2).reshape(K, Hd, C)
    RdW2 += (a1.T @ Rdz2.reshape(N, K * C)).reshape(Hd, K, C).transpose(1, 0, 2)
    # R{db2} = Σ_n R{dz2}
    Rdb2 = Rdz2.sum(axis=0)
    del Ra1
    tick("R{dW2}, R{db2}")
    # R{da1} = R{dz2} W2ᵀ + dz2 VW2ᵀ
    Rda1 = (Rdz2.reshape(N * K, C) @ W2.T).reshape(N, K, Hd)
    Rda1 += (dz2 @ VW2.transpose(2, 0, 1).reshape(C, K * Hd)).reshape(N, K, Hd)
    tick("R{da1} = R{dz2} W2ᵀ + dz2 VW2ᵀ")
    del Rdz2
    # R{dz1} = R{da1} act'(z1) + da1 act''(z1) R{z1}
    Rdz1 = Rda1
    Rdz1 *= d1[:, None, :]
    if d2 is not None:
        Rz1 *= (da1 * d2)[:, None, :]
        Rdz1 += Rz1
    del Rz1
    tick("R{dz1} = R{da1} act' + da1 act'' R{z1}")
    # R{dW1} = Xᵀ R{dz1};  R{db1} = Σ_n R{dz1}
    RdW1 = (X.T @ Rdz1.reshape(N, K * Hd)).reshape(D, K, Hd).transpose(1, 0, 2)
    Rdb1 = Rdz1.sum(axis=0)
    del Rdz1
    tick("R{dW1} = Xᵀ R{dz1}, R{db1}")

    out[:, sW1].reshape(K, D, Hd)[...] = RdW1
    out[:, sb1] = Rdb1
    out[:, sW2].reshape(K, Hd, C)[...] = RdW2
    out[:, sb2] = Rdb2
    tick("write rows of H")
