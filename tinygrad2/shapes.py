"""Argument normalisation for Tensor methods: axes, reshape targets, integer
indices (host-side Python; no array math)."""
from __future__ import annotations

import math
import numbers


def axes(axis, ndim, op):
    """Axes as a sorted tuple of negative ints (valid with extra leading axes)."""
    if axis is None:
        return ALL_AXES[ndim] if ndim < len(ALL_AXES) else tuple(range(-ndim, 0))
    if isinstance(axis, int):
        if not -ndim <= axis < ndim:
            raise ValueError(f"{op}: axis {axis} is out of range for a tensor of {ndim} dims")
        return (axis - ndim if axis >= 0 else axis,)
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of {ndim} dims")
    return tuple(sorted(a % ndim - ndim for a in axis))


ALL_AXES = [tuple(range(-n, 0)) for n in range(8)]


def resolve_shape(shape, old):
    shape = tuple(map(int, shape))
    size = math.prod(old)
    if -1 in shape:
        if shape.count(-1) > 1:
            raise ValueError(f"reshape: cannot reshape {old} into {shape}: at most one -1 allowed")
        known = -math.prod(shape)
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape {old} into {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    elif math.prod(shape) != size:
        raise ValueError(f"reshape: cannot reshape {old} ({size} elements) into {shape} ({math.prod(shape)})")
    return shape


def is_int(i):
    return isinstance(i, int) or (hasattr(i, "dtype") and i.ndim == 0 and i.dtype.kind in "iu")


def on_host(i):
    """Whether an index entry is plain host data (an int, a slice of ints,
    None, Ellipsis) that can index a host array without a device transfer."""
    if isinstance(i, slice):
        return _host_int(i.start) and _host_int(i.stop) and _host_int(i.step)
    return i is Ellipsis or _host_int(i)


def _host_int(b):
    return b is None or type(b) is int or isinstance(b, numbers.Integral)
