"""Tensor, the one place where primitives are applied, and the backward pass.

Three modes share one rule table (``primitives.py``):

* reverse: ``loss.backward()`` walks the recorded graph in reverse topological
  order and accumulates ``.grad`` on the leaves;
* forward: a leaf made with ``tangent=V`` (shape ``(K, *shape)``) pushes K
  directions at once; every result carries ``.tangent`` of shape ``(K, *shape)``;
* forward-over-reverse: because vjp rules are written with Tensor operations,
  a backward pass over tensors that carry tangents produces gradients that
  carry tangents too: ``x.grad.tangent == H @ V``.

``backward(create_graph=True)`` records the backward pass itself, the
independent reverse-over-reverse route to second derivatives.
"""
from __future__ import annotations

import contextlib
import itertools

from . import backend as B
from .graph import in_place_target, reachable, values_skippable
from .guard import check_labels
from .shapes import ALL_AXES as _all_axes, axes as _axes, is_int as _is_int, resolve_shape as _resolve_shape

_grad_enabled = True
_tangents_enabled = True
_values_skipped = False  # inside a tangents-only vjp: results that carry a tangent get zeros as values
_kink_margins: list | None = None
_sequence = itertools.count()  # creation order of recorded tensors


@contextlib.contextmanager
def no_grad():
    """Run operations without recording a graph (tangents still propagate)."""
    global _grad_enabled
    old, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = old


@contextlib.contextmanager
def no_tangent():
    """Run operations without pushing tangents to their results (the graph is
    still recorded and the inputs keep theirs). For a final loss whose own
    directional derivative nobody reads: its vjp sees the inputs' tangents,
    so forward-over-reverse products are unchanged."""
    global _tangents_enabled
    old, _tangents_enabled = _tangents_enabled, False
    try:
        yield
    finally:
        _tangents_enabled = old


def _set_grad_enabled(flag: bool) -> bool:
    global _grad_enabled
    old, _grad_enabled = _grad_enabled, flag
    return old


@contextlib.contextmanager
def kink_monitor():
    """Collect, per direction, the step along the tangent at which a kink
    (ReLU, abs, maximum, max) would first be crossed, to first order.

    Yields a list; after the block its entries are arrays of shape (K,)."""
    global _kink_margins
    old, _kink_margins = _kink_margins, []
    try:
        yield _kink_margins
    finally:
        _kink_margins = old


