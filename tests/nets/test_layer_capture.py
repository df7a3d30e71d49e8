"""Layer capture through nets: Linear and Conv2d record their inputs (in the
column order of the weight's own flattening) and output cotangents while
``Objective.capture`` runs, and nothing otherwise. The check that names,
ordering and patch layout are right: for every recorded layer, the captured
rows rebuild that layer's gradient exactly (Σ_rows g āᵀ)."""
from __future__ import annotations

import numpy as np
import pytest

import nets
from tinygrad2 import capture

from _helpers import D, host

pytestmark = pytest.mark.usefixtures("float64")


def models():
    return {
        "mlp": (nets.MLP((6, 5, 3), activation="tanh"), (4, 6)),
        "cnn-blocked": (nets.SmallCNN(widths=(2, 3), hidden=5, in_channels=1, num_classes=3, image_size=16),
                       (3, 1, 16, 16)),
        "cnn-im2col": (nets.Sequential(nets.Conv2d(2, 3, 3, stride=2, padding=1, patches="im2col"), nets.Tanh(),
                                       nets.Conv2d(3, 2, 2, bias=False), nets.Flatten(), nets.Linear(8, 3)),
                       (2, 2, 6, 6)),
        "resnet-bn": (nets.ResNet18(1, 3, stem="cifar", width=0.0625), (2, 1, 8, 8)),
        "weightnorm": (nets.Sequential(nets.WeightNorm(nets.Linear(4, 5)), nets.Tanh(), nets.Linear(5, 3)), (3, 4)),
    }


def relative_error(got, want):  # entries of a sum cancel (gradients of BN nets): compare as vectors
    got, want = host(got), host(want)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("name", list(models()))
def test_captured_rows_rebuild_every_recorded_layers_gradient(name, rng):
    model, shape = models()[name]
    X, y = D(rng.standard_normal(shape)), D(rng.integers(0, 3, shape[0]))
    theta = model.init_theta(1)
    obj = model.objective("cross_entropy", X, y)
    _, grad = obj.loss_and_grad(theta)
    cap = obj.capture(theta, factor="exact")
    layout = obj.layout
    assert cap.layers, name
    for layer in cap.layers:
        w = layout[layer.weight]
        assert layer.name == layer.weight.rpartition(".")[0]
        assert layer.inputs.shape == (layer.examples * layer.locations, w.size // w.shape[0])
        assert layer.seed_outputs.shape == (3, layer.inputs.shape[0], w.shape[0])
        rebuilt = layer.grad_outputs.T @ layer.inputs
        assert relative_error(rebuilt.reshape(-1), grad[w.slice]) < 1e-10, layer.weight  # BN: sums of cancelling terms
        if layer.bias is not None:
            assert relative_error(layer.grad_outputs.sum(axis=0), grad[layout[layer.bias].slice]) < 1e-10
    recorded = {n for layer in cap.layers for n in (layer.weight, layer.bias) if n}
    dense = {p.name for p in layout if p.kind in ("weight", "bias")} - recorded
    if name == "weightnorm":  # WeightNorm's g, v are not an affine layer's own weight: not recorded
        assert dense == {"0.weight_v", "0.bias"}
    else:
        assert dense == set(), dense
    assert not capture.active()


def test_the_resnet_records_every_conv_and_the_classifier(rng):
    model = nets.ResNet18(1, 3, stem="cifar", width=0.0625)
    obj = model.objective("cross_entropy", D(rng.standard_normal((2, 1, 8, 8))), D(rng.integers(0, 3, 2)))
    cap = obj.capture(model.init_theta(0))
    convs = [p.name for p in obj.layout if p.ndim == 4]
    assert [layer.weight for layer in cap.layers] == convs + ["fc.weight"]
    assert all(layer.seed_outputs is None for layer in cap.layers)


def test_apply_outside_capture_is_unchanged(rng):
    model = nets.SmallCNN(widths=(2, 3), hidden=5, in_channels=1, num_classes=3, image_size=16)
    theta, X = model.init_theta(0), D(rng.standard_normal((2, 1, 16, 16)))
    before = model.apply(theta, X).data
    with capture.recording() as records:
        inside = model.apply(theta, X).data
    assert len(records) == 4
    assert np.array_equal(host(model.apply(theta, X).data), host(before)) and np.array_equal(host(inside), host(before))
