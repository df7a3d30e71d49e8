"""The loss table: closed-form output Hessians against the engine, one table
for the Objective, nets.losses and the run loop."""
from __future__ import annotations

import numpy as np
import pytest

import nets
from tinygrad2 import Objective, Tensor, losses
from tinygrad2.primitives import cross_entropy_grad
from _helpers import D, host, npt

pytestmark = pytest.mark.usefixtures("float64")


def batch(name, rng, B=6, C=4):
    z = rng.standard_normal((B, C))
    y = rng.integers(0, C, size=B) if name == "cross_entropy" else rng.standard_normal((B, C))
    return z, y


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_closed_form_output_hessian_equals_forward_over_reverse(name, rng):
    z, y = batch(name, rng)
    T = rng.standard_normal((3,) + z.shape)
    table = losses.LOSSES[name]
    engine = losses.custom(table.value)  # H_z T by forward-over-reverse through the value
    z, y, T = D(z), D(y), D(T)
    npt.assert_allclose(table.hessian_vp(z, y, T), engine.hessian_vp(z, y, T), rtol=1e-12, atol=1e-14)


def test_softmax_hessian_product_is_the_closed_form(rng):
    z, y = batch("cross_entropy", rng)
    T = rng.standard_normal((2,) + z.shape)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = np.stack([[(np.diag(p[i]) - np.outer(p[i], p[i])) @ T[k, i] for i in range(len(z))] for k in range(2)])
    npt.assert_allclose(losses.LOSSES["cross_entropy"].hessian_vp(D(z), D(y), D(T)), want / len(z), rtol=1e-13)


def test_softmax_hessian_product_is_cross_entropy_grads_jvp(rng):
    z, y = batch("cross_entropy", rng)
    T = rng.standard_normal((2,) + z.shape)
    z, y, T = D(z), D(y), D(T)
    out = cross_entropy_grad(Tensor(z, tangent=T), labels=y)
    npt.assert_array_equal(out.tangent, losses.LOSSES["cross_entropy"].hessian_vp(z, y, T))


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_objective_nets_and_table_give_one_value(name, rng):
    z, y = batch(name, rng)
    value = float(losses.LOSSES[name].value(Tensor(D(z)), D(y)).item())
    assert float(nets.losses.get(name)(Tensor(D(z)), D(y)).item()) == value
    obj = Objective(lambda th, X: th.reshape(*z.shape), name, D(np.zeros((z.shape[0], 1))), D(y))
    assert obj.loss(D(z.reshape(-1))) == pytest.approx(value, rel=1e-15)
    if name == "cross_entropy":
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        assert value == pytest.approx(-log_p[np.arange(len(y)), y].mean(), rel=1e-13)
    else:
        assert value == pytest.approx(((z - y) ** 2).mean(), rel=1e-13)


def test_table_flags_say_what_each_loss_is():
    assert losses.LOSSES["cross_entropy"].classification and losses.LOSSES["cross_entropy"].one_primitive
    assert not losses.LOSSES["mse"].classification and not losses.LOSSES["mse"].one_primitive


@pytest.mark.parametrize("name, y, message", [
    ("cross_entropy", np.zeros(5), "integer labels of shape \\(6,\\)"),
    ("cross_entropy", np.zeros((6, 1), dtype=int), "integer labels"),
    ("mse", np.zeros((5, 4)), "first dimensions must agree"),
])
def test_targets_are_checked_against_the_batch(name, y, message):
    with pytest.raises(ValueError, match=message):
        losses.LOSSES[name].check_targets(y, 6, "here")


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; choose one of \['cross_entropy', 'mse'\]"):
        losses.get("hinge")
