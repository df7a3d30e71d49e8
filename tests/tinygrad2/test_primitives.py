"""Every primitive, driven by one op spec table, in float64 on hypothesis shapes.

For each row: the forward against NumPy; forward mode (K >= 2 directions at
once, on a random subset of the inputs) against central finite differences;
the adjoint identity <u, J v> == <J^T u, v> between the vjp and the jvp; and
forward-over-reverse H·V of a scalar built from the op against finite
differences of gradients and against reverse-over-reverse, with the assembled
Hessian symmetric. A completeness test ties the table to ``REGISTRY``.

Kinks (relu, abs, maximum, max) are kept at a distance: inputs are drawn at
least 0.05 away from every kink, and the stencil moves an input by at most
2e-3.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad2 as tg
from tinygrad2 import Tensor, check, no_grad
from tinygrad2.primitives import REGISTRY
from tinygrad2.tensor import kink_monitor

from tinygrad2 import primitives as P

from _helpers import (
    D,
    assert_close,
    host,
    npt,
    central_difference,
    flat,
    forward_over_reverse,
    gradients,
    reverse_over_reverse,
    split,
    values,
)

FD_RTOL = 1e-7  # 4th-order stencil, h = 1e-3: truncation ~1e-12, rounding ~1e-13 (relative)
FD_ATOL = 1e-9  # for quantities that are exactly zero: FD noise ~ eps |F| / h
EXACT_RTOL = 1e-10  # two AD routes, or the adjoint identity: rounding only


# ---------------------------------------------------------------- input domains


def real(rng, shape):
    return rng.uniform(-2.0, 2.0, shape)


def positive(rng, shape):  # log, sqrt, non-integer powers
    return rng.uniform(0.5, 2.5, shape)


def nonzero(rng, shape):  # divisors; relu and abs (|x| >= 0.2 keeps the kink away)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)


def distinct(rng, shape):
    """All entries at least 0.12 apart, so the argmax along any axis is unique
    and stays unique inside the stencil (max)."""
    size = math.prod(shape)
    grid = 0.2 * rng.permutation(size) - 0.1 * size + rng.uniform(-0.04, 0.04, size)
    return grid.reshape(shape)


def grid_at(offset):
    """Values on 0.3 Z + offset, jittered by 0.05: two grids with offsets 0 and
    0.15 never come closer than 0.05 (maximum's kink a == b)."""

    def draw(rng, shape):
        return 0.3 * rng.integers(-4, 5, shape) + offset + rng.uniform(-0.05, 0.05, shape)

    return draw


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    arrays: tuple
    params: dict = field(default_factory=dict)

    def __repr__(self):
        shapes = [a.shape for a in self.arrays]
        return f"Case(shapes={shapes}, params={self.params})"


@dataclass(frozen=True)
class OpSpec:
    """One row: the primitives it exercises in its forward pass, the function
    of Tensors (``fn(*tensors, **params)``), the NumPy reference of its forward,
    and a strategy that draws a :class:`Case` (input arrays in the op's domain
    plus parameters such as axes or indices)."""

    name: str
    covers: tuple
    fn: Callable
    ref: Callable
    cases: st.SearchStrategy
    kink: bool = False

    def __repr__(self):
        return self.name


SEEDS = st.integers(0, 2**32 - 1)
SHAPE = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
SHAPE_1D_UP = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
PAIR = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)
TRIPLE = hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3)


def _fill(shapes, domains, seed, params):
    rng = np.random.default_rng(seed)
    return Case(tuple(np.asarray(d(rng, s), dtype=np.float64) for d, s in zip(domains, shapes)), params)


def filled(shapes, *domains, params=st.just({})):
    """Cases from a strategy of shape tuples, one domain per input."""
    return st.builds(_fill, shapes, st.just(domains), SEEDS, params)


one = SHAPE.map(lambda s: (s,))
pair = PAIR.map(lambda b: b.input_shapes)


@st.composite
def axis_cases(draw, domain, allow_empty=False, min_dims=0):
    """A shape, and an ``axis`` (None, an int or a tuple, possibly negative)
    with ``keepdims``, for the reductions."""
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=3))
    nd = len(shape)
    axis = None
    if nd and draw(st.booleans()):
        axes = draw(st.lists(st.integers(0, nd - 1), unique=True, min_size=0 if allow_empty else 1, max_size=nd))
        axes = [a - nd if draw(st.booleans()) else a for a in axes]
        axis = axes[0] if len(axes) == 1 and draw(st.booleans()) else tuple(axes)
    keepdims = draw(st.booleans())
    return _fill((shape,), (domain,), draw(SEEDS), {"axis": axis, "keepdims": keepdims})


@st.composite
def softmax_cases(draw):
    shape = draw(SHAPE_1D_UP)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return _fill((shape,), (real,), draw(SEEDS), {"axis": axis})


@st.composite
def power_cases(draw):
    if draw(st.booleans()):  # integer exponents: a base of any sign
        domain, exponent = real, draw(st.sampled_from([0, 1, 2, 3]))
    else:  # real exponents: a positive base
        domain, exponent = positive, draw(st.sampled_from([0.5, 1.5, -1.0, -2.5, 2.0]))
    return _fill(draw(one), (domain,), draw(SEEDS), {"exponent": exponent})


@st.composite
def where_cases(draw):
    cond_shape, a_shape, b_shape = draw(TRIPLE).input_shapes
    seed = draw(SEEDS)
    cond = np.random.default_rng(seed + 1).random(cond_shape) < 0.5
    return _fill((a_shape, b_shape), (real, real), seed, {"cond": cond})


@st.composite
def matmul_cases(draw):
    shapes = draw(hnp.mutually_broadcastable_shapes(
        signature="(m?,n),(n,p?)->(m?,p?)", min_dims=0, max_dims=2, min_side=1, max_side=3
    )).input_shapes
    return _fill(shapes, (real, real), draw(SEEDS), {})


@st.composite
def reshape_cases(draw):
    shape = draw(SHAPE)
    size = math.prod(shape)
    options = [(size,), (-1,), (1,) + shape, shape + (1,), shape[::-1], (1, size, 1)]
    options += [tuple(p) for p in [draw(st.permutations(shape))]]
    options = [o for o in options if np.empty(shape).reshape(o).shape != shape]
    return _fill((shape,), (real,), draw(SEEDS), {"shape": draw(st.sampled_from(options))})


@st.composite
def transpose_cases(draw):
    shape = draw(SHAPE)
    nd = len(shape)
    axes = tuple(draw(st.permutations(range(nd))))
    axes = tuple(a - nd if draw(st.booleans()) else a for a in axes)
    return _fill((shape,), (real,), draw(SEEDS), {"axes": axes})


@st.composite
def smaller_shape(draw, big):
    """A shape that broadcasts *to* ``big``: a suffix of it with some sides set to 1."""
    suffix = big[len(big) - draw(st.integers(0, len(big))):]
    return tuple(1 if draw(st.booleans()) else s for s in suffix)


@st.composite
def broadcast_cases(draw):
    big = draw(SHAPE_1D_UP)
    small = draw(smaller_shape(big).filter(lambda s: s != big))
    return _fill((small,), (real,), draw(SEEDS), {"shape": big})


@st.composite
def sum_to_cases(draw):
    big = draw(SHAPE_1D_UP)
    small = draw(smaller_shape(big).filter(lambda s: s != big))
    return _fill((big,), (real,), draw(SEEDS), {"shape": small})


