"""Function transformations for ``f``: a 1-D Tensor of length n -> a scalar Tensor.

Inputs ``x`` and directions ``v`` are ``xp`` arrays; results are ``xp`` arrays.
Directions ``v`` may be one vector ``(n,)`` or a batch ``(K, n)``; a batch is
pushed through the network in one pass (the tangents' leading axis). x and v
must be real and finite: NaN/inf raise :class:`tinygrad2.guard.NonFiniteError`.

* ``hvp`` is forward-over-reverse: H v = d/dε ∇f(x + ε v) at ε = 0, computed by
  seeding tangents V on x, running f and its backward pass; the gradient comes
  out carrying H V.
* ``hvp_reverse_over_reverse`` is the independent cross-check: record the
  backward pass, then differentiate <∇f(x), v> once more.
* ``hessian`` assembles H from chunks of the identity, each chunk one batched
  HVP (BLAS-3 work inside each primitive).
"""
from __future__ import annotations

from . import backend as B
from . import memory
from .directions import tracked, unit_rows
from .guard import as_real, check_finite
from .tensor import Tensor, no_grad


def _input(x, op):
    x = as_real(x, op, "x")
    if x.ndim != 1:
        raise ValueError(f"{op}: x must be a 1-D array, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: x must be floating, got dtype {x.dtype}")
    return check_finite(x, op, "x")


def _directions(v, n, dtype, op):
    """(K, n) directions and whether a single (n,) vector was given."""
    v = check_finite(as_real(v, op, "v", dtype), op, "v")
    if v.ndim == 1 and v.shape[0] == n:
        return v[None], True
    if v.ndim == 2 and v.shape[1] == n:
        return v, False
    raise ValueError(f"{op}: v has shape {v.shape} but x has length {n}; expected ({n},) or (K, {n})")


def _scalar(out, op):
    if not isinstance(out, Tensor):
        raise TypeError(f"{op}: f must return a Tensor, got {type(out).__name__}")
    if out.size != 1:
        raise ValueError(f"{op}: f must return a scalar Tensor, got shape {out.shape}")
    return out


def value_and_grad(f):
    """``value_and_grad(f)(x) -> (float, array (n,))``, by reverse mode."""

    return lambda x: checked_value_and_grad(f, _input(x, "value_and_grad"))


def checked_value_and_grad(f, x):
    """value_and_grad on an ``x`` its caller has already checked (the
    Objective checks theta once, in its own words)."""
    xt = Tensor(x, requires_grad=True)
    out = _scalar(f(xt), "value_and_grad")
    if not out.requires_grad:  # f does not depend on x
        return float(out.item()), B.xp.zeros_like(x)
    out.backward()
    return float(out.item()), xt.grad.data


def grad(f):
    """``grad(f)(x) -> array (n,)``, by reverse mode."""
    vg = value_and_grad(f)
    return lambda x: vg(x)[1]


def jvp(f, x, v):
    """Forward mode: ``(f(x), J v)``. f may return any shape; for v of shape
    (K, n) the directional derivatives have shape (K, *f(x).shape)."""
    x = _input(x, "jvp")
    V, single = _directions(v, x.shape[0], x.dtype, "jvp")
    with no_grad():
        out = f(Tensor(x, tangent=V))
    if not isinstance(out, Tensor):
        raise TypeError(f"jvp: f must return a Tensor, got {type(out).__name__}")
    tangent = out.tangent
    if tangent is None:
        tangent = B.xp.zeros((V.shape[0],) + out.shape, out.dtype)
    return out.data, (tangent[0] if single else tangent)


