"""Bad input raises exceptions whose message names the op and the shapes."""
from __future__ import annotations

import re

import numpy as np
import pytest

import tinygrad2 as tg
from tinygrad2 import Tensor

from _helpers import D


def raises(exc, *fragments):
    """pytest.raises that also requires every fragment in the message."""
    return pytest.raises(exc, match="".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_matmul_inner_dimension_mismatch():
    a, b = Tensor(np.ones((3, 4))), Tensor(np.ones((5, 2)))
    with raises(ValueError, "matmul", "(3, 4)", "(5, 2)", "4 != 5"):
        a @ b


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("sa, sb", [((3,), (4,)), ((2, 3, 4), (5,)), ((2, 3), (3, 2, 3))])
def test_matmul_other_mismatches(sa, sb):
    with raises(ValueError, "matmul", str(sa), str(sb)):
        Tensor(np.ones(sa)) @ Tensor(np.ones(sb))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_matmul_of_a_scalar():
    with raises(ValueError, "matmul", "()", "(2, 2)"):
        Tensor(np.ones(())) @ Tensor(np.ones((2, 2)))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum"])
def test_broadcast_mismatch(op):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    fn = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
          "div": lambda: a / b, "maximum": lambda: a.maximum(b)}[op]
    with raises(ValueError, op, "(2, 3)", "(4,)"):
        fn()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_broadcast_to_an_incompatible_shape():
    with raises(ValueError, "broadcast_to", "(3,)", "(2, 4)"):
        Tensor(np.ones(3)).broadcast_to((2, 4))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_grad_of_a_non_scalar_function():
    with raises(ValueError, "value_and_grad", "scalar", "(3,)"):
        tg.grad(lambda t: t * 2.0)(np.ones(3))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_backward_without_grad_on_a_non_scalar():
    x = Tensor(np.ones(3), requires_grad=True)
    with raises(ValueError, "backward", "(3,)"):
        (x * 2.0).backward()
    with raises(ValueError, "backward", "(2,)", "(3,)"):
        (x * 2.0).backward(np.ones(2))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("fn", [tg.hvp, tg.hvp_reverse_over_reverse, tg.jvp], ids=["hvp", "hvp_ror", "jvp"])
@pytest.mark.parametrize("v_shape", [(4,), (2, 4), (3, 3, 1)])
def test_direction_of_the_wrong_shape(fn, v_shape):
    f = lambda t: (t * t).sum()
    with raises(ValueError, fn.__name__, "(3,)", str(v_shape)):
        fn(f, np.ones(3), np.ones(v_shape))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_vjp_cotangent_of_the_wrong_shape():
    _, pullback = tg.vjp(lambda t: t * 2.0, np.ones(3))
    with raises(ValueError, "vjp", "(2,)", "(3,)"):
        pullback(np.ones(2))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_second_backward_through_a_freed_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    loss = (x.tanh() * x).sum()
    loss.backward()
    with raises(RuntimeError, "backward", "'sum'", "retain_graph"):
        loss.backward()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_freed_graph_is_named_at_the_first_freed_op_reached():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x.exp()
    y.sum().backward()  # frees exp's node as well
    with raises(RuntimeError, "'exp'", "retain_graph"):
        (y * 2.0).sum().backward()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("shape", [(4,), (2, 2), (7, -1), (-1, -1)])
def test_reshape_to_an_incompatible_shape(shape):
    with raises(ValueError, "reshape", "(2, 3)", str(shape)):
        Tensor(np.ones((2, 3))).reshape(shape)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("tangent_shape", [(3,), (2, 3), (1, 4), (2, 3, 2), (1, 1, 2, 2)])
def test_tangent_of_the_wrong_shape(tangent_shape):
    with raises(ValueError, "tangent", str(tangent_shape), "(2, 2)"):
        Tensor(np.ones((2, 2)), tangent=np.ones(tangent_shape))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_tangent_without_the_direction_axis_is_one_direction():
    assert Tensor(np.ones((2, 2)), tangent=np.ones((2, 2))).tangent.shape == (1, 2, 2)
    assert Tensor(np.ones((2, 2)), tangent=np.ones((3, 2, 2))).tangent.shape == (3, 2, 2)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_tangents_with_different_numbers_of_directions():
    a = Tensor(np.ones(2), tangent=np.ones((3, 2)))
    b = Tensor(np.ones(2), tangent=np.ones((4, 2)))
    with raises(ValueError, "mul", "directions", "3", "4"):
        a * b


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("fn", [tg.grad, tg.value_and_grad], ids=["grad", "value_and_grad"])
def test_gradient_of_a_2d_x(fn):
    with raises(ValueError, "1-D", "(2, 2)"):
        fn(lambda t: t.sum())(np.ones((2, 2)))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("fn", [tg.jvp, tg.hvp, tg.hvp_reverse_over_reverse], ids=["jvp", "hvp", "hvp_ror"])