class Tensor:
    """An ``xp`` array with an optional tangent (forward mode) and an optional
    node in the recorded graph (reverse mode)."""

    __slots__ = ("data", "tangent", "grad", "requires_grad", "_node", "__weakref__")
    __array_ufunc__ = None  # make `ndarray op Tensor` defer to Tensor's reflected op

    def __init__(self, data, requires_grad: bool = False, tangent=None, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = B.asarray(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node = None
        self.tangent = None
        if tangent is not None:
            self.tangent = _check_tangent(B.asarray(tangent, self.data.dtype), self.data.shape)

    @classmethod
    def _make(cls, data, tangent, node):
        t = cls.__new__(cls)
        t.data, t.tangent, t._node, t.grad = data, tangent, node, None
        t.requires_grad = node is not None
        return t

    # ---- introspection -------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        parts = [f"shape={self.shape}", f"dtype={self.dtype}"]
        if self._node is not None:
            parts.append(f"op={self._node[0].name}")
        elif self.requires_grad:
            parts.append("requires_grad=True")
        if self.tangent is not None:
            parts.append(f"directions={self.tangent.shape[0]}")
        body = B.to_host(self.data)
        text = repr(body) if body.size <= 8 else f"[{body.min():.4g} .. {body.max():.4g}]"
        return f"Tensor({text}, {', '.join(parts)})"

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item: tensor of shape {self.shape} has {self.data.size} elements, not 1")
        return self.data.item()

    def numpy(self):
        """Explicit host copy of the data (a NumPy array)."""
        return B.to_host(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __array__(self, dtype=None, copy=None):
        # np.asarray(t): the plain values, only when no directions would be lost
        if self.tangent is not None:
            raise TypeError(
                f"np.asarray: this tensor carries a tangent of {self.tangent.shape[0]} direction(s), which "
                f"an array cannot hold; use t.numpy() for the values and t.tangent for the directions"
            )
        host = B.to_host(self.data)
        return host if dtype is None else host.astype(dtype, copy=False)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"np.{func.__name__} was given a Tensor: NumPy functions record no derivatives; use the "
            f"Tensor's own operation (t.sum(), t.exp(), t.reshape(...), ...) or np.asarray(t) for the values"
        )

    def detach(self) -> "Tensor":
        """The same data with no graph and no tangent."""
        return Tensor._make(self.data, None, None)

    # ---- reverse mode ----------------------------------------------------
    def backward(self, grad=None, retain_graph: bool | None = None, create_graph: bool = False,
                 tangents_only: bool = False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that
        requires grad. ``create_graph=True`` records the backward pass, so the
        gradients can be differentiated again (reverse-over-reverse).

        ``tangents_only=True``: only the gradients' tangents (H·V) are read, so
        products whose values would reach nothing but the leaves' gradient
        values are not computed (see :func:`tinygrad2.graph.values_skippable`); every
        ``leaf.grad.tangent`` is exact, ``leaf.grad.data`` is not the gradient
        (it may be a read-only view of zeros)."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not depend on any tensor with requires_grad=True"
            )
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward: grad can be implied only for a scalar, got shape {self.shape}; "
                    f"pass grad= of that shape"
                )
            grad = Tensor._make(B.xp.ones(self.data.shape, self.data.dtype), None, None)
        elif not isinstance(grad, Tensor):
            grad = Tensor(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad shape {grad.shape} != tensor shape {self.shape}")
        if retain_graph is None:
            retain_graph = create_graph
        nodes, leaves = reachable(self)
        nodes.sort(key=_sequence_number)  # creation order is topological; pop() takes the newest
        grads = {id(self): grad}
        skippable = values_skippable(nodes) if tangents_only and not create_graph else ()
        buffers = {}  # id(x) -> the gradient buffer of x that x's slices are summed into in place
        old = _set_grad_enabled(create_graph)
        try:
            while nodes:
                # popped, a tensor is freed as soon as the nodes that consumed it are done
                t = nodes.pop()
                key = id(t)
                g = grads.pop(key, None)
                if g is None:
                    continue
                if buffers:
                    buffers.pop(key, None)
                prim, inputs, params, number = t._node
                if inputs is None:
                    raise RuntimeError(
                        f"backward: the graph through '{prim.name}' was freed by an earlier "
                        f"backward(); call backward(retain_graph=True) the first time"
                    )
                if prim.accumulate is not None and not create_graph and (place := in_place_target(t)) is not None:
                    x, index, shape = place
                    if x.requires_grad:  # (in a tangents-only pass, the tangent alone where the values are skipped)
                        prim.accumulate(_own_buffer(grads, buffers, x, g.dtype), g, key not in skippable, index, shape)
                    cotangents = ()
                elif key in skippable:
                    cotangents = _without_values(prim.vjp, g, t, *inputs, **params)
                else:
                    cotangents = prim.vjp(g, t, *inputs, **params)
                for x, c in zip(inputs, cotangents):
                    if c is None or not x.requires_grad:
                        continue
                    if c.data.shape != x.data.shape:
                        c = _without_values(c.sum_to, x.data.shape) if key in skippable else c.sum_to(x.data.shape)
                    prev = grads.get(id(x))
                    grads[id(x)] = c if prev is None else prev + c
                if not retain_graph:
                    t._node = (prim, None, None, number)  # (its params too: a cross-entropy's saved arrays)
            for leaf in leaves:
                g = grads.get(id(leaf))
                if g is not None:
                    leaf.grad = g if leaf.grad is None else leaf.grad + g
        finally:
            _set_grad_enabled(old)

    # ---- operators and methods (bodies in primitives.py) -------------------
    def __add__(self, other): return P.add(self, _lift(other, self))
    def __radd__(self, other): return P.add(_lift(other, self), self)
    def __sub__(self, other): return P.sub(self, _lift(other, self))
    def __rsub__(self, other): return P.sub(_lift(other, self), self)
    def __mul__(self, other): return P.mul(self, _lift(other, self))
    def __rmul__(self, other): return P.mul(_lift(other, self), self)
    def __truediv__(self, other): return P.div(self, _lift(other, self))
    def __rtruediv__(self, other): return P.div(_lift(other, self), self)
    def __neg__(self): return P.neg(self)
    def __matmul__(self, other): return _matmul(self, _lift(other, self))
    def __rmatmul__(self, other): return _matmul(_lift(other, self), self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return (exponent * self.log()).exp()
        return P.power(self, exponent=exponent)

    def __rpow__(self, base):
        return (self * B.xp.log(B.asarray(base, self.dtype))).exp()

    # comparisons: not differentiable, return boolean Tensors
    def __lt__(self, other): return Tensor._make(self.data < _raw(other), None, None)
    def __le__(self, other): return Tensor._make(self.data <= _raw(other), None, None)
    def __gt__(self, other): return Tensor._make(self.data > _raw(other), None, None)
    def __ge__(self, other): return Tensor._make(self.data >= _raw(other), None, None)
    def __eq__(self, other): return Tensor._make(self.data == _raw(other), None, None)
    def __ne__(self, other): return Tensor._make(self.data != _raw(other), None, None)
    __hash__ = object.__hash__

    def exp(self): return P.exp(self)
    def sin(self): return P.sin(self)
    def cos(self): return P.cos(self)
    def log(self): return P.log(self)
    def tanh(self): return P.tanh(self)
    def sigmoid(self): return P.sigmoid(self)
    def relu(self): return P.relu(self)
    def softplus(self): return P.softplus(self)
    def sqrt(self): return P.sqrt(self)
    def abs(self): return P.abs(self)
    def maximum(self, other): return P.maximum(self, _lift(other, self))

    def sum(self, axis=None, keepdims=False):
        return P.sum(self, axis=_axes(axis, self.ndim, "sum"), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        axes = _axes(axis, self.ndim, "mean")
        count = 1
        for a in axes:
            count *= self.shape[a]
        return P.sum(self, axis=axes, keepdims=keepdims) * (1.0 / max(count, 1))

    def max(self, axis=None, keepdims=False):
        return P.max(self, axis=_axes(axis, self.ndim, "max"), keepdims=keepdims)

    def logsumexp(self, axis=None, keepdims=False):
        return P.logsumexp(self, axis=_axes(axis, self.ndim, "logsumexp"), keepdims=keepdims)

    def log_softmax(self, axis=-1):
        (a,) = _axes(axis, self.ndim, "log_softmax")
        return P.log_softmax(self, axis=a)

    def cross_entropy(self, labels):
        """Mean softmax cross-entropy of logits ``self`` (n, C) with integer
        labels (n,): mean_i [logsumexp(z_i) - z_i,y_i], one fused primitive."""
        labels = check_labels(_raw(labels), self.shape, "cross_entropy")
        return P.cross_entropy(self, labels=labels, saved={} if _grad_enabled and self.requires_grad else None)

    def softmax(self, axis=-1):
        return self.log_softmax(axis).exp()

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        old = self.data.shape
        shape = _resolve_shape(shape, old)
        if shape == old:
            return self
        return P.reshape(self, shape=shape, old=old)

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(range(self.ndim - 1, -1, -1))
        if sorted(a % max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation for shape {self.shape}")
        return P.transpose(self, axes=tuple(a % self.ndim for a in axes))

    T = property(lambda self: self.transpose())
    @property
    def mT(self):  # (a plain view where nothing is recorded or pushed: matmul's vjp in a gradient's backward)
        if self.ndim == 2:
            return Tensor._make(self.data.T, None, None) if self.tangent is None and not _grad_enabled else P.transpose(
                self, axes=(1, 0))
        return self.swapaxes(-1, -2)

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return P.transpose(self, axes=tuple(axes))

    def broadcast_to(self, shape):
        shape = tuple(shape)
        if shape == self.shape:
            return self
        try:
            B.xp.broadcast_shapes(self.shape, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.shape} to {shape}") from None
        return P.broadcast_to(self, shape=shape, old=self.shape)

    def sum_to(self, shape):
        """Sum over broadcast axes so that the result has ``shape`` (the
        reverse of ``broadcast_to``)."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        lead = self.ndim - len(shape)
        if lead < 0:
            raise ValueError(f"sum_to: cannot reduce shape {self.shape} to the larger {shape}")
        if self.shape[lead:] == shape:  # only leading axes to reduce: one sum (plainly where nothing is recorded or pushed)
            if self.tangent is None and not _grad_enabled:
                return Tensor._make(P.reduce(B.xp.sum, self.data, _all_axes[self.ndim][:lead]), None, None)
            return P.sum(self, axis=_all_axes[self.ndim][:lead], keepdims=False)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, s in enumerate(shape) if s == 1 and self.shape[lead + i] != 1
        )
        out = P.sum(self, axis=tuple(a - self.ndim for a in axes), keepdims=True) if axes else self
        return out.reshape(shape)

    def __getitem__(self, index):
        if type(index) is slice:  # the common case (a flat θ's parameters): nothing to normalise
            return P.getitem(self, index=(index,), old=self.data.shape)
        index = _normalize_index(index, self.shape)
        if any(P._is_advanced(i) for i in index) and any(_is_int(i) for i in index):
            # beside an array index NumPy treats an int as advanced too, which would move the
            # direction axis; index with a length-1 slice instead and drop the axis afterwards
            shape = B.xp.broadcast_to(B.xp.empty((), bool), self.shape)[index].shape
            index = tuple(slice(i, i + 1 if i != -1 else None) if _is_int(i) else i for i in index)
            return P.getitem(self, index=_normalize_index(index, self.shape), old=self.shape).reshape(shape)
        return P.getitem(self, index=index, old=self.shape)

    def pad(self, pad_width, value=0.0):
        """Constant padding (zeros unless ``value``, e.g. -inf for max-pooling);
        ``pad_width`` as in ``numpy.pad``: one (before, after) pair per axis."""
        widths = tuple((int(a), int(b)) for a, b in pad_width)
        if len(widths) != self.ndim or any(a < 0 or b < 0 for a, b in widths):
            raise ValueError(f"pad: pad_width {pad_width} does not fit shape {self.shape}")
        return P.pad(self, widths=widths, value=float(value))

    @staticmethod
    def concatenate(tensors, axis=0):
        tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
        if not tensors:
            raise ValueError("concatenate: need at least one tensor")
        ndim = tensors[0].ndim
        shapes = [t.shape for t in tensors]
        (a,) = _axes(axis, ndim, "concatenate")
        a += ndim
        for s in shapes:
            if len(s) != ndim or s[:a] + s[a + 1 :] != shapes[0][:a] + shapes[0][a + 1 :]:
                raise ValueError(f"concatenate: shapes {shapes} do not match off axis {axis}")
        return P.concatenate(*tensors, axis=a - ndim)

    @staticmethod
    def stack(tensors, axis=0):
        tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
        shapes = {t.shape for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"stack: all shapes must be equal, got {sorted(shapes)}")
        ndim = tensors[0].ndim + 1
        (a,) = _axes(axis, ndim, "stack")
        a += ndim
        expanded = [t.reshape(t.shape[:a] + (1,) + t.shape[a:]) for t in tensors]
        return Tensor.concatenate(expanded, axis=a)

    @staticmethod
    def where(condition, a, b):
        cond = _raw(condition).astype(bool)
        if not isinstance(a, Tensor):
            a = _lift(a, b) if isinstance(b, Tensor) else Tensor(a)
        b = _lift(b, a)
        return P.where(a, b, cond=cond)


def _sequence_number(t):
    return t._node[3]


def _without_values(vjp, *args, **params):
    global _values_skipped
    old, _values_skipped = _values_skipped, True
    try:
        return vjp(*args, **params)
    finally:
        _values_skipped = old


def _own_buffer(grads, buffers, x, dtype):
    """The gradient buffer of x that in-place rules (``Primitive.accumulate``)
    sum into: one buffer per x, shared by every slice of x (the flat-theta
    case: one slice per parameter), never shared with another gradient."""
    buf = grads.get(id(x))
    if buf is None or buffers.get(id(x)) is not buf:
        # a fresh buffer that x alone owns, holding what x has collected so far (a
        # cotangent from another rule may be shared, e.g. add passes g to both inputs),
        # in the memory order of x, so that the rules before do not mix two orders
        if buf is None:
            data = x.data
            zeros = B.xp.zeros(data.shape, dtype) if data.flags.c_contiguous else B.xp.zeros_like(data, dtype=dtype)
            buf = Tensor._make(zeros, None, None)
        else:
            tangent = None if buf.tangent is None else buf.tangent.astype(dtype, copy=True)
            buf = Tensor._make(buf.data.astype(dtype, copy=True), tangent, None)
        grads[id(x)] = buf
        buffers[id(x)] = buf
    return buf


def _check_tangent(tangent, shape):
    if tangent.shape == shape:
        return tangent[None]
    if tangent.shape[1:] != shape:
        raise ValueError(
            f"Tensor: tangent of shape {tangent.shape} does not fit data of shape {shape}; "
            f"expected {shape} or (K, *{shape})"
        )
    return tangent


def _lift(value, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)):
        return Tensor._make(B.xp.asarray(value, dtype=like.data.dtype), None, None)
    return Tensor(value)


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def _normalize_index(index, shape):
    """Tensors and lists in an index become arrays; advanced indices must be
    adjacent so that a leading direction axis stays in front."""
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for i in index:
        if isinstance(i, Tensor):
            i = i.data
        elif isinstance(i, list) or (B.xp is not B.numpy and isinstance(i, B.numpy.ndarray) and i.ndim):
            i = B.xp.asarray(i)  # a host index array goes to the device once (its backward scatters with it)
        out.append(i)
    advanced = [k for k, i in enumerate(out) if P._is_advanced(i)]
    if advanced and advanced[-1] - advanced[0] != len(advanced) - 1:
        raise NotImplementedError(
            f"getitem: advanced indices at positions {advanced} are not adjacent (shape {shape})"
        )
    return tuple(out)


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with NumPy's rules for 1-D operands, built on the 2-D+ primitive."""
    sa, sb = a.data.shape, b.data.shape
    if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0]:
        return P.matmul(a, b)
    if not sa or not sb:
        raise ValueError(f"matmul: lhs {sa} @ rhs {sb}: operands must be at least 1-D")
    inner_b = sb[-2] if len(sb) > 1 else sb[0]
    if sa[-1] != inner_b:
        raise ValueError(f"matmul: lhs {sa} @ rhs {sb}: inner dims {sa[-1]} != {inner_b}")
    try:
        B.xp.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: lhs {sa} @ rhs {sb}: batch dims {sa[:-2]} and {sb[:-2]} do not broadcast"
        ) from None
    a2 = a.reshape(1, sa[0]) if len(sa) == 1 else a
    b2 = b.reshape(sb[0], 1) if len(sb) == 1 else b
    out = P.matmul(a2, b2)
    if len(sa) == 1:
        out = out.reshape(out.shape[:-2] + out.shape[-1:])
    if len(sb) == 1:
        out = out.reshape(out.shape[:-1])
    return out


def apply(prim, *inputs, **params):
    """Run one primitive: forward, the jvp when any input carries a tangent,
    and a graph node when recording and any input requires grad."""
    datas = [x.data for x in inputs]
    t = Tensor.__new__(Tensor)
    t.grad = t.tangent = t._node = None
    t.requires_grad = False
    carried = False
    if _tangents_enabled:
        for x in inputs:
            if x.tangent is not None:
                carried = True
                break
    if not carried:
        t.data = _forward(prim, datas, params)
    elif not _values_skipped and prim.forward_and_jvp is not None and (
            both := _forward(prim, datas, params, [x.tangent for x in inputs])) is not None:
        t.data, t.tangent = both  # one rule for both (the jvp would repeat the forward's work); None: the two rules
    else:
        # a tangents-only vjp skips the values of what it computes, but not of views (free, and read by matmul's vjp)
        out = _forward(prim, datas, params) if prim.view or not _values_skipped else None
        t.tangent = _push_tangents(prim, inputs, datas, out, params)
        if out is None:  # a value nobody reads (Tensor.backward(tangents_only=True)): a read-only zero view
            out = _forward(prim, datas, params) if t.tangent is None else B.xp.broadcast_to(
                B.xp.zeros((), t.tangent.dtype), t.tangent.shape[1:])
        t.data = out
    if _grad_enabled:
        for x in inputs:
            if x.requires_grad:
                t._node, t.requires_grad = (prim, inputs, params, next(_sequence)), True
                break
    return t


def _forward(prim, datas, params, tangents=None):
    """prim's forward rule (given tangents, its ``forward_and_jvp``); a
    NumPy/CuPy error names the primitive and the input shapes."""
    try:
        return prim.forward(*datas, **params) if tangents is None else prim.forward_and_jvp(datas, tangents, **params)
    except (ValueError, TypeError, IndexError) as err:
        shapes = ", ".join(str(d.shape) for d in datas)
        raise type(err)(f"{prim.name}: inputs of shapes {shapes}: {err}") from None


def _push_tangents(prim, inputs, datas, out, params):
    tangents = [x.tangent for x in inputs]
    k = None
    for tan in tangents:
        if tan is not None:
            if k is None:
                k = tan.shape[0]
            elif tan.shape[0] != k:
                raise ValueError(
                    f"{prim.name}: tangents carry different numbers of directions ({k} and {tan.shape[0]})"
                )
    if prim.broadcasts:  # align each tangent to the output's number of dims
        nd = (out.ndim if out is not None else max(d.ndim for d in datas)) + 1  # out: None if skipped
        tangents = [
            tan if tan is None or tan.ndim == nd else tan.reshape((k,) + (1,) * (nd - tan.ndim) + tan.shape[1:])
            for tan in tangents
        ]
    try:
        tangent = prim.jvp(datas, tangents, out, **params)
    except (ValueError, TypeError, IndexError) as err:
        shapes = ", ".join(str(None if tan is None else tan.shape) for tan in tangents)
        raise type(err)(f"{prim.name}: jvp with tangents of shapes {shapes}: {err}") from None
    if tangent is not None and out is not None and tangent.shape[1:] != out.shape:
        tangent = B.xp.broadcast_to(tangent, (k,) + out.shape)
    if _kink_margins is not None and prim.kink is not None:
        _kink_margins.append(prim.kink(datas, tangents, out, **params))
    return tangent


from . import primitives as P  # noqa: E402  (primitives need Tensor defined first)
