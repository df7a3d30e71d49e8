"""The Objective: the one seam between models and optimizers.

An objective binds a loss to data and exposes, on a flat parameter vector
``theta`` (an ``xp`` array of length n), everything a first- or second-order
optimizer asks for. :class:`ObjectiveInterface` writes that interface down
once; optimizers call nothing else:

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
``layout``             the parameters' names, shapes, kinds and slices
``batch_size``         examples the loss averages over (1: no batch)
``with_batch(X, y)``   the same objective on another batch
``counts``             evaluation counts: nfev, ngev, nhvp, nggnvp
``capture(theta, …)``  loss, gradient and per-layer inputs/cotangents
                       (:mod:`tinygrad2.capture`; K-FAC, Sophia-G)
=====================  ====================================================

:class:`BaseObjective` derives all of it from a scalar Tensor function of
theta; :class:`Objective` is a model ``model_fn(theta, X)`` and a loss from
:mod:`tinygrad2.losses` on a batch (X, y). The closed-form test problems
(Quadratic, Rosenbrock, LogisticRegression, Function) are in
:mod:`tinygrad2.problems`, the parameter layout in :mod:`tinygrad2.layout`.

Dense curvature is guarded by a memory forecast (:mod:`tinygrad2.memory`):
before allocating, ``hessian``, ``ggn``, the exact diagonals and Hutchinson
estimate the bytes they need and raise :class:`CurvatureMemoryError` if that
exceeds the budget (``memory_budget=`` per objective, else
``tinygrad2.memory.default_memory_budget``).

Evaluation counts are kept in ``objective.counts`` (a plain dict: ``nfev``,
``ngev``, ``nhvp``, ``nggnvp``; products count one per direction).

Non-finite policy: inputs are checked, results are not. Every method checks
theta (and the directions V of ``hvp``/``ggn_vp``) on entry with one
``xp.isfinite(...).all()`` each, and an :class:`Objective` (or
``LogisticRegression``, ``Quadratic``) checks its data X, y once, at
construction and in ``with_batch``; NaN or ±inf there raises
:class:`tinygrad2.guard.NonFiniteError` (a FloatingPointError and a
ValueError) naming the operation, the argument, the number of non-finite
entries and the first one's index, before any work. Arrays that are not
real (complex, object, strings) raise TypeError, never lose a part; an
empty batch (X with 0 rows) raises ValueError. A NaN or inf that arises
inside a computation from finite inputs (overflow) is returned as computed,
for the optimizers' own non-finite fallbacks to handle. The functional API
(``tg.grad``, ``tg.hvp``, ...) checks x and v the same way.
"""
from __future__ import annotations

import numbers
from typing import Protocol, runtime_checkable

from . import backend as B
from . import capture as _capture
from . import functional
from . import losses as L
from . import memory
from .directions import generator, rademacher, tracked, unit_rows
from .guard import as_real, check_finite
from .capture import Capture
from .layout import Layout
from .tensor import Tensor, no_tangent


@runtime_checkable
class ObjectiveInterface(Protocol):
    """What an optimizer may call on an objective (see the module docstring).

    One optional hook lies outside it: an objective may also offer
    ``per_example_grad_sq(theta)`` (Σ_i ∇f_i² over its examples), which
    HessianFree's Martens preconditioner uses when present and estimates
    from ``batch_size`` and the gradient when not."""

    layout: Layout
    counts: dict
    batch_size: int

    def loss(self, theta) -> float: ...
    def grad(self, theta): ...
    def loss_and_grad(self, theta): ...
    def hvp(self, theta, V): ...
    def ggn_vp(self, theta, V): ...
    def hessian(self, theta, chunk=None): ...
    def ggn(self, theta, chunk=None): ...
    def hessian_diag(self, theta, method="exact", samples=100, seed=None, chunk=None): ...
    def block_row_sums(self, theta, name): ...
    def block_diag(self, theta, name, chunk=None): ...
    def with_batch(self, X, y) -> "ObjectiveInterface": ...
    def capture(self, theta, factor=None, seed=None) -> Capture: ...