def test_jvp_and_hvp_on_a_2d_x(fn):
    with raises(ValueError, fn.__name__, "1-D", "(2, 2)"):
        fn(lambda t: t.sum(), np.ones((2, 2)), np.ones(4))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_hessian_on_a_2d_x_and_bad_chunk():
    with raises(ValueError, "hessian", "1-D", "(2, 2)"):
        tg.hessian(lambda t: t.sum(), np.ones((2, 2)))
    with raises(ValueError, "hessian", "chunk", "0"):
        tg.hessian(lambda t: (t * t).sum(), np.ones(2), chunk=0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_integer_x_is_refused():
    with raises(TypeError, "hvp", "int"):
        tg.hvp(lambda t: t.sum(), np.arange(3), np.ones(3))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_f_returning_something_else():
    with raises(TypeError, "value_and_grad", "Tensor", "float"):
        tg.grad(lambda t: 1.0)(np.ones(2))
    with raises(TypeError, "jvp", "Tensor"):
        tg.jvp(lambda t: 1.0, np.ones(2), np.ones(2))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_backward_on_a_tensor_that_needs_no_grad():
    with raises(RuntimeError, "backward", "requires_grad"):
        Tensor(np.ones(())).backward()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("op, call", [
    ("sum", lambda t: t.sum(axis=2)),
    ("max", lambda t: t.max(axis=-3)),
    ("logsumexp", lambda t: t.logsumexp(axis=(0, 5))),
    ("log_softmax", lambda t: t.log_softmax(axis=2)),
])
def test_axis_out_of_range(op, call):
    with raises(ValueError, op, "axis", "2 dims"):
        call(Tensor(np.ones((2, 3))))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_transpose_with_a_bad_permutation():
    with raises(ValueError, "transpose", "(0, 0)", "(2, 3)"):
        Tensor(np.ones((2, 3))).transpose(0, 0)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_pad_width_that_does_not_fit():
    with raises(ValueError, "pad", "(2, 3)"):
        Tensor(np.ones((2, 3))).pad(((1, 1),))
    with raises(ValueError, "pad", "(2, 3)"):
        Tensor(np.ones((2, 3))).pad(((1, 1), (-1, 0)))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_concatenate_and_stack_shape_mismatch():
    with raises(ValueError, "concatenate", "(2, 3)", "(2, 4)"):
        Tensor.concatenate([Tensor(np.ones((2, 3))), Tensor(np.ones((2, 4)))], axis=0)
    with raises(ValueError, "stack", "(2,)", "(3,)"):
        Tensor.stack([Tensor(np.ones(2)), Tensor(np.ones(3))])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_index_out_of_range_names_getitem():
    with raises(IndexError, "getitem", "(2, 3)"):
        Tensor(np.ones((2, 3)))[5]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_item_of_a_non_scalar():
    with raises(ValueError, "item", "(2,)"):
        Tensor(np.ones(2)).item()


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_cross_entropy_bad_labels():
    z = Tensor(np.zeros((3, 4)))
    with raises(ValueError, "cross_entropy", "(3,)", "(2,)"):
        z.cross_entropy(np.zeros(2, dtype=np.int64))
    with raises(ValueError, "cross_entropy", "[0, 4)"):
        z.cross_entropy(np.array([0, 4, 1]))
    with raises(ValueError, "cross_entropy", "(n, C)", "(4,)"):
        Tensor(np.zeros(4)).cross_entropy(np.zeros(4, dtype=np.int64))


def _out_of_range_labels():
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64, ">i4", ">u2"):
        info = np.iinfo(dtype)
        for value in (4, info.max) + ((-1, info.min) if info.min < 0 else ()):
            yield pytest.param(dtype, int(value), 4, id=f"{np.dtype(dtype).str}-{value}")
    # labels read as unsigned would wrap into range: int8 beside 300 classes, int16 beside 40,000
    for dtype, classes in ((np.int8, 300), (np.int16, 40_000)):
        for value in (-1, -100):
            yield pytest.param(dtype, value, classes, id=f"{np.dtype(dtype).name}-{value}-of-{classes}")


@pytest.mark.parametrize("dtype, value, classes", list(_out_of_range_labels()))
def test_cross_entropy_labels_out_of_range_in_every_integer_dtype(dtype, value, classes):
    """The range check reads the labels as unsigned in their own byte order (a
    negative label is then huge) where that cannot wrap into [0, C), else
    looks at their minimum too: C, -1, -100, the dtype's lowest and highest
    value are each refused, in a strided view too, and valid labels of the
    dtype (big-endian ones included) are not."""
    z = Tensor(D(np.zeros((3, classes))))
    highest = min(classes - 1, int(np.iinfo(dtype).max))
    assert np.isfinite(z.cross_entropy(D(np.array([0, highest, 2], dtype))).item())
    with raises(ValueError, "cross_entropy", f"[0, {classes})", str(value)):
        z.cross_entropy(D(np.array([1, 0, value, 2, 3, 1], dtype))[::2])


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_finite_differences_refuse_a_zero_direction():
    from tinygrad2 import check

    with raises(ValueError, "direction", "zeros"):
        check.check_grad(lambda t: (t * t).sum(), np.ones(2), directions=np.zeros((1, 2)))
