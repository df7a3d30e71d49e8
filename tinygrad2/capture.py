"""Layer capture: per dense or convolution layer, its inputs and the cotangents of its outputs.

Kronecker-factored methods (K-FAC, KFC) need, for every affine layer
y = W a (+ b), two things that a flat-θ gradient has already summed away:

* the layer's inputs a, one row per example and spatial location, in the
  column order of the weight's own flattening, so that the weight gradient
  is Σ_rows g aᵀ reshaped to W's shape;
* the cotangents g = ∂(·)/∂y of its outputs, one row per example and
  location, for the loss itself and for any batch of backward seeds.

A model marks its layers by calling :func:`record` in their forward pass,
but only while a :func:`recording` block is open (``if capture.active()``):
outside one, nothing is recorded, nothing is added to the graph, and
``apply(theta, X)`` stays a pure function. Inside, :func:`record` returns
``output + probe`` for a zero leaf ``probe`` of the output's shape; after the
backward pass ``probe.grad`` is the output cotangent, and its tangent (when
the backward seed carried K tangents) the K backpropagated seeds. The
objective drives all of this (:meth:`tinygrad2.Objective.capture`);
optimizers read the finished :class:`LayerCapture` records from there and
never import the model code.

Shapes: the output's axis 1 holds the layer's output features (Linear: (N,
out); Conv2d: (N, C_out, OH, OW)); every other axis is an example or a
location, so rows are ordered (example, location...) both for the inputs and
for the cotangents.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from . import backend as B
from .tensor import Tensor

_records = None  # the list being filled while a recording() block is open


@dataclass
class LayerCapture:
    """One affine layer's record from one forward and backward pass.

    ``inputs`` (M, k): rows = examples × locations (M = examples · locations),
    columns in the order of ``weight.reshape(out, k)``. ``grad_outputs`` (M, out):
    the cotangent rows of the loss. ``seed_outputs`` (K, M, out) or None: the
    cotangent rows of the K backward seeds (see :meth:`Objective.capture`)."""

    name: str
    weight: str
    bias: str | None
    inputs: object
    examples: int
    locations: int
    grad_outputs: object = None
    seed_outputs: object = None
    _probe: Tensor = field(default=None, repr=False)
    _channels_last: object = field(default=None, repr=False)

    def _finish(self, seeds):
        grad, probe = self._probe.grad, self._probe
        self._probe = None
        if grad is None:  # the loss does not depend on this layer's output: zero cotangents
            zeros = B.xp.zeros((max(seeds, 1),) + probe.shape, probe.dtype)
            self.grad_outputs = self._channels_last(zeros[:1])[0]
            self.seed_outputs = self._channels_last(zeros) if seeds else None
            return self
        self.grad_outputs = self._channels_last(grad.data[None])[0]
        if grad.tangent is not None:
            self.seed_outputs = self._channels_last(grad.tangent)
        elif seeds:  # seeds were sent but none reached this layer
            self.seed_outputs = self._channels_last(B.xp.zeros((seeds,) + probe.shape, probe.dtype))
        return self


@dataclass
class Capture:
    """What :meth:`tinygrad2.Objective.capture` returns: the loss f(θ), its
    gradient (n,), one :class:`LayerCapture` per recorded layer (in forward
    order), and ``sample_grad`` (1, n): Jᵀ r for the loss-Hessian sample r
    when ``factor="sample"`` (else None)."""

    loss: float
    grad: object
    layers: list
    factor: str | None = None
    sample_grad: object = None


def active() -> bool:
    """Whether a :func:`recording` block is open (layers call :func:`record` only then)."""
    return _records is not None


@contextlib.contextmanager
def recording():
    """Collect the :class:`LayerCapture` of every layer that calls :func:`record`
    during the block; yields the list (filled in call order)."""
    global _records
    saved, _records = _records, []
    try:
        yield _records
    finally:
        _records = saved


def record(name, weight, bias, inputs, output: Tensor) -> Tensor:
    """Register a layer's forward pass; returns ``output + probe`` (same value).

    ``name``: the layer's path; ``weight``, ``bias``: the θ names of its
    parameters (``bias`` None if it has none); ``inputs``: an ``xp`` array
    (M, k) as in :class:`LayerCapture`; ``output``: the layer's output Tensor,
    features on axis 1."""
    if _records is None:
        raise RuntimeError("capture.record: no recording() block is open (layers call it only when active())")
    shape = output.shape
    if output.ndim < 2:
        raise ValueError(f"capture.record: layer '{name}' output has shape {shape}; need (N, features, ...)")
    examples, rows = shape[0], output.size // shape[1]
    if inputs.ndim != 2 or inputs.shape[0] != rows:
        raise ValueError(f"capture.record: layer '{name}' inputs have shape {tuple(inputs.shape)}; expected "
                         f"({rows}, k): one row per example and location of the output {shape}")
    probe = Tensor(B.xp.zeros(shape, output.dtype), requires_grad=True)

    def channels_last(arr):  # (K, N, C, *locations) -> (K, M, C)
        return B.xp.moveaxis(arr, 2, -1).reshape(arr.shape[0], rows, shape[1])

    _records.append(LayerCapture(name, weight, bias, inputs, examples, rows // examples,
                                 _probe=probe, _channels_last=channels_last))
    return output + probe


def kronecker_factors(layer):
    """(Ω, Γ) of one :class:`LayerCapture` whose ``seed_outputs`` hold backpropagated
    loss-Hessian factor seeds (``Objective.capture(theta, factor=...)``):

        Ω = (1/N) Σ_i Σ_t ā_it ā_itᵀ,   Γ = (1/T) Σ_k Σ_i Σ_t g_itk g_itkᵀ,

    ā = (a, 1) when the layer has a bias (its last column is the bias's).
    For N examples and T locations (K-FAC for T = 1, KFC's Ω and Γ otherwise).
    For one example and one location, Γ ⊗ Ω (NumPy's ``kron``, θ's row-major
    order of the (out, in + 1) matrix [W | b]) is exactly the layer's block of the
    Gauss-Newton matrix when the seeds are the exact factor."""
    xp = B.xp
    if layer.seed_outputs is None:
        raise ValueError(f"capture.kronecker_factors: layer '{layer.name}' has no seed cotangents; "
                         f"capture with factor='exact' or 'sample'")
    a = layer.inputs
    if layer.bias is not None:
        a = xp.concatenate([a, xp.ones((a.shape[0], 1), a.dtype)], axis=1)
    g = layer.seed_outputs.reshape(-1, layer.seed_outputs.shape[-1])
    return a.T @ a / layer.examples, g.T @ g / layer.locations


def block_indices(layout, weight, bias=None):
    """The θ indices of a layer's (out, in + 1) matrix [W | b] in row-major order
    (an ``xp`` integer array): the rows and columns of its block Γ ⊗ Ω."""
    w = layout[weight]
    cols = B.xp.arange(w.size).reshape(w.shape[0], -1) + w.slice.start
    if bias is not None:
        cols = B.xp.concatenate([cols, (B.xp.arange(w.shape[0]) + layout[bias].slice.start)[:, None]], axis=1)
    return cols.reshape(-1)


def finish(records, seeds=0):
    """Fill ``grad_outputs`` and ``seed_outputs`` of records after the backward pass
    that carried ``seeds`` tangent seeds (a layer they did not reach gets zeros)."""
    return [r._finish(seeds) for r in records]