@st.composite
def advanced_index(draw, shape, separated_int=True):
    """Integer arrays (repeats and negative entries allowed), alone, next to an
    int or with an int a slice away, two arrays side by side, as a list, or a
    boolean mask. Two arrays are kept adjacent (the engine refuses separated ones)."""
    nd = len(shape)
    kinds = ["array", "array+int", "int+array", "arrays", "list", "mask"] + ["array,:,int"] * separated_int
    kind = draw(st.sampled_from(kinds))
    if kind == "mask":
        j = draw(st.integers(1, nd))
        bits = draw(st.lists(st.booleans(), min_size=math.prod(shape[:j]), max_size=math.prod(shape[:j])))
        return (np.array(bits, dtype=bool).reshape(shape[:j]),)
    pos = draw(st.integers(0, nd - 1))
    index = [draw(st.sampled_from([slice(None), slice(1, None), slice(None, None, -1)])) for _ in range(nd)]
    length = draw(st.integers(1, 5))
    entries = st.lists(st.integers(-shape[pos], shape[pos] - 1), min_size=length, max_size=length)
    arr = np.array(draw(entries), dtype=np.int64)
    index[pos] = arr.tolist() if kind == "list" else arr
    if kind == "array+int" and pos + 1 < nd:
        index[pos + 1] = draw(st.integers(-shape[pos + 1], shape[pos + 1] - 1))
    if kind == "int+array" and pos >= 1:
        index[pos - 1] = draw(st.integers(-shape[pos - 1], shape[pos - 1] - 1))
    if kind == "array,:,int" and pos + 2 < nd:  # NumPy counts the int as advanced too
        index[pos + 2] = draw(st.integers(-shape[pos + 2], shape[pos + 2] - 1))
    if kind == "arrays" and pos + 1 < nd:
        other = st.lists(st.integers(-shape[pos + 1], shape[pos + 1] - 1), min_size=length, max_size=length)
        index[pos + 1] = np.array(draw(other), dtype=np.int64)
    last = max(i for i, v in enumerate(index) if not (isinstance(v, slice) and v == slice(None)))
    keep = draw(st.integers(last + 1, nd))  # trailing full slices may be left out
    return tuple(index[:keep])


@st.composite
def index_cases(draw):
    shape = draw(SHAPE)
    if len(shape) and draw(st.booleans()):
        index = draw(advanced_index(shape))
    else:
        index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    return _fill((shape,), (real,), draw(SEEDS), {"index": index})


def _as_array_index(index):
    index = index if isinstance(index, tuple) else (index,)
    return tuple(np.asarray(i) if isinstance(i, list) else i for i in index)


@st.composite
def scatter_cases(draw):
    """scatter_add called directly: g of the indexed shape, scattered into ``shape``.
    The primitive takes an index as ``Tensor.__getitem__`` passes it on, where
    an int never sits a slice away from an array (that one is rewritten first)."""
    shape = draw(SHAPE)
    if len(shape) and draw(st.booleans()):
        index = _as_array_index(draw(advanced_index(shape, separated_int=False)))
    else:
        index = _as_array_index(draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True)))
    src = np.empty(shape)[index].shape
    return _fill((src,), (real,), draw(SEEDS), {"index": index, "shape": shape, "src": src})


@st.composite
def pad_cases(draw):
    shape = draw(SHAPE_1D_UP)
    widths = tuple(draw(st.tuples(st.integers(0, 2), st.integers(0, 2))) for _ in shape)
    value = draw(st.sampled_from([0.0, -2.5]))  # a constant: its tangent is zero, its cotangent dropped
    return _fill((shape,), (real,), draw(SEEDS), {"pad_width": widths, "value": value})


@st.composite
def concatenate_cases(draw):
    base = draw(SHAPE_1D_UP)
    nd = len(base)
    axis = draw(st.integers(-nd, nd - 1))
    count = draw(st.integers(1, 3))
    shapes = []
    for _ in range(count):
        s = list(base)
        s[axis] = draw(st.integers(1, 3))
        shapes.append(tuple(s))
    return _fill(tuple(shapes), (real,) * count, draw(SEEDS), {"axis": axis})


@st.composite
def stack_cases(draw):
    shape = draw(SHAPE)
    count = draw(st.integers(1, 3))
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return _fill((shape,) * count, (real,) * count, draw(SEEDS), {"axis": axis})


@st.composite
def cross_entropy_cases(draw):
    n, C = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n)), dtype=np.int64)
    return _fill(((n, C),), (real,), draw(SEEDS), {"labels": labels})