class BaseObjective:
    """Everything that follows from a scalar Tensor function of flat theta.

    A subclass defines ``_scalar(theta: Tensor) -> scalar Tensor`` (and, where
    a Gauss-Newton matrix exists, ``ggn_vp``); loss, gradient, forward-over-
    reverse HVPs, dense Hessians, diagonals and group products come from here.
    """

    batch_size = 1
    """Examples the loss averages over (1: a closed-form problem with no batch)."""

    def __init__(self, layout, memory_budget=None, counts=None):
        self.layout = layout
        self.memory_budget = memory_budget
        self.counts = counts if counts is not None else {"nfev": 0, "ngev": 0, "nhvp": 0, "nggnvp": 0}
        self._elements = {}  # dtype -> elements of one forward pass's intermediates

    name = property(lambda self: type(self).__name__)
    n = property(lambda self: self.layout.n)

    def reset_counts(self):
        for key in self.counts:
            self.counts[key] = 0

    def _scalar(self, theta: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name}: a subclass must define _scalar(theta) -> scalar Tensor")

    def with_batch(self, X, y):
        """The same objective on another batch (objectives with a batch only)."""
        raise NotImplementedError(f"{self.name}.with_batch: {self.name} has no batch to replace")

    # ---- argument checks -------------------------------------------------
    def _theta(self, theta, op):
        if isinstance(theta, Tensor):
            theta = theta.data
        theta = as_real(theta, f"{self.name}.{op}", "theta")
        if theta.ndim != 1 or theta.shape[0] != self.layout.n:
            raise ValueError(
                f"{self.name}.{op}: theta has shape {theta.shape}, expected ({self.layout.n},) "
                f"(the layout's n)"
            )
        if theta.dtype.kind != "f":
            raise TypeError(f"{self.name}.{op}: theta must be floating, got dtype {theta.dtype}")
        return check_finite(theta, f"{self.name}.{op}", "theta")

    def _directions(self, V, theta, op):
        """(K, n) directions in theta's dtype, and whether one (n,) was given."""
        where = f"{self.name}.{op}"
        V = check_finite(as_real(V.data if isinstance(V, Tensor) else V, where, "V", theta.dtype), where, "V")
        n = theta.shape[0]
        if V.ndim == 1 and V.shape[0] == n:
            return V[None], True
        if V.ndim == 2 and V.shape[1] == n:
            return V, False
        raise ValueError(f"{self.name}.{op}: V has shape {V.shape} but theta has length {n}; expected ({n},) or (K, {n})")

    def _scalar_of(self, op):
        """The loss as a function of the theta Tensor, checked to be a scalar."""
        return lambda th: self._check_scalar(self._scalar(th), op)

    def _check_scalar(self, out, op):
        if not isinstance(out, Tensor) or out.size != 1:
            what = type(out).__name__ if not isinstance(out, Tensor) else f"shape {out.shape}"
            raise ValueError(f"{self.name}.{op}: the loss must be a scalar Tensor, got {what}")
        return out

    # ---- first order -------------------------------------------------------
    def loss(self, theta) -> float:
        """f(θ)."""
        theta = self._theta(theta, "loss")
        self.counts["nfev"] += 1
        return float(self._scalar_of("loss")(Tensor(theta)).item())

    def loss_and_grad(self, theta):
        """(f(θ), ∇f(θ)) from one forward and one backward pass."""
        self.counts["nfev"] += 1
        return self._value_and_grad(theta, "loss_and_grad")

    def grad(self, theta):
        """∇f(θ), shape (n,)."""
        return self._value_and_grad(theta, "grad")[1]

    def capture(self, theta, factor=None, seed=None) -> Capture:
        """Loss and gradient with the per-layer records of :mod:`tinygrad2.capture`.
        A closed-form problem has no layers and no model/loss split: ``layers``
        is empty (so ``factor="exact"`` has nothing to factor), and
        ``factor="sample"``, whose ``sample_grad`` needs the loss's output
        Hessian, raises NotImplementedError. :meth:`Objective.capture` has the
        full story."""
        theta = self._theta(theta, "capture")
        _check_factor(factor, f"{self.name}.capture")
        if factor == "sample":
            raise NotImplementedError(
                f"{self.name}.capture: factor={factor!r} needs a model and a loss on its outputs; {self.name} "
                f"has no such split (write it as an Objective(model_fn, loss, X, y))"
            )
        self.counts["nfev"] += 1
        loss, grad = self._value_and_grad(theta, "capture")
        return Capture(loss, grad, [], factor)

    def _value_and_grad(self, theta, op):
        theta = self._theta(theta, op)
        self.counts["ngev"] += 1
        return functional.checked_value_and_grad(self._scalar_of(op), theta)

    # ---- second order ------------------------------------------------------
    def hvp(self, theta, V):
        """H V by forward-over-reverse (:func:`tinygrad2.functional.checked_hvp`,
        after the Objective's own argument checks): seed
        θ with the tangent V (K directions), run the loss and its backward
        pass; the gradient comes out carrying

            ∇f(θ).tangent = d/dε ∇f(θ + ε v_k) |₀ = H v_k   for every row v_k.

        V: (n,) -> (n,); (K, n) -> (K, n)."""
        theta = self._theta(theta, "hvp")
        V, single = self._directions(V, theta, "hvp")
        self.counts["nhvp"] += V.shape[0]
        HV = functional.checked_hvp(self._scalar_of("hvp"), theta, V)
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
            M[start:stop] = product(theta, unit_rows(start, stop, n, theta.dtype))
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
                HE = self.hvp(theta, unit_rows(start, stop, n, theta.dtype))
                d[start:stop] = HE[B.xp.arange(stop - start), B.xp.arange(start, stop)]
            return d
        if method == "hutchinson":
            return self._hutchinson_diag(theta, samples, seed, chunk)
        raise ValueError(f"{self.name}.hessian_diag: method must be 'exact' or 'hutchinson', got {method!r}")

    def _hutchinson_diag(self, theta, samples, seed, chunk):
        """(1/S) Σ_s z_s ⊙ H z_s over S = ``samples`` Rademacher z_s, in chunks."""
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
            raise ValueError(f"{self.name}.hessian_diag: samples must be an int >= 1, got {samples!r}")
        samples, n = int(samples), theta.shape[0]
        chunk = self._plan("hessian_diag", theta, n, samples, chunk)
        rng, total = generator(seed), B.xp.zeros((n,), theta.dtype)
        for start in range(0, samples, chunk):
            Z = rademacher((min(samples, start + chunk) - start, n), rng, theta.dtype)
            total += (Z * self.hvp(theta, Z)).sum(axis=0)
        return total / samples

    def block_row_sums(self, theta, name):
        """H_gg · 1 for parameter group g = ``name`` (flat, length |g|): one
        HVP with v = 1 on g and 0 elsewhere, restricted to g. This is what
        SGD-PH's official code computes; it equals diag(H_gg) only when the
        block is diagonal, which it is not in general (see ``block_diag``)."""
        theta = self._theta(theta, "block_row_sums")
        p = self.layout.lookup(name, f"{self.name}.block_row_sums")
        return self.hvp(theta, self.layout.indicator(p.name, theta.dtype))[p.slice]

    def block_diag(self, theta, name, chunk=None):
        """diag(H_gg) for parameter group g = ``name`` (flat, length |g|),
        exact: |g| unit directions in chunks."""
        theta = self._theta(theta, "block_diag")
        p, n = self.layout.lookup(name, f"{self.name}.block_diag"), theta.shape[0]
        chunk = self._plan("block_diag", theta, p.size, p.size, chunk)
        d = B.xp.empty((p.size,), theta.dtype)
        for start in range(0, p.size, chunk):
            stop = min(p.size, start + chunk)
            rows = B.xp.arange(stop - start)
            E = unit_rows(p.slice.start + start, p.slice.start + stop, n, theta.dtype)
            d[start:stop] = self.hvp(theta, E)[rows, p.slice.start + start + rows]
        return d

    # ---- memory forecast ------------------------------------------------
    def bytes_per_direction(self, theta):
        """Forecast working memory of one direction in a batched product
        (:func:`tinygrad2.memory.bytes_per_direction`), the intermediates
        measured by one probe forward pass (cached per dtype; no tangents)."""
        theta = B.asarray(theta)
        key = theta.dtype.str
        if key not in self._elements:
            out = self._scalar(Tensor(theta, requires_grad=True))
            self._elements[key] = memory.graph_elements(out)
        return memory.bytes_per_direction(self._elements[key], theta.shape[0], theta.dtype.itemsize)

    def _budget(self):
        return memory.default_memory_budget if self.memory_budget is None else self.memory_budget

    def memory_forecast(self, theta, result_elements, directions, chunk=None):
        """(chunk, bytes needed) for a chunked computation whose result has
        ``result_elements`` entries (:func:`tinygrad2.memory.choose_chunk`)."""
        theta = B.asarray(theta)
        return memory.choose_chunk(
            result_elements * theta.dtype.itemsize, lambda: self.bytes_per_direction(theta),
            directions, self._budget(), chunk, where=self.name,
        )

    def _plan(self, op, theta, result_elements, directions, chunk):
        """The chunk to use, or CurvatureMemoryError before any allocation."""
        chunk, needed = self.memory_forecast(theta, result_elements, directions, chunk)
        memory.check_fits(f"{self.name}.{op}", theta.shape[0], result_elements, theta.dtype,
                          chunk, needed, self._budget())
        return chunk

    def __repr__(self):
        return f"{self.name}(n={self.layout.n})"


