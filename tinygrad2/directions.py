"""Batches of directions for curvature products: unit rows and Rademacher signs.

Every product takes directions V of shape (K, n); these are the two kinds the
library draws itself. Random draws use the backend's generator
(``xp.random.default_rng`` where it exists), seeded by an int, None or a
generator passed in.
"""
from __future__ import annotations

from . import backend as B


def unit_rows(start, stop, n, dtype):
    """Rows start..stop-1 of the n x n identity, shape (stop - start, n)."""
    E = B.xp.zeros((stop - start, n), dtype)
    E[B.xp.arange(stop - start), B.xp.arange(start, stop)] = 1
    return E


def generator(seed):
    """A random generator: ``seed`` itself if it already is one (anything with
    ``integers`` or ``randint``), else a new one of the backend seeded by it."""
    if hasattr(seed, "integers") or hasattr(seed, "randint"):
        return seed
    if hasattr(B.xp.random, "default_rng"):
        return B.xp.random.default_rng(seed)
    return B.xp.random.RandomState(seed)


def rademacher(shape, seed=None, dtype=None):
    """Random signs ±1 with probability ½ each.

    Drawn as integers in {0, 1} -- ``integers(0, 2)``: the upper bound is
    exclusive -- then mapped by 2b - 1. (``randint(0, 1) * 2 - 1``, as one
    widely used package writes it, is always -1.) ``seed``: an int, None, or
    a generator with ``integers``/``randint``."""
    rng = generator(seed)
    draw = getattr(rng, "integers", None) or rng.randint
    bits = draw(0, 2, size=shape)
    return (2 * bits - 1).astype(dtype or B.default_dtype)
