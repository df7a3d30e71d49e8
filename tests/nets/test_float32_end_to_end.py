"""Float32 end to end: a float32 gradient and HVP pass through the papers' nets
creates no float64 array in any primitive (a silent upcast doubles memory
traffic and, on a GPU, runs at a fraction of the float32 speed)."""
from __future__ import annotations

import numpy as np
import pytest

from nets import VGG, ResNet18, SmallCNN
from tinygrad2 import backend, primitives, tensor

NETS = {
    "SmallCNN": (lambda: SmallCNN(), (4, 3, 32, 32)),
    "ResNet18-BN": (lambda: ResNet18(in_channels=1, num_classes=10, width=1 / 16), (3, 1, 28, 28)),
    "VGG11-BN": (lambda: VGG(11, norm="bn", width=1 / 16), (2, 3, 32, 32)),
    "VGG11-WN": (lambda: VGG(11, norm="wn", width=1 / 16), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_no_primitive_upcasts_a_float32_pass(name, monkeypatch):
    upcasts = []

    def watched(prim, *inputs, **params):
        out = tensor.apply(prim, *inputs, **params)
        for what, array in (("value", out.data), ("tangent", out.tangent)):
            if array is not None and array.dtype.kind == "f" and array.dtype != np.float32:
                upcasts.append((prim.name, what, str(array.dtype)))
        return out

    monkeypatch.setattr(primitives.Primitive, "__call__", watched)
    make, shape = NETS[name]
    net, rng = make(), np.random.default_rng(0)
    D = backend.to_device
    obj = net.objective("cross_entropy", D(rng.standard_normal(shape).astype(np.float32)), D(rng.integers(0, 10, shape[0])))
    theta = D(net.init_theta(seed=0, dtype=np.float32))
    _, g = obj.loss_and_grad(theta)
    hv = obj.hvp(theta, D(rng.standard_normal((2, theta.size)).astype(np.float32)))
    assert g.dtype == hv.dtype == np.float32
    assert not upcasts, sorted(set(upcasts))
