"""A CPU emulation of a device (CuPy-like) array backend, for testing the CuPy
code paths on a machine without a GPU.

What CuPy does that breaks NumPy-written code, and what is emulated here:

(a) a device array refuses implicit conversion to the host: ``__array__``
    raises TypeError, so ``numpy.asarray(a)``, h5py, matplotlib or SciPy given
    a device array fail (they all go through ``__array__``);
(b) a host ``numpy.ndarray`` of ndim >= 1 mixed with a device array in a ufunc
    or operator, passed to an ``xp`` function, or assigned into a device array
    raises TypeError (0-d arrays, NumPy scalars and Python scalars mix fine);
    host *index* arrays are accepted, as CuPy copies them to the device;
(c) the explicit transfers are ``xp.asnumpy(a)`` and ``xp.asarray(host)``
    (copies); ``float``, ``int``, ``bool``, ``item`` and ``tolist`` work;
    reductions return 0-d device arrays, not NumPy scalars;
(d) ``xp.random.default_rng(seed)`` draws a different stream than NumPy's for
    the same seed (NumPy is seeded with a transformed seed here).

``DeviceArray`` wraps (does not subclass) a NumPy array, since ``np.asarray``
of a subclass cannot be intercepted. All arithmetic is NumPy's, so results are
bit-identical to the NumPy backend except where (d) changes random draws.

Install it with ``with emulated(): ...`` or the ``emulated_backend`` fixture.
"""
from __future__ import annotations

import collections
import contextlib
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from tinygrad2 import backend


SYNCS = collections.Counter()
"""Device-to-host synchronisations by kind (``float``, ``bool``, ``asnumpy``, ...):
what would stall a GPU stream; ``SYNCS.clear()`` before, read after."""


def _refuse_host(x, where):
    if isinstance(x, np.ndarray) and x.ndim >= 1:
        raise TypeError(
            f"emulated device: {where} got a host numpy.ndarray of shape {x.shape}; "
            "unsupported type <class 'numpy.ndarray'> (move it with xp.asarray)"
        )


def _unwrap(x, where, allow_host=False):
    """Device arrays -> their NumPy arrays, recursively in lists/tuples/dicts;
    host arrays of ndim >= 1 refused unless ``allow_host``."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where, allow_host) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where, allow_host) for k, v in x.items()}
    if not allow_host:
        _refuse_host(x, where)
    return x


def _wrap(x):
    """NumPy arrays and scalars -> DeviceArray (recursively in tuples/lists)."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))  # CuPy returns 0-d arrays, not scalars
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    if hasattr(x, "_fields"):  # namedtuple results (e.g. linalg.eigh)
        return type(x)(*(_wrap(v) for v in x))
    return x


def _call(fn, args, kwargs, where, allow_host=False):
    return _wrap(fn(*_unwrap(args, where, allow_host), **_unwrap(kwargs, where, allow_host)))


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": a NumPy array that refuses implicit transfers."""

    __slots__ = ("_a", "__weakref__")  # CuPy arrays are weak-referenceable too
    __hash__ = None

    def __init__(self, array):
        assert isinstance(array, np.ndarray), type(array)
        self._a = array

    # (a): no implicit conversion to the host
    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    # (b): operators and NumPy functions stay on the device
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"{ufunc.__name__}.{method}"
        out = kwargs.pop("out", None)
        kwargs = _unwrap(kwargs, where)
        if out is not None:
            if not all(isinstance(o, DeviceArray) for o in out):
                raise TypeError(f"emulated device: {where}: out= must be device arrays")
            kwargs["out"] = tuple(o._a for o in out)
        result = getattr(ufunc, method)(*_unwrap(inputs, where), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, args, kwargs, func.__name__)

    # attributes and methods of the wrapped array
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))
    real = property(lambda self: DeviceArray(self._a.real))
    imag = property(lambda self: DeviceArray(self._a.imag))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ etc.: nothing implicit
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *args, **kwargs: _call(attr, args, kwargs, f"ndarray.{name}")

    def get(self):
        """CuPy's explicit device-to-host copy."""
        SYNCS["get"] += 1
        return self._a.copy()

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, "getitem", allow_host=True)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, "setitem", allow_host=True)] = _unwrap(value, "setitem (value)")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    # (c): explicit, synchronising conversions to Python values work
    def __float__(self):
        SYNCS["float"] += 1
        return float(self._a)

    def __int__(self):
        SYNCS["int"] += 1
        return int(self._a)

    def __bool__(self):
        SYNCS["bool"] += 1
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def item(self, *args):
        SYNCS["item"] += 1
        return self._a.item(*args)

    def tolist(self):
        SYNCS["tolist"] += 1
        return self._a.tolist()

    def __format__(self, spec):
        SYNCS["format"] += 1
        return format(self._a, spec)

    def __repr__(self):
        return "device" + repr(self._a)[5:] if repr(self._a).startswith("array") else f"device({self._a!r})"

    def __str__(self):
        return str(self._a)

    def __copy__(self):
        return DeviceArray(self._a.copy())

    def __deepcopy__(self, memo):
        return DeviceArray(self._a.copy())

    def __reduce__(self):  # pickling (process pools) keeps the array on the "device"
        return (DeviceArray, (self._a,))


