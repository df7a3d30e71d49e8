"""Array kernels the rules share: plain ``xp`` code on arrays, no Tensors.

* Reductions. NumPy runs a reduction's inner loop once per output row, about
  17-70 ns a call whatever its length, so reductions whose rows are short
  cost far more than their arithmetic: the logits' 10 classes (a reduction
  over the last axis) and a bias gradient's batch sum (a reduction over the
  leading axis, in rows of 32). :func:`reduce` routes both to long
  vectorised loops.
* The cross-entropy: its value, gradient and Hessian product, each from one
  row softmax that runs along the examples.
* Products: sums of tangent-times-factor products, matmul's folded
  directions, and the patches of im2col / col2im.
* The blocked convolutions (:func:`conv`, :func:`conv_weight_grad`,
  :func:`conv_input_grad`), batch innermost: patch blocks copied out of a
  zero-copy strided view and used while they are in cache.

Every backend takes the same route, so that a device's results match NumPy's
bit for bit where the kernels do (``tests/_device.py``).
"""
from __future__ import annotations

import math

from . import backend as B


def reduce(reduction, x, axis, keepdims=False):
    """``reduction(x, axis=axis, keepdims=keepdims)``, ``reduction`` being
    ``xp.sum`` or ``xp.max``, by the faster of three routes:

    * over the last axis alone (-1 or (-1,)) of at most 32 entries: reduce the
      leading axis of the transposed copy, long vectorised rows ((1000, 10)
      float32: max 13 µs instead of 69, sum 11 instead of 34);
    * a sum over a run of adjacent axes of a C-contiguous float32/float64
      array, not the last ones: a matrix-vector product with a vector of
      ones, ``1ᵀ X`` (BLAS gemv; (1000, 32) float32 in 3 µs instead of 17),
      one per index of the axes before the run (a bias gradient's tangents
      (16, 1000, 32) summed over the batch: 36 µs instead of 320);
    * otherwise, the plain reduction.

    The first two add the entries in another order than NumPy: the same to
    rounding. Arrays under 4,096 entries and float16 (whose plain sum
    accumulates in float32) take the plain route, as the array's own method
    (``x.sum``: NumPy's function adds 2-3 µs of dispatch to a (64, 32) sum of
    2 µs)."""
    name = "sum" if reduction is B.xp.sum else "max" if reduction is B.xp.max else None
    if name is None:
        return reduction(x, axis=axis, keepdims=keepdims)
    method = getattr(x, name)
    if x.size < 4096 or x.dtype.itemsize < 4 or axis is None:
        return method(axis=axis, keepdims=keepdims)
    if axis in (-1, (-1,)) and x.ndim >= 2 and x.shape[-1] <= 32:
        moved = B.xp.ascontiguousarray(x.transpose((x.ndim - 1,) + tuple(range(x.ndim - 1))))
        out = getattr(moved, name)(axis=0)
        return out[..., None] if keepdims else out
    given = (axis,) if isinstance(axis, int) else tuple(axis)
    in_range = given and all(-x.ndim <= a < x.ndim for a in given)  # else NumPy's own result or AxisError
    if reduction is B.xp.sum and x.dtype.kind == "f" and x.flags.c_contiguous and in_range:
        axes = sorted(a % x.ndim for a in given)
        first, last = axes[0], axes[-1] + 1
        lead, rows, cols = math.prod(x.shape[:first]), math.prod(x.shape[first:last]), math.prod(x.shape[last:])
        if axes == list(range(first, last)) and cols > 1:
            out = B.xp.ones(rows, x.dtype) @ x.reshape((lead, rows, cols) if lead > 1 else (rows, cols))
            kept = (1,) * (last - first) if keepdims else ()
            return out.reshape(x.shape[:first] + kept + x.shape[last:])
    return method(axis=axis, keepdims=keepdims)


