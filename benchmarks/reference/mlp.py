"""Hand-written NumPy reference for a one-hidden-layer MLP classifier.

Model (row-major batches, N examples, D inputs, H hidden units, C classes)::

    z1 = X W1 + b1          X (N, D), W1 (D, H), b1 (H,)      pre-activation
    a1 = relu(z1)           (N, H)
    z2 = a1 W2 + b2         W2 (H, C), b2 (C,)                logits
    p  = softmax(z2)        row-wise, (N, C)
    L  = -(1/N) sum_n log p[n, y_n]                           mean cross-entropy

Everything here is written out by hand with NumPy, with no autodiff: the
forward pass, the backward pass (manual backprop) and Pearlmutter's
R-operator for Hessian-vector products. It is the baseline the engine is
benchmarked against and the independent reference it is validated against.

Parameters travel as a tuple ``(W1, b1, W2, b2)``; a direction ``V`` for a
Hessian-vector product is a tuple of arrays of the same shapes.
"""
from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------- helpers


def init_params(rng, d_in=784, d_hidden=32, d_out=10, dtype=np.float32):
    """He-style init for W1, a smaller scale for W2, small random biases (so
    that no bias is exactly zero and the checks exercise every term)."""
    W1 = rng.standard_normal((d_in, d_hidden)) * np.sqrt(2.0 / d_in)
    b1 = 0.1 * rng.standard_normal(d_hidden)
    W2 = rng.standard_normal((d_hidden, d_out)) * np.sqrt(1.0 / d_hidden)
    b2 = 0.1 * rng.standard_normal(d_out)
    return tuple(a.astype(dtype) for a in (W1, b1, W2, b2))


def flatten(params):
    """(W1, b1, W2, b2) -> one 1-D vector theta (in that order)."""
    return np.concatenate([p.ravel() for p in params])


def unflatten(theta, shapes):
    """Inverse of :func:`flatten` for the given shapes (views into theta)."""
    return tuple(theta[a:b].reshape(shape) for a, b, shape in bounds(shapes))


def bounds(shapes):
    """(start, stop, shape) of each parameter in the flat vector."""
    out, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append((start, start + n, shape))
        start += n
    return out