@st.composite
def conv_geometry(draw):
    """(N, C, H, W) and kernel, stride, padding with at least one output pixel."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    kernel = (draw(st.integers(1, H + 2 * padding[0])), draw(st.integers(1, W + 2 * padding[1])))
    kernel = (min(kernel[0], 3), min(kernel[1], 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    return (N, C, H, W), {"kernel": kernel, "stride": stride, "padding": padding}


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


@st.composite
def im2col_cases(draw):
    shape, params = draw(conv_geometry())
    return _fill((shape,), (real,), draw(SEEDS), params)


@st.composite
def col2im_cases(draw):
    (N, C, H, W), params = draw(conv_geometry())
    (kh, kw), (sh, sw), (ph, pw) = params["kernel"], params["stride"], params["padding"]
    cols = (N, _out_size(H, kh, sh, ph), _out_size(W, kw, sw, pw), C, kh, kw)
    return _fill((cols,), (real,), draw(SEEDS), dict(params, shape=(C, H, W)))


def _np_im2col(x, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH, OW = _out_size(H, kh, sh, ph), _out_size(W, kw, sw, pw)
    out = np.zeros((N, OH, OW, C, kh, kw))
    for i in range(OH):
        for j in range(OW):
            out[:, i, j] = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
    return out


def _np_col2im(cols, kernel, stride, padding, shape):
    (kh, kw), (sh, sw), (ph, pw), (C, H, W) = kernel, stride, padding, shape
    N, OH, OW = cols.shape[:3]
    out = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for i in range(OH):
        for j in range(OW):
            out[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw] += cols[:, i, j]
    return out[:, :, ph : ph + H, pw : pw + W]


@st.composite
def conv_family_cases(draw, which):
    """Cases of the blocked convolution primitives, batch innermost: x (C, H,
    W, N), w (O, C·kh·kw), g (O, OH, OW, N)."""
    (N, C, H, W), params = draw(conv_geometry())
    (kh, kw), (sh, sw), (ph, pw) = params["kernel"], params["stride"], params["padding"]
    O = draw(st.integers(1, 3))
    x, w, g = (C, H, W, N), (O, C * kh * kw), (O, _out_size(H, kh, sh, ph), _out_size(W, kw, sw, pw), N)
    shapes = {"conv": (w, x), "conv_weight_grad": (g, x), "conv_input_grad": (w, g)}[which]
    extra = {"shape": x} if which == "conv_input_grad" else {}
    return _fill(shapes, (real, real), draw(SEEDS), dict(params, **extra))


def _np_patches(x, kernel, stride, padding):
    """P(x) (C·kh·kw, OH·OW·N) of x (C, H, W, N), from the im2col reference."""
    cols = _np_im2col(x.transpose(3, 0, 1, 2), kernel, stride, padding)  # (N, OH, OW, C, kh, kw)
    return cols.transpose(3, 4, 5, 1, 2, 0).reshape(-1, int(np.prod(cols.shape[:3])))


def _np_conv(w, x, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    out = (w @ _np_patches(x, kernel, stride, padding))
    return out.reshape(w.shape[0], _out_size(x.shape[1], kh, sh, ph), _out_size(x.shape[2], kw, sw, pw), x.shape[3])


def _np_conv_weight_grad(g, x, kernel, stride, padding):
    return g.reshape(g.shape[0], -1) @ _np_patches(x, kernel, stride, padding).T


def _np_conv_input_grad(w, g, kernel, stride, padding, shape):
    (kh, kw), (C, H, W, N) = kernel, shape
    cols = (w.T @ g.reshape(g.shape[0], -1)).reshape(C, kh, kw, g.shape[1], g.shape[2], N)
    return _np_col2im(cols.transpose(5, 3, 4, 0, 1, 2), kernel, stride, padding, (C, H, W)).transpose(1, 2, 3, 0)


def _np_cross_entropy(z, labels):
    return np.mean(_np_logsumexp(z, -1, False) - z[np.arange(len(z)), labels])


def _np_cross_entropy_grad(z, labels):
    return (np.exp(_np_log_softmax(z, -1)) - np.eye(z.shape[1])[labels]) / len(z)


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _np_logsumexp(x, axis, keepdims):
    m = x.max(axis=axis, keepdims=True)
    out = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return out if keepdims else out.reshape(np.sum(x, axis=axis, keepdims=False).shape)


def _np_scatter(g, index, shape, src):
    out = np.zeros(shape)
    np.add.at(out, index, g)
    return out


def _np_sum_to(x, shape):
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    return x.sum(axis=axes).reshape(shape) if axes else x.reshape(shape)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


TABLE = [
    # elementwise, with broadcasting pairs
    OpSpec("add", ("add",), lambda a, b: a + b, lambda a, b: a + b, filled(pair, real, real)),
    OpSpec("sub", ("sub",), lambda a, b: a - b, lambda a, b: a - b, filled(pair, real, real)),
    OpSpec("neg", ("neg",), lambda a: -a, lambda a: -a, filled(one, real)),
    OpSpec("mul", ("mul",), lambda a, b: a * b, lambda a, b: a * b, filled(pair, real, real)),
    OpSpec("div", ("div",), lambda a, b: a / b, lambda a, b: a / b, filled(pair, real, nonzero)),
    OpSpec("power", ("power",), lambda x, exponent: x**exponent, lambda x, exponent: x**exponent, power_cases()),
    OpSpec("exp", ("exp",), lambda x: x.exp(), np.exp, filled(one, real)),
    OpSpec("log", ("log",), lambda x: x.log(), np.log, filled(one, positive)),
    OpSpec("tanh", ("tanh",), lambda x: x.tanh(), np.tanh, filled(one, real)),
    OpSpec("sin", ("sin",), lambda x: x.sin(), np.sin, filled(one, real)),
    OpSpec("cos", ("cos",), lambda x: x.cos(), np.cos, filled(one, real)),
    OpSpec("tanh_grad", ("tanh_grad",), lambda g, y: P.tanh_grad(g, y), lambda g, y: g * (1 - y * y),
           filled(pair, real, real)),
    OpSpec("sigmoid", ("sigmoid",), lambda x: x.sigmoid(), _sigmoid, filled(one, real)),
    OpSpec("softplus", ("softplus",), lambda x: x.softplus(), lambda x: np.log1p(np.exp(x)), filled(one, real)),
    OpSpec("sqrt", ("sqrt",), lambda x: x.sqrt(), np.sqrt, filled(one, positive)),
    OpSpec("relu", ("relu",), lambda x: x.relu(), lambda x: np.maximum(x, 0), filled(one, nonzero), kink=True),
    OpSpec("abs", ("abs",), lambda x: x.abs(), np.abs, filled(one, nonzero), kink=True),
    OpSpec("maximum", ("maximum",), lambda a, b: a.maximum(b), np.maximum,
           filled(pair, grid_at(0.15), grid_at(0.0)), kink=True),
    OpSpec("where", ("where",), lambda a, b, cond: Tensor.where(cond, a, b),
           lambda a, b, cond: np.where(cond, a, b), where_cases()),
    OpSpec("where-scalar", ("where",), lambda a, cond: Tensor.where(cond, a, 0.5),
           lambda a, cond: np.where(cond, a, 0.5),
           where_cases().map(lambda c: Case(c.arrays[:1], c.params))),
    # matmul, through Tensor.__matmul__ (1-D operands and batch broadcasting)
    OpSpec("matmul", ("matmul",), lambda a, b: a @ b, lambda a, b: a @ b, matmul_cases()),
    # reductions
    OpSpec("sum", ("sum",), lambda x, axis, keepdims: x.sum(axis, keepdims),
           lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims), axis_cases(real, allow_empty=True)),
    OpSpec("max", ("max",), lambda x, axis, keepdims: x.max(axis, keepdims),
           lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), axis_cases(distinct), kink=True),
    OpSpec("logsumexp", ("logsumexp",), lambda x, axis, keepdims: x.logsumexp(axis, keepdims),
           _np_logsumexp, axis_cases(real)),
    OpSpec("log_softmax", ("log_softmax",), lambda x, axis: x.log_softmax(axis), _np_log_softmax, softmax_cases()),
    OpSpec("cross_entropy", ("cross_entropy",), lambda z, labels: z.cross_entropy(labels), _np_cross_entropy,
           cross_entropy_cases()),
    OpSpec("cross_entropy_grad", ("cross_entropy_grad",), lambda z, labels: P.cross_entropy_grad(z, labels=labels),
           _np_cross_entropy_grad, cross_entropy_cases()),
    # shapes
    OpSpec("reshape", ("reshape",), lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape),
           reshape_cases()),
    OpSpec("transpose", ("transpose",), lambda x, axes: x.transpose(axes), lambda x, axes: x.transpose(axes),
           transpose_cases()),
    OpSpec("broadcast_to", ("broadcast_to",), lambda x, shape: x.broadcast_to(shape),
           lambda x, shape: np.broadcast_to(x, shape), broadcast_cases()),
    OpSpec("getitem", ("getitem",), lambda x, index: x[index], lambda x, index: x[_as_array_index(index)],
           index_cases()),
    OpSpec("scatter_add", ("scatter_add",), lambda g, **p: P.scatter_add(g, **p), _np_scatter, scatter_cases()),
    OpSpec("pad", ("pad",), lambda x, pad_width, value: x.pad(pad_width, value),
           lambda x, pad_width, value: np.pad(x, pad_width, constant_values=value), pad_cases()),
    OpSpec("concatenate", ("concatenate",), lambda *xs, axis: Tensor.concatenate(xs, axis),
           lambda *xs, axis: np.concatenate(xs, axis), concatenate_cases()),
    OpSpec("stack", ("reshape", "concatenate"), lambda *xs, axis: Tensor.stack(xs, axis),
           lambda *xs, axis: np.stack(xs, axis), stack_cases()),
    # convolution patches, called as primitives (the Tensor-level conv lives in nets/)
    OpSpec("conv", ("conv",), lambda w, x, **p: P.conv(w, x, **p), _np_conv, conv_family_cases("conv")),
    OpSpec("conv_weight_grad", ("conv_weight_grad",), lambda g, x, **p: P.conv_weight_grad(g, x, **p),
           _np_conv_weight_grad, conv_family_cases("conv_weight_grad")),
    OpSpec("conv_input_grad", ("conv_input_grad",), lambda w, g, **p: P.conv_input_grad(w, g, **p),
           _np_conv_input_grad, conv_family_cases("conv_input_grad")),
    OpSpec("im2col", ("im2col",), lambda x, **p: P.im2col(x, **p), _np_im2col, im2col_cases()),
    OpSpec("col2im", ("col2im",), lambda c, **p: P.col2im(c, **p), _np_col2im, col2im_cases()),
    # Tensor methods built from primitives
    OpSpec("mean", ("sum", "mul"), lambda x, axis, keepdims: x.mean(axis, keepdims),
           lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims), axis_cases(real)),
    OpSpec("softmax", ("log_softmax", "exp"), lambda x, axis: x.softmax(axis),
           lambda x, axis: np.exp(_np_log_softmax(x, axis)), softmax_cases()),
    OpSpec("sum_to", ("sum",), lambda x, shape: x.sum_to(shape), _np_sum_to, sum_to_cases()),
    OpSpec("tensor**tensor", ("log", "mul", "exp"), lambda a, b: a**b, lambda a, b: a**b,
           filled(pair, positive, real)),
    OpSpec("scalar**tensor", ("mul", "exp"), lambda x: 1.7**x, lambda x: 1.7**x, filled(one, real)),
    OpSpec("mT", ("transpose",), lambda x: x.mT, lambda x: np.swapaxes(x, -1, -2),
           filled(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3).map(lambda s: (s,)), real)),
]
BY_NAME = {spec.name: spec for spec in TABLE}
rows = pytest.mark.parametrize("spec", TABLE, ids=[s.name for s in TABLE])


# ---------------------------------------------------------------- the checks (plain functions, so a
# deliberately broken rule can be shown to fail them; see test_checks_catch_a_broken_*_rule)


def on_device(case):
    """(arrays, params) of a case as backend arrays: the inputs, and the array
    parameters (cond, labels, index arrays) -- a scatter-add takes no host index."""
    def dev(v):
        if isinstance(v, np.ndarray):
            return D(v)
        if isinstance(v, tuple):
            return tuple(dev(i) for i in v)
        return v

    return [D(a) for a in case.arrays], {k: dev(v) for k, v in case.params.items()}


def _dev(Vs):
    return [None if v is None else D(v) for v in Vs]


def _directions(rng, arrays, K, mask):
    return [rng.standard_normal((K,) + a.shape) if m else None for a, m in zip(arrays, mask)]


def assert_away_from_kinks(spec, case, Vs, step=1e-3):
    """The stencil (reach 2h, h = step / max|v|) stays well clear of every kink
    along every direction, so a mismatch is the rule's fault, not the step's.
    Rows without ``kink=True`` must not meet a kink primitive at all."""
    arrays, params = on_device(case)
    with no_grad(), kink_monitor() as margins:
        spec.fn(*[Tensor(a, tangent=v) for a, v in zip(arrays, _dev(Vs))], **params)
    assert bool(margins) == spec.kink, f"{spec.name}: kink={spec.kink} but margins {margins}"
    if margins:
        distance = np.min(np.stack([host(m) for m in margins]), axis=0)
        scale = np.max([np.abs(v).reshape(v.shape[0], -1).max(axis=1, initial=0.0) for v in Vs if v is not None], axis=0)
        reach = 2 * step / scale
        assert np.all(distance > 5 * reach), f"{spec.name}: kink at {distance} within 5x the stencil's reach {reach}"


def check_forward(spec, case):
    arrays, params = on_device(case)
    out = spec.fn(*[Tensor(a) for a in arrays], **params)
    expected = np.asarray(spec.ref(*case.arrays, **case.params))
    assert out.dtype == np.float64, f"{spec.name}: float64 inputs gave {out.dtype}"
    assert out.shape == expected.shape, f"{spec.name}: shape {out.shape} != NumPy's {expected.shape}"
    npt.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)


def check_jvp(spec, case, K, mask, seed):
    """K directions at once on the inputs in ``mask``; the others carry no tangent."""
    Vs = _directions(np.random.default_rng(seed), case.arrays, K, mask)
    arrays, params = on_device(case)
    with no_grad():
        out = spec.fn(*[Tensor(a, tangent=v) for a, v in zip(arrays, _dev(Vs))], **params)
    plain = values(spec.fn, params)(arrays)
    npt.assert_array_equal(out.data, plain)  # tangents do not change the value
    assert out.tangent is not None, f"{spec.name}: no tangent on the output"
    assert out.tangent.shape == (K,) + out.shape, f"{spec.name}: tangent {out.tangent.shape}, out {out.shape}"
    assert_away_from_kinks(spec, case, Vs)
    fd = central_difference(values(spec.fn, params), arrays, _dev(Vs))
    assert_close(out.tangent, fd, FD_RTOL, FD_ATOL, f"{spec.name} jvp vs finite differences")


def check_adjoint(spec, case, K, mask, seed):
    """<u, J v> == <J^T u, v>: jvp from forward mode, J^T u from backward(u),
    on the inputs in ``mask`` (the others are constants)."""
    rng = np.random.default_rng(seed)
    Vs = _directions(rng, case.arrays, K, mask)
    arrays, params = on_device(case)
    Vs = _dev(Vs)
    with no_grad():
        out = spec.fn(*[Tensor(a, tangent=v) for a, v in zip(arrays, Vs)], **params)
    u = D(rng.standard_normal(out.shape))
    ts = [Tensor(a, requires_grad=m) for a, m in zip(arrays, mask)]
    y = spec.fn(*ts, **params)
    y.backward(u)
    for t, m in zip(ts, mask):
        if not m:
            assert t.grad is None, f"{spec.name}: a constant input received a gradient"
        elif t.grad is not None:
            assert t.grad.shape == t.shape, f"{spec.name}: grad {t.grad.shape} for input {t.shape}"
    for k in range(K):
        lhs_terms = u * out.tangent[k]
        rhs_terms = [t.grad.data * v[k] for t, v in zip(ts, Vs) if v is not None and t.grad is not None]
        lhs, rhs = lhs_terms.sum(), sum(r.sum() for r in rhs_terms)
        scale = np.abs(lhs_terms).sum() + sum(np.abs(r).sum() for r in rhs_terms)
        assert abs(lhs - rhs) <= EXACT_RTOL * scale, (
            f"{spec.name}: <u, Jv> = {lhs!r} but <J^T u, v> = {rhs!r} (direction {k})"
        )


def scalar_of(spec, case, seed):
    """s(x) = sum(w * y) + 0.5 * sum(y * y), y = op(x): the linear term sees the
    op's own curvature, the square makes J^T J appear even for linear ops."""
    arrays, params = on_device(case)
    y_shape = values(spec.fn, params)(arrays).shape
    w = D(np.random.default_rng(seed).standard_normal(y_shape))

    def s(*ts, **params):
        y = spec.fn(*ts, **params)
        return (y * w).sum() + (y * y).sum() * 0.5

    return s


