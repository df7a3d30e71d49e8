"""The rule table: every primitive once, with its forward, jvp and vjp side by side.

Conventions
-----------
* ``forward(*arrays, **params) -> array``: plain ``xp`` code. Linear shape
  primitives accept extra *leading* axes, so the same forward maps a tangent
  of shape ``(K, *shape)``; that is how a linear primitive gets its jvp for
  free (``linear=True`` and no ``jvp``).
* ``jvp(primals, tangents, out, **params) -> tangent``: arrays; each tangent is
  ``None`` (zero) or has a leading direction axis K. For ``broadcasts=True``
  primitives the engine has already aligned every tangent to the output's
  number of dimensions.
* ``vjp(g, out, *inputs, **params) -> cotangents``: written with **Tensor**
  operations (``g``, ``out`` and the inputs are Tensors), so that a backward
  pass over tensors carrying tangents yields H·V (forward-over-reverse), and a
  recorded backward pass can be differentiated again (reverse-over-reverse).
  ``None`` is a zero cotangent. The engine sums broadcast cotangents back to
  each input's shape.
* ``kink(primals, tangents, out, **params) -> (K,)``: for primitives with a
  non-differentiable point, the step along each direction at which it would
  first be crossed (to first order); used for kink-safe finite differences.
* ``accumulate(buffer, g, values, index, old)``: optionally, the vjp added in place
  into a gradient buffer the engine owns (its tangent too; its values only if
  ``values``: a tangents-only pass skips them), in backward passes that are not recorded
  (getitem: the slices of a flat vector, and their slices, share its buffer;
  reshape: of such a slice, the same). The engine asks
  :func:`tinygrad2.graph.in_place_target` where; where it says None, the vjp runs.
* ``forward_and_jvp(primals, tangents, **params) -> (out, tangent) or None``:
  optionally, both rules in one call, where the jvp would repeat the
  forward's work (the cross-entropy's softmax) or one product does both
  (matmul: a @ [b | tb]); used whenever a tangent is carried. None declines:
  the engine then runs the two rules. It sees the tangents unaligned and
  unchecked, so a broadcasting primitive declines wherever the tangents would
  need aligning; never for a primitive with a kink (the kink monitor runs
  beside the jvp). Tests check it against the two rules.
"""
from __future__ import annotations

from . import backend as B
from . import kernels
from .directions import ALL_LIVE, known_live, remember_live
from .kernels import (cross_entropy_rows, matmul_directions, plus, plus_into, products, reduce, softmax_hessian_vp,
                      softmax_residual, softmax_residual_and_hvp)
from .shapes import on_host
from .tensor import Tensor, apply


class Primitive:
    __slots__ = ("name", "forward", "jvp", "vjp", "kink", "accumulate", "linear", "bilinear", "broadcasts",
                 "forward_and_jvp", "masked", "direct_vjp", "view")

    def __init__(self, name, forward, jvp, vjp, kink, accumulate, linear, bilinear, broadcasts, forward_and_jvp,
                 masked=False, direct_vjp=False, view=False):
        self.name, self.forward, self.jvp, self.vjp = name, forward, jvp, vjp
        self.kink, self.accumulate, self.linear, self.bilinear = kink, accumulate, linear, bilinear
        self.broadcasts, self.forward_and_jvp, self.masked, self.direct_vjp = broadcasts, forward_and_jvp, masked, direct_vjp
        self.view = view

    __call__ = apply  # prim(*inputs, **params) runs apply(prim, *inputs, **params)

    def __repr__(self):
        kind = "linear " if self.linear else ""
        return f"<{kind}primitive {self.name}>"


REGISTRY: dict[str, Primitive] = {}


