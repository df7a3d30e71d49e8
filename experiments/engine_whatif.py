"""Prototypes of proposed engine changes, for MEASUREMENT ONLY.

The engine files are not edited. Each context manager below swaps one rule of
the live rule table for the proposed version and restores it on exit, so
``bench_curvature --profile`` can say how much of tinygrad2's gap to the
hand-written R-operator each change would close. Each one is a candidate
change for ``tinygrad2/primitives.py``:

* ``fused_tanh_backward``: tanh's vjp ``g * (1 - out * out)`` is made of
  three Tensor ops; under forward-over-reverse each one pushes (K, N, H)
  tangents: ``out * out`` runs the mul jvp (ta*b + a*tb: two products and a
  sum, although both operands are the same tensor), ``1 - ·`` a negation,
  ``g * ·`` another two products and a sum -- about 13 full passes over
  (K, N, H) arrays. A primitive ``tanh_grad(g, y) = g (1 - y²)`` with the jvp
  ``dg (1 - y²) - 2 g y dy`` does the same in about 4 (``y (1 - y²)`` and
  ``1 - y²`` are (N, H), computed once).
* ``one_gemm_matmul_jvp``: in the matmul jvp, ``a @ tb`` with a 2-D ``a``
  (r, m) and ``tb`` (K, m, p) is K separate GEMMs of p columns (NumPy loops
  over the stack); as ONE GEMM over K·p columns it is
  ``(a @ tb.transpose(1, 0, 2).reshape(m, K p)).reshape(r, K, p).transpose(1, 0, 2)``,
  copied back to the contiguous (K, r, p) layout (left as a strided view, it
  makes every later rule copy or run slower). Worth it only when the inner
  dimension m is deep (MNIST's X @ dW1 and Xᵀ @ dZ1: m = 784 and 1000); for
  m = 10, 16 or 64 the two transposing copies cost more than the K small
  GEMMs (measured), so the prototype folds only for m >= 128.
  The K separate calls also hurt with a multi-threaded BLAS on a busy
  machine: every call synchronizes its threads; measured with 2 threads
  under load, a (1000, 784) @ (256, 784, 16) took 3.0 s batched against
  0.21 s as one GEMM (1 thread: 0.17 s against 0.14 s).
  Also: ``ta.reshape(-1, m) @ b`` copies ``ta`` when it is a transposed view
  (the tangent of ``a1.mT`` in the W2 gradient); a batched ``ta @ b`` reads
  it in place. And the two terms are summed in place (both are fresh).
* ``inplace_mul_jvp``: ``ta * b + a * tb`` sums in place into the first,
  fresh product, instead of allocating a third (K, ...) array.
"""
from __future__ import annotations

import contextlib
import importlib

# the module itself (the package rebinds the name ``primitives`` to the registry dict)
P = importlib.import_module("tinygrad2.primitives")


@contextlib.contextmanager
def _swap(obj, attr, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextlib.contextmanager
def fused_tanh_backward():
    def forward(g, y):
        return g * (1 - y * y)

    def jvp(primals, tangents, out):  # d[g (1 - y²)] = dg (1 - y²) - 2 g y dy
        (g, y), (tg, ty) = primals, tangents
        res = None
        if tg is not None:
            res = tg * (1 - y * y)
        if ty is not None:
            term = ty * (-2 * g * y)
            if res is None:
                res = term
            elif res.shape == term.shape:
                res += term
            else:
                res = res + term
        return res

    def vjp(c, out, g, y):
        return c * (1 - y * y), c * g * y * (-2.0)

    prim = P.Primitive("tanh_grad", forward, jvp, vjp, None, False, True)
    with _swap(P.tanh, "vjp", lambda g, out, x: (prim(g, out),)):
        yield


@contextlib.contextmanager
def one_gemm_matmul_jvp():
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        res = None
        if ta is not None:
            if b.ndim == 2 and ta.flags.c_contiguous:  # fold K into the rows: one GEMM
                res = (ta.reshape(-1, b.shape[0]) @ b).reshape(ta.shape[:-1] + b.shape[1:])
            else:  # a transposed view: batched GEMMs read it in place (no copy)
                res = ta @ b
        if tb is not None:
            if a.ndim == 2 and tb.ndim == 3 and a.shape[1] >= 128:  # deep inner dim: fold K into the columns
                K, m, p = tb.shape
                t = (a @ tb.transpose(1, 0, 2).reshape(m, K * p)).reshape(a.shape[0], K, p)
                t = t.transpose(1, 0, 2).copy()  # back to the (K, r, p) layout every other rule expects
            else:
                t = a @ tb
            if res is None:
                res = t
            elif res.shape == t.shape:
                res += t
            else:
                res = res + t
        return res

    with _swap(P.matmul, "jvp", jvp):
        yield


@contextlib.contextmanager
def inplace_mul_jvp():
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        res = None if ta is None else ta * b
        if tb is not None:
            t = a * tb
            if res is None:
                res = t
            elif res.shape == t.shape and res.dtype == t.dtype:
                res += t
            else:
                res = res + t
        return res

    with _swap(P.mul, "jvp", jvp):
        yield


@contextlib.contextmanager
def all_changes():
    with fused_tanh_backward(), one_gemm_matmul_jvp(), inplace_mul_jvp():
        yield


CHANGES = {
    "fused tanh backward (tanh_grad primitive)": fused_tanh_backward,
    "matmul jvp: one GEMM for a @ tb, no copy of transposed ta, in-place sum": one_gemm_matmul_jvp,
    "mul jvp: in-place sum": inplace_mul_jvp,
    "all three": all_changes,
}