def check_hvp(spec, case, K, seed):
    """K directions by forward-over-reverse against reverse-over-reverse; the
    first two against finite differences of reverse-mode gradients."""
    rng = np.random.default_rng(seed)
    s = scalar_of(spec, case, seed + 1)
    arrays, params = on_device(case)
    host_Vs = [rng.standard_normal((K,) + a.shape) for a in arrays]
    Vs = _dev(host_Vs)
    fwd = flat(forward_over_reverse(s, arrays, Vs, params))
    rev = flat(reverse_over_reverse(s, arrays, Vs, params))
    grad_flat = lambda xs: flat([g[None] for g in gradients(s, xs, params)])[0]
    assert_away_from_kinks(spec, case, [v[:2] for v in host_Vs])
    fd = central_difference(grad_flat, arrays, [v[:2] for v in Vs])
    assert_close(fwd[:2], fd, FD_RTOL, FD_ATOL, f"{spec.name}: forward-over-reverse H·V vs differences of gradients")
    assert_close(fwd, rev, EXACT_RTOL, 1e-12, f"{spec.name}: forward-over-reverse vs reverse-over-reverse")
    # The dense Hessian, all n unit directions in one batched pass: symmetric,
    # and consistent with the K-direction products above.
    n = sum(a.size for a in arrays)
    if n == 0:
        return
    H = flat(forward_over_reverse(s, arrays, split(D(np.eye(n)), arrays), params))
    assert_close(H, H.T, EXACT_RTOL, 1e-12, f"{spec.name}: Hessian symmetry")
    assert_close(flat(Vs) @ H, fwd, EXACT_RTOL, 1e-12, f"{spec.name}: V H vs batched H·V")


