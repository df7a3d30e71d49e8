"""The Objective: the one seam between models and optimizers.

An objective binds a loss to data and exposes, on a flat parameter vector
``theta`` (an ``xp`` array of length n), everything a first- or second-order
optimizer asks for:

=====================  ====================================================
``loss(theta)``        f(θ), a float
``grad(theta)``        ∇f(θ), (n,)
``loss_and_grad``      both from one forward and one backward pass
``hvp(theta, V)``      H V, V (n,) or (K, n): forward-over-reverse, one pass
``ggn_vp(theta, V)``   G V = Jᵀ H_z J V (generalized Gauss-Newton), one pass
``hessian``, ``ggn``   dense (n, n), assembled from chunks of the identity
``hessian_diag``       diag(H): exact (unit vectors) or Hutchinson (Rademacher)
``block_row_sums``     H_gg · 1 for one parameter group g (what SGD-PH uses)
``block_diag``         diag(H_gg), exact
=====================  ====================================================

The parameter structure (name, shape, kind and slice of every parameter) lives
in a :class:`Layout`, so structure-aware methods can find, say, every 1-D
parameter without importing ``nets``.

Concrete objectives:

* :class:`Objective` — a model ``model_fn(theta, X) -> outputs`` and a loss
  ("cross_entropy", "mse" or a callable) on a batch (X, y);
* :class:`Quadratic`, :class:`Rosenbrock`, :class:`LogisticRegression` —
  closed-form test problems on the same interface, so an optimizer is tested
  on them exactly as it runs on a network;
* :class:`Function` — any scalar Tensor function of theta.

Dense curvature is guarded by a memory forecast: before allocating, ``hessian``,
``ggn``, the exact diagonals and Hutchinson estimate the bytes they need and
raise :class:`CurvatureMemoryError` if that exceeds the budget
(``memory_budget=`` per objective, else the module's ``default_memory_budget``).

Evaluation counts are kept in ``objective.counts`` (a plain dict: ``nfev``,
``ngev``, ``nhvp``, ``nggnvp``; products count one per direction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import backend as B
from .tensor import Tensor, no_tangent

default_memory_budget = 2 * 2**30
"""Bytes that a dense curvature computation may use when an objective has no
``memory_budget`` of its own (2 GiB). Change it here for the whole session."""

default_chunk = 256
"""The most directions per batched pass when assembling dense curvature."""

min_chunk = 16
"""The fewest directions per batched pass that the automatic choice prefers:
on a CPU the time per direction is within about 10% of its best from 16
directions up (the products are already BLAS-3), so larger chunks mostly
cost memory."""


# ================================================================ layout


@dataclass(frozen=True)
class Param:
    """One parameter inside flat theta: ``theta[slice].reshape(shape)``.

    ``kind`` is a free string ("weight", "bias", "scale", "shift", ...) that
    structure-aware optimizers select on."""

    name: str
    shape: tuple
    kind: str
    slice: slice

    size = property(lambda self: math.prod(self.shape))
    ndim = property(lambda self: len(self.shape))

    def __repr__(self):
        return f"Param({self.name!r}, shape={self.shape}, kind={self.kind!r}, [{self.slice.start}:{self.slice.stop}])"


class Layout:
    """Ordered parameters tiling a flat vector of length ``n``.

    ``Layout([("W1", (64, 32), "weight"), ("b1", (32,), "bias"), ...])``; the
    kind may be left out: "weight" for 2-D and higher, "bias" otherwise.
    Parameters are laid out back to back in the given order (row-major
    inside each), so their slices tile [0, n) exactly."""

    def __init__(self, params):
        self.params, start = [], 0
        for spec in params:
            if isinstance(spec, Param):
                spec = (spec.name, spec.shape, spec.kind)
            name, shape = spec[0], tuple(int(s) for s in spec[1])
            if any(s < 0 for s in shape):
                raise ValueError(f"Layout: parameter {name!r} has a negative dimension in shape {shape}")
            kind = spec[2] if len(spec) > 2 else ("weight" if len(shape) >= 2 else "bias")
            size = math.prod(shape)
            self.params.append(Param(str(name), shape, str(kind), slice(start, start + size)))
            start += size
        self.n = start
        self._by_name = {p.name: p for p in self.params}
        if len(self._by_name) != len(self.params):
            raise ValueError(f"Layout: parameter names must be unique, got {[p.name for p in self.params]}")

    @classmethod
    def single(cls, n, name="theta", kind="flat"):
        """One flat parameter of length n."""
        return cls([(name, (int(n),), kind)])

    def __len__(self):
        return len(self.params)

    def __iter__(self):
        return iter(self.params)

    def __contains__(self, name):
        return name in self._by_name

    def __getitem__(self, name) -> Param:
        if isinstance(name, Param):
            name = name.name
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"Layout: no parameter named {name!r}; have {self.names}") from None

    names = property(lambda self: [p.name for p in self.params])
    kinds = property(lambda self: sorted({p.kind for p in self.params}))

    def groups(self, kind=None, ndim=None):
        """The parameters whose kind is ``kind`` (a string or a collection of
        strings) and whose number of dimensions is ``ndim`` (None: any).
        ``groups(ndim=1)`` lists every 1-D parameter (biases, BN scale/shift)."""
        kinds = None if kind is None else {kind} if isinstance(kind, str) else set(kind)
        return [
            p for p in self.params
            if (kinds is None or p.kind in kinds) and (ndim is None or p.ndim == ndim)
        ]

    def unflatten(self, theta):
        """{name: theta[slice] reshaped}: views of an ``xp`` array, or
        differentiable slices of a Tensor (use inside ``model_fn``)."""
        if theta.shape != (self.n,):
            raise ValueError(f"Layout.unflatten: theta has shape {theta.shape}, expected ({self.n},)")
        return {p.name: theta[p.slice].reshape(p.shape) for p in self.params}

    def flatten(self, parts):
        """The flat (n,) ``xp`` array from {name: array} or a sequence of
        arrays in layout order."""
        if isinstance(parts, dict):
            missing = [p.name for p in self.params if p.name not in parts]
            if missing:
                raise ValueError(f"Layout.flatten: missing parameters {missing}")
            parts = [parts[p.name] for p in self.params]
        parts = [B.asarray(a.data if isinstance(a, Tensor) else a) for a in parts]
        if len(parts) != len(self.params):
            raise ValueError(f"Layout.flatten: got {len(parts)} arrays for {len(self.params)} parameters")
        for p, a in zip(self.params, parts):
            if tuple(a.shape) != p.shape:
                raise ValueError(f"Layout.flatten: parameter {p.name!r} has shape {a.shape}, expected {p.shape}")
        if not parts:
            return B.xp.zeros((0,), B.default_dtype)
        return B.xp.concatenate([a.reshape(-1) for a in parts])

    def indicator(self, name, dtype=None):
        """The (n,) vector that is 1 on parameter ``name`` and 0 elsewhere."""
        p = self[name]
        v = B.xp.zeros((self.n,), dtype or B.default_dtype)
        v[p.slice] = 1
        return v

    def __repr__(self):
        body = ", ".join(f"{p.name}{p.shape}:{p.kind}" for p in self.params)
        return f"Layout(n={self.n}; {body})"


# ================================================================ helpers


class CurvatureMemoryError(MemoryError):
    """A dense curvature computation would exceed the memory budget.

    Raised before anything large is allocated. Attributes: ``n`` (parameters),
    ``needed`` and ``budget`` (bytes)."""

    def __init__(self, message, n, needed, budget):
        super().__init__(message)
        self.n, self.needed, self.budget = n, needed, budget


def _bytes(b):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.2f} {unit} ({int(b):,} bytes)"
    return f"{int(b):,} bytes"


def rademacher(shape, seed=None, dtype=None):
    """Random signs ±1 with probability ½ each.

    Drawn as integers in {0, 1} -- ``integers(0, 2)``: the upper bound is
    exclusive -- then mapped by 2b - 1. (``randint(0, 1) * 2 - 1``, as one
    widely used package writes it, is always -1.) ``seed``: an int, None, or
    a generator with ``integers``/``randint``."""
    rng = _generator(seed)
    draw = getattr(rng, "integers", None) or rng.randint
    bits = draw(0, 2, size=shape)
    return (2 * bits - 1).astype(dtype or B.default_dtype)


def _generator(seed):
    if hasattr(seed, "integers") or hasattr(seed, "randint"):
        return seed
    if hasattr(B.xp.random, "default_rng"):
        return B.xp.random.default_rng(seed)
    return B.xp.random.RandomState(seed)


def _unit_rows(start, stop, n, dtype):
    """Rows start..stop-1 of the n x n identity, shape (stop - start, n)."""
    E = B.xp.zeros((stop - start, n), dtype)
    E[B.xp.arange(stop - start), B.xp.arange(start, stop)] = 1
    return E


def _graph_elements(root):
    """Total number of elements of every recorded intermediate behind
    ``root`` (the activations a pass keeps alive; leaves and constants not
    counted)."""
    total, seen, stack = 0, {id(root)}, [root]
    while stack:
        t = stack.pop()
        node = t._node
        if node is None:
            continue
        total += t.data.size
        for x in node[1] or ():
            if x.requires_grad and id(x) not in seen:
                seen.add(id(x))
                stack.append(x)
    return total


# ================================================================ the shared interface


class BaseObjective:
    """Everything that follows from a scalar Tensor function of flat theta.

    A subclass defines ``_scalar(theta: Tensor) -> scalar Tensor`` (and, where
    a Gauss-Newton matrix exists, ``ggn_vp``); loss, gradient, forward-over-
    reverse HVPs, dense Hessians, diagonals and group products come from here.
    """

    def __init__(self, layout, memory_budget=None, counts=None):
        self.layout = layout
        self.memory_budget = memory_budget
        self.counts = counts if counts is not None else {"nfev": 0, "ngev": 0, "nhvp": 0, "nggnvp": 0}
        self._probe = {}

    name = property(lambda self: type(self).__name__)
    n = property(lambda self: self.layout.n)

    def reset_counts(self):
        for key in self.counts:
            self.counts[key] = 0

    def _scalar(self, theta: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name}: a subclass must define _scalar(theta) -> scalar Tensor")

    # ---- argument checks -------------------------------------------------
    def _theta(self, theta, op):
        if isinstance(theta, Tensor):
            theta = theta.data
        theta = B.asarray(theta)
        if theta.ndim != 1 or theta.shape[0] != self.layout.n:
            raise ValueError(
                f"{self.name}.{op}: theta has shape {theta.shape}, expected ({self.layout.n},) "
                f"(the layout's n)"
            )
        if theta.dtype.kind != "f":
            raise TypeError(f"{self.name}.{op}: theta must be floating, got dtype {theta.dtype}")
        return theta

    def _directions(self, V, theta, op):
        """(K, n) directions in theta's dtype, and whether one (n,) was given."""
        V = B.asarray(V.data if isinstance(V, Tensor) else V, theta.dtype)
        n = theta.shape[0]
        if V.ndim == 1 and V.shape[0] == n:
            return V[None], True
        if V.ndim == 2 and V.shape[1] == n:
            return V, False
        raise ValueError(f"{self.name}.{op}: V has shape {V.shape} but theta has length {n}; expected ({n},) or (K, {n})")

    # ---- first order -------------------------------------------------------
    def loss(self, theta) -> float:
        """f(θ)."""
        theta = self._theta(theta, "loss")
        self.counts["nfev"] += 1
        return float(self._check_scalar(self._scalar(Tensor(theta)), "loss").item())

    def loss_and_grad(self, theta):
        """(f(θ), ∇f(θ)) from one forward and one backward pass."""
        self.counts["nfev"] += 1
        return self._value_and_grad(theta, "loss_and_grad")

    def grad(self, theta):
        """∇f(θ), shape (n,)."""
        return self._value_and_grad(theta, "grad")[1]

    def _value_and_grad(self, theta, op):
        theta = self._theta(theta, op)
        self.counts["ngev"] += 1
        th = Tensor(theta, requires_grad=True)
        out = self._check_scalar(self._scalar(th), op)
        if not out.requires_grad:  # f does not depend on theta
            return float(out.item()), B.xp.zeros_like(theta)
        out.backward()
        return float(out.item()), th.grad.data

    def _check_scalar(self, out, op):
        if not isinstance(out, Tensor) or out.size != 1:
            what = type(out).__name__ if not isinstance(out, Tensor) else f"shape {out.shape}"
            raise ValueError(f"{self.name}.{op}: the loss must be a scalar Tensor, got {what}")
        return out

    # ---- second order ------------------------------------------------------
    def hvp(self, theta, V):
        """H V by forward-over-reverse: seed θ with the tangent V (K directions),
        run the loss and its backward pass; the gradient comes out carrying

            ∇f(θ).tangent = d/dε ∇f(θ + ε v_k) |₀ = H v_k   for every row v_k.

        V: (n,) -> (n,); (K, n) -> (K, n)."""
        theta = self._theta(theta, "hvp")
        V, single = self._directions(V, theta, "hvp")
        self.counts["nhvp"] += V.shape[0]
        th = Tensor(theta, requires_grad=True, tangent=V)
        out = self._check_scalar(self._scalar(th), "hvp")
        HV = None
        if out.requires_grad:
            out.backward()
            HV = th.grad.tangent if th.grad is not None else None
        if HV is None:  # the gradient does not move along V
            HV = B.xp.zeros_like(V)
        return HV[0] if single else HV

    def ggn_vp(self, theta, V):
        """G V for the generalized Gauss-Newton matrix G = Jᵀ H_z J."""
        raise NotImplementedError(
            f"{self.name}.ggn_vp: no Gauss-Newton matrix is defined for {self.name} (it has no "
            f"model/loss split); use hvp, or write it as an Objective(model_fn, loss, X, y)"
        )

    def hessian(self, theta, chunk=None):
        """Dense H (n, n): rows k = H e_k, one batched HVP per chunk of unit
        vectors. Raises CurvatureMemoryError before allocating if the (n, n)
        result plus one chunk's working memory exceed the budget."""
        return self._dense(self.hvp, theta, chunk, "hessian")

    def ggn(self, theta, chunk=None):
        """Dense G = Jᵀ H_z J (n, n), from chunks of unit vectors through
        ``ggn_vp``; same memory forecast as ``hessian``."""
        return self._dense(self.ggn_vp, theta, chunk, "ggn")

    def _dense(self, product, theta, chunk, op):
        theta = self._theta(theta, op)
        n = theta.shape[0]
        chunk = self._plan(op, theta, n * n, n, chunk)
        M = B.xp.empty((n, n), theta.dtype)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            M[start:stop] = product(theta, _unit_rows(start, stop, n, theta.dtype))
        return M

    def hessian_diag(self, theta, method="exact", samples=100, seed=None, chunk=None):
        """The Hessian diagonal, (n,).

        * ``"exact"``: H_kk = e_kᵀ H e_k from batched HVPs on chunks of unit
          vectors (n directions in all; the (n, n) matrix is never formed).
        * ``"hutchinson"``: with Rademacher z (independent ±1 entries),
          E[z ⊙ Hz] = diag(H) because E[z_i z_j] = δ_ij; the estimate
          (1/S) Σ_s z_s ⊙ H z_s uses S = ``samples`` HVPs and its error falls
          like 1/√S (entry i has variance Σ_{j≠i} H_ij² / S).
          ``seed``: int, None or a generator."""
        theta = self._theta(theta, "hessian_diag")
        n = theta.shape[0]
        if method == "exact":
            chunk = self._plan("hessian_diag", theta, n, n, chunk)
            d = B.xp.empty((n,), theta.dtype)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                HE = self.hvp(theta, _unit_rows(start, stop, n, theta.dtype))
                d[start:stop] = HE[B.xp.arange(stop - start), B.xp.arange(start, stop)]
            return d
        if method == "hutchinson":
            samples = int(samples)
            if samples < 1:
                raise ValueError(f"{self.name}.hessian_diag: samples must be >= 1, got {samples}")
            chunk = self._plan("hessian_diag", theta, n, samples, chunk)
            rng, total = _generator(seed), B.xp.zeros((n,), theta.dtype)
            for start in range(0, samples, chunk):
                Z = rademacher((min(samples, start + chunk) - start, n), rng, theta.dtype)
                total += (Z * self.hvp(theta, Z)).sum(axis=0)
            return total / samples
        raise ValueError(f"{self.name}.hessian_diag: method must be 'exact' or 'hutchinson', got {method!r}")

    def block_row_sums(self, theta, name):
        """H_gg · 1 for parameter group g = ``name`` (flat, length |g|): one
        HVP with v = 1 on g and 0 elsewhere, restricted to g. This is what
        SGD-PH's official code computes; it equals diag(H_gg) only when the
        block is diagonal, which it is not in general (see ``block_diag``)."""
        theta = self._theta(theta, "block_row_sums")
        p = self.layout[name]
        return self.hvp(theta, self.layout.indicator(p.name, theta.dtype))[p.slice]

    def block_diag(self, theta, name, chunk=None):
        """diag(H_gg) for parameter group g = ``name`` (flat, length |g|),
        exact: |g| unit directions in chunks."""
        theta = self._theta(theta, "block_diag")
        p, n = self.layout[name], theta.shape[0]
        chunk = self._plan("block_diag", theta, p.size, p.size, chunk)
        d = B.xp.empty((p.size,), theta.dtype)
        for start in range(0, p.size, chunk):
            stop = min(p.size, start + chunk)
            rows = B.xp.arange(stop - start)
            E = _unit_rows(p.slice.start + start, p.slice.start + stop, n, theta.dtype)
            d[start:stop] = self.hvp(theta, E)[rows, p.slice.start + start + rows]
        return d

    # ---- memory forecast ------------------------------------------------
    def bytes_per_direction(self, theta):
        """Forecast working memory of one direction in a batched product:

            itemsize · (3 A + 4 n),

        A = elements of all recorded intermediates of one forward pass (each
        carries a K-direction tangent forward; the backward pass makes
        cotangents and their tangents of the same sizes), 4 n = the direction,
        the result, and the per-parameter cotangent pieces being summed. A is
        measured by one probe forward pass (cached per dtype; no tangents).
        Measured peaks of MLP Hessians (64-32-10 on 1,797 digits, K = 16
        and 32): 1.14-1.23 A per direction, tanh and ReLU alike (the backward
        pass frees each intermediate once its consumers are done), so the
        forecast errs on the safe side by about 2.5x."""
        theta = B.asarray(theta)
        key = theta.dtype.str
        if key not in self._probe:
            out = self._scalar(Tensor(theta, requires_grad=True))
            self._probe[key] = _graph_elements(out)
        return theta.dtype.itemsize * (3 * self._probe[key] + 4 * theta.shape[0])

    def _budget(self):
        return default_memory_budget if self.memory_budget is None else self.memory_budget

    def memory_forecast(self, theta, result_elements, directions, chunk=None):
        """(chunk, bytes needed) for a chunked computation whose result has
        ``result_elements`` entries.

        chunk None picks the directions per pass: enough that one chunk's
        forecast working memory is about half the result's size (at least
        64 MiB), so that the peak stays near 1.5x the result, but at least
        ``min_chunk`` and at most ``default_chunk`` (and ``directions``),
        rounded down to a multiple of 16, then cut down to what fits the
        budget (down to 1)."""
        theta = B.asarray(theta)
        result = result_elements * theta.dtype.itemsize
        cap = max(1, min(default_chunk, directions))
        if chunk is not None:
            chunk = int(chunk)
            if chunk < 1:
                raise ValueError(f"{self.name}: chunk must be >= 1, got {chunk}")
            return chunk, result + chunk * self.bytes_per_direction(theta)
        budget = self._budget()
        if result > budget:  # the result alone does not fit: no need to probe
            return 1, result
        per = max(self.bytes_per_direction(theta), 1)
        chunk = min(cap, max(min_chunk, int(max(result / 2, 64 * 2**20) // per)))
        if chunk > 16:
            chunk -= chunk % 16
        if budget != math.inf:
            chunk = max(1, min(chunk, int((budget - result) // per)))
        return chunk, result + chunk * per

    def _plan(self, op, theta, result_elements, directions, chunk):
        """The chunk to use, or CurvatureMemoryError before any allocation."""
        chunk, needed = self.memory_forecast(theta, result_elements, directions, chunk)
        budget = self._budget()
        if needed > budget:
            n = theta.shape[0]
            shape = f"({n}, {n})" if result_elements == n * n else f"({result_elements},)"
            what = (f"the {shape} {theta.dtype} result alone" if needed == result_elements * theta.dtype.itemsize
                    else f"the {shape} {theta.dtype} result plus one chunk of {chunk} direction(s)")
            raise CurvatureMemoryError(
                f"{self.name}.{op}: n = {n:,} parameters; needs about {_bytes(needed)} for "
                f"{what}, but the "
                f"memory budget is {_bytes(budget)}. Cheaper alternatives: hvp(theta, V) / ggn_vp "
                f"for products, hessian_diag(theta, method='hutchinson') for the diagonal, the "
                f"spectrum estimates (tinygrad2.spectrum: Lanczos, Hutchinson trace) for eigenvalues; "
                f"or a smaller chunk, or raise memory_budget= (this objective) / "
                f"tinygrad2.objective.default_memory_budget.",
                n, needed, budget,
            )
        return chunk

    def __repr__(self):
        return f"{self.name}(n={self.layout.n})"


# ================================================================ model + loss + batch

_LOSSES = ("cross_entropy", "mse")


class Objective(BaseObjective):
    """f(θ) = ℓ(model_fn(θ, X), y) on one batch.

    ``model_fn(theta, X)`` maps the flat parameter Tensor θ (n,) and the input
    Tensor X to the outputs z (slice θ with ``layout.unflatten(theta)``).
    ``loss``:

    * ``"cross_entropy"``: ℓ = (1/B) Σ_i [logsumexp(z_i) - z_{i,y_i}], z (B, C),
      y integer labels (B,) -- the fused primitive ``z.cross_entropy(y)``;
    * ``"mse"``: ℓ = (1/m) Σ (z - y)² over all m = z.size elements (PyTorch's
      MSELoss), y of z's shape;
    * a callable ``(outputs: Tensor, y: xp array) -> scalar Tensor``.

    ``layout``: a :class:`Layout`, an int n, or None (one parameter "theta"
    whose length is fixed by the first theta seen). ``memory_budget``: bytes
    for dense curvature (None: the module's ``default_memory_budget``).
    X (and a floating y) are used in theta's dtype (cast copies are cached).
    """

    def __init__(self, model_fn, loss, X, y, layout=None, memory_budget=None, counts=None):
        if isinstance(layout, int):
            layout = Layout.single(layout)
        if layout is not None and not isinstance(layout, Layout):
            raise TypeError(f"Objective: layout must be a Layout, an int or None, got {type(layout).__name__}")
        super().__init__(layout, memory_budget, counts)
        if not callable(model_fn):
            raise TypeError(f"Objective: model_fn must be callable (theta, X) -> outputs, got {type(model_fn).__name__}")
        if not (callable(loss) or loss in _LOSSES):
            raise ValueError(
                f"Objective: unknown loss {loss!r}; choose 'cross_entropy', 'mse' or a callable "
                f"(outputs, y) -> scalar Tensor"
            )
        self.model_fn, self.loss_name = model_fn, loss
        self.X, self.y = B.asarray(X.data if isinstance(X, Tensor) else X), B.asarray(y.data if isinstance(y, Tensor) else y)
        self._check_data()
        self._cast = {}

    def _check_data(self):
        X, y = self.X, self.y
        batch = X.shape[0] if X.ndim else None
        if self.loss_name == "cross_entropy":
            if y.ndim != 1 or y.shape[0] != batch or y.dtype.kind not in "iu":
                raise ValueError(
                    f"Objective(loss='cross_entropy'): y must be integer labels of shape ({batch},) "
                    f"to match X {X.shape}, got y of shape {y.shape} and dtype {y.dtype}"
                )
        elif y.ndim == 0 or y.shape[0] != batch:
            raise ValueError(
                f"Objective: y of shape {y.shape} does not match the batch of X {X.shape}: "
                f"their first dimensions must agree"
            )

    def _data(self, dtype):
        """(X Tensor, y array) in the given float dtype (integer labels kept)."""
        key = B.xp.dtype(dtype).str
        if key not in self._cast:
            X = self.X if self.X.dtype.kind != "f" else B.asarray(self.X, dtype)
            y = self.y if self.y.dtype.kind != "f" else B.asarray(self.y, dtype)
            self._cast[key] = (Tensor(X), y)
        return self._cast[key]

    n = property(lambda self: None if self.layout is None else self.layout.n)

    def _theta(self, theta, op):
        if self.layout is None:  # bind the default single-parameter layout on first use
            arr = B.asarray(theta.data if isinstance(theta, Tensor) else theta)
            if arr.ndim != 1:
                raise ValueError(f"Objective.{op}: theta must be 1-D, got shape {arr.shape}")
            self.layout = Layout.single(arr.shape[0])
        return super()._theta(theta, op)

    # ---- model and loss --------------------------------------------------
    def _model(self, th: Tensor) -> Tensor:
        out = self.model_fn(th, self._data(th.dtype)[0])
        if not isinstance(out, Tensor):
            raise TypeError(f"Objective: model_fn must return a Tensor, got {type(out).__name__}")
        return out

    def _loss_of(self, out: Tensor, y) -> Tensor:
        if self.loss_name == "cross_entropy":
            with no_tangent():  # one primitive: nobody reads the loss's own directional derivative
                return out.cross_entropy(y)
        if self.loss_name == "mse":
            if out.shape != y.shape:
                raise ValueError(f"Objective(loss='mse'): outputs have shape {out.shape} but y has shape {y.shape}")
            diff = out - Tensor(y)
            return (diff * diff).mean()
        return self._check_scalar(self.loss_name(out, y), "loss")

    def _scalar(self, th: Tensor) -> Tensor:
        return self._loss_of(self._model(th), self._data(th.dtype)[1])

    def outputs(self, theta):
        """model_fn(θ, X) as an ``xp`` array."""
        theta = self._theta(theta, "outputs")
        return self._model(Tensor(theta)).data

    def with_batch(self, X, y) -> "Objective":
        """The same model, loss, layout and budget on another batch; shares
        the evaluation counter (so a run's totals accumulate)."""
        return Objective(self.model_fn, self.loss_name, X, y, self.layout, self.memory_budget, self.counts)

    # ---- Gauss-Newton ------------------------------------------------------
    def ggn_vp(self, theta, V):
        """G V = Jᵀ H_z J V, J = ∂z/∂θ the model Jacobian, H_z = ∂²ℓ/∂z² the
        loss Hessian on the outputs, for all K directions in ONE forward and
        ONE backward pass:

        1. forward with θ carrying the tangent V: the outputs carry J V;
        2. U = H_z (J V), in closed form: cross-entropy per sample
           (diag(p_i) - p_i p_iᵀ)/B · t_i with p_i = softmax(z_i); mse 2/m · t;
           a callable loss by forward-over-reverse on ℓ(·, y) at z along J V;
        3. ``outputs.backward(grad=Tensor(0, tangent=U))``. The backward pass
           is linear in its seed, so with seed g + εU it returns
           J(θ + εV)ᵀ (g + εU); at g = 0 the ε-term is exactly Jᵀ U: every
           second-order term (∂J/∂θ · V)ᵀ g vanishes with g. So
           θ.grad.tangent = Jᵀ H_z J V.

        G is positive semi-definite whenever ℓ is convex in z, and equals H
        when the model is linear in θ."""
        theta = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, theta, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        th = Tensor(theta, requires_grad=True, tangent=V)
        out = self._model(th)
        GV = None
        if out.requires_grad and out.tangent is not None:
            U = self._loss_hessian_times(out, out.tangent)
            out.backward(grad=Tensor(B.xp.zeros_like(out.data), tangent=U))
            GV = th.grad.tangent if th.grad is not None else None
        if GV is None:  # the outputs do not move along V
            GV = B.xp.zeros_like(V)
        return GV[0] if single else GV

    def _loss_hessian_times(self, out: Tensor, T):
        """H_z T for tangents T (K, *z.shape) of the outputs z."""
        z, y = out.data, self._data(out.dtype)[1]
        if self.loss_name == "cross_entropy":
            if z.ndim != 2:
                raise ValueError(f"Objective(loss='cross_entropy'): outputs must be (B, C), got {z.shape}")
            p = B.xp.exp(z - z.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            # (diag(p) - p pᵀ) t = p ⊙ t - p (pᵀ t), per sample and direction
            return (p * T - p * (p * T).sum(axis=-1, keepdims=True)) / z.shape[0]
        if self.loss_name == "mse":
            return T * (2.0 / z.size)
        zt = Tensor(z, requires_grad=True, tangent=T)
        value = self._check_scalar(self.loss_name(zt, y), "ggn_vp")
        if not value.requires_grad:
            return B.xp.zeros_like(T)
        value.backward()
        if zt.grad is None or zt.grad.tangent is None:
            return B.xp.zeros_like(T)
        return zt.grad.tangent

    def __repr__(self):
        loss = self.loss_name if isinstance(self.loss_name, str) else getattr(self.loss_name, "__name__", "callable")
        n = "unbound" if self.layout is None else self.layout.n
        return f"Objective(n={n}, loss={loss}, X {self.X.shape}, y {self.y.shape})"


# ================================================================ closed-form test problems


class _Consts:
    """Arrays cast once per dtype (so float32 theta does not meet float64 data)."""

    def __init__(self, **arrays):
        self.arrays, self.cache = arrays, {}

    def __call__(self, dtype):
        key = B.xp.dtype(dtype).str
        if key not in self.cache:
            self.cache[key] = {k: B.asarray(a, dtype) for k, a in self.arrays.items()}
        return self.cache[key]


class Quadratic(BaseObjective):
    """f(x) = ½ xᵀ A x - bᵀ x with A symmetric (n, n):  ∇f = A x - b,  H = A.

    The Gauss-Newton matrix of a quadratic is taken to be H itself (it is its
    own quadratic model): ``ggn_vp`` is A V in closed form, while ``hvp`` goes
    through the engine. ``minimizer`` solves A x = b."""

    def __init__(self, A, b=None, memory_budget=None):
        A = B.asarray(A)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"Quadratic: A must be square (n, n), got shape {A.shape}")
        n = A.shape[0]
        b = B.xp.zeros((n,), A.dtype) if b is None else B.asarray(b)
        if b.shape != (n,):
            raise ValueError(f"Quadratic: b has shape {b.shape}, expected ({n},) to match A {A.shape}")
        scale = float(B.xp.abs(A).max()) if A.size else 0.0
        if float(B.xp.abs(A - A.T).max() if A.size else 0.0) > 1e-12 * max(scale, 1e-300) * n:
            raise ValueError("Quadratic: A must be symmetric (use (A + A.T) / 2)")
        super().__init__(Layout.single(n, "x"), memory_budget)
        self.A, self.b, self._c = A, b, _Consts(A=A, b=b)

    def _scalar(self, x):
        c = self._c(x.dtype)
        return (x * (Tensor(c["A"]) @ x)).sum() * 0.5 - (x * Tensor(c["b"])).sum()

    def ggn_vp(self, theta, V):
        """G V = A V, in closed form (rows: V A, A symmetric)."""
        x = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, x, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        GV = V @ self._c(x.dtype)["A"]
        return GV[0] if single else GV

    @property
    def minimizer(self):
        return B.xp.linalg.solve(self.A, self.b)


class Rosenbrock(BaseObjective):
    """The chained Rosenbrock function (SciPy's ``rosen``):

        f(x) = Σ_{i=1}^{n-1} 100 (x_{i+1} - x_i²)² + (1 - x_i)²,

    minimum 0 at x = (1, ..., 1); the classic start is (-1.2, 1, -1.2, ...).

    As a sum of squares of residuals r = (10 (x_{i+1} - x_i²), 1 - x_i), its
    Gauss-Newton matrix is G = 2 J_rᵀ J_r (equal to H where r = 0)."""

    def __init__(self, n=2, memory_budget=None):
        if int(n) < 2:
            raise ValueError(f"Rosenbrock: n must be >= 2, got {n}")
        super().__init__(Layout.single(int(n), "x"), memory_budget)

    def _scalar(self, x):
        head, tail = x[:-1], x[1:]
        a = tail - head * head
        return (a * a * 100.0 + (1.0 - head) * (1.0 - head)).sum()

    @property
    def minimizer(self):
        return B.xp.ones((self.n,), B.default_dtype)

    @property
    def x0(self):
        x = B.xp.ones((self.n,), B.default_dtype)
        x[::2] = -1.2
        return x

    def ggn_vp(self, theta, V):
        """G V = 2 J_rᵀ J_r V with J_r a v = 10 (v_{i+1} - 2 x_i v_i), J_r b v = -v_i."""
        x = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, x, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        ra = 10 * (V[:, 1:] - 2 * x[:-1] * V[:, :-1])  # J_a V
        rb = -V[:, :-1]                                 # J_b V
        GV = B.xp.zeros_like(V)
        GV[:, :-1] += -20 * x[:-1] * ra - rb            # J_aᵀ, J_bᵀ: entries i
        GV[:, 1:] += 10 * ra                            # J_aᵀ: entries i + 1
        GV *= 2
        return GV[0] if single else GV


class LogisticRegression(BaseObjective):
    """Binary logistic regression, labels y ∈ {0, 1}, X (B, d), weights w (d,):

        f(w) = (1/B) Σ_i [log(1 + e^{z_i}) - y_i z_i] + ½ λ ||w||²,   z = X w,
             = (1/B) Σ_i softplus((1 - 2 y_i) z_i) + ½ λ ||w||²,
        ∇f = Xᵀ (p - y) / B + λ w,       p = σ(X w),
        H  = Xᵀ diag(p (1 - p)) X / B + λ I  = G  (linear model, convex loss).

    No intercept: append a column of ones to X for one."""

    def __init__(self, X, y, l2=0.0, memory_budget=None, counts=None):
        X, y = B.asarray(X), B.asarray(y)
        if X.ndim != 2:
            raise ValueError(f"LogisticRegression: X must be (B, d), got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"LogisticRegression: y has shape {y.shape}, expected ({X.shape[0]},) to match X {X.shape}")
        if y.size and not bool(B.xp.all((y == 0) | (y == 1))):
            raise ValueError("LogisticRegression: labels y must be 0 or 1")
        super().__init__(Layout([("w", (X.shape[1],), "weight")]), memory_budget, counts)
        self.X, self.y, self.l2 = X, y, float(l2)
        self._c = _Consts(X=X, sign=1.0 - 2.0 * y)

    def _scalar(self, w):
        c = self._c(w.dtype)
        z = Tensor(c["X"]) @ w
        loss = (z * Tensor(c["sign"])).softplus().mean()
        return loss + (w * w).sum() * (0.5 * self.l2) if self.l2 else loss

    def ggn_vp(self, theta, V):
        """G V = Xᵀ diag(p (1 - p)) X V / B + λ V, in closed form."""
        w = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, w, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        X = self._c(w.dtype)["X"]
        p = 0.5 * (B.xp.tanh(0.5 * (X @ w)) + 1)
        GV = ((V @ X.T) * (p * (1 - p) / X.shape[0])) @ X + self.l2 * V
        return GV[0] if single else GV

    def with_batch(self, X, y) -> "LogisticRegression":
        """Same λ and budget on another batch; shares the evaluation counter."""
        return LogisticRegression(X, y, self.l2, self.memory_budget, self.counts)


class Function(BaseObjective):
    """Any scalar function ``f(theta: Tensor) -> scalar Tensor`` of flat
    theta (n,), on the shared interface. It has no model/loss split, so
    ``ggn_vp`` raises NotImplementedError."""

    def __init__(self, f, n, name=None, memory_budget=None):
        super().__init__(Layout.single(int(n), "x"), memory_budget)
        self.f, self._name = f, name or getattr(f, "__name__", "Function")

    name = property(lambda self: f"Function({self._name})")

    def _scalar(self, x):
        return self.f(x)