class Objective(BaseObjective):
    """f(θ) = ℓ(model_fn(θ, X), y) on one batch.

    ``model_fn(theta, X)`` maps the flat parameter Tensor θ (n,) and the input
    Tensor X to the outputs z (slice θ with ``layout.unflatten(theta)``).
    ``loss``: a name in :data:`tinygrad2.losses.LOSSES` --

    * ``"cross_entropy"``: ℓ = (1/B) Σ_i [logsumexp(z_i) - z_{i,y_i}], z (B, C),
      y integer labels (B,) -- the fused primitive ``z.cross_entropy(y)``;
    * ``"mse"``: ℓ = (1/m) Σ (z - y)² over all m = z.size elements (PyTorch's
      MSELoss), y of z's shape --

    or a callable ``(outputs: Tensor, y: xp array) -> scalar Tensor``.

    ``layout``: a :class:`Layout`, an int n, or None (one parameter "theta"
    whose length is fixed by the first theta seen). ``memory_budget``: bytes
    for dense curvature (None: ``tinygrad2.memory.default_memory_budget``).
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
        try:
            self._loss = L.get(loss)
        except ValueError as err:
            raise ValueError(f"Objective: {err}") from None
        self.model_fn, self.loss_name = model_fn, loss
        self._where = f"Objective(loss={self._loss.name!r})" if isinstance(loss, str) else "Objective"
        self.X, self.y = check_batch(X, y, self._where)
        self._loss.check_targets(self.y, self.X.shape[0] if self.X.ndim else None, self._where)
        self._cast = {}

    def _data(self, dtype):
        """(X Tensor, y array) in the given float dtype (integer labels kept)."""
        key = B.xp.dtype(dtype).str
        if key not in self._cast:
            X = self.X if self.X.dtype.kind != "f" else B.asarray(self.X, dtype)
            y = self.y if self.y.dtype.kind != "f" else B.asarray(self.y, dtype)
            self._cast[key] = (Tensor(X), y)
        return self._cast[key]

    n = property(lambda self: None if self.layout is None else self.layout.n)
    batch_size = property(lambda self: int(self.X.shape[0]) if self.X.ndim else 1)

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
        self._loss.check_outputs(out.shape, y, self._where, "y")
        if self._loss.one_primitive:
            with no_tangent():  # nobody reads the loss's own directional derivative
                return self._loss.value(out, y)
        return self._check_scalar(self._loss.value(out, y), "loss")

    def _scalar(self, th: Tensor) -> Tensor:
        return self._loss_of(self._model(th), self._data(th.dtype)[1])

    def outputs(self, theta):
        """model_fn(θ, X) as an ``xp`` array."""
        theta = self._theta(theta, "outputs")
        return self._model(Tensor(theta)).data

    def with_batch(self, X, y) -> "Objective":
        """The same model, loss, layout and budget on another batch; shares
        the evaluation counter (so a run's totals accumulate)."""
        check_batch(X, y, f"{self._where}.with_batch")
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
        th.tangent = tracked(th.tangent)  # its live columns on the host: one transfer per pass
        out = self._model(th)
        GV = None
        if out.requires_grad and out.tangent is not None:
            U = self._loss_hessian_times(out, out.tangent)
            out.backward(grad=Tensor(B.xp.zeros_like(out.data), tangent=U), tangents_only=True)
            GV = th.grad.tangent if th.grad is not None else None
        if GV is None:  # the outputs do not move along V
            GV = B.xp.zeros_like(V)
        return GV[0] if single else GV

    def capture(self, theta, factor=None, seed=None) -> Capture:
        """One forward and one backward pass that also records, for every layer
        of the model that supports capture (``nets``' Linear and Conv2d), its
        inputs and output cotangents (:class:`tinygrad2.capture.LayerCapture`).

        The backward pass is seeded at the outputs z with the loss gradient
        ∂ℓ/∂z and, as tangents, K extra seeds U (K, *z.shape). With no
        tangents in the forward pass the backward pass is linear in its seed,
        so each tangent arrives at a layer's output as the backpropagated
        seed Jᵀu_k, exactly (no second-order terms):

        * ``factor=None``: no extra seeds;
        * ``"exact"``: U = the loss table's ``hessian_factor``, Σ_k u_k[i] u_k[i]ᵀ = H_i per example
          (cross-entropy: K = C classes, u_k = √p_k (e_k - p)/√B per example);
          per layer, Σ_k Σ_rows g gᵀ of ``seed_outputs`` is then the exact
          output-side factor of the Gauss-Newton block;
        * ``"sample"``: U = one draw r with E[r rᵀ] = H_z (cross-entropy: labels
          sampled from the model's softmax), ``seed`` an int, None or a generator;
          ``Capture.sample_grad`` = Jᵀ r (1, n), with E[(Jᵀr)(Jᵀr)ᵀ] = G.

        Counts one loss and one gradient evaluation. BN running statistics are not touched."""
        theta = self._theta(theta, "capture")
        where = f"{self._where}.capture"
        _check_factor(factor, where)
        X, y = self._data(theta.dtype)
        th = Tensor(theta, requires_grad=True)
        with _capture.recording() as records:
            out = self._model(th)
        z = Tensor(out.data, requires_grad=True)
        loss = self._loss_of(z, y)
        loss.backward()
        dz = z.grad.data if z.grad is not None else B.xp.zeros_like(out.data)
        U = None
        if factor is not None:
            make = self._loss.hessian_factor if factor == "exact" else self._loss.hessian_sample
            if make is None:
                raise NotImplementedError(f"{where}: the loss {self._loss.name!r} has no closed-form "
                                          f"{'Hessian factor' if factor == 'exact' else 'Hessian sample'}; "
                                          f"use a loss from tinygrad2.losses.LOSSES ({', '.join(sorted(L.LOSSES))})")
            U = make(out.data, y) if factor == "exact" else make(out.data, y, generator(seed))
        self.counts["nfev"] += 1
        self.counts["ngev"] += 1
        grad, sample_grad = B.xp.zeros_like(theta), None
        if out.requires_grad:
            out.backward(grad=Tensor(dz, tangent=U))
            if th.grad is not None:
                grad = th.grad.data
                if factor == "sample":
                    sample_grad = th.grad.tangent
        if factor == "sample" and sample_grad is None:
            sample_grad = B.xp.zeros((1,) + theta.shape, theta.dtype)
        seeds = 0 if U is None else U.shape[0]
        return Capture(float(loss.item()), grad, _capture.finish(records, seeds), factor, sample_grad)

    def _loss_hessian_times(self, out: Tensor, T):
        """H_z T for tangents T (K, *z.shape) of the outputs z (the loss table's
        closed form; a callable loss by forward-over-reverse)."""
        return self._loss.hessian_vp(out.data, self._data(out.dtype)[1], T)

    def __repr__(self):
        n = "unbound" if self.layout is None else self.layout.n
        return f"Objective(n={n}, loss={self._loss.name}, X {self.X.shape}, y {self.y.shape})"


def _check_factor(factor, where):
    if factor not in (None, "exact", "sample"):
        raise ValueError(f"{where}: factor must be None, 'exact' or 'sample', got {factor!r}")


def check_batch(X, y, where):
    """(X, y) as ``xp`` arrays, refused unless both are real and finite and X
    has at least one row (every batch objective checks its data here once)."""
    X = as_real(X.data if isinstance(X, Tensor) else X, where, "X", kinds="biuf")
    y = as_real(y.data if isinstance(y, Tensor) else y, where, "y", kinds="biuf")
    if X.ndim and X.shape[0] == 0:
        raise ValueError(f"{where}: X has 0 rows (shape {tuple(X.shape)}); a batch needs at least one example")
    return check_finite(X, where, "X"), check_finite(y, where, "y")
