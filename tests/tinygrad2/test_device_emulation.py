"""The CPU emulation of a CuPy-like device (tests/_device.py) behaves as CuPy
does where NumPy-written code breaks: (a) no implicit device-to-host
conversion, (b) no mixing of host arrays with device arrays, (c) explicit
transfers and Python conversions work, (d) its generator draws another stream
than NumPy's. Each test fails if the emulator stops refusing what CuPy refuses."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from _device import DeviceArray, emulated, emulated_xp as xp
from tinygrad2 import Tensor, backend


@pytest.fixture
def a():
    return xp.asarray(np.arange(6.0).reshape(2, 3))


# ---------------------------------------------------------------- (a) no implicit transfer to the host

@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda x: np.ascontiguousarray(x, dtype=float)],
                         ids=["asarray", "array", "ascontiguousarray"])
def test_implicit_conversion_to_numpy_is_refused(a, convert):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(a)


def test_host_libraries_given_a_device_array_fail(a, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f, pytest.raises(TypeError, match="Implicit conversion"):
        f.create_dataset("x", data=a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))


def test_a_device_array_is_not_an_ndarray(a):
    assert not isinstance(a, np.ndarray) and isinstance(a, xp.ndarray) and xp.ndarray is DeviceArray


# ---------------------------------------------------------------- (b) no mixing of host and device arrays

@pytest.mark.parametrize("op", [
    lambda d, h: d + h, lambda d, h: h * d, lambda d, h: d @ h.T, lambda d, h: np.add(d, h),
    lambda d, h: xp.maximum(d, h), lambda d, h: xp.concatenate([d, h]), lambda d, h: xp.where(d > 0, d, h),
    lambda d, h: d.dot(h.T), lambda d, h: d.__setitem__(0, h[0]), lambda d, h: xp.add.at(d, 0, h[0]),
    lambda d, h: xp.sum(h), lambda d, h: np.add(d, 1.0, out=h),
], ids=["add", "rmul", "matmul", "np.add", "maximum", "concatenate", "where", "dot", "setitem", "add.at",
        "xp.sum(host)", "out=host"])
def test_mixing_a_host_array_with_a_device_array_is_refused(a, op):
    with pytest.raises(TypeError):
        op(a, np.ones((2, 3)))


def test_scalars_and_zero_d_host_arrays_mix(a):
    for s in (2, 2.0, np.float64(2.0), np.float32(2.0), np.array(2.0)):
        out = a * s
        assert isinstance(out, DeviceArray)
        np.testing.assert_array_equal(xp.asnumpy(out), np.arange(6.0).reshape(2, 3) * 2)


def test_device_results_stay_on_the_device(a):
    for out in (a.sum(), np.sum(a), xp.sum(a), a[0, 0], a.T, a.reshape(-1), a.max(axis=0), xp.linalg.norm(a),
                a + a, np.exp(a), xp.linalg.eigh(a @ a.T)[0], xp.linalg.qr(a.T)[1], a[xp.asarray(np.array([1]))],
                a[np.array([1, 0])]):  # CuPy copies host *index* arrays to the device
        assert isinstance(out, DeviceArray), type(out)


def test_in_place_operations_and_scatter_add_write_through(a):
    b = a.copy()
    b += 1
    b[0] = xp.zeros(3)
    np.multiply(b, 2, out=b)
    z = xp.zeros(2)
    xp.add.at(z, xp.asarray(np.array([0, 0, 1])), xp.ones(3))
    np.testing.assert_array_equal(xp.asnumpy(b), [[0, 0, 0], [8, 10, 12]])
    np.testing.assert_array_equal(xp.asnumpy(z), [2, 1])
    np.testing.assert_array_equal(xp.asnumpy(a), np.arange(6.0).reshape(2, 3))  # the copy was a copy


# ---------------------------------------------------------------- (c) explicit transfers and conversions

def test_explicit_transfers_copy(a):
    host = np.arange(3.0)
    dev = xp.asarray(host)
    host[0] = 7.0  # a real transfer copies: the device array does not see it
    back = xp.asnumpy(dev)
    assert type(back) is np.ndarray and back.tolist() == [0.0, 1.0, 2.0]
    back[1] = 9.0
    assert dev.tolist() == [0.0, 1.0, 2.0]
    assert type(a.get()) is np.ndarray


def test_array_copies_a_device_array_as_cupy_does(a):
    """xp.array makes a new array (copy=True by default, in CuPy as in NumPy);
    the emulation once returned its input, so in-place work on the
    "copy" wrote into the original."""
    c = xp.array(a.T, order="C")
    c -= 100.0
    assert a.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert c.flags.c_contiguous and c.tolist() == [[-100.0, -97.0], [-99.0, -96.0], [-98.0, -95.0]]


def test_python_conversions_work(a):
    assert float(a.sum()) == 15.0 and int(a[1, 2]) == 5 and bool(a[0, 1]) and a[1, 1].item() == 4.0
    assert a.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and len(a) == 2
    assert f"{a.sum():.1f}" == "15.0" and [r.shape for r in a] == [(3,), (3,)]
    assert (a.shape, a.dtype, a.ndim, a.size, a.nbytes) == ((2, 3), np.float64, 2, 6, 48)


@pytest.mark.cpu_only  # host-bound: asserts the NumPy backend is back after the emulated() block
def test_backend_transfers_through_the_emulator():
    with emulated():
        host = np.arange(4.0)
        dev = backend.to_device(host)
        assert isinstance(dev, DeviceArray) and backend.asarray(dev) is dev
        with pytest.raises(TypeError, match="to_device"):
            backend.asarray(host)
        with pytest.raises(TypeError, match="to_device"):
            Tensor(host)
        assert type(backend.to_host(dev)) is np.ndarray and type(backend.to_host(Tensor(dev))) is np.ndarray
        assert isinstance(Tensor([1.0, 2.0]).data, DeviceArray)
    assert backend.xp is np and backend.name == "numpy"


# ---------------------------------------------------------------- (d) another random stream

def test_the_generator_draws_device_arrays_from_another_stream():
    dev = xp.random.default_rng(0).standard_normal(5)
    assert isinstance(dev, DeviceArray)
    assert not np.array_equal(xp.asnumpy(dev), np.random.default_rng(0).standard_normal(5))
    np.testing.assert_array_equal(xp.asnumpy(dev), xp.asnumpy(xp.random.default_rng(0).standard_normal(5)))
    assert isinstance(xp.random.default_rng(1).integers(0, 2, size=3), DeviceArray)