def _shifted_exp(z, labels=None, pick=False):
    """exp(z - m) of z (n, C), m the rows' maxima, as a fresh array laid out
    by rows: the transposed copy (C, n) when the rows are short (at most 32
    classes), so that every pass runs along the n examples. With ``labels``
    (n,), also the flat positions of their entries in that array, and with
    ``pick`` their values of z - m (before the exp). A row of -inf or with
    +inf gives NaN, as its softmax and cross-entropy are.
    Returns (e, the classes' axis, whether transposed, the labels' flat positions, their shifted values)."""
    short = z.shape[-1] <= 32
    axis = 0 if short else 1
    e = B.xp.array(z.T if short else z, order="C")
    e -= e.max(axis=axis, keepdims=True)
    at = picked = None
    if labels is not None:  # 1-D indexing: 3x faster than by (row, column) pairs
        n, c = z.shape
        labels = labels.astype(B.xp.int64, copy=False)
        at = B.xp.arange(n) + labels * n if short else B.xp.arange(0, n * c, c) + labels
        picked = e.reshape(-1)[at] if pick else None
    B.xp.exp(e, out=e)
    return e, axis, short, at, picked


def _by_examples(e, short):
    return B.xp.ascontiguousarray(e.T) if short else e


def softmax_rows(z):
    """softmax over the last axis of z (n, C)."""
    e, axis, short, _, _ = _shifted_exp(z)
    e /= e.sum(axis=axis, keepdims=True)
    return _by_examples(e, short)


def cross_entropy_rows(z, labels, residual=False, softmax=False):
    """The mean softmax cross-entropy mean_i [lse(z_i) - z_{i,y_i}] of logits
    z (n, C) and integer labels (n,); with ``residual=True`` also its
    gradient in z, (softmax(z_i) - e_{y_i}) / n, and with ``softmax=True``
    also softmax(z) (n, C), all from the same exponentials.

    With s = z - m (m the rows' maxima), lse(z_i) - z_{i,y_i} = log Σ_c exp(s_ic)
    - s_{i,y_i}, both terms >= 0."""
    n = z.shape[0]
    e, axis, short, at, picked = _shifted_exp(z, labels, pick=True)
    total = e.sum(axis=axis, keepdims=True)
    value = (B.xp.log(total.reshape(-1)) - picked).sum() * (1.0 / n)
    if not residual:
        return value
    p = _by_examples(e / total, short) if softmax else None
    r = _residual(e, total, at, short)
    return (value, r, p) if softmax else (value, r)


def softmax_residual(z, labels):
    """(softmax(z_i) - e_{y_i}) / n for every row i of z (n, C): the gradient
    of mean softmax cross-entropy in the logits."""
    e, axis, short, at, _ = _shifted_exp(z, labels)
    return _residual(e, e.sum(axis=axis, keepdims=True), at, short)


def _residual(e, total, at, short):
    """(e / total - onehot) / n in place, by examples."""
    n = total.size
    if e.dtype.itemsize >= 4:
        e /= total * n
    else:  # total·n reaches C·n, past float16's range
        e /= total
        e *= 1.0 / n
    e.reshape(-1)[at] -= 1.0 / n
    return _by_examples(e, short)


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
    _, residual, p = cross_entropy_rows(z, labels, residual=True, softmax=True)
    return residual, softmax_hessian_vp(z, T, p)


# ---------------------------------------------------------------- products and patches

def plus(a, b):
    """a + b where None is zero."""
    return b if a is None else a if b is None else a + b


def plus_into(fresh, b):
    """fresh + b, in place into ``fresh`` when the shapes allow it; ``fresh`` must be an array
    this rule allocated itself (never an input's tangent, which other rules may still read)."""
    if fresh is None or b is None:
        return plus(fresh, b)
    if fresh.shape == b.shape and fresh.dtype == b.dtype:
        fresh += b
        return fresh
    return fresh + b


BLOCK_ELEMENTS = 2**12
"""Tangents with this many elements per direction are combined one direction at a time (:func:`products`)."""


