"""The shared array kernels (tinygrad2.kernels): every fast route against the
plain NumPy expression it replaces, on every backend."""
from __future__ import annotations

import numpy as np
import pytest

from tinygrad2 import backend, kernels


@pytest.mark.parametrize("shape", [(7,), (5, 3), (500, 10), (4, 600, 6), (300, 40), (2, 3, 33),
                                   (1000, 32), (1, 700, 9), (64, 8, 8), (3, 500, 7)])
@pytest.mark.parametrize("axis", [-1, (-1,), 0, (0,), (-2,), (0, 1), (-2, -1), None])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduce_equals_the_plain_reduction(shape, axis, keepdims, float64):
    """kernels.reduce takes the transposed route for a short last axis, the
    matrix-vector route for a sum over leading axes, and the plain one
    otherwise: the same shape, the same maximum, the same sum to rounding."""
    x = backend.to_device(np.random.default_rng(0).standard_normal(shape))
    if axis is not None and (min(np.atleast_1d(axis)) < -len(shape) or max(np.atleast_1d(axis)) >= len(shape)):
        return
    for reduction, exact in ((backend.xp.max, True), (backend.xp.sum, False)):
        got = backend.to_host(kernels.reduce(reduction, x, axis, keepdims))
        want = backend.to_host(reduction(x, axis=axis, keepdims=keepdims))
        assert got.shape == want.shape
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_reduce_routes_leading_and_middle_sums_through_matrix_vector_products(float64, monkeypatch):
    """The leading-axes sum of a large C-contiguous array is 1ᵀ X, a sum over
    middle axes 1ᵀ X_i for each index i before them (the route is taken, not
    only equal), and a non-contiguous view takes neither."""
    calls = []
    ones = backend.xp.ones

    def counting_ones(*args, **kwargs):
        calls.append(args[0])
        return ones(*args, **kwargs)

    monkeypatch.setattr(backend.xp, "ones", counting_ones)
    x = backend.to_device(np.random.default_rng(1).standard_normal((1, 900, 16)))
    out = kernels.reduce(backend.xp.sum, x, (-2,), True)
    assert calls == [900] and out.shape == (1, 1, 16)
    kernels.reduce(backend.xp.sum, x[0].T, (0,))  # a transposed view: the plain route
    assert calls == [900]
    directions = backend.to_device(np.random.default_rng(2).standard_normal((3, 2, 50, 6, 16)))
    out = kernels.reduce(backend.xp.sum, directions, (-3, -2), True)
    assert calls == [900, 300] and out.shape == (3, 2, 1, 1, 16)
    np.testing.assert_allclose(backend.to_host(out), backend.to_host(directions.sum(axis=(2, 3), keepdims=True)),
                               rtol=1e-13)


@pytest.mark.parametrize("axis", [(), (2,), (-3,), (0, 2)])
def test_reduce_leaves_empty_and_out_of_range_axes_to_numpy(axis, float64):
    """axis=() returns the input (as NumPy's sum does, also above 4,096
    entries, where the leading-axes route would otherwise start); an axis
    out of range raises NumPy's AxisError instead of being wrapped."""
    x = backend.to_device(np.random.default_rng(3).standard_normal((1000, 8)))
    if axis == ():
        np.testing.assert_array_equal(backend.to_host(kernels.reduce(backend.xp.sum, x, axis)), backend.to_host(x))
    else:
        with pytest.raises(np.exceptions.AxisError):
            kernels.reduce(backend.xp.sum, x, axis)


def test_reduce_sums_float16_as_numpy_does(float64):
    """float16 takes the plain route, whose sum accumulates in float32: a row
    of 2048 and 31 ones sums to 2079, rounded once to 2080 (a float16 running
    sum would stop at 2048)."""
    x = np.ones((600, 32), np.float16)
    x[:, 0] = 2048
    got = backend.to_host(kernels.reduce(backend.xp.sum, backend.to_device(x), -1))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.full(600, 2080, np.float16))


def _softmax_reference(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (1000, 10), (4, 32), (3, 33), (2, 500)])
def test_row_softmax_kernels_match_the_plain_formulas(shape, float64):
    """Short rows (the transposed route) and long rows (the plain one): the
    softmax, the cross-entropy with and without its residual, the residual
    and the Hessian product, alone and from one softmax, against NumPy
    written out, with logits far from zero (the shift by the maximum matters)."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal(shape) * 30 + 500
    labels = rng.integers(0, shape[1], shape[0])
    T = rng.standard_normal((3,) + shape)
    p = _softmax_reference(z)
    zd, yd, Td = backend.to_device(z), backend.to_device(labels), backend.to_device(T)
    host = backend.to_host
    np.testing.assert_allclose(host(kernels.softmax_rows(zd)), p, rtol=1e-12, atol=1e-300)
    lse = z.max(axis=-1) + np.log(np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1))
    loss = np.mean(lse - z[np.arange(shape[0]), labels])
    residual = (p - np.eye(shape[1])[labels]) / shape[0]
    hvp = (np.einsum("ic,kic->kic", p, T) - p * np.einsum("ic,kic->ki", p, T)[..., None]) / shape[0]
    np.testing.assert_allclose(host(kernels.cross_entropy_rows(zd, yd)), loss, rtol=1e-13)
    value, r = kernels.cross_entropy_rows(zd, yd, residual=True)
    np.testing.assert_allclose(host(value), loss, rtol=1e-13)
    np.testing.assert_allclose(host(r), residual, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(host(kernels.softmax_residual(zd, yd)), residual, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(host(kernels.softmax_hessian_vp(zd, Td)), hvp, rtol=1e-11, atol=1e-15)
    r, hv = kernels.softmax_residual_and_hvp(zd, yd, Td)
    np.testing.assert_allclose(host(r), residual, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(host(hv), hvp, rtol=1e-11, atol=1e-15)


def test_logits_of_minus_infinity_get_probability_zero(float64):
    """-inf logits beside finite ones: probability 0, no NaN; a row that puts
    all its mass on its label has loss 0 and residual 0."""
    z = np.array([[-np.inf, 0.0, -np.inf], [0.0, -np.inf, 0.0]])
    value, r = kernels.cross_entropy_rows(backend.to_device(z), backend.to_device(np.array([1, 0])), residual=True)
    assert backend.to_host(value) == pytest.approx(np.log(2.0) / 2, rel=1e-15)
    np.testing.assert_allclose(backend.to_host(r), [[0.0, 0.0, 0.0], [-0.25, 0.0, 0.25]], atol=1e-16)
