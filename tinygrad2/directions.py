"""Batches of directions for curvature products: unit rows and Rademacher signs.

Every product takes directions V of shape (K, n); these are the two kinds the
library draws itself. Random draws use the backend's generator
(``xp.random.default_rng`` where it exists), seeded by an int, None or a
generator passed in.

``tracked`` keeps on the host which entries of a batch of directions are
nonzero, so that slicing parameters out of a flat θ (``getitem``'s jvp) can
drop the tangents of blocks no direction touches without a device sync per
slice.
"""
from __future__ import annotations

import weakref

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


_live = {}  # id(flat tangent) -> (weak reference to it, its live columns)
ALL_LIVE = "all live"
"""The mask of a tangent whose every column is live (dense directions): its
slices are all live too, known without looking at a mask."""


def tracked(tangent):
    """A fresh view of a (K, n) tangent whose live columns (the entries
    nonzero in some direction) are computed now, in one device-to-host
    transfer, and kept on the host for ``getitem``: the slices it cuts from
    the view inherit their part of the mask, so a tree of P parameter slices
    costs one transfer per pass instead of one per slice. For the leaves the
    library makes for one pass (``hvp``, ``ggn_vp``): the view is new every
    time, so a caller's direction array changed in place is never seen
    through a stale mask. Untracked tangents are checked slice by slice."""
    view = tangent[...]
    live = B.to_host((view != 0).any(axis=0))  # (faster than xp.any(view, axis=0))
    remember_live(view, ALL_LIVE if live.all() else live)
    return view


def known_live(tangent):
    """The live-column mask of a tracked tangent (or a slice of one), or
    :data:`ALL_LIVE`, else None."""
    entry = _live.get(id(tangent))
    return entry[1] if entry is not None and entry[0]() is tangent else None


def remember_live(tangent, mask):
    key = id(tangent)
    forget = lambda ref: _live.get(key, (None,))[0] is ref and _live.pop(key)  # noqa: E731
    _live[key] = (weakref.ref(tangent, forget), mask)
    return mask
