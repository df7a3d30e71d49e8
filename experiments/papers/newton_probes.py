"""Measurements of an MLP and of its Hessian for the ``mlp-mnist-newton``
analysis: dead ReLUs, the spread of the logits over the inputs, the
eigen-decomposition of H and how a Newton direction lies on its eigenvectors.
"""
from __future__ import annotations

import dataclasses

import numpy as np  # host-side only: small dense linear algebra and summaries

from tinygrad2 import Objective, backend as B, no_grad

from ..probes import dead_unit_counts
from .common import NORM_FLOOR

FLAT_EIGENVALUE_FRACTION = 1e-3  # |λ| below this fraction of max |λ| is a flat direction (printed as "1e-3")


def dead_relu_fraction(model, theta, X) -> float:
    """Fraction of hidden ReLUs that are zero on every row of X (dead: no
    gradient flows through them, and their weights get none): the
    ``dead_units`` probe's counts over all hidden layers."""
    labels = B.xp.zeros(len(X), dtype=B.xp.int64)  # the capture needs a loss; dead units do not depend on it
    counts = dead_unit_counts(Objective(model.apply, "cross_entropy", X, labels, layout=model.layout()), theta)
    return sum(d for d, _ in counts.values()) / max(sum(u for _, u in counts.values()), 1)


def logit_spread(model, theta, X):
    """Mean over classes of the std of the logits across the inputs: 0 when the
    outputs no longer depend on the input."""
    with no_grad():
        out = np.asarray(B.to_host(model.eval().apply(theta, X).data), dtype=np.float64)
    model.train()
    return float(out.std(axis=0).mean())


@dataclasses.dataclass
class Spectrum:
    """The eigen-decomposition of the symmetrized Hessian at one point."""
    H: np.ndarray
    lam: np.ndarray  # ascending
    Q: np.ndarray    # eigenvectors as columns
    tol: float       # |λ| <= tol counts as zero


def symmetric_hessian(objective, theta):
    H = np.asarray(B.to_host(objective.hessian(theta)), dtype=np.float64)
    return (H + H.T) / 2


def sign_counts(lam, n):
    """(tol, negative, zero) of a spectrum: |λ| <= n·eps·max|λ| counts as zero."""
    tol = n * np.finfo(np.float64).eps * float(np.abs(lam).max())
    return tol, int((lam < -tol).sum()), int((np.abs(lam) <= tol).sum())


def newton_direction(H, g):
    """d = -H⁻¹ g, as the Newton row takes it (least squares if H is singular)."""
    try:
        return np.linalg.solve(H, -g)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(H, -g, rcond=None)[0]


def step_shares(spectrum, d):
    """(share of d along negative eigenvectors, share along flat ones), by norm."""
    lam = spectrum.lam
    along = np.abs(spectrum.Q.T @ d)  # |components| of d on the eigenvectors
    total = max(float(np.linalg.norm(along)), NORM_FLOOR)
    flat = np.abs(lam) < FLAT_EIGENVALUE_FRACTION * float(np.abs(lam).max())
    return (float(np.linalg.norm(along[lam < -spectrum.tol]) / total),
            float(np.linalg.norm(along[flat]) / total))