def _log_softmax(z):
    """Row-wise log softmax, stabilised by subtracting the row maximum:
    log p = z - m - log sum_c exp(z_c - m)."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- forward


def forward(params, X, y):
    """Loss and the intermediates that backprop and the R-pass need."""
    W1, b1, W2, b2 = params
    N = X.shape[0]
    z1 = X @ W1 + b1
    mask = z1 > 0                      # relu'(z1) (0 at the kink, as in the engine)
    a1 = np.where(mask, z1, 0)         # relu(z1)
    z2 = a1 @ W2 + b2
    logp = _log_softmax(z2)
    loss = -logp[np.arange(N), y].mean()
    p = np.exp(logp)                   # softmax(z2)
    return loss, (z1, mask, a1, p)


# ---------------------------------------------------------------- backward


def _backprop(params, X, y, cache):
    """Manual reverse pass. With Y the one-hot labels:

        dL/dz2 = (p - Y) / N                      softmax + cross-entropy
        dL/dW2 = a1^T dz2,    dL/db2 = sum_n dz2
        dL/da1 = dz2 W2^T
        dL/dz1 = dL/da1 * [z1 > 0]                relu
        dL/dW1 = X^T dz1,     dL/db1 = sum_n dz1
    """
    W1, b1, W2, b2 = params
    z1, mask, a1, p = cache
    dz2 = _output_grad(p, y)
    dW2 = a1.T @ dz2
    db2 = dz2.sum(axis=0)
    da1 = dz2 @ W2.T
    dz1 = da1 * mask
    dW1 = X.T @ dz1
    db1 = dz1.sum(axis=0)
    return (dW1, db1, dW2, db2), (dz2, dz1)


def _output_grad(p, y):
    """dL/dz2 = (p - Y) / N from the softmax p (N, C) and the labels y."""
    dz2 = p.copy()
    dz2[np.arange(len(y)), y] -= 1
    dz2 /= len(y)
    return dz2


def loss_and_grad(params, X, y):
    """(loss, (dW1, db1, dW2, db2)): one forward and one backward pass."""
    loss, cache = forward(params, X, y)
    grads, _ = _backprop(params, X, y, cache)
    return loss, grads


# ---------------------------------------------------------------- R-operator HVP


def hvp(params, X, y, V):
    """Hessian-vector product H v by Pearlmutter's R-operator.

    R{f} := d/dr f(theta + r v) at r = 0. Apply R to every line of the forward
    pass (the forward R-pass, i.e. forward-mode AD along v), then to every line
    of the backward pass (the backward R-pass). R{dL/dtheta} = H v.
    Returns (loss, grads, Hv), Hv as a tuple shaped like the parameters.
    """
    W1, b1, W2, b2 = params
    VW1, Vb1, VW2, Vb2 = V
    loss, cache = forward(params, X, y)
    z1, mask, a1, p = cache
    grads, (dz2, dz1) = _backprop(params, X, y, cache)
    N = X.shape[0]

    # ---- forward R-pass (X and y are data: R{X} = 0)
    # z1 = X W1 + b1                 =>  R{z1} = X VW1 + Vb1
    Rz1 = X @ VW1 + Vb1
    # a1 = relu(z1)                  =>  R{a1} = [z1 > 0] R{z1}   (relu'' = 0 a.e.)
    Ra1 = Rz1 * mask
    # z2 = a1 W2 + b2                =>  R{z2} = R{a1} W2 + a1 VW2 + Vb2
    Rz2 = Ra1 @ W2 + a1 @ VW2 + Vb2
    # p = softmax(z2)                =>  R{p} = p * (R{z2} - sum_c p_c R{z2}_c)
    Rp = p * (Rz2 - (p * Rz2).sum(axis=1, keepdims=True))

    # ---- backward R-pass (product rule on every backprop line)
    # dz2 = (p - Y) / N              =>  R{dz2} = R{p} / N
    Rdz2 = Rp / N
    # dW2 = a1^T dz2                 =>  R{dW2} = R{a1}^T dz2 + a1^T R{dz2}
    RdW2 = Ra1.T @ dz2 + a1.T @ Rdz2
    # db2 = sum_n dz2                =>  R{db2} = sum_n R{dz2}
    Rdb2 = Rdz2.sum(axis=0)
    # da1 = dz2 W2^T                 =>  R{da1} = R{dz2} W2^T + dz2 VW2^T
    Rda1 = Rdz2 @ W2.T + dz2 @ VW2.T
    # dz1 = da1 * [z1 > 0]           =>  R{dz1} = R{da1} * [z1 > 0]  (the mask is locally constant)
    Rdz1 = Rda1 * mask
    # dW1 = X^T dz1                  =>  R{dW1} = X^T R{dz1}
    RdW1 = X.T @ Rdz1
    # db1 = sum_n dz1                =>  R{db1} = sum_n R{dz1}
    Rdb1 = Rdz1.sum(axis=0)
    return loss, grads, (RdW1, Rdb1, RdW2, Rdb2)


def hvp_directions(params, X, y, V):
    """H v_k for K flat directions V (K, P) in one R-pass, (K, P) out (P the
    parameter count, :func:`flatten`'s order): :func:`hvp`'s lines with the
    direction axis laid out (N, K, ·), inside the rows, so that each product
    with X is ONE GEMM over K·H columns and no (N, K, ·) tangent is copied
    to be transposed (only the directions' and results' W blocks are):

        [z1 | R{z1}_1 .. R{z1}_K] = X [W1 | VW1_1 .. VW1_K]    (+ b1, Vb1_k)
        R{dW1}_k = X^T R{dz1}_k   for all k: X^T (N, K·H)

    The hand-written floor of the engine's K-direction pass (``tinygrad2.hvp``
    with V of shape (K, P)). Only what H V needs: the primal weight gradients
    are not formed."""
    W1, b1, W2, b2 = params
    (N, D), H, C = X.shape, W1.shape[1], W2.shape[1]
    spans = bounds([p.shape for p in params])
    if V.ndim != 2 or V.shape[1] != spans[-1][1]:
        raise ValueError(f"hvp_directions: V must be (K, {spans[-1][1]}), got shape {V.shape}")
    K, dtype = V.shape[0], np.result_type(W1, V)
    VW1, Vb1, VW2, Vb2 = (V[:, a:b].reshape((K,) + s) for a, b, s in spans)
    packed = np.empty((D, K + 1, H), dtype)
    packed[:, 0], packed[:, 1:] = W1, VW1.transpose(1, 0, 2)
    Z = (X @ packed.reshape(D, (K + 1) * H)).reshape(N, K + 1, H)
    z1 = Z[:, 0] + b1
    mask = z1 > 0
    a1 = z1 * mask
    Ra1 = Z[:, 1:] + Vb1[None]                                         # R{z1}, (N, K, H) contiguous
    Ra1 *= mask[:, None]                                               # R{a1}
    z2 = a1 @ W2 + b2
    p = np.exp(_log_softmax(z2))
    dz2 = _output_grad(p, y)
    VW2_cols = VW2.transpose(1, 0, 2).reshape(H, K * C)                # [VW2_1 .. VW2_K]
    Rz2 = (Ra1.reshape(N * K, H) @ W2).reshape(N, K, C)
    Rz2 += (a1 @ VW2_cols).reshape(N, K, C)
    Rz2 += Vb2
    Rdz2 = p[:, None] * (Rz2 - (p[:, None] * Rz2).sum(axis=2, keepdims=True))
    Rdz2 /= N                                                          # R{p} / N
    Rda1 = (Rdz2.reshape(N * K, C) @ W2.T).reshape(N, K, H)
    Rda1 += (dz2 @ VW2.transpose(2, 0, 1).reshape(C, K * H)).reshape(N, K, H)  # R{da1}
    Rda1 *= mask[:, None]                                              # R{dz1}
    out = np.empty(V.shape, dtype)
    RW1, Rb1, RW2, Rb2 = (out[:, a:b].reshape((K,) + s) for a, b, s in spans)
    RW1[:] = (X.T @ Rda1.reshape(N, K * H)).reshape(D, K, H).transpose(1, 0, 2)
    Rb1[:] = Rda1.sum(axis=0)
    RW2[:] = (Ra1.reshape(N, K * H).T @ dz2).reshape(K, H, C)
    RW2 += (a1.T @ Rdz2.reshape(N, K * C)).reshape(H, K, C).transpose(1, 0, 2)
    Rb2[:] = Rdz2.sum(axis=0)
    return out
