"""The one module that owns the array namespace.

Every other module reaches array math through ``backend.xp`` (looked up at call
time, so switching backends takes effect everywhere) and never imports
``numpy`` for math. ``xp`` is NumPy by default and CuPy after ``use("cupy")``
or with the environment variable ``TINYGRAD2_BACKEND=cupy``.

Dtype policy: ``default_dtype`` (float32) is used for training; verification
code asks for float64 explicitly, e.g. ``with backend.precision("float64"):``.
Moving an array to the host is one explicit call, :func:`to_host`.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import numpy

xp = numpy
name = "numpy"
default_dtype = numpy.dtype("float32")

_BACKENDS = ("numpy", "cupy")


def use(backend: str) -> None:
    """Select the array backend: ``"numpy"`` or ``"cupy"``."""
    global xp, name
    if backend not in _BACKENDS:
        raise ValueError(f"backend.use: unknown backend {backend!r}; choose one of {_BACKENDS}")
    try:
        module = importlib.import_module(backend)
    except ImportError as err:
        raise ImportError(
            f"backend.use: backend {backend!r} is not installed; "
            f"install it with `pip install tinygrad2[gpu]` (CuPy)"
        ) from err
    xp, name = module, backend


def set_default_dtype(dtype) -> None:
    """Set the floating dtype given to new Tensors made from Python data."""
    global default_dtype
    dt = numpy.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"backend.set_default_dtype: dtype must be floating, got {dt}")
    default_dtype = dt


@contextlib.contextmanager
def precision(dtype):
    """Temporarily change the default dtype: ``with precision("float64"): ...``."""
    old = default_dtype
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(old)


def asarray(data, dtype=None):
    """Convert to an ``xp`` array. Arrays keep their dtype unless ``dtype`` is
    given; Python numbers and lists become the default float dtype."""
    if isinstance(data, xp.ndarray):
        return data if dtype is None or data.dtype == dtype else data.astype(dtype)
    if isinstance(data, numpy.ndarray) and xp is not numpy:
        raise TypeError(
            f"backend.asarray: got a host numpy array of shape {data.shape} while the backend "
            f"is {name}; move it explicitly with backend.to_device(array)"
        )
    if dtype is None and not hasattr(data, "dtype"):
        dtype = default_dtype
    return xp.asarray(data, dtype=dtype)


def to_host(array):
    """The explicit device-to-host transfer: returns a NumPy array."""
    if hasattr(array, "data") and hasattr(array, "_node"):  # a Tensor
        array = array.data
    if xp is not numpy and isinstance(array, xp.ndarray):
        return xp.asnumpy(array)
    return numpy.asarray(array)


def reduce(reduction, x, axis, keepdims=False):
    """``reduction(x, axis=axis, keepdims=keepdims)``, ``reduction`` being
    ``xp.sum`` or ``xp.max``. NumPy runs a reduction's inner loop once per
    row, so over a short last axis (10 classes of logits) it spends about
    70 ns per row. Over the last axis alone (-1 or (-1,)) of at most 32
    entries, this reduces the leading axis of the transposed copy instead,
    long vectorised rows: (1000, 10) float32 in 11-13 µs instead of 69 (max)
    and 34 (sum). A sum then adds the classes in order, not pairwise: the
    same to rounding. Arrays under 4,096 entries and float16 (whose plain sum
    accumulates in float32) take the plain route. Every backend takes the
    same route, so that a device's results match NumPy's bit for bit where
    the kernels do (tests/_device.py); on CuPy the copy is one extra pass."""
    short_last = axis in (-1, (-1,)) and x.ndim >= 2 and x.shape[-1] <= 32
    if not short_last or x.size < 4096 or x.dtype.itemsize < 4:
        return reduction(x, axis=axis, keepdims=keepdims)
    out = reduction(xp.ascontiguousarray(x.transpose((x.ndim - 1,) + tuple(range(x.ndim - 1)))), axis=0)
    return out[..., None] if keepdims else out


def to_device(array):
    """The explicit host-to-device transfer: returns an ``xp`` array."""
    return xp.asarray(array)


if os.environ.get("TINYGRAD2_BACKEND", "numpy") != "numpy":
    use(os.environ["TINYGRAD2_BACKEND"])
