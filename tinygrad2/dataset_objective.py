"""An Objective over a whole data set, one batch at a time.

:class:`DatasetObjective` is the :class:`~tinygrad2.objective.Objective` of
the whole data set D = B_1 ∪ ... ∪ B_m, computed without ever holding D in
one pass: every quantity is the weighted mean of the per-batch quantities,

    f = Σ_b (m_b / M) f_b,    ∇f, H V, G V, H, G, diag H, ... alike,

f_b the loss of batch b (an ordinary single-batch Objective), m_b the number
of terms its mean runs over and M = Σ_b m_b. Because every loss of the loss
table is a *mean* over its terms -- cross-entropy over the examples (m_b =
rows), mse over all m_b = z.size output elements -- the weighted mean of the
batch means is exactly the mean over D, and so are all its derivatives (they
are linear in the loss): the numbers equal those of one Objective on the
concatenated data, to round-off. A callable loss is weighted by rows, which
is exact when it is a mean over examples (each with the same number of
terms); a sum-reduced loss would need weights 1 and is not supported. A
plain (unweighted) mean of batch means is *not* the data set's mean unless
all batches have the same size.

Memory: one batch's working set plus the result. Dense products (hessian,
ggn, the exact diagonals, block_diag) run *batch-outer* -- for each batch,
all chunks of unit directions, accumulated into the one result -- so the
source is read once per call, and each batch plans its own chunk with the
memory forecast (:mod:`tinygrad2.memory`; the first batch's plan is checked
before the result is allocated, and CurvatureMemoryError names
``DatasetObjective.<op>``). Hutchinson runs *chunk-outer* (the same
Rademacher block for every batch): one pass over the data per block.

Sources. ``batches`` is either

* a sequence of (X, y) pairs (a list, a tuple): each batch is checked once,
  at construction (real, finite, at least one row, targets matching the
  loss), and kept as a single-batch Objective; or
* a callable returning a fresh iterable of (X, y) pairs (a data loader
  streaming from disk): it is called once per pass -- one pass for each call
  of loss, grad, loss_and_grad, hvp, ggn_vp, hessian, ggn, the exact
  diagonal, block_row_sums, block_diag; for Hutchinson one pass for the
  memory forecast plus one per Rademacher block -- and every batch is checked
  when it is used; nothing is kept between passes (so the dense products'
  per-batch memory probes, one forward pass each, are redone per call).

A one-shot iterator (a generator object) is refused, since it cannot be
read again; pass a list, or a function returning the generator. A source
with no batch is a ValueError (at construction for a sequence, on use for a
callable). :meth:`DatasetObjective.from_arrays` slices arrays into batches.

Counts (``counts``: nfev, ngev, nhvp, nggnvp) are kept in whole-data units,
as a single Objective on the concatenated data would count them: one loss
over all batches is one nfev, an H V with K directions is K nhvp however
many batches it visits (so an optimizer reading counts sees the same numbers
as on the full-batch Objective). The per-batch work is counted separately in
``batch_counts`` (there a product over B batches counts B per direction),
and ``passes`` counts the passes over the source.

BatchNorm. The running statistics are never touched (no Objective updates
them). In eval mode BN uses them, every example's loss is independent of
the others, and everything here equals the concatenated data's quantity,
whatever the batching. In train mode BN normalises each batch by that
batch's statistics, so f_b couples the examples of batch b; what is
computed is Σ_b (m_b / M) ∇²f_b, the weighted mean of the per-batch
Hessians (the Hessian of the training loss as a batched run sees it). It
depends on the batching and is not the Hessian of one BN pass over all of D.

``capture`` is not offered: the per-layer records of the whole data are as
large as the data's activations, so no memory-bounded form exists (use
``with_batch(X, y).capture(...)`` per batch).
"""
from __future__ import annotations

import numbers

from . import backend as B
from . import losses as L
from . import memory
from .directions import unit_rows
from .guard import as_real
from .layout import Layout
from .objective import BaseObjective, Objective, check_batch
from .tensor import Tensor


