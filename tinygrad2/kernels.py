"""Array kernels the rules share: plain ``xp`` code on arrays, no Tensors.

NumPy runs a reduction's inner loop once per output row, about 17-70 ns a
call whatever its length, so reductions whose rows are short cost far more
than their arithmetic: the logits' 10 classes (a reduction over the last
axis) and a bias gradient's batch sum (a reduction over the leading axis, in
rows of 32). :func:`reduce` routes both to long vectorised loops, and the row
softmax below is built on it, so the cross-entropy's value, its gradient and
its Hessian product each pass over the logits a few times only.

Every backend takes the same route, so that a device's results match NumPy's
bit for bit where the kernels do (``tests/_device.py``).
"""
from __future__ import annotations

from . import backend as B


def reduce(reduction, x, axis, keepdims=False):
    """``reduction(x, axis=axis, keepdims=keepdims)``, ``reduction`` being
    ``xp.sum`` or ``xp.max``, by the faster of three routes:

    * over the last axis alone (-1 or (-1,)) of at most 32 entries: reduce the
      leading axis of the transposed copy, long vectorised rows ((1000, 10)
      float32: max 13 µs instead of 69, sum 11 instead of 34);
    * a sum over leading axes of a C-contiguous float32/float64 array (the
      axes before them of size 1): one matrix-vector product with a vector
      of ones, ``1ᵀ X`` (BLAS gemv; (1000, 32) float32 in 3 µs instead of 17);
    * otherwise, the plain reduction.

    The first two add the entries in another order than NumPy: the same to
    rounding. Arrays under 4,096 entries and float16 (whose plain sum
    accumulates in float32) take the plain route."""
    if x.size < 4096 or x.dtype.itemsize < 4 or axis is None:
        return reduction(x, axis=axis, keepdims=keepdims)
    if axis in (-1, (-1,)) and x.ndim >= 2 and x.shape[-1] <= 32:
        out = reduction(B.xp.ascontiguousarray(x.transpose((x.ndim - 1,) + tuple(range(x.ndim - 1)))), axis=0)
        return out[..., None] if keepdims else out
    if reduction is B.xp.sum and x.dtype.kind == "f" and x.flags.c_contiguous:
        axes = sorted(a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis))
        first, last = axes[0], axes[-1] + 1
        rows, cols = _prod(x.shape[first:last]), _prod(x.shape[last:])
        if axes == list(range(first, last)) and _prod(x.shape[:first]) == 1 and cols > 1:
            out = (B.xp.ones(rows, x.dtype) @ x.reshape(rows, cols)).reshape(x.shape[last:])
            return out.reshape((1,) * last + out.shape) if keepdims else out.reshape(x.shape[:first] + out.shape)
    return reduction(x, axis=axis, keepdims=keepdims)


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _shifted_exp(z):
    """exp(z - m) of z (n, C), m the rows' maxima (at least the dtype's lowest
    finite value, so that rows of -inf stay -inf in a log-sum-exp), as a fresh
    array laid out by rows: the transposed copy (C, n) when the rows are short
    (at most 32 classes), so that every pass runs along the n examples.
    Returns (e, m, the classes' axis, whether transposed)."""
    short = z.shape[-1] <= 32
    axis = 0 if short else 1
    e = B.xp.array(z.T if short else z, order="C")
    m = B.xp.maximum(e.max(axis=axis, keepdims=True), B.xp.finfo(z.dtype).min)
    e -= m
    B.xp.exp(e, out=e)
    return e, m, axis, short


def _by_examples(e, short):
    return B.xp.ascontiguousarray(e.T) if short else e


def softmax_rows(z):
    """softmax over the last axis of z (n, C)."""
    e, _, axis, short = _shifted_exp(z)
    e /= e.sum(axis=axis, keepdims=True)
    return _by_examples(e, short)


def cross_entropy_rows(z, labels, residual=False):
    """The mean softmax cross-entropy mean_i [lse(z_i) - z_{i,y_i}] of logits
    z (n, C) and integer labels (n,); with ``residual=True`` also its
    gradient in z, (softmax(z_i) - e_{y_i}) / n, from the same exponentials."""
    n = z.shape[0]
    e, m, axis, short = _shifted_exp(z)
    total = e.sum(axis=axis, keepdims=True)
    value = ((B.xp.log(total) + m).reshape(-1) - z[B.xp.arange(n), labels]).sum() * (1.0 / n)
    if not residual:
        return value
    e /= total
    return value, _residual_in_place(_by_examples(e, short), labels)


def softmax_residual(z, labels):
    """(softmax(z_i) - e_{y_i}) / n for every row i of z (n, C): the gradient
    of mean softmax cross-entropy in the logits."""
    return _residual_in_place(softmax_rows(z), labels)


def _residual_in_place(p, labels):
    p[B.xp.arange(p.shape[0]), labels] -= 1
    p *= 1.0 / p.shape[0]
    return p


def softmax_hessian_vp(z, T, p=None):
    """(diag(p_i) - p_i p_iᵀ) t_i / n for every row i of z (n, C) and every
    direction t of T (K, n, C): the Hessian of mean softmax cross-entropy in
    z times T, p_i = softmax(z_i) (computed unless given). It is
    cross_entropy_grad's jvp and the Gauss-Newton output Hessian of the
    cross-entropy loss."""
    p = softmax_rows(z) if p is None else p
    out = T - B.xp.einsum("...c,...c->...", T, p)[..., None]  # Σ_c p t without a (K, n, C) temporary
    out *= p * (1.0 / z.shape[0])
    return out


def softmax_residual_and_hvp(z, labels, T):
    """(softmax_residual(z, labels), softmax_hessian_vp(z, T)) from one softmax."""
    p = softmax_rows(z)
    hvp = softmax_hessian_vp(z, T, p)
    return _residual_in_place(p, labels), hvp