def primitive(linear=False, bilinear=False, broadcasts=False, masked=False, direct_vjp=False, view=False):
    """Register a block (a class used as a namespace) as a primitive. ``masked``:
    its vjp is g times a factor without a tangent (a mask of its input's values),
    so in a tangents-only pass it is as a linear one; ``direct_vjp`` (bilinear):
    its vjp reads the values of g, its inputs and views of them only (which a
    tangents-only vjp still computes), so its values may be skipped even when
    the other operand carries a tangent (:func:`tinygrad2.graph.values_skippable`);
    ``view``: its forward returns a view of its input (no arithmetic)."""

    def register(block):
        name = block.__name__
        jvp = block.__dict__.get("jvp")
        if jvp is None:
            if not linear:
                raise TypeError(f"primitive '{name}': a non-linear primitive needs a jvp rule")
            jvp = _jvp_of_linear(block.forward)
        both = block.__dict__.get("forward_and_jvp")
        if both is not None and "kink" in block.__dict__:
            raise TypeError(f"primitive '{name}': forward_and_jvp skips the kink monitor")
        prim = Primitive(name, block.forward, jvp, block.vjp, block.__dict__.get("kink"),
                         block.__dict__.get("accumulate"), linear, bilinear, broadcasts, both, masked, direct_vjp, view)
        REGISTRY[name] = prim
        return prim

    return register


def _jvp_of_linear(forward):
    def jvp(primals, tangents, out, **params):
        if len(tangents) == 1:
            return forward(tangents[0], **params)
        k = next(t.shape[0] for t in tangents if t is not None)
        filled = [t if t is not None else B.xp.zeros((k,) + p.shape, p.dtype) for p, t in zip(primals, tangents)]
        return forward(*filled, **params)

    return jvp


def _const(array):
    return Tensor._make(array, None, None)


def _keep(array, axis, ndim):
    """Re-insert reduced axes (given as negative axes of an ndim input)."""
    return B.xp.expand_dims(array, tuple(a + ndim for a in axis))


def _direction_min(margin):
    k = margin.shape[0]
    if margin.size == 0:
        return B.xp.full((k,), B.xp.inf)
    return margin.reshape(k, -1).min(axis=1)


def _distance(gap, tangent):
    """|gap| / |tangent| per direction (infinite where the tangent is zero):
    the first-order step at which the gap closes."""
    speed = B.xp.abs(tangent)
    moving = speed > 0
    ratio = B.xp.where(moving, B.xp.abs(gap) / B.xp.where(moving, speed, 1), B.xp.inf)
    return _direction_min(ratio)


def _lead(array, primal_ndim):
    return (slice(None),) * (array.ndim - primal_ndim)


# ---------------------------------------------------------------- elementwise


@primitive(linear=True, broadcasts=True)
class add:  # d(a + b) = da + db
    def forward(a, b): return a + b
    def jvp(primals, tangents, out): return plus(*tangents)
    def vjp(g, out, a, b): return g, g


@primitive(linear=True, broadcasts=True)
class sub:  # d(a - b) = da - db
    def forward(a, b): return a - b
    def jvp(primals, tangents, out):
        ta, tb = tangents
        return ta if tb is None else -tb if ta is None else ta - tb
    def vjp(g, out, a, b):  # b's cotangent summed to b's shape before it is negated (a broadcast mean or bias)
        return g, (-g.sum_to(b.shape) if b.requires_grad else None)


@primitive(linear=True, broadcasts=True)
class neg:  # d(-x) = -dx
    def forward(x): return -x
    def vjp(g, out, x): return (-g,)


@primitive(broadcasts=True)
class mul:  # d(a b) = da b + a db
    def forward(a, b): return a * b
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        return products((ta, b), (tb, a))
    def vjp(g, out, a, b): return (g * b if a.requires_grad else None), (g * a if b.requires_grad else None)


@primitive(broadcasts=True)
class div:  # d(a / b) = (da - (a/b) db) / b
    def forward(a, b): return a / b
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        return plus(ta, None if tb is None else -(out * tb)) / b
    def vjp(g, out, a, b): return (g / b if a.requires_grad else None), (-(g * out) / b if b.requires_grad else None)


@primitive(broadcasts=True)
class power:  # d x^p = p x^(p-1) dx, exponent p a constant (p = 0: zero, also at x = 0)
    def forward(x, exponent): return x**exponent
    def jvp(primals, tangents, out, exponent):
        if exponent == 0:
            return B.xp.zeros_like(tangents[0])
        return tangents[0] * (exponent * primals[0] ** (exponent - 1))
    def vjp(g, out, x, exponent):
        if exponent == 0:
            return (g * 0.0,)
        if exponent == 2:  # 2 x g: two passes (x ** 1 would be a third)
            return ((g * x) * 2.0,)
        return (g * exponent if exponent == 1 else g * (x ** (exponent - 1) * exponent),)