class DatasetObjective(BaseObjective):
    """f(θ) = the mean loss of ``template``'s model over every batch of ``batches``.

    ``template``: an :class:`~tinygrad2.objective.Objective` (or anything
    with ``model_fn``, ``loss_name``, ``layout`` and ``memory_budget``); its
    own batch is not used. ``batches``: a sequence of (X, y) pairs or a
    callable returning a fresh iterable of them (module docstring).
    ``memory_budget``: bytes for dense curvature (None: the template's).
    ``counts``: a dict to accumulate into (None: a fresh one; pass
    ``template.counts`` to share a run's totals).
    """

    def __init__(self, template, batches, memory_budget=None, counts=None):
        model_fn, loss = getattr(template, "model_fn", None), getattr(template, "loss_name", None)
        if not callable(model_fn) or loss is None or not hasattr(template, "layout"):
            raise TypeError(f"DatasetObjective: template must be an Objective (model_fn, loss, layout, "
                            f"memory_budget), got {type(template).__name__}")
        budget = getattr(template, "memory_budget", None) if memory_budget is None else memory_budget
        super().__init__(template.layout, budget, counts)
        self.model_fn, self.loss_name, self._loss = model_fn, loss, L.get(loss)
        self.batch_counts = {"nfev": 0, "ngev": 0, "nhvp": 0, "nggnvp": 0}
        self.passes = 0
        self._source, self._held, self._size = None, None, None
        if callable(batches):
            self._source = batches
            return
        if iter(batches) is batches:
            raise TypeError("DatasetObjective: batches is a one-shot iterator, which cannot be read again "
                            "for every product; pass a list of (X, y) pairs or a callable returning a fresh "
                            "iterable of them")
        self._held = [self._batch(i, pair) for i, pair in enumerate(batches)]
        if not self._held:
            raise ValueError("DatasetObjective: batches is empty; give at least one (X, y) pair")
        self._size = sum(obj.batch_size for obj in self._held)

    @classmethod
    def from_arrays(cls, template, X, y, batch_size, memory_budget=None, counts=None):
        """The data set (X, y) in consecutive batches of ``batch_size`` rows
        (the last one smaller when it does not divide); the batches are
        views of X and y, each checked once here."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"DatasetObjective.from_arrays: batch_size must be an int >= 1, got {batch_size!r}")
        X = as_real(X.data if isinstance(X, Tensor) else X, "DatasetObjective.from_arrays", "X", kinds="biuf")
        y = as_real(y.data if isinstance(y, Tensor) else y, "DatasetObjective.from_arrays", "y", kinds="biuf")
        if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
            raise ValueError(f"DatasetObjective.from_arrays: X {tuple(X.shape)} and y {tuple(y.shape)} must "
                             f"have the same number of rows")
        rows, size = X.shape[0], int(batch_size)
        pairs = [(X[s:s + size], y[s:s + size]) for s in range(0, rows, size)]
        return cls(template, pairs, memory_budget, counts)

    # ---- the batches -----------------------------------------------------
    name = "DatasetObjective"
    n = property(lambda self: None if self.layout is None else self.layout.n)
    streamed = property(lambda self: self._source is not None)

    @property
    def batch_size(self):
        """Examples in the whole data set. For a streamed source: those of
        the last pass over it, or of one counting pass (shapes only, no
        checks, no computation) if none has run yet."""
        if self._size is None:
            self._size = sum(len(X) if getattr(X, "ndim", 1) else 1 for X, _ in self._source())
        return self._size

    def _batch(self, i, pair):
        """Batch i as a single-batch Objective (its checks named by batch)."""
        try:
            X, y = pair
        except (TypeError, ValueError):
            raise TypeError(f"DatasetObjective: batch {i} must be an (X, y) pair, got {type(pair).__name__}") from None
        try:
            return Objective(self.model_fn, self.loss_name, X, y, self.layout, self.memory_budget, self.batch_counts)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DatasetObjective: batch {i}: {err}") from None

    def _weight(self, obj):
        """m_b: the terms batch b's mean runs over (mse: all output elements)."""
        return int(obj.y.size) if self._loss is L.LOSSES["mse"] else obj.batch_size

    def _batches(self):
        """One pass: yields (batch Objective, m_b); at the end records the
        pass's examples. Dtype-cast copies of a held batch are dropped after
        its use, so at most one batch's copy is alive."""
        if self._held is not None:
            items = self._held
        else:
            items = self._source()
            if not hasattr(items, "__iter__"):
                raise TypeError(f"DatasetObjective: the batches callable must return an iterable of (X, y) "
                                f"pairs, got {type(items).__name__}")
        rows = count = 0
        for i, item in enumerate(items):
            obj = item if self._held is not None else self._batch(i, item)
            if obj.layout is None:
                obj.layout = self.layout
            yield obj, self._weight(obj)
            obj._cast.clear()
            rows, count = rows + obj.batch_size, count + 1
        if count == 0:
            raise ValueError("DatasetObjective: the batches callable returned no (X, y) pair; a data set "
                             "needs at least one batch")
        self._size = rows
        self.passes += 1

    def _mean(self, part):
        """Σ_b m_b part(batch b) / Σ_b m_b over one pass; part returns an
        array or a float."""
        total, weight = None, 0
        for obj, w in self._batches():
            value = part(obj)
            if total is None:
                total = value * w
            else:
                total += value * w
            weight += w
        return total / weight

    # ---- argument checks (as Objective: bind a default layout on first use)
    def _theta(self, theta, op):
        if self.layout is None:
            arr = B.asarray(theta.data if isinstance(theta, Tensor) else theta)
            if arr.ndim != 1:
                raise ValueError(f"DatasetObjective.{op}: theta must be 1-D, got shape {arr.shape}")
            self.layout = Layout.single(arr.shape[0])
        return super()._theta(theta, op)

    def _scalar(self, theta):
        raise NotImplementedError("DatasetObjective has no single graph of the whole data set (it would not be "
                                  "memory-bounded); it computes every quantity batch by batch")

    # ---- first order -------------------------------------------------------
    def loss(self, theta) -> float:
        """f(θ) = Σ_b (m_b / M) f_b(θ): the exact mean over the data set."""
        theta = self._theta(theta, "loss")
        self.counts["nfev"] += 1
        return float(self._mean(lambda obj: obj.loss(theta)))

    def grad(self, theta):
        """∇f(θ) = Σ_b (m_b / M) ∇f_b(θ), shape (n,)."""
        theta = self._theta(theta, "grad")
        self.counts["ngev"] += 1
        return self._mean(lambda obj: obj.grad(theta))

    def loss_and_grad(self, theta):
        """(f(θ), ∇f(θ)), one forward and one backward pass per batch."""
        theta = self._theta(theta, "loss_and_grad")
        self.counts["nfev"] += 1
        self.counts["ngev"] += 1
        loss, grad, weight = 0.0, None, 0
        for obj, w in self._batches():
            f, g = obj.loss_and_grad(theta)
            loss += f * w
            grad = g * w if grad is None else grad + g * w
            weight += w
        return loss / weight, grad / weight

    def capture(self, theta, factor=None, seed=None):
        raise NotImplementedError(
            "DatasetObjective.capture: layer captures of the whole data set hold every batch's activations, "
            "so they cannot be memory-bounded; capture one batch with with_batch(X, y).capture(theta, ...)")

    def with_batch(self, X, y) -> Objective:
        """An ordinary single-batch Objective on (X, y) with this model, loss,
        layout and budget; it shares this objective's counts."""
        X, y = check_batch(X, y, "DatasetObjective.with_batch")
        return Objective(self.model_fn, self.loss_name, X, y, self.layout, self.memory_budget, self.counts)

    # ---- products ----------------------------------------------------------
    def hvp(self, theta, V):
        """H V = Σ_b (m_b / M) H_b V, one forward-over-reverse pass per batch
        (all K directions at once, as Objective.hvp). V: (n,) or (K, n)."""
        return self._vp("hvp", "nhvp", theta, V)

    def ggn_vp(self, theta, V):
        """G V = Σ_b (m_b / M) G_b V, G_b = J_bᵀ H_z J_b of batch b
        (Objective.ggn_vp per batch)."""
        return self._vp("ggn_vp", "nggnvp", theta, V)

    def _vp(self, op, key, theta, V):
        theta = self._theta(theta, op)
        V, single = self._directions(V, theta, op)
        self.counts[key] += V.shape[0]
        out = self._mean(lambda obj: getattr(obj, op)(theta, V))
        return out[0] if single else out

    def hessian(self, theta, chunk=None):
        """Dense H (n, n) = Σ_b (m_b / M) H_b, batch-outer (one pass over the
        source); ``chunk``: directions per batched pass (None: planned per batch)."""
        return self._dense("hvp", "nhvp", theta, chunk, "hessian")

    def ggn(self, theta, chunk=None):
        """Dense G (n, n) = Σ_b (m_b / M) G_b, batch-outer like ``hessian``."""
        return self._dense("ggn_vp", "nggnvp", theta, chunk, "ggn")

    def _dense(self, product, key, theta, chunk, op):
        theta = self._theta(theta, op)
        n = theta.shape[0]
        M = self._accumulate(product, op, theta, n * n, 0, n, chunk, lambda P, rows, lo: P)
        self.counts[key] += n
        return M.reshape(n, n)

    def _accumulate(self, product, op, theta, result_elements, first, stop, chunk, pick):
        """Σ_b m_b pick(product_b(θ, E), rows, lo) / M over unit rows
        E = e_lo..e_hi of first..stop in chunks planned per batch; written
        into one flat result of ``result_elements`` entries."""
        n, dtype, count = theta.shape[0], theta.dtype, stop - first
        out, weight = None, 0
        for obj, w in self._batches():
            c, needed = obj.memory_forecast(theta, result_elements, count, chunk)
            memory.check_fits(f"{self.name}.{op}", n, result_elements, dtype, c, needed, self._budget())
            if out is None:
                out = B.xp.zeros((result_elements,), dtype)
            view = out.reshape(count, -1)
            for lo in range(first, stop, c):
                hi = min(stop, lo + c)
                P = getattr(obj, product)(theta, unit_rows(lo, hi, n, dtype))
                part = pick(P, B.xp.arange(hi - lo), lo).reshape(hi - lo, -1)
                part *= w  # in place: no second (chunk, n) temporary
                view[lo - first:hi - first] += part
            weight += w
        out /= weight
        return out

    def hessian_diag(self, theta, method="exact", samples=100, seed=None, chunk=None):
        """diag(H) of the whole data set, (n,).

        * ``"exact"``: Σ_b (m_b / M) diag(H_b), unit directions per batch,
          batch-outer (one pass over the source; n HVP directions counted);
        * ``"hutchinson"``: (1/S) Σ_s z_s ⊙ H z_s with H the whole-data
          Hessian: each block of Rademacher z (``chunk`` of them, planned by
          the memory forecast) is drawn once and applied to every batch (one
          pass per block). ``seed`` as in Objective.hessian_diag (an int,
          None or a generator), and the draws are the same -- so the same
          estimate as the single-batch Objective on the concatenated data --
          wherever the backend's draws do not depend on the block shape
          (NumPy's do not)."""
        theta = self._theta(theta, "hessian_diag")
        n = theta.shape[0]
        if method == "exact":
            self.counts["nhvp"] += n
            return self._accumulate("hvp", "hessian_diag", theta, n, 0, n, chunk, lambda P, r, lo: P[r, lo + r])
        if method == "hutchinson":
            return self._hutchinson_diag(theta, samples, seed, chunk)
        raise ValueError(f"{self.name}.hessian_diag: method must be 'exact' or 'hutchinson', got {method!r}")

    # block_row_sums is BaseObjective's: one whole-data hvp with the group's indicator.

    def block_diag(self, theta, name, chunk=None):
        """diag(H_gg) = Σ_b (m_b / M) diag((H_b)_gg) for parameter group
        ``name``, exact, batch-outer (|g| HVP directions counted)."""
        theta = self._theta(theta, "block_diag")
        p = self.layout.lookup(name, f"{self.name}.block_diag")
        self.counts["nhvp"] += p.size
        return self._accumulate("hvp", "block_diag", theta, p.size, p.slice.start, p.slice.stop, chunk,
                                lambda P, r, lo: P[r, lo + r])

    # ---- memory forecast ------------------------------------------------
    def bytes_per_direction(self, theta):
        """The largest batch's forecast working memory per direction, plus
        the direction's block and its accumulated product (2 n entries).
        Each batch's probe forward pass is cached when the batches are held;
        for a streamed source this is one forward pass over the data."""
        theta = B.asarray(theta)
        per = max(obj.bytes_per_direction(theta) for obj, _ in self._batches())
        return per + 2 * theta.shape[0] * theta.dtype.itemsize

    def __repr__(self):
        n = "unbound" if self.layout is None else self.layout.n
        source = "streamed" if self.streamed else f"{len(self._held)} batches, {self._size} examples"
        return f"DatasetObjective(n={n}, loss={self._loss.name}, {source})"
