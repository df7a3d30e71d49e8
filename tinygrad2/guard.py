"""Argument checks at the API boundary: real dtypes and finite values.

The engine's non-finite policy (see :mod:`tinygrad2.objective`): inputs are
checked, results are not. Every public entry point -- the Objective's
methods and the functional transforms (``grad``, ``hvp``, ...) -- refuses
a parameter vector, a direction or a data array that holds NaN or ±inf
with :class:`NonFiniteError` before doing any work, and an array whose
dtype is not real (complex, object, strings) with a TypeError. One
``xp.isfinite(a).all()`` per array and call: the first index and the count
of bad entries are looked up only when the check fails.
"""
from __future__ import annotations

from . import backend as B

REAL_KINDS = "fiu"  # floating, signed and unsigned integers


class NonFiniteError(FloatingPointError, ValueError):
    """An input array holds NaN or ±inf (a FloatingPointError and a ValueError)."""


def check_real(a, where, what, kinds=REAL_KINDS):
    """Refuse arrays (or array-likes) whose dtype kind is not in ``kinds``."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and B.xp.dtype(dtype).kind not in kinds:
        shape = tuple(getattr(a, "shape", ()))
        raise TypeError(f"{where}: {what} must hold real numbers, got dtype {dtype} (shape {shape})"
                        + ("; pass the real and imaginary parts separately" if dtype.kind == "c" else ""))
    return a


def as_real(a, where, what, dtype=None, kinds=REAL_KINDS):
    """``backend.asarray(a, dtype)`` after :func:`check_real` on ``a`` as given
    (so a complex array is refused instead of losing its imaginary part)."""
    check_real(a, where, what, kinds)
    try:
        out = B.asarray(a, dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where}: {what} must be a real array, got {type(a).__name__} ({err})") from None
    return check_real(out, where, what, kinds)


def check_finite(a, where, what):
    """Raise :class:`NonFiniteError` when ``a`` holds NaN or ±inf, naming
    ``where`` (the operation), ``what`` (the argument), the count and the
    first bad index."""
    if a.dtype.kind != "f" or bool(B.xp.isfinite(a).all()):
        return a
    bad = ~B.xp.isfinite(a)
    count = int(bad.sum())
    first = tuple(int(i) for i in B.xp.argwhere(bad)[0])
    index = first[0] if len(first) == 1 else first
    raise NonFiniteError(
        f"{where}: {what} has {count} non-finite entr{'y' if count == 1 else 'ies'} (NaN or inf) "
        f"of {a.size}, shape {tuple(a.shape)}; the first at index {index} is {B.to_host(a[first]).item()!r}"
    )


def check_labels(labels, logits_shape, where):
    """Refuse class labels that are not integers of shape (n,) for logits
    (n, C), or that lie outside [0, C); one host sync."""
    if len(logits_shape) != 2:
        raise ValueError(f"{where}: logits must be (n, C), got shape {logits_shape}")
    n, classes = logits_shape
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers of shape ({n},), got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and _largest_label(labels, classes) >= classes:
        raise ValueError(f"{where}: labels must lie in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _largest_label(labels, classes):
    """The largest label, or at least ``classes`` when one is negative. Read as
    unsigned (in their own byte order), negative b-bit labels are >= 2^(b-1):
    one reduction, unless that is below ``classes`` (int8 labels of over 128
    classes), where min and max are both looked at."""
    if labels.dtype.kind == "i" and classes > 2 ** (8 * labels.itemsize - 1):
        return classes if bool(labels.min() < 0) else int(labels.max())
    return int(labels.view(labels.dtype.str.replace("i", "u")).max())
