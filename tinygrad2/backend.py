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


def to_device(array):
    """The explicit host-to-device transfer: returns an ``xp`` array."""
    return xp.asarray(array)


if os.environ.get("TINYGRAD2_BACKEND", "numpy") != "numpy":
    use(os.environ["TINYGRAD2_BACKEND"])