# ---------------------------------------------------------------- the property tests

_K = st.integers(2, 3)


def _mask(n):
    """Which inputs take part; at least one."""
    return st.lists(st.booleans(), min_size=n, max_size=n).filter(any)


@rows
@given(data=st.data())
def test_forward_and_jvp_match_numpy_and_finite_differences(spec, data):
    case = data.draw(spec.cases, label="case")
    check_forward(spec, case)
    mask = data.draw(_mask(len(case.arrays)), label="inputs with tangents")
    check_jvp(spec, case, data.draw(_K, label="K"), mask, data.draw(SEEDS, label="seed"))


@rows
@given(data=st.data())
def test_vjp_is_the_transpose_of_jvp(spec, data):
    case = data.draw(spec.cases, label="case")
    mask = data.draw(_mask(len(case.arrays)), label="inputs that require grad")
    check_adjoint(spec, case, data.draw(_K, label="K"), mask, data.draw(SEEDS, label="seed"))


@rows
@given(data=st.data())
def test_hvp_forward_over_reverse(spec, data):
    case = data.draw(spec.cases, label="case")
    check_hvp(spec, case, data.draw(st.integers(2, 4), label="K"), data.draw(SEEDS, label="seed"))


FUSED = sorted(name for name, prim in REGISTRY.items() if prim.forward_and_jvp is not None)


@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_grad"])
@given(n=st.integers(1, 5), C=st.sampled_from([1, 2, 4, 33, 40]), K=st.integers(1, 3), seed=SEEDS)
def test_forward_and_jvp_equals_the_two_rules(name, n, C, K, seed):
    """A primitive's fused forward_and_jvp (the fast path taken whenever a
    tangent is carried) against its forward and jvp rules run apart: the same
    value bit for bit, the same tangent to rounding; short rows (the
    transposed route) and long ones. Finite differences and the adjoint test
    above check the fused path through the table's rows."""
    rng = np.random.default_rng(seed)
    z, T = D(rng.standard_normal((n, C)) * 3), D(rng.standard_normal((K, n, C)))
    labels = D(rng.integers(0, C, n))
    prim = REGISTRY[name]
    out, tangent = prim.forward_and_jvp([z], [T], labels=labels)
    npt.assert_array_equal(out, prim.forward(z, labels=labels))
    npt.assert_allclose(tangent, prim.jvp([z], [T], out, labels=labels), rtol=1e-13, atol=1e-15)


def test_fused_primitives_are_the_cross_entropy_pair_and_matmul():
    assert FUSED == ["cross_entropy", "cross_entropy_grad", "matmul"]


@pytest.mark.parametrize("K", [1, 3])
def test_matmul_computes_a_value_and_its_tangents_in_one_wider_product(K):
    """a @ b with a carrying no tangent and b carrying K: the fused rule's one
    GEMM a @ [b | tb] against the two rules, and against the same product
    through the engine: value and tangents to rounding, the tangents in the
    (K, r, p) shape. It declines (None: the engine runs the two rules) where a
    carries a tangent, where a is under kernels.FOLD_ELEMENTS entries, for
    operands that are not both 2-D (whose tangents the engine aligns), and
    for a tangent of another dtype than b's."""
    from tinygrad2 import kernels
    rng = np.random.default_rng(K)
    rows = kernels.FOLD_ELEMENTS // 40 + 1
    a, b, tb = D(rng.standard_normal((rows, 40))), D(rng.standard_normal((40, 6))), D(rng.standard_normal((K, 40, 6)))
    prim = REGISTRY["matmul"]
    out, tangent = prim.forward_and_jvp([a, b], [None, tb])
    assert out.shape == (rows, 6) and tangent.shape == (K, rows, 6)
    assert_close(out, host(a) @ host(b), rtol=1e-13, atol=1e-13)
    assert_close(tangent, prim.jvp([a, b], [None, tb], out), rtol=1e-13, atol=1e-13)
    through = Tensor(a) @ Tensor(b, tangent=tb)
    assert_close(through.data, out, rtol=1e-13, atol=1e-13)
    assert_close(through.tangent, tangent, rtol=1e-13, atol=1e-13)
    if K > 1:
        assert out.flags.c_contiguous and tangent.flags.c_contiguous  # (K = 1: two halves of one array)
    ta = D(rng.standard_normal((K,) + a.shape))
    assert prim.forward_and_jvp([a, b], [ta, tb]) is None
    assert prim.forward_and_jvp([a, b], [None, tb.astype(np.float32)]) is None  # kept in its own dtype
    assert prim.forward_and_jvp([a[:100], b], [None, tb]) is None
    assert prim.forward_and_jvp([a, b[None]], [None, tb[:, None]]) is None