@primitive(broadcasts=True)
class exp:  # d exp(x) = exp(x) dx
    def forward(x): return B.xp.exp(x)
    def jvp(primals, tangents, out): return tangents[0] * out
    def vjp(g, out, x): return (g * out,)


@primitive(broadcasts=True)
class log:  # d log(x) = dx / x
    def forward(x): return B.xp.log(x)
    def jvp(primals, tangents, out): return tangents[0] / primals[0]
    def vjp(g, out, x): return (g / x,)


@primitive(broadcasts=True)
class sin:  # d sin x = cos x dx
    def forward(x): return B.xp.sin(x)
    def jvp(primals, tangents, out): return tangents[0] * B.xp.cos(primals[0])
    def vjp(g, out, x): return (g * x.cos(),)


@primitive(broadcasts=True)
class cos:  # d cos x = -sin x dx
    def forward(x): return B.xp.cos(x)
    def jvp(primals, tangents, out): return tangents[0] * -B.xp.sin(primals[0])
    def vjp(g, out, x): return (-(g * x.sin()),)


@primitive(broadcasts=True)
class tanh:  # d tanh(x) = (1 - tanh²(x)) dx
    def forward(x): return B.xp.tanh(x)
    def jvp(primals, tangents, out): return tangents[0] * (1 - out * out)
    def vjp(g, out, x): return (tanh_grad(g, out),)


@primitive(broadcasts=True)
class tanh_grad:  # tanh's vjp as one primitive: g (1 - y²);  d = dg (1 - y²) - 2 g y dy
    def forward(g, y): return g * (1 - y * y)
    def jvp(primals, tangents, out):
        (g, y), (tg, ty) = primals, tangents
        return products((tg, 1 - y * y), (ty, -2 * g * y))
    def vjp(c, out, g, y): return tanh_grad(c, y), c * g * y * (-2.0)


@primitive(broadcasts=True)
class sigmoid:  # d σ(x) = σ(x) (1 - σ(x)) dx;  σ(x) = (1 + tanh(x/2)) / 2 without overflow
    def forward(x): return 0.5 * (B.xp.tanh(0.5 * x) + 1)
    def jvp(primals, tangents, out): return tangents[0] * (out * (1 - out))
    def vjp(g, out, x): return (g * (out * (1 - out)),)


@primitive(broadcasts=True)
class softplus:  # d log(1 + e^x) = σ(x) dx
    def forward(x): return B.xp.logaddexp(0, x)
    def jvp(primals, tangents, out): return tangents[0] * sigmoid.forward(primals[0])
    def vjp(g, out, x): return (g * x.sigmoid(),)


@primitive(broadcasts=True)
class sqrt:  # d sqrt(x) = dx / (2 sqrt(x))
    def forward(x): return B.xp.sqrt(x)
    def jvp(primals, tangents, out): return tangents[0] * (0.5 / out)
    def vjp(g, out, x): return ((g * 0.5) / out,)


@primitive(broadcasts=True, masked=True)
class relu:  # d max(x, 0) = [x > 0] dx; kink at x = 0
    def forward(x): return B.xp.maximum(x, 0)
    def jvp(primals, tangents, out): return tangents[0] * (primals[0] > 0).astype(tangents[0].dtype)  # float: 2x faster
    def vjp(g, out, x): return (g * _const((x.data > 0).astype(x.dtype)),)  # a float mask: not xp.where, 13x slower
    def kink(primals, tangents, out): return _distance(primals[0], tangents[0])


@primitive(broadcasts=True, masked=True)
class abs:  # d |x| = sign(x) dx; kink at x = 0
    def forward(x): return B.xp.abs(x)
    def jvp(primals, tangents, out): return tangents[0] * B.xp.sign(primals[0])
    def vjp(g, out, x): return (g * _const(B.xp.sign(x.data)),)
    def kink(primals, tangents, out): return _distance(primals[0], tangents[0])