def vjp(f, x):
    """Reverse mode: ``(f(x), pullback)`` with ``pullback(u) = J^T u`` (u has
    the shape of f(x)); the pullback may be called many times."""
    x = _input(x, "vjp")
    xt = Tensor(x, requires_grad=True)
    out = f(xt)
    if not isinstance(out, Tensor):
        raise TypeError(f"vjp: f must return a Tensor, got {type(out).__name__}")

    def pullback(u):
        u = B.asarray(u, out.dtype)
        if u.shape != out.shape:
            raise ValueError(f"vjp: cotangent has shape {u.shape} but f(x) has shape {out.shape}")
        if not out.requires_grad:
            return B.xp.zeros_like(x)
        xt.grad = None
        out.backward(u, retain_graph=True)
        return xt.grad.data if xt.grad is not None else B.xp.zeros_like(x)

    return out.data, pullback


def hvp(f, x, v):
    """Forward-over-reverse Hessian-vector products: v (n,) -> (n,),
    v (K, n) -> (K, n) with row k equal to H v_k."""
    x = _input(x, "hvp")
    V, single = _directions(v, x.shape[0], x.dtype, "hvp")
    HV = checked_hvp(f, x, V)
    return HV[0] if single else HV


def checked_hvp(f, x, V):
    """H V for checked ``x`` (n,) and directions ``V`` (K, n): the
    forward-over-reverse pass itself, without :func:`hvp`'s argument checks.
    Its backward pass reads only tangents (``tangents_only``): other leaves
    that ``f`` closes over get exact ``.grad.tangent`` but ``.grad.data`` that
    is not their gradient."""
    xt = Tensor(x, requires_grad=True, tangent=V)
    xt.tangent = tracked(xt.tangent)  # its live columns on the host: one transfer per pass
    out = _scalar(f(xt), "hvp")
    HV = None
    if out.requires_grad:
        out.backward(tangents_only=True)  # ∇f itself is not returned: skip the products only it needs
        if xt.grad is not None:
            HV = xt.grad.tangent
    if HV is None:  # the gradient does not depend on x along V
        HV = B.xp.zeros_like(V)
    return HV


def hvp_reverse_over_reverse(f, x, v):
    """H v by differentiating the recorded backward pass a second time: one
    extra backward per direction. Slower; an independent route to check ``hvp``."""
    x = _input(x, "hvp_reverse_over_reverse")
    V, single = _directions(v, x.shape[0], x.dtype, "hvp_reverse_over_reverse")
    xt = Tensor(x, requires_grad=True)
    out = _scalar(f(xt), "hvp_reverse_over_reverse")
    rows = []
    if out.requires_grad:
        out.backward(create_graph=True)
        g = xt.grad
        for vk in V:
            xt.grad = None
            if g.requires_grad:
                (g * Tensor._make(vk, None, None)).sum().backward(retain_graph=True)
            rows.append(xt.grad.data if xt.grad is not None else B.xp.zeros_like(x))
    HV = B.xp.stack(rows) if rows else B.xp.zeros_like(V)
    return HV[0] if single else HV


def hessian(f, x, chunk=None, memory_budget=None):
    """Dense (n, n) Hessian from batched HVPs with ``chunk`` unit directions
    per pass (None: chosen by :func:`tinygrad2.memory.choose_chunk`, at most
    ``memory.preferred_chunk``). Raises :class:`CurvatureMemoryError` before
    allocating when the result plus one chunk's working memory would exceed
    ``memory_budget`` (None: ``memory.default_memory_budget``)."""
    x = _input(x, "hessian")
    n = x.shape[0]
    budget = memory.default_memory_budget if memory_budget is None else memory_budget

    def per_direction():
        out = _scalar(f(Tensor(x, requires_grad=True)), "hessian")
        return memory.bytes_per_direction(memory.graph_elements(out), n, x.dtype.itemsize)

    chunk, needed = memory.choose_chunk(n * n * x.dtype.itemsize, per_direction, n, budget, chunk, where="hessian")
    memory.check_fits("hessian", n, n * n, x.dtype, chunk, needed, budget)
    H = B.xp.empty((n, n), dtype=x.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        H[start:stop] = hvp(f, x, unit_rows(start, stop, n, x.dtype))
    return H
