"""Finite-difference checks of gradients, JVPs, HVPs and dense Hessians.

Every check runs in float64 and uses the fourth-order central stencil

    d/dε F(x + ε v) ≈ [F(x - 2hv) - 8 F(x - hv) + 8 F(x + hv) - F(x + 2hv)] / 12h,

whose truncation error is O(h⁴). Kink safety: before differencing, one
forward-mode pass along all directions asks every primitive with a kink
(ReLU, abs, maximum, max) how far along each direction its nearest kink lies
(to first order); the step is then at most a tenth of that distance, so no
pre-activation changes sign inside the stencil. A point that lies exactly on a
kink has no derivative to check and raises ``ValueError``.

Each check returns an :class:`FDReport` with the error figures.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import backend as B
from .functional import grad, hessian, hvp, jvp
from .tensor import Tensor, kink_monitor, no_grad

_STENCIL = ((-2, 1.0), (-1, -8.0), (1, 8.0), (2, -1.0))


@dataclass
class FDReport:
    """Error of an AD quantity against finite differences.

    ``rel_error`` is ||ad - fd||_F / ||fd||_F; ``abs_error`` the largest entry
    of |ad - fd|; ``step`` the smallest step used (after kink limiting);
    ``symmetry`` (Hessians only) is ||H - H^T||_F / ||H||_F."""

    what: str
    abs_error: float
    rel_error: float
    step: float
    directions: int
    symmetry: float | None = None

    def __str__(self):
        sym = "" if self.symmetry is None else f", symmetry {self.symmetry:.2e}"
        return (
            f"{self.what}: rel error {self.rel_error:.2e}, max abs error {self.abs_error:.2e} "
            f"over {self.directions} directions (step {self.step:.1e}{sym})"
        )


def _float64(x):
    return B.asarray(x, B.xp.float64)


def _default_directions(n, limit, seed):
    if n <= limit:
        return B.xp.eye(n)
    rng = B.xp.random.default_rng(seed) if hasattr(B.xp.random, "default_rng") else B.xp.random
    return rng.standard_normal((limit, n))


KINK_FRACTION = 0.05
"""Finite-difference steps stay within this fraction of the distance to the
nearest kink: a tenth, halved because the 4th-order stencil reaches 2h."""


def safe_steps(f, x, V, step=1e-3):
    """Per-direction steps: ``step / max|v|``, cut to a tenth of the distance
    to the nearest kink (halved again because the stencil reaches 2h)."""
    scale = B.xp.abs(V).reshape(V.shape[0], -1).max(axis=1)
    if bool(B.xp.any(scale == 0)):
        raise ValueError("finite differences: a direction is all zeros")
    steps = step / scale
    with B.precision("float64"), no_grad(), kink_monitor() as margins:
        f(Tensor(x, tangent=V))
    if margins:
        distance = margins[0]
        for m in margins[1:]:
            distance = B.xp.minimum(distance, m)
        on_kink = B.xp.nonzero(distance == 0)[0]
        if on_kink.size:
            raise ValueError(
                f"finite differences: x lies on a kink along direction(s) {B.to_host(on_kink)[:5].tolist()}; "
                f"the derivative is not defined there"
            )
        steps = B.xp.minimum(steps, KINK_FRACTION * distance)
    return steps


def central_difference(F, x, V, steps):
    """(K, *F(x).shape): the directional derivative of F along each row of V."""
    rows = []
    for v, h in zip(V, B.to_host(steps).tolist()):
        acc = None
        for c, w in _STENCIL:
            term = w * F(x + (c * h) * v)
            acc = term if acc is None else acc + term
        rows.append(acc / (12 * h))
    return B.xp.stack(rows)


def _report(what, ad, fd, steps, symmetry=None):
    diff = ad - fd
    denom = max(float(B.xp.linalg.norm(fd)), float(B.xp.linalg.norm(ad)), 1e-300)
    return FDReport(
        what=what,
        abs_error=float(B.xp.abs(diff).max()) if diff.size else 0.0,
        rel_error=float(B.xp.linalg.norm(diff)) / denom,
        step=float(B.xp.min(steps)),
        directions=int(len(steps)),
        symmetry=symmetry,
    )


def _value(f):
    def F(x):
        with B.precision("float64"), no_grad():
            return f(Tensor(x)).data
    return F


def check_grad(f, x, directions=None, step=1e-3, max_directions=64, seed=0) -> FDReport:
    """Directional derivatives g·v (reverse mode) against differences of f.
    Default directions: the coordinates if n <= max_directions, else that
    many Gaussian directions."""
    x = _float64(x)
    V = _default_directions(x.shape[0], max_directions, seed) if directions is None else _float64(directions)
    with B.precision("float64"):
        g = grad(f)(x)
    steps = safe_steps(f, x, V, step)
    return _report("gradient", V @ g, central_difference(_value(f), x, V, steps), steps)


def check_jvp(f, x, directions=None, step=1e-3, max_directions=64, seed=0) -> FDReport:
    """Forward-mode J v against differences of f (f may be vector valued)."""
    x = _float64(x)
    V = _default_directions(x.shape[0], max_directions, seed) if directions is None else _float64(directions)
    with B.precision("float64"):
        _, Jv = jvp(f, x, V)
    steps = safe_steps(f, x, V, step)
    return _report("jvp", Jv, central_difference(_value(f), x, V, steps), steps)


def check_hvp(f, x, directions=None, step=1e-3, max_directions=64, seed=0) -> FDReport:
    """Forward-over-reverse H v against differences of the gradient."""
    x = _float64(x)
    V = _default_directions(x.shape[0], max_directions, seed) if directions is None else _float64(directions)
    with B.precision("float64"):
        HV = hvp(f, x, V)
        g = grad(f)
        steps = safe_steps(f, x, V, step)
        return _report("hvp", HV, central_difference(g, x, V, steps), steps)


def check_hessian(f, x, step=1e-3, chunk=None) -> FDReport:
    """The assembled dense Hessian against differences of the gradient along
    every coordinate, with its symmetry error."""
    x = _float64(x)
    with B.precision("float64"):
        H = hessian(f, x, chunk=chunk)
        E = B.xp.eye(x.shape[0])
        steps = safe_steps(f, x, E, step)
        fd = central_difference(grad(f), x, E, steps)
    norm = max(float(B.xp.linalg.norm(H)), 1e-300)
    symmetry = float(B.xp.linalg.norm(H - H.T)) / norm
    return _report("hessian", H, fd, steps, symmetry=symmetry)