@primitive(broadcasts=True, masked=True)
class maximum:  # d max(a, b) = [a >= b] da + [a < b] db; kink at a = b
    def forward(a, b): return B.xp.maximum(a, b)
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        take_a = a >= b
        return plus(None if ta is None else ta * take_a, None if tb is None else tb * ~take_a)
    def vjp(g, out, a, b):
        take_a = (a.data >= b.data).astype(g.dtype)
        return (g * _const(take_a) if a.requires_grad else None), (g * _const(1 - take_a) if b.requires_grad else None)
    def kink(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        return _distance(a - b, plus(ta, None if tb is None else -tb))


@primitive(linear=True, broadcasts=True)
class where:  # d where(c, a, b) = where(c, da, db); c is a constant mask
    def forward(a, b, cond): return B.xp.where(cond, a, b)
    def jvp(primals, tangents, out, cond):
        ta, tb = tangents
        return plus(None if ta is None else ta * cond, None if tb is None else tb * ~cond)
    def vjp(g, out, a, b, cond):
        zero = _const(B.xp.zeros((), g.dtype))
        return (where(g, zero, cond=cond) if a.requires_grad else None), (
            where(zero, g, cond=cond) if b.requires_grad else None)


# ---------------------------------------------------------------- matmul


@primitive(bilinear=True, broadcasts=True, direct_vjp=True)
class matmul:  # d(A B) = dA B + A dB, both operands at least 2-D
    def forward(a, b): return a @ b
    def jvp(primals, tangents, out):
        (a, b), (ta, tb) = primals, tangents
        da = None
        if ta is not None:
            if b.ndim == 2 and ta.flags.c_contiguous:  # fold the direction axis into the rows: one GEMM
                da = (ta.reshape(-1, b.shape[0]) @ b).reshape(ta.shape[:-1] + b.shape[1:])
            else:  # e.g. a transposed view: the batched product reads it in place, no copy
                da = ta @ b
        return plus_into(da, None if tb is None else matmul_directions(a, tb))
    def forward_and_jvp(primals, tangents):  # a @ [b | tb]: the value and b's tangents in ONE wider GEMM
        (a, b), (ta, tb) = primals, tangents
        if ta is not None or tb is None or a.ndim != 2 or b.ndim != 2 or a.size < kernels.FOLD_ELEMENTS or (
                tb.dtype != b.dtype):
            return None  # the two rules (which align the tangents of broadcast operands)
        return kernels.matmul_with_directions(a, b, tb)
    def vjp(g, out, a, b):
        # dA = g Bᵀ, as (B gᵀ)ᵀ for a g of few rows (kernels.WIDE_ROWS)
        wide = g.ndim == b.ndim == 2 and g.shape[0] <= kernels.WIDE_ROWS < b.shape[0]
        da = ((b @ g.mT).mT if wide else g @ b.mT) if a.requires_grad else None
        return da, (a.mT @ g if b.requires_grad else None)


# ---------------------------------------------------------------- convolution (bilinear; kernels.py has the blocked loops)
# x (C, H, W, N), y (O, OH, OW, N), w (O, C·kh·kw); P(x) the patch matrix, P* its transpose.
# The three products are each other's transposes, so every vjp is one of them: H·V and a
# recorded backward pass need no other rule.


@primitive(bilinear=True, direct_vjp=True)
class conv:  # y = w P(x)
    def forward(w, x, kernel, stride, padding): return kernels.conv(w, x, kernel, stride, padding)
    def jvp(primals, tangents, out, **geometry): return _bilinear_jvp(kernels.conv, primals, tangents, geometry)
    def vjp(g, out, w, x, **geometry):
        return (conv_weight_grad(g, x, **geometry) if w.requires_grad else None,
                conv_input_grad(w, g, shape=x.shape, **geometry) if x.requires_grad else None)


@primitive(bilinear=True, direct_vjp=True)
class conv_weight_grad:  # dw = g P(x)ᵀ
    def forward(g, x, kernel, stride, padding): return kernels.conv_weight_grad(g, x, kernel, stride, padding)
    def jvp(primals, tangents, out, **geometry):
        return _bilinear_jvp(kernels.conv_weight_grad, primals, tangents, geometry)
    def vjp(u, out, g, x, **geometry):
        return (conv(u, x, **geometry) if g.requires_grad else None,
                conv_input_grad(u, g, shape=x.shape, **geometry) if x.requires_grad else None)


@primitive(bilinear=True, direct_vjp=True)
class conv_input_grad:  # dx = P*(wᵀ g); shape: x's (C, H, W, N)
    def forward(w, g, kernel, stride, padding, shape): return kernels.conv_input_grad(w, g, kernel, stride, padding, shape)
    def jvp(primals, tangents, out, **geometry):  # P*(dwᵀ g + wᵀ dg): one pass back into place
        (w, g), (tw, tg) = primals, tangents
        terms = [pair for pair in ((tw, g), (w, tg)) if pair[0] is not None and pair[1] is not None]
        return kernels.conv_input_grad(*terms[0], **geometry, also=terms[1] if len(terms) == 2 else None)
    def vjp(v, out, w, g, shape, **geometry):
        return (conv_weight_grad(g, v, **geometry) if w.requires_grad else None,
                conv(w, v, **geometry) if g.requires_grad else None)


def _bilinear_jvp(product, primals, tangents, params):  # d f(a, b) = f(da, b) + f(a, db)
    (a, b), (ta, tb) = primals, tangents
    return plus_into(None if ta is None else product(ta, b, **params), None if tb is None else product(a, tb, **params))


# ---------------------------------------------------------------- reductions


@primitive(linear=True)
class sum:  # d Σx = Σ dx;  axis: negative axes
    def forward(x, axis, keepdims): return reduce(B.xp.sum, x, axis, keepdims)
    def vjp(g, out, x, axis, keepdims):
        keep = g if keepdims else g.reshape(_keep(out.data, axis, x.ndim).shape)
        return (keep.broadcast_to(x.shape),)


@primitive(masked=True)
class max:  # d max(x) = mean of dx over the maximal entries; kink where the argmax changes
    def forward(x, axis, keepdims): return reduce(B.xp.max, x, axis, keepdims)
    def jvp(primals, tangents, out, axis, keepdims):
        w = _max_weights(primals[0], out, axis, keepdims)
        return B.xp.sum(tangents[0] * w, axis=axis, keepdims=keepdims)
    def vjp(g, out, x, axis, keepdims):
        keep = g if keepdims else g.reshape(_keep(out.data, axis, x.ndim).shape)
        return (keep * _const(_max_weights(x.data, out.data, axis, keepdims)),)
    def kink(primals, tangents, out, axis, keepdims):  # entries catch up with the maximum
        x, t = primals[0], tangents[0]
        top = out if keepdims else _keep(out, axis, x.ndim)
        top_speed = B.xp.sum(t * _max_weights(x, out, axis, keepdims), axis=axis, keepdims=True)
        return _distance(top - x, t - top_speed)


def _max_weights(x, out, axis, keepdims):
    hit = x == (out if keepdims else _keep(out, axis, x.ndim))
    return hit / B.xp.sum(hit, axis=axis, keepdims=True).astype(x.dtype)


@primitive()
class logsumexp:  # d log Σ e^x = Σ softmax(x) dx
    def forward(x, axis, keepdims):
        m = B.xp.maximum(reduce(B.xp.max, x, axis, True), B.xp.finfo(x.dtype).min)  # rows of -inf stay -inf
        out = B.xp.log(reduce(B.xp.sum, B.xp.exp(x - m), axis, True)) + m
        return out if keepdims else B.xp.squeeze(out, axis=axis)
    def jvp(primals, tangents, out, axis, keepdims):
        x = primals[0]
        p = B.xp.exp(x - (out if keepdims else _keep(out, axis, x.ndim)))
        return reduce(B.xp.sum, tangents[0] * p, axis, keepdims)
    def vjp(g, out, x, axis, keepdims):
        shape = _keep(out.data, axis, x.ndim).shape
        keep_g, keep_out = (g, out) if keepdims else (g.reshape(shape), out.reshape(shape))
        return (keep_g * (x - keep_out).exp(),)


@primitive()
class log_softmax:  # d(x - lse(x)) = dx - Σ softmax(x) dx;  axis: one negative axis
    def forward(x, axis):
        return x - logsumexp.forward(x, axis=(axis,), keepdims=True)
    def jvp(primals, tangents, out, axis):
        t = tangents[0]
        return t - reduce(B.xp.sum, B.xp.exp(out) * t, axis, True)
    def vjp(g, out, x, axis):
        return (g - out.exp() * g.sum(axis=axis, keepdims=True),)


@primitive()
class cross_entropy:  # mean_i [lse(z_i) - z_i,y_i];  d = <cross_entropy_grad(z), dz>
    # saved: None, or a recorded forward's dict (Tensor.cross_entropy's; as PyTorch's save_for_backward) for the
    # gradient in z and, with a tangent, softmax(z): cross_entropy_grad reads them instead of its own softmax
    def forward(z, labels, saved=None):
        if saved is None:
            return cross_entropy_rows(z, labels)
        value, saved["residual"] = cross_entropy_rows(z, labels, residual=True)
        return value
    def jvp(primals, tangents, out, labels, saved=None):
        return _dot_each(tangents[0], softmax_residual(primals[0], labels))
    def forward_and_jvp(primals, tangents, labels, saved=None):
        value, residual, *p = cross_entropy_rows(primals[0], labels, residual=True, softmax=saved is not None)
        if saved is not None:
            saved.update(residual=residual, softmax=p[0])
        return value, _dot_each(tangents[0], residual)
    def vjp(g, out, z, labels, saved=None): return (cross_entropy_grad(z, labels=labels, saved=saved) * g,)


@primitive()
class cross_entropy_grad:  # (softmax(z) - onehot(y)) / n;  d = p ⊙ (dz - Σ_c p dz) / n, p = softmax(z)
    # saved: None, or cross_entropy's dict for these logits (its residual is this value, its softmax p)
    def forward(z, labels, saved=None):
        return saved["residual"] if saved and "residual" in saved else softmax_residual(z, labels)
    def jvp(primals, tangents, out, labels, saved=None):
        return softmax_hessian_vp(primals[0], tangents[0], None if saved is None else saved.get("softmax"))
    def forward_and_jvp(primals, tangents, labels, saved=None):
        if saved and "residual" in saved:  # (without a saved softmax: a forward under no_tangent)
            return saved["residual"], softmax_hessian_vp(primals[0], tangents[0], saved.get("softmax"))
        return softmax_residual_and_hvp(primals[0], labels, tangents[0])
    def vjp(u, out, z, labels, saved=None):  # the same symmetric operator, in Tensor ops
        p = z.log_softmax(axis=-1).exp()
        pu = p * u
        return ((pu - p * pu.sum(axis=-1, keepdims=True)) * (1.0 / z.shape[0]),)


def _dot_each(T, r):  # <t_k, r> for every direction t_k of T (K, *r.shape)
    return T.reshape(T.shape[0], -1) @ r.reshape(-1)


# ---------------------------------------------------------------- shape and indexing (all linear)


@primitive(linear=True, view=True)
class reshape:  # old: the input's shape
    def forward(x, shape, old): return x.reshape(x.shape[: x.ndim - len(old)] + shape)
    def vjp(g, out, x, shape, old): return (g.reshape(old),)
    def accumulate(buf, g, values, index, old):  # a reshaped step-1 slice of a flat vector (graph.in_place_target)
        _sum_into(buf, g.data.reshape(-1), None if g.tangent is None else g.tangent.reshape(len(g.tangent), -1), values, index)


@primitive(linear=True, view=True)
class transpose:  # axes: a permutation of the input's axes
    def forward(x, axes):
        lead = x.ndim - len(axes)
        return x.transpose(axes if not lead else tuple(range(lead)) + tuple(lead + a for a in axes))
    def vjp(g, out, x, axes):
        inverse = [0] * len(axes)
        for i, a in enumerate(axes):
            inverse[a] = i
        return (g.transpose(tuple(inverse)),)


@primitive(linear=True, view=True)
class broadcast_to:  # old: the input's shape
    def forward(x, shape, old):
        lead = x.shape[: x.ndim - len(old)]
        x = x.reshape(lead + (1,) * (len(shape) - len(old)) + old)
        return B.xp.broadcast_to(x, lead + shape)
    def vjp(g, out, x, shape, old): return (g.sum_to(old),)


@primitive(linear=True)
class getitem:  # out = x[index]; old: the input's shape
    def forward(x, index, old): return x[_lead(x, len(old)) + index]
    def jvp(primals, tangents, out, index, old):
        # a slice of a flat (1-D) vector whose tangent is zero in every direction
        # is a symbolic zero (None): unit directions on one parameter block (dense
        # Hessians, diagonals, group products) then skip every product with the
        # other blocks' tangents
        t = tangents[0][_lead(tangents[0], len(old)) + index]
        if len(old) == 1 and t.size:
            live = known_live(tangents[0])
            if live is ALL_LIVE:  # dense directions: every slice is live
                remember_live(t, ALL_LIVE)
                return t
            if live is None or not all(map(on_host, index)):  # ask the device (one sync per slice)
                return t if B.to_host(B.xp.any(t)) else None
            live = live[index]
            if not live.any():
                return None
            remember_live(t, live)
        return t
    def vjp(g, out, x, index, old): return (scatter_add(g, index=index, shape=old, src=g.shape),)
    def accumulate(buf, g, values, index, old): _sum_into(buf, g.data, g.tangent, values, index)


def _sum_into(buf, data, tangent, values, index):  # getitem's vjp summed in place into x's gradient buffer
    # (backward passes that are not recorded): no full-size scatter per slice of a flat vector
    advanced = not (len(index) == 1 and type(index[0]) is slice) and any(map(_is_advanced, index))
    if values:
        _add_at(buf.data, index, data, advanced)
    if tangent is not None:
        if buf.tangent is None:  # (a flat θ's: C order; else the slice's, as a batch-last activation's, so
            shape = (tangent.shape[0],) + buf.data.shape  # that no element-wise add mixes two orders)
            buf.tangent = B.xp.zeros(shape, tangent.dtype) if buf.data.ndim == 1 else B.xp.zeros_like(tangent, shape=shape)
        _add_at(buf.tangent, (slice(None),) + index, tangent, advanced)


def _add_at(target, index, values, advanced):
    if advanced:  # repeated indices add up
        return B.xp.add.at(target, index, values)
    target[index] += values


@primitive(linear=True)
class scatter_add:  # out = zeros(shape); out[index] += g  (the transpose of getitem)
    def forward(g, index, shape, src):
        lead = _lead(g, len(src))
        out = B.xp.zeros(g.shape[: len(lead)] + shape, dtype=g.dtype)
        if any(_is_advanced(i) for i in index):
            B.xp.add.at(out, lead + index, g)
        else:
            out[lead + index] = g
        return out
    def vjp(g, out, x, index, shape, src): return (getitem(g, index=index, old=shape),)


def _is_advanced(i):
    return i.__class__ is not slice and hasattr(i, "dtype") and (i.ndim > 0 or i.dtype == bool)


@primitive(linear=True)
class pad:  # constant padding; widths: one (before, after) pair per input axis; value: the constant
    # (affine when value != 0; "linear" holds for what the flag is read for: its vjp, a slice of g)
    def forward(x, widths, value=0.0):
        return B.xp.pad(x, ((0, 0),) * (x.ndim - len(widths)) + widths, constant_values=value)
    def jvp(primals, tangents, out, widths, value=0.0): return pad.forward(tangents[0], widths)  # d(constant) = 0
    def vjp(g, out, x, widths, value=0.0):
        return (g[tuple(slice(a, a + n) for (a, _), n in zip(widths, x.shape))],)


@primitive(linear=True)
class concatenate:  # axis: one negative axis
    def forward(*xs, axis): return B.xp.concatenate(xs, axis=axis)
    def vjp(g, out, *xs, axis):
        pos, start, pieces = g.ndim + axis, 0, []
        for x in xs:
            n = x.shape[axis]
            pieces.append(g[(slice(None),) * pos + (slice(start, start + n),)])
            start += n
        return tuple(pieces)


# ---------------------------------------------------------------- convolution patches (linear pair)


@primitive(linear=True)
class im2col:  # (N, C, H, W) -> patches (N, OH, OW, C, kh, kw) of the zero-padded input
    def forward(x, kernel, stride, padding): return kernels.im2col(x, kernel, stride, padding)
    def vjp(g, out, x, kernel, stride, padding):
        return (col2im(g, kernel=kernel, stride=stride, padding=padding, shape=x.shape[-3:]),)


@primitive(linear=True)
class col2im:  # the transpose of im2col: add every patch back at its place; shape: (C, H, W)
    def forward(cols, kernel, stride, padding, shape): return kernels.col2im(cols, kernel, stride, padding, shape)
    def vjp(g, out, cols, kernel, stride, padding, shape):
        return (im2col(g, kernel=kernel, stride=stride, padding=padding),)