class _Ufunc:
    """A NumPy ufunc with CuPy's refusal of host arrays; keeps ``at``/``reduce``/..."""

    def __init__(self, ufunc):
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return self._method("__call__", args, kwargs)

    def _method(self, method, args, kwargs):
        if not any(isinstance(a, DeviceArray) for a in args):  # scalars only
            for a in args:
                _refuse_host(a, self.__name__)
            return _wrap(getattr(self._u, method)(*args, **kwargs))
        return getattr(self._u, method)(*args, **kwargs)  # dispatches to __array_ufunc__

    def __getattr__(self, name):
        attr = getattr(self._u, name)
        if name in ("at", "reduce", "accumulate", "outer", "reduceat"):
            return lambda *args, **kwargs: self._method(name, args, kwargs)
        return attr


class _Generator:
    """``xp.random.Generator``: NumPy's, seeded differently, drawing device arrays."""

    def __init__(self, seed):
        if isinstance(seed, (int, np.integer)):
            seed = [0xC0DE, int(seed)]  # (d): another stream than NumPy's for the same seed
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        attr = getattr(self._g, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _call(attr, args, kwargs, f"Generator.{name}")


def _asarray(a, dtype=None, *args, **kwargs):
    """The explicit host-to-device transfer (a copy, like a real one)."""
    if isinstance(a, DeviceArray):
        return a if dtype is None or a.dtype == dtype else DeviceArray(a._a.astype(dtype))
    return DeviceArray(np.array(_unwrap(a, "asarray", allow_host=True), dtype, *args, **kwargs))


def _array(a, dtype=None, *args, copy=True, **kwargs):
    """``xp.array``: a new array unless ``copy=False`` (as NumPy's and CuPy's)."""
    return DeviceArray(np.array(_unwrap(a, "array", allow_host=True), dtype, *args, copy=copy, **kwargs))


def _asnumpy(a, *args, **kwargs):
    """The explicit device-to-host transfer (a copy)."""
    if isinstance(a, DeviceArray):
        SYNCS["asnumpy"] += 1
        return a._a.copy()
    return np.asarray(a)


class _Namespace(types.ModuleType):
    """A module-like view of a NumPy namespace with device semantics."""

    def __init__(self, name, module, overrides):
        super().__init__(name)
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):  # xp.lib.stride_tricks, ...: the same rules inside
            wrapped = _Namespace(f"{self.__name__}.{name}", attr, {})
        elif isinstance(attr, np.ufunc):
            wrapped = _Ufunc(attr)
        elif isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, finfo, newaxis, pi, ...: pass through
        else:
            def wrapped(*args, _fn=attr, _name=name, **kwargs):
                return _call(_fn, args, kwargs, _name)
            wrapped.__name__ = name
        self.__dict__[name] = wrapped
        return wrapped


linalg = _Namespace("emulated_xp.linalg", np.linalg, {"LinAlgError": np.linalg.LinAlgError})
fft = _Namespace("emulated_xp.fft", np.fft, {})
random = _Namespace("emulated_xp.random", np.random, {"default_rng": _Generator, "Generator": _Generator})
emulated_xp = _Namespace("emulated_xp", np, {
    "ndarray": DeviceArray,
    "asarray": _asarray,
    "array": _array,
    "asnumpy": _asnumpy,
    "linalg": linalg,
    "fft": fft,
    "random": random,
})


def install():
    """Make the emulated device the backend; returns the (xp, name) to restore."""
    saved = backend.xp, backend.name
    backend.xp, backend.name = emulated_xp, "emulated"
    return saved


@contextlib.contextmanager
def emulated():
    """Install the emulated device as the backend for the duration of the block."""
    saved = install()
    try:
        yield emulated_xp
    finally:
        backend.xp, backend.name = saved