def products(*pairs):
    """Σ tangent · factor over the (tangent, factor) pairs whose tangent is
    not None; tangents (K, ...) carry the direction axis, factors are primal
    arrays that broadcast against them without it.

    With NumPy each direction is done in turn into one output, so the
    temporaries of a direction stay in cache: one pass over (K, ...) memory and
    one allocation instead of one of each per product and per sum. Small
    tangents, and CuPy (where a fused whole-array expression is cheaper than K
    kernel launches), take the plain vectorized expression."""
    pairs = [(t, f) for t, f in pairs if t is not None]
    if not pairs:
        return None
    (t0, f0), rest = pairs[0], pairs[1:]
    k = t0.shape[0]
    if B.xp is not B.numpy or k == 1 or t0[0].size < BLOCK_ELEMENTS:
        out = t0 * f0
        for t, f in rest:
            out = plus_into(out, t * f)
        return out
    shape = B.xp.broadcast_shapes(*(t.shape for t, _ in pairs), *((1,) + B.xp.shape(f) for _, f in pairs))
    out = B.xp.empty(shape, B.xp.result_type(*(a for pair in pairs for a in pair)))
    scratch = B.xp.empty(shape[1:], out.dtype) if rest else None
    for d in range(k):
        B.xp.multiply(t0[d], f0, out=out[d])
        for t, f in rest:
            B.xp.multiply(t[d], f, out=scratch)
            out[d] += scratch
    return out


WIDE_ROWS = 16
"""A product g Bᵀ of at most WIDE_ROWS rows and more columns is computed as
(B gᵀ)ᵀ, OpenBLAS's faster orientation there (1.4-1.7x; SmallCNN's first two
layers): matmul's vjp and :func:`conv_weight_grad`. On wider layers the
transposed result's copy costs more than it saves."""


FOLD_ELEMENTS = 2**18
"""``a @ tb`` with a 2-D ``a`` (r, m) and tangents ``tb`` (K, m, p) is K
GEMMs that each stream all of ``a``; once ``a`` has r·m >= FOLD_ELEMENTS
entries (it no longer stays in cache) and K > 1, the K directions are folded
into the columns of ONE GEMM instead, at the price of two transposing copies."""


def matmul_directions(a, tb):
    """a @ tb for a 2-D a and tangents tb (K, m, p), as (K, r, p)."""
    if a.ndim == 2 and tb.ndim == 3 and tb.shape[0] > 1 and a.size >= FOLD_ELEMENTS:
        k, m, p = tb.shape
        t = (a @ tb.transpose(1, 0, 2).reshape(m, k * p)).reshape(a.shape[0], k, p)
        return B.xp.ascontiguousarray(t.transpose(1, 0, 2))  # the (K, r, p) layout every rule expects
    return a @ tb


def matmul_with_directions(a, b, tb):
    """(a @ b, a @ tb) for 2-D a (r, m), b (m, p) and tangents tb (K, m, p) of
    b's dtype, from one GEMM a @ [b | tb_1 | ... | tb_K]: (K + 1)·p columns run
    faster than K + 1 products of p (MLP batch 1000, 32 columns: 1.03 ms
    instead of 1.14 for two). With K = 1 the value and the tangent are the two
    halves of one (r, 2p) array; else both are copied out of it, contiguous.
    BLAS may round a column of the wider product differently from a @ b alone
    (a different kernel shape): the value of a pass that carries tangents can
    differ from a plain forward's in the last bits."""
    k, m, p = tb.shape
    wide = B.xp.empty((m, k + 1, p), b.dtype)
    wide[:, 0] = b
    wide[:, 1:] = tb.transpose(1, 0, 2)
    out = (a @ wide.reshape(m, (k + 1) * p)).reshape(a.shape[0], k + 1, p)
    if k == 1:
        return out[:, 0], out[:, 1:].transpose(1, 0, 2)
    return B.xp.ascontiguousarray(out[:, 0]), B.xp.ascontiguousarray(out[:, 1:].transpose(1, 0, 2))