def test_an_hvp_through_the_fused_matmul_equals_reverse_over_reverse():
    """A first layer large enough for the fused product (x fixed, W carrying
    the directions): forward-over-reverse H·V equals reverse-over-reverse."""
    from tinygrad2 import kernels
    rng = np.random.default_rng(5)
    X = D(rng.standard_normal((kernels.FOLD_ELEMENTS // 30 + 1, 30)))
    y = D(rng.integers(0, 4, X.shape[0]))
    n = 30 * 4

    def f(theta):
        return (Tensor(X) @ theta.reshape(30, 4)).tanh().cross_entropy(y)

    theta, V = D(rng.standard_normal(n) * 0.3), D(rng.standard_normal((2, n)))
    assert_close(tg.hvp(f, theta, V), np.stack([host(tg.hvp_reverse_over_reverse(f, theta, v)) for v in V]),
                 rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("C", [3, 40])  # the transposed route and the row route
@pytest.mark.parametrize("tangent", ["none", "carried", "no_tangent"])
def test_a_recorded_cross_entropy_computes_its_softmax_once_per_gradient(monkeypatch, C, tangent):
    """Tensor.cross_entropy on logits that require grad saves the gradient in
    z from the forward's exponentials (with a tangent, softmax(z) too); its
    vjp reads them: one softmax for the forward and the backward together
    (two before), the same gradient (and H·v) as the primitive without
    ``saved`` (which computes them in the vjp), and a second backward of a
    retained graph gives it again. A loss computed under no_tangent() (as
    the Objective's HVPs compute theirs) saves the residual alone, which the
    backward pass reuses beside the softmax it needs. A backward pass that
    frees the graph frees the saved arrays with it."""
    from tinygrad2 import kernels
    from tinygrad2.tensor import no_tangent
    rng = np.random.default_rng(C)
    z0, y = D(rng.standard_normal((6, C)) * 3), D(rng.integers(0, C, 6))
    T = D(rng.standard_normal((1, 6, C))) if tangent != "none" else None
    calls = []
    shifted = kernels._shifted_exp
    monkeypatch.setattr(kernels, "_shifted_exp", lambda *a, **k: calls.append(1) or shifted(*a, **k))

    def gradient(saving):
        z = Tensor(z0, requires_grad=True, tangent=T)
        with no_tangent() if tangent == "no_tangent" else contextlib.nullcontext():
            loss = z.cross_entropy(y) if saving else P.cross_entropy(z, labels=y)
        loss.backward(retain_graph=True)
        return z, loss

    z, loss = gradient(saving=True)
    assert len(calls) == (2 if tangent == "no_tangent" else 1)
    assert sorted(loss._node[2]["saved"]) == (["residual", "softmax"] if tangent == "carried" else ["residual"])
    calls.clear()
    z_plain, loss_plain = gradient(saving=False)
    assert len(calls) == 2 and "saved" not in loss_plain._node[2]
    npt.assert_array_equal(host(loss.data), host(loss_plain.data))
    assert_close(z.grad.data, z_plain.grad.data, rtol=1e-14, atol=1e-16)
    if T is not None:
        assert_close(z.grad.tangent, z_plain.grad.tangent, rtol=1e-14, atol=1e-16)
    first = host(z.grad.data).copy()
    z.grad = None
    loss.backward()
    npt.assert_array_equal(host(z.grad.data), first)
    assert_close(first, host(kernels.softmax_residual(z0, y)), rtol=1e-14, atol=1e-16)
    assert loss._node[1] is None and loss._node[2] is None
    with no_grad():
        assert Tensor(z0, requires_grad=True).cross_entropy(y)._node is None


@pytest.mark.parametrize("n, C", [(8192, 10), (64, 2000)])
def test_float16_residuals_do_not_overflow(n, C):
    """Uniform float16 logits: every residual route gives 1/(C n) off the
    label and 1/(C n) - 1/n at it (n·C is past float16's range, so the
    scaling must not form total·n), and each row sums to about 0."""
    from tinygrad2 import kernels
    z, y = D(np.zeros((n, C), np.float16)), D(np.zeros(n, np.int64))
    T = D(np.zeros((1, n, C), np.float16))
    for r in (kernels.softmax_residual(z, y), kernels.cross_entropy_rows(z, y, residual=True)[1],
              kernels.softmax_residual_and_hvp(z, y, T)[0]):
        r = host(r).astype(np.float64)
        npt.assert_allclose(r[:, 1:], 1 / (C * n), rtol=2e-2)
        npt.assert_allclose(r[:, 0], 1 / (C * n) - 1 / n, rtol=2e-3)
        assert np.abs(r.sum(axis=1)).max() < 1e-2 / n


@pytest.mark.parametrize("block_bytes", [1, 300, 10**9])
@pytest.mark.parametrize("geometry", [((5, 5), (1, 1), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((1, 1), (2, 1), (0, 0)),
                                      ((3, 2), (1, 2), (2, 0))])
def test_blocked_convolutions_match_the_references_for_any_block_size(geometry, block_bytes, monkeypatch, float64):
    """Blocks of one output row, of a few rows, and one block: the three
    kernels against the NumPy references (im2col / col2im written out), with
    directions on either operand."""
    from tinygrad2 import kernels

    monkeypatch.setattr(kernels, "CONV_BLOCK_BYTES", block_bytes)
    kernel, stride, padding = geometry
    rng = np.random.default_rng(1)
    C, H, W, N, O = 2, 9, 8, 3, 4
    x, w = rng.standard_normal((C, H, W, N)), rng.standard_normal((O, C * kernel[0] * kernel[1]))
    y = _np_conv(w, x, kernel, stride, padding)
    g = rng.standard_normal(y.shape)
    xs, ws, gs = rng.standard_normal((2,) + x.shape), rng.standard_normal((2,) + w.shape), rng.standard_normal((2,) + g.shape)
    geo = dict(kernel=kernel, stride=stride, padding=padding)
    got = lambda a: host(a)  # noqa: E731
    npt.assert_allclose(got(kernels.conv(D(w), D(x), **geo)), y, rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv(D(ws), D(x), **geo)), [_np_conv(v, x, **geo) for v in ws], rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv(D(w), D(xs), **geo)), [_np_conv(w, v, **geo) for v in xs], rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv_weight_grad(D(g), D(x), **geo)), _np_conv_weight_grad(g, x, **geo),
                        rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv_weight_grad(D(gs), D(x), **geo)),
                        [_np_conv_weight_grad(v, x, **geo) for v in gs], rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv_weight_grad(D(g), D(xs), **geo)),
                        [_np_conv_weight_grad(g, v, **geo) for v in xs], rtol=1e-12, atol=1e-12)
    want = _np_conv_input_grad(w, g, shape=x.shape, **geo)
    npt.assert_allclose(got(kernels.conv_input_grad(D(w), D(g), shape=x.shape, **geo)), want, rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv_input_grad(D(ws), D(g), shape=x.shape, **geo)),
                        [_np_conv_input_grad(v, g, shape=x.shape, **geo) for v in ws], rtol=1e-12, atol=1e-12)
    npt.assert_allclose(got(kernels.conv_input_grad(D(w), D(gs), shape=x.shape, **geo)),
                        [_np_conv_input_grad(w, v, shape=x.shape, **geo) for v in gs], rtol=1e-12, atol=1e-12)
    both = kernels.conv_input_grad(D(ws), D(g), shape=x.shape, also=(D(w), D(gs)), **geo)  # the jvp's two terms
    npt.assert_allclose(got(both), [_np_conv_input_grad(a, g, shape=x.shape, **geo) + _np_conv_input_grad(w, b, shape=x.shape, **geo)
                                    for a, b in zip(ws, gs)], rtol=1e-12, atol=1e-12)


def test_a_fused_rule_is_refused_beside_a_kink():
    class bad:  # noqa: N801  (a rule block, named as the registry names it)
        def forward(x): return x
        def jvp(primals, tangents, out): return tangents[0]
        def vjp(g, out, x): return (g,)
        def kink(primals, tangents, out): return tangents[0]
        def forward_and_jvp(primals, tangents): return primals[0], tangents[0]
    with pytest.raises(TypeError, match="forward_and_jvp"):
        P.primitive()(bad)
    assert "bad" not in REGISTRY


# ---------------------------------------------------------------- completeness of the table


def test_every_primitive_has_forward_jvp_and_vjp():
    assert REGISTRY, "the registry is empty"
    for name, prim in REGISTRY.items():
        assert prim.name == name
        for rule in ("forward", "jvp", "vjp"):
            assert callable(getattr(prim, rule, None)), f"primitive '{name}' has no {rule} rule"
        if prim.kink is not None:
            assert callable(prim.kink)


def test_every_primitive_has_a_table_row():
    covered = {name for spec in TABLE for name in spec.covers}
    missing = sorted(set(REGISTRY) - covered)
    assert not missing, f"primitives without a row in the op spec table: {missing}"
    unknown = sorted(covered - set(REGISTRY))
    assert not unknown, f"table rows name primitives that do not exist: {unknown}"


