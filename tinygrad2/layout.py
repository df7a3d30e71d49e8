"""The parameter layout: where each named parameter lives inside flat theta.

A :class:`Layout` is an ordered list of :class:`Param` (name, shape, kind,
slice) tiling ``[0, n)``. Models build one (``nets.Module.layout()``), the
Objective carries it, and structure-aware optimizers (AdaHessian's spatial
averaging, SGD-PH's 1-D groups, per-layer probes) read it without importing
``nets``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import backend as B
from .tensor import Tensor


class UnknownParameterError(KeyError):
    """A parameter name that the layout does not have (a KeyError whose
    message reads as written, without KeyError's quotes)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


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
        return self.lookup(name)

    def lookup(self, name, where="Layout") -> Param:
        """The :class:`Param` called ``name``; :class:`UnknownParameterError`
        (a KeyError) naming ``where``, the name and the names there are."""
        if isinstance(name, Param):
            name = name.name
        if not isinstance(name, str) or name not in self._by_name:
            raise UnknownParameterError(
                f"{where}: no parameter named {name!r}; the layout has {self.names}")
        return self._by_name[name]

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
        p = self.lookup(name, "Layout.indicator")
        v = B.xp.zeros((self.n,), dtype or B.default_dtype)
        v[p.slice] = 1
        return v

    def __repr__(self):
        body = ", ".join(f"{p.name}{p.shape}:{p.kind}" for p in self.params)
        return f"Layout(n={self.n}; {body})"