def im2col(x, kernel, stride, padding):
    """Patches (N, OH, OW, C, kh, kw) of the zero-padded x (N, C, H, W) (and
    any leading axes): the im2col primitive's forward, one copy of a
    zero-copy strided view."""
    lead, (n, c, h, w) = x.shape[:-4], x.shape[-4:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = x.reshape((-1, c, h, w))
    if ph or pw:
        x = B.xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = window_output_size(h, w, kernel, stride, padding)
    m, s = x.shape[0], x.strides
    windows = B.xp.lib.stride_tricks.as_strided(
        x, (m, oh, ow, c, kh, kw), (s[0], s[2] * sh, s[3] * sw, s[1], s[2], s[3])
    )
    return B.xp.ascontiguousarray(windows).reshape(lead + (n, oh, ow, c, kh, kw))


def col2im(cols, kernel, stride, padding, shape):
    """The transpose of :func:`im2col`: every patch added back at its place
    in a zero image of ``shape`` (C, H, W) per example."""
    lead = cols.shape[:-6]
    n, oh, ow = cols.shape[-6:-3]
    (kh, kw), (sh, sw), (ph, pw), (c, h, w) = kernel, stride, padding, shape
    cols = cols.reshape((-1, oh, ow, c, kh, kw))
    out = B.xp.zeros((cols.shape[0], c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return out[:, :, ph : ph + h, pw : pw + w].reshape(lead + (n, c, h, w))


# ---------------------------------------------------------------- convolution, batch innermost
# x (C, H, W, N) and y (O, OH, OW, N) store the batch innermost (nets.layers.Conv2d);
# w (O, C·kh·kw) is the weight (O, C, kh, kw) reshaped, rows in (c, i, j) order.
# P(x) (C·kh·kw, OH·OW·N), the patch matrix: P[(c, i, j), (p, q, n)] = x̃[c, p·sh + i, q·sw + j, n],
# x̃ = x zero-padded. Never built whole: a block of output rows whose patches fill about
# CONV_BLOCK_BYTES is copied out of a zero-copy view of x̃ and used at once, while it is in cache.

CONV_BLOCK_BYTES = 2 * 2**20
"""Patch bytes per block of output rows (at least one row per block). On
SmallCNN's first layer (3 -> 6 channels, 5x5, 32x32, batch 128: a 30 MB
patch matrix) the blocked forward and weight gradient take 3.1 and 3.7 ms
against 6.4 and 4.5 ms for the whole matrix (benchmarks/nets.py)."""


def window_output_size(h, w, kernel, stride, padding):
    """(OH, OW): the number of kernel-sized windows, ``stride`` apart, in an
    h x w image zero-padded by ``padding`` (convolutions and pooling alike)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _windows(padded, kernel, stride, out_size):
    """The zero-copy view (C, kh, kw, OH, OW, N) of padded x̃ (C, H, W, N):
    [c, i, j, p, q, n] = x̃[c, p·sh + i, q·sw + j, n]. Writable: for fixed
    (i, j) its entries are distinct elements of x̃."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_size
    sc, s_h, s_w, sn = padded.strides
    shape = (padded.shape[0], kh, kw, oh, ow, padded.shape[3])
    return B.xp.lib.stride_tricks.as_strided(padded, shape, (sc, s_h, s_w, sh * s_h, sw * s_w, sn))


def _row_blocks(bytes_per_row, oh, budget=None):
    per = max(1, int((budget or CONV_BLOCK_BYTES) // max(1, bytes_per_row)))
    return [(r, min(oh, r + per)) for r in range(0, oh, per)]


def _pad(x, padding):
    ph, pw = padding
    return B.xp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x


def _each(fn, directions, *args):
    """fn on every direction of ``directions`` (K, ...), stacked."""
    return B.xp.stack([fn(d, *args) for d in directions])


def conv(w, x, kernel, stride, padding):
    """y = w P(x), as (O, OH, OW, N). Directions: w (K, O, C·kh·kw) are
    folded into the output channels (one product with K·O rows: the small
    products of a first layer run faster taller), x (K, C, H, W, N) are
    taken one at a time."""
    if x.ndim == 5:
        return _each(lambda xk: conv(w, xk, kernel, stride, padding), x)
    if w.ndim == 3:
        return _unfold(conv(_fold(w), x, kernel, stride, padding), w.shape[0])
    oh, ow = window_output_size(x.shape[1], x.shape[2], kernel, stride, padding)
    view = _windows(_pad(x, padding), kernel, stride, (oh, ow))
    o, rows, n = w.shape[0], w.shape[1], x.shape[3]
    y = B.xp.empty((o, oh, ow, n), B.xp.result_type(w, x))
    for r0, r1 in _row_blocks(rows * ow * n * x.itemsize, oh):
        patches = view[:, :, :, r0:r1].reshape(rows, (r1 - r0) * ow * n)  # one copy, cache-sized
        y[:, r0:r1] = (w @ patches).reshape(o, r1 - r0, ow, n)
    return y


def conv_weight_grad(g, x, kernel, stride, padding):
    """g P(x)ᵀ, as (O, C·kh·kw): the weight's cotangent for the output's g
    (O, OH, OW, N). Directions: g (K, O, ...) folded into the output
    channels, x (K, C, H, W, N) one at a time."""
    if x.ndim == 5:
        return _each(lambda xk: conv_weight_grad(g, xk, kernel, stride, padding), x)
    if g.ndim == 5:
        return _unfold(conv_weight_grad(_fold(g), x, kernel, stride, padding), g.shape[0])
    o, oh, ow, n = g.shape
    view = _windows(_pad(x, padding), kernel, stride, (oh, ow))
    rows = view.shape[0] * view.shape[1] * view.shape[2]
    out = B.xp.zeros((o, rows), B.xp.result_type(g, x))
    for r0, r1 in _row_blocks(rows * ow * n * x.itemsize, oh):
        patches = view[:, :, :, r0:r1].reshape(rows, (r1 - r0) * ow * n)
        gb = g[:, r0:r1].reshape(o, (r1 - r0) * ow * n)
        out += (patches @ gb.T).T if o <= WIDE_ROWS < rows else gb @ patches.T  # as matmul's vjp
    return out


def _fold(directions):  # (K, O, ...) -> (K·O, ...)
    return directions.reshape((directions.shape[0] * directions.shape[1],) + directions.shape[2:])


def _unfold(folded, k):  # (K·O, ...) -> (K, O, ...)
    return folded.reshape((k, folded.shape[0] // k) + folded.shape[1:])


def conv_input_grad(w, g, kernel, stride, padding, shape, also=None):
    """P*(wᵀ g), as ``shape`` (C, H, W, N): the input's cotangent for the
    output's g (O, OH, OW, N), every patch column added back at its place
    (P* the transpose of P). With ``also`` = (w2, g2): P*(wᵀ g + w2ᵀ g2), the
    jvp's two terms added before the one pass back into place. Directions
    (w (K, O, C·kh·kw) or g (K, O, OH, OW, N), in either pair): one at a
    time. Its blocks are twice CONV_BLOCK_BYTES (each adds kh·kw times)."""
    pairs = [(w, g)] if also is None else [(w, g), also]
    k = next((a.shape[0] for a, b in pairs for a in (a, b) if a.ndim in (3, 5)), None)
    if k is not None:
        one = lambda a, d: a if a.ndim in (2, 4) else a[d]  # noqa: E731  (a direction's operand)
        return B.xp.stack([_input_grad([(one(a, d), one(b, d)) for a, b in pairs], kernel, stride, padding, shape)
                           for d in range(k)])
    return _input_grad(pairs, kernel, stride, padding, shape)


def _input_grad(pairs, kernel, stride, padding, shape):
    (ph, pw), (c, h, wd, n), (o, oh, ow, _) = padding, shape, pairs[0][1].shape
    padded = B.xp.zeros((c, h + 2 * ph, wd + 2 * pw, n), B.xp.result_type(*(a for pair in pairs for a in pair)))
    view = _windows(padded, kernel, stride, (oh, ow))
    rows = pairs[0][0].shape[1]
    for r0, r1 in _row_blocks(rows * ow * n * padded.itemsize, oh, 2 * CONV_BLOCK_BYTES):
        cols = None
        for w, g in pairs:
            term = w.T @ g[:, r0:r1].reshape(o, (r1 - r0) * ow * n)
            cols = term if cols is None else plus_into(cols, term)
        cols = cols.reshape(view.shape[:3] + (r1 - r0, ow, n))
        for i in range(view.shape[1]):
            for j in range(view.shape[2]):
                view[:, i, j, r0:r1] += cols[:, i, j]
    return padded[:, ph: ph + h, pw: pw + wd] if ph or pw else padded