def test_every_kink_primitive_is_drawn_away_from_its_kink():
    kinked = {name for name, prim in REGISTRY.items() if prim.kink is not None}
    rows_for = {name: [s for s in TABLE if name in s.covers] for name in kinked}
    for name, specs in rows_for.items():
        assert specs and all(s.kink for s in specs), f"row(s) for kink primitive '{name}' not marked kink=True"


@contextlib.contextmanager
def applied_primitives():
    """Record the name of every primitive applied inside the block."""
    seen, original = [], P.Primitive.__call__

    def recording(prim, *inputs, **params):
        seen.append(prim.name)
        return original(prim, *inputs, **params)

    P.Primitive.__call__ = recording
    try:
        yield seen
    finally:
        P.Primitive.__call__ = original


@rows
@settings(max_examples=5)
@given(data=st.data())
def test_row_really_runs_the_primitives_it_covers(spec, data):
    """A row that claims a primitive must call it: record every primitive the
    forward pass applies (with tangents, so forward mode is exercised too)."""
    case = data.draw(spec.cases, label="case")
    arrays, params = on_device(case)
    with applied_primitives() as seen:
        spec.fn(*[Tensor(a, tangent=D(np.ones((2,) + a.shape))) for a in arrays], **params)
    missing = set(spec.covers) - set(seen)
    assert not missing, f"row '{spec.name}' claims {sorted(missing)} but its forward pass applied {sorted(set(seen))}"


# ---------------------------------------------------------------- the harness can fail


def _broken_tanh_jvp(primals, tangents, out):
    return tangents[0] * (1 - out)  # should be 1 - out²


def _broken_mul_vjp(g, out, a, b):
    return g * b, g * b  # should be g * a for b


def test_checks_catch_a_broken_jvp_rule(monkeypatch):
    """Each check fails when a rule is wrong (so passing means something)."""
    rng = np.random.default_rng(0)
    x = Case((rng.uniform(-2, 2, (3, 2)),))
    monkeypatch.setattr(REGISTRY["tanh"], "jvp", _broken_tanh_jvp)
    with pytest.raises(AssertionError, match="jvp vs finite differences"):
        check_jvp(BY_NAME["tanh"], x, 2, [True], 0)
    with pytest.raises(AssertionError, match="<u, Jv>"):
        check_adjoint(BY_NAME["tanh"], x, 2, [True], 0)
    # the gradient program is right, its forward-mode derivative is not
    with pytest.raises(AssertionError, match="differences of gradients"):
        check_hvp(BY_NAME["tanh"], x, 2, 0)


def test_checks_catch_a_broken_vjp_rule(monkeypatch):
    rng = np.random.default_rng(0)
    ab = Case((rng.uniform(-2, 2, (3,)), rng.uniform(-2, 2, (2, 3))))
    monkeypatch.setattr(REGISTRY["mul"], "vjp", _broken_mul_vjp)
    with pytest.raises(AssertionError, match="<u, Jv>"):
        check_adjoint(BY_NAME["mul"], ab, 2, [True, True], 0)
    # differences of a wrong gradient agree with its forward-mode derivative;
    # reverse-over-reverse (the vjp applied twice) and symmetry do not
    with pytest.raises(AssertionError, match="reverse-over-reverse|symmetry"):
        check_hvp(BY_NAME["mul"], ab, 2, 0)


def test_checks_pass_on_the_same_cases():
    rng = np.random.default_rng(0)
    x = Case((rng.uniform(-2, 2, (3, 2)),))
    ab = Case((rng.uniform(-2, 2, (3,)), rng.uniform(-2, 2, (2, 3))))
    check_jvp(BY_NAME["tanh"], x, 2, [True], 0)
    check_adjoint(BY_NAME["tanh"], x, 2, [True], 0)
    check_hvp(BY_NAME["tanh"], x, 2, 0)
    check_adjoint(BY_NAME["mul"], ab, 2, [True, True], 0)
    check_hvp(BY_NAME["mul"], ab, 2, 0)


# ---------------------------------------------------------------- specific indexing facts


def test_getitem_with_repeated_indices_accumulates_gradients():
    x = Tensor(D(np.arange(4.0)), requires_grad=True)
    x[D(np.array([0, 2, 0, 0, -1]))].sum().backward()
    npt.assert_array_equal(x.grad.data, [3.0, 0.0, 1.0, 1.0])


