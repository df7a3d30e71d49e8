"""What researchers reach for: float(t), np.asarray(t), and a clear error when
a NumPy function is handed a Tensor."""
from __future__ import annotations

import numpy as np
import pytest

from tinygrad2 import Tensor
from _helpers import D, npt


def test_float_of_a_one_element_tensor():
    assert float(Tensor(D(np.array([2.5])))) == 2.5
    assert float((Tensor(D(np.arange(3.0)), requires_grad=True) ** 2).sum()) == 5.0


def test_float_of_a_larger_tensor_names_the_shape():
    with pytest.raises(ValueError, match=r"tensor of shape \(3,\) has 3 elements, not 1"):
        float(Tensor(D(np.ones(3))))


def test_asarray_gives_the_values_of_a_tensor_without_tangent():
    t = Tensor(D(np.arange(6.0).reshape(2, 3)), requires_grad=True)
    a = np.asarray(t)
    assert type(a) is np.ndarray and a.dtype == np.float64
    npt.assert_array_equal(a, np.arange(6.0).reshape(2, 3))
    assert np.asarray(t, dtype=np.float32).dtype == np.float32


def test_asarray_refuses_a_tensor_with_a_tangent():
    t = Tensor(D(np.ones(3)), tangent=D(np.ones((2, 3))))
    with pytest.raises(TypeError, match=r"carries a tangent of 2 direction\(s\).*t\.numpy\(\)"):
        np.asarray(t)


@pytest.mark.parametrize("fn, args", [
    (np.sum, ()), (np.mean, ()), (np.reshape, ((3, 1),)), (np.concatenate, None), (np.linalg.norm, ()),
])
def test_numpy_functions_on_a_tensor_are_a_clear_error(fn, args):
    t = Tensor(D(np.ones(3)))
    with pytest.raises(TypeError, match=f"np.{fn.__name__} was given a Tensor: NumPy functions record no derivatives"):
        fn([t, t]) if args is None else fn(t, *args)


def test_numpy_ufuncs_on_a_tensor_are_refused_and_operators_still_work():
    t = Tensor(D(np.ones(3)))
    with pytest.raises(TypeError):
        np.exp(t)
    npt.assert_array_equal((D(np.full(3, 2.0)) * t).data, np.full(3, 2.0))