def test_scatter_add_direct_accumulates_repeats():
    g = Tensor(D(np.array([1.0, 2.0, 3.0])), tangent=D(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])))
    out = P.scatter_add(g, index=(D(np.array([1, 1, 0])),), shape=(3,), src=(3,))
    npt.assert_array_equal(out.data, [3.0, 3.0, 0.0])
    npt.assert_array_equal(out.tangent, [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def test_scatter_add_is_getitems_vjp_when_the_backward_pass_is_recorded():
    x = Tensor(D(np.ones((3, 2))), requires_grad=True)
    y = x[D(np.array([2, 2]))]
    with applied_primitives() as seen:
        y.backward(D(np.ones((2, 2))), create_graph=True)
    assert seen == ["scatter_add"]
    npt.assert_array_equal(x.grad.data, [[0, 0], [0, 0], [2, 2]])


def test_plain_backward_sums_slices_into_one_buffer_with_their_tangents():
    # every slice's cotangent (and its tangent) is added in place into one
    # gradient buffer: no full-size scatter per slice, same result
    rng = np.random.default_rng(1)
    x, V = rng.standard_normal(7), rng.standard_normal((3, 7))
    w = rng.standard_normal(7)

    def f(t):
        return (t[0:3] * t[2:5]).sum() + (t[D(np.array([6, 6, 1]))] ** 2).sum() + (t * Tensor(D(w))).sum()

    plain = Tensor(D(x), requires_grad=True, tangent=D(V))
    loss = f(plain)
    with applied_primitives() as seen:
        loss.backward()
    assert "scatter_add" not in seen
    recorded = Tensor(D(x), requires_grad=True, tangent=D(V))
    f(recorded).backward(create_graph=True)
    npt.assert_allclose(plain.grad.data, recorded.grad.data, rtol=1e-14)
    npt.assert_allclose(plain.grad.tangent, recorded.grad.tangent, rtol=1e-14)
    H = np.zeros((7, 7))  # closed form: t0 t2 + t1 t3 + t2 t4 + 2 t6² + t1² + w·t
    for i, j in ((0, 2), (1, 3), (2, 4)):
        H[i, j] = H[j, i] = 1
    H[6, 6], H[1, 1] = 4, 2
    npt.assert_allclose(plain.grad.tangent, V @ H, atol=1e-13)


@given(case=index_cases(), K=st.integers(1, 3), seed=SEEDS)
def test_getitem_in_place_accumulate_equals_its_general_vjp(case, K, seed):
    # the fast path (getitem.accumulate, plain backward) against the general rule
    # (getitem.vjp = scatter_add, taken when the backward pass is recorded), values
    # and tangents, on every index kind of the op table
    rng = np.random.default_rng(seed)
    (x,), params = on_device(case)
    index = params["index"]
    V = D(rng.standard_normal((K,) + x.shape))
    grads = []
    for create_graph in (False, True):
        t = Tensor(x, requires_grad=True, tangent=V)
        y = t[index]
        u = Tensor(D(rng.standard_normal(y.shape) if not grads else u_data), tangent=None)
        u_data = u.data
        (y * y * u).sum().backward(create_graph=create_graph)
        grads.append(t.grad)
    plain, recorded = grads
    npt.assert_allclose(plain.data, recorded.data, rtol=1e-13, atol=1e-13)
    npt.assert_allclose(plain.tangent, recorded.tangent, rtol=1e-13, atol=1e-13)


def test_getitem_int_and_array_separated_by_a_slice_in_forward_mode():
    rng = np.random.default_rng(0)
    x, V = rng.standard_normal((3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    index = (np.array([0, 2]), slice(None), 1)
    # beside an array, NumPy treats the int as an advanced index too; the direction axis must stay first
    xt = Tensor(D(x), tangent=D(V), requires_grad=True)
    out = xt[(D(index[0]),) + index[1:]]
    npt.assert_allclose(out.data, x[index])
    npt.assert_allclose(out.tangent, np.stack([v[index] for v in V]))
    u = rng.standard_normal(out.shape)
    out.backward(D(u))
    expected = np.zeros_like(x)
    np.add.at(expected, index, u)
    npt.assert_allclose(xt.grad.data, expected)


def test_getitem_separated_array_indices_are_refused_clearly():
    with pytest.raises(NotImplementedError, match="getitem"):
        Tensor(D(np.zeros((3, 4, 5))))[D(np.array([0, 1])), :, D(np.array([1, 2]))]


def test_power_zero_exponent_at_zero_has_zero_derivative():
    """d(x**0)/dx = 0 everywhere; exponent * x**(exponent - 1) would be 0 * inf = nan at 0."""
    x = D(np.array([0.0, 1.5]))
    with np.errstate(divide="raise", invalid="raise"):
        g = tg.grad(lambda t: (t**0).sum())(x)
        _, jv = tg.jvp(lambda t: t**0, x, D(np.ones(2)))
        hv = tg.hvp(lambda t: (t**0).sum(), x, D(np.ones(2)))
    npt.assert_array_equal(g, [0.0, 0.0])
    npt.assert_array_equal(jv, [0.0, 0.0])
    npt.assert_array_equal(hv, [0.0, 0.0])


# ---------------------------------------------------------------- kink-safe steps


KINKS = {
    # name: (f, a point 1e-3 from the kink along e_0, a point on the kink)
    "relu": (lambda x: x.relu().sum(), [1e-3, 0.5, -0.7], [0.0, 0.5, -0.7]),
    "abs": (lambda x: x.abs().sum(), [-1e-3, 0.5, -0.7], [0.0, 0.5, -0.7]),
    "maximum": (lambda x: x[:1].maximum(x[1:2]).sum() + x[2], [0.3 + 1e-3, 0.3, 1.0], [0.3, 0.3, 1.0]),
    "max": (lambda x: x.max(), [1.0 + 1e-3, 1.0, 0.2], [1.0, 1.0, 0.2]),
}


@pytest.mark.parametrize("name", sorted(KINKS))
def test_safe_steps_shrink_near_a_kink(name):
    f, near, _ = KINKS[name]
    steps = check.safe_steps(f, D(np.array(near)), D(np.eye(3)), step=1e-3)
    assert steps[0] < 1e-4, f"{name}: step {steps[0]:.1e} at distance 1e-3 from the kink"
    assert steps[2] == 1e-3, f"{name}: a direction that does not approach the kink was shrunk to {steps[2]:.1e}"
    report = check.check_grad(f, D(np.array(near)))
    assert report.rel_error < 1e-9, str(report)


@pytest.mark.parametrize("name", sorted(KINKS))
def test_safe_steps_refuse_a_point_on_a_kink(name):
    f, _, on = KINKS[name]
    with pytest.raises(ValueError, match="kink"):
        check.safe_steps(f, D(np.array(on)), D(np.eye(3)))
    # along a direction that keeps the point on its kink there is nothing to refuse
    steps = check.safe_steps(f, D(np.array(on)), D(np.eye(3)[2:]))
    assert steps[0] == 1e-3


def test_kink_table_covers_every_kink_primitive():
    assert set(KINKS) == {name for name, prim in REGISTRY.items() if prim.kink is not None}


@pytest.mark.parametrize("op, expected", [(lambda x, c: x * c, {"mul": 1}), (lambda x, c: c * x, {"mul": 1}),
                                          (lambda x, c: x / c, {"div": 1}), (lambda x, c: c - x, {"neg": 1}),
                                          (lambda x, c: x - c, {}), (lambda x, c: x.maximum(c), {"mul": 1})])
def test_a_backward_pass_computes_no_cotangent_for_a_constant_operand(op, expected):
    """mul, div, sub and maximum skip the product for an operand that needs no
    gradient (a constant factor, a bias that is data): the vjp's applications
    are those of the one cotangent read, and it is the right one."""
    rng = np.random.default_rng(0)
    x = Tensor(D(rng.standard_normal((3, 4))), requires_grad=True)
    c = Tensor(D(rng.uniform(1, 2, (3, 4))))
    y = op(x, c)
    with applied_primitives() as seen:
        y.backward(D(np.ones((3, 4))))
    counts = {name: seen.count(name) for name in set(seen)}
    assert counts == expected
    eps = 1e-6
    fd = (host(op(Tensor(x.data + eps), c).data) - host(op(Tensor(x.data - eps), c).data)) / (2 * eps)
    npt.assert_allclose(host(x.grad.data), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("tangent", [False, True])
def test_a_plain_backward_pass_transposes_and_sums_without_primitives(create_graph, tangent):
    """A backward pass that records nothing and pushes no tangent reads its
    operands' transposes (mT) as plain views and sums a bias's broadcast
    cotangent (sum_to) as a plain array, with no transpose or sum primitive;
    recorded (create_graph), all are primitives, and so are the transpose of
    an operand that carries a tangent (w here, not x) and the sum of a
    cotangent that carries one. The gradients and the tangent are the closed
    forms either way."""
    rng = np.random.default_rng(1)
    A, W, V, c0 = (D(rng.standard_normal(s)) for s in ((5, 3), (3, 4), (3, 4), (4,)))
    w = Tensor(W, requires_grad=True, tangent=V if tangent else None)
    x, c = Tensor(A, requires_grad=True), Tensor(c0, requires_grad=True)
    loss = ((x @ w + c) ** 2).sum()
    with applied_primitives() as seen:
        loss.backward(create_graph=create_graph)
    assert seen.count("transpose") == (2 if create_graph else 1 if tangent else 0)
    assert seen.count("sum") == (1 if create_graph or tangent else 0)
    r = host(A) @ host(W) + host(c0)
    npt.assert_allclose(host(w.grad.data), 2 * host(A).T @ r, rtol=1e-12)
    npt.assert_allclose(host(x.grad.data), 2 * r @ host(W).T, rtol=1e-12)
    npt.assert_allclose(host(c.grad.data), 2 * r.sum(axis=0), rtol=1e-12)
    if tangent:
        npt.assert_allclose(host(w.grad.tangent)[0], 2 * host(A).T @ (host(A) @ host(V)), rtol=1e-12)


def test_relu_keeps_its_tangents_dtype_beside_a_wider_value():
    """A float32 tangent carried onto a float64 value (x + float64 data)
    stays float32 through relu, as through the other masked rules: the mask
    takes the tangent's dtype, not the value's."""
    x = Tensor(D(np.array([-1.0, 0.5, 2.0], np.float32)), tangent=D(np.ones(3, np.float32)))
    y = (x + Tensor(D(np.ones(3)))).relu()
    assert y.data.dtype == np.float64 and y.tangent.dtype == np.float32
    npt.assert_array_equal(host(y.tangent), [[0.0, 1.0, 1.0]])
