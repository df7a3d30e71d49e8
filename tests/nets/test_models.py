"""nets: modules and the flat-theta bridge, BatchNorm semantics, models,
losses, save/load, errors, and the BN-γ Hessian block of SGD-PH."""
from __future__ import annotations

import ast
import os
import pathlib

import h5py
import numpy as np
import pytest

import nets
import tinygrad2 as tg
import tinygrad2.check
from tinygrad2 import Layout, Objective, Tensor

NETS = pathlib.Path(nets.__file__).parent


# ================================================================ the flat-theta bridge


def test_layout_names_kinds_and_order_follow_registration():
    model = nets.Sequential(nets.Conv2d(1, 2, 3), nets.BatchNorm2d(2), nets.ReLU(), nets.Flatten(),
                            nets.WeightNorm(nets.Linear(8, 3)))
    layout = model.layout()
    assert isinstance(layout, Layout)
    assert [(p.name, p.shape, p.kind) for p in layout] == [
        ("0.weight", (2, 1, 3, 3), "weight"), ("0.bias", (2,), "bias"),
        ("1.weight", (2,), "scale"), ("1.bias", (2,), "shift"),
        ("4.weight_g", (3,), "scale"), ("4.weight_v", (3, 8), "weight"), ("4.bias", (3,), "bias"),
    ]
    assert model.num_parameters() == layout.n == 18 + 2 + 4 + 3 + 24 + 3
    assert list(model.named_buffers()) == ["1.running_mean", "1.running_var"]
    assert [p.name for p in layout.groups(ndim=1)] == ["0.bias", "1.weight", "1.bias", "4.weight_g", "4.bias"]


def test_resnet_names_follow_torchvision():
    names = nets.ResNet18(1, 10, width=0.125).layout().names
    for name in ("conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                 "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer4.1.conv2.weight",
                 "fc.weight", "fc.bias"):
        assert name in names
    assert "layer1.0.downsample.0.weight" not in names  # same shape: identity shortcut


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_init_theta_is_seeded_pytorch_default_init():
    model = nets.Sequential(nets.Linear(50, 20), nets.BatchNorm1d(20), nets.Linear(20, 7))
    a, b, c = model.init_theta(0), model.init_theta(0), model.init_theta(1)
    assert a.dtype == np.float32 and model.init_theta(0, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    p = model.layout().unflatten(np.asarray(model.init_theta(3, dtype=np.float64)))
    for name, fan in (("0", 50), ("2", 20)):
        for part in ("weight", "bias"):
            v = p[f"{name}.{part}"]
            assert np.abs(v).max() <= 1 / np.sqrt(fan)
            if part == "weight":  # many draws: they fill the range
                assert np.abs(v).max() > 0.9 / np.sqrt(fan)
    np.testing.assert_array_equal(p["1.weight"], 1.0)
    np.testing.assert_array_equal(p["1.bias"], 0.0)
    conv = nets.Conv2d(3, 4, 5)
    w = conv.layout().unflatten(np.asarray(conv.init_theta(0, dtype=np.float64)))["weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(75) and np.std(w) == pytest.approx(1 / np.sqrt(75) / np.sqrt(3), rel=0.15)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_apply_is_pure_and_buffers_stay_apart(float64):
    model = nets.Sequential(nets.Conv2d(2, 3, 3, padding=1), nets.BatchNorm2d(3), nets.ReLU(),
                            nets.GlobalAvgPool(), nets.Linear(3, 2))
    theta = model.init_theta(0, dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((4, 2, 5, 5))
    before = {k: v.copy() for k, v in model.named_buffers().items()}
    out1, out2 = model.apply(theta, X).data, model.apply(theta, X).data
    np.testing.assert_array_equal(out1, out2)
    for k, v in model.named_buffers().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.num_parameters() == theta.shape[0]  # buffers are not parameters
    with pytest.raises(RuntimeError, match=r"parameter 'weight' is not bound"):
        model[0].weight


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_apply_as_objective_model_fn_and_curvature_leave_buffers_alone(float64):
    model = nets.Sequential(nets.Linear(3, 4), nets.BatchNorm1d(4), nets.Tanh(), nets.Linear(4, 2))
    theta = model.init_theta(0, dtype=np.float64)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    obj = Objective(model.apply, "cross_entropy", X, y, layout=model.layout())
    before = {k: v.copy() for k, v in model.named_buffers().items()}
    loss, g = obj.loss_and_grad(theta)
    assert np.isfinite(loss) and g.shape == theta.shape
    hv = obj.hvp(theta, rng.standard_normal(theta.shape))
    H = obj.hessian(theta)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    assert hv.shape == theta.shape
    for k, v in model.named_buffers().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.objective("cross_entropy", X, y).loss(theta) == loss


# ================================================================ BatchNorm


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_batchnorm_train_uses_batch_statistics_and_eval_running_ones(float64):
    bn = nets.BatchNorm2d(3)
    theta = bn.init_theta(0, dtype=np.float64)  # gamma = 1, beta = 0
    x = 2.0 + 3.0 * np.random.default_rng(2).standard_normal((4, 3, 2, 5))
    y = bn.apply(theta, x).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    var = x.var(axis=(0, 2, 3))  # biased, as the normalization uses
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)
    bn.eval()
    rm, rv = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    bn.load_buffers({"running_mean": rm, "running_var": rv})
    gamma, beta = np.array([2.0, 1.0, -1.0]), np.array([0.1, 0.2, 0.3])
    th = bn.layout().flatten({"weight": gamma, "bias": beta})
    expect = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(bn.apply(th, x).data, expect, rtol=1e-12)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_running_statistics_follow_pytorchs_formulas(float64):
    """momentum 0.1, unbiased variance; updated once per training-mode pass
    inside updating_running_stats() or by update_running_stats(), else never."""
    model = nets.Sequential(nets.Linear(3, 2), nets.BatchNorm1d(2))
    theta = model.init_theta(0, dtype=np.float64)
    rng = np.random.default_rng(3)
    X1, X2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    W, b = (model.layout().unflatten(theta)[k] for k in ("0.weight", "0.bias"))
    h1, h2 = X1 @ W.T + b, X2 @ W.T + b
    bn = model[1]
    model.apply(theta, X1)  # outside the block: nothing changes
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    np.testing.assert_array_equal(bn.running_var, 1.0)
    with model.updating_running_stats():
        model.apply(theta, X1)
    rm = 0.9 * 0 + 0.1 * h1.mean(0)
    rv = 0.9 * 1 + 0.1 * h1.var(0, ddof=1)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-6)  # buffers are float32
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-6)
    model.eval()
    model.update_running_stats(theta, X2)  # runs in training mode, restores eval
    assert not bn.training
    np.testing.assert_allclose(bn.running_mean, 0.9 * rm + 0.1 * h2.mean(0), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.9 * rv + 0.1 * h2.var(0, ddof=1), rtol=1e-6)
    with model.updating_running_stats():  # eval mode: running statistics are used, not updated
        model.apply(theta, X1)
    np.testing.assert_allclose(bn.running_mean, 0.9 * rm + 0.1 * h2.mean(0), rtol=1e-6)


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
def test_running_statistics_match_torch_when_importable():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    bn, tbn = nets.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    theta = bn.init_theta(0)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 2 + 1
        with bn.updating_running_stats():
            out = bn.apply(theta, x).data
        ref = tbn(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-6)


def test_train_eval_modes_reach_every_descendant():
    model = nets.ResNet18(1, 10, width=0.125)
    assert all(m.training for _, m in model.named_modules())
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    assert model.train() is model and model.layer3[0].bn1.training


# ================================================================ the BN-γ Hessian block (SGD-PH)


def _gamma_block(model, loss, X, y, seed, perturb=0.0):
    obj = Objective(model.apply, loss, X, y, layout=model.layout())
    theta = np.asarray(model.init_theta(seed, dtype=np.float64))
    theta = theta + perturb * np.random.default_rng(seed).standard_normal(theta.shape)
    sl = model.layout()["1.weight"].slice
    H = obj.hessian(theta)[sl, sl]
    return H, obj, theta


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("act, seed", [("relu", 0), ("tanh", 2)])
def test_bn_gamma_block_is_not_diagonal_when_a_later_layer_mixes_channels(act, seed, float64):
    """∂²L/∂γ_c∂γ_d = Σ x̂_c (∂²L/∂a_c∂a_d) x̂_d ≠ 0 when a Linear after the BN
    mixes channels. (Over seeds 0-3 at init the ratio is 0.07-0.25 with tanh,
    0.16-0.71 with ReLU; ReLU at seed 0 gives the 0.59 of ALGORITHMS.md.)"""
    rng = np.random.default_rng(seed)
    model = nets.Sequential(nets.Linear(3, 4), nets.BatchNorm1d(4), nets.activation(act), nets.Linear(4, 3))
    X, y = rng.standard_normal((16, 3)), rng.integers(0, 3, 16)
    H, obj, theta = _gamma_block(model, "cross_entropy", X, y, seed)
    off = H - np.diag(np.diag(H))
    assert np.linalg.norm(off) / np.linalg.norm(np.diag(H)) > 0.1
    # what SGD-PH's official code computes (H·1 on the block) is a row sum, not the diagonal
    np.testing.assert_allclose(obj.block_row_sums(theta, "1.weight"), H.sum(axis=1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(obj.block_diag(theta, "1.weight"), np.diag(H), rtol=1e-10, atol=1e-14)
    assert not np.allclose(H.sum(axis=1), np.diag(H), rtol=0.05)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bn_gamma_block_is_diagonal_when_the_loss_is_separable_per_channel(float64):
    """L = Σ_c mean_i f_c(y_ic) with y the BN output: no term couples channels."""
    rng = np.random.default_rng(7)
    model = nets.Sequential(nets.Linear(3, 4), nets.BatchNorm1d(4))
    X = rng.standard_normal((16, 3))
    a, b = Tensor(rng.uniform(0.5, 2.0, 4)), Tensor(rng.standard_normal(4))

    def separable(out, y):  # f_c(t) = a_c tanh(t + b_c)²
        t = (out + b).tanh()
        return (t * t * a).mean(axis=0).sum()

    H, _, _ = _gamma_block(model, separable, X, np.zeros(16), seed=0, perturb=0.2)
    off = H - np.diag(np.diag(H))
    assert np.linalg.norm(np.diag(H)) > 1e-3
    assert np.linalg.norm(off) <= 1e-12 * np.linalg.norm(np.diag(H))


# ================================================================ models


def _vgg_count(depth, norm, width=1.0):
    """Closed-form parameter count: 3x3 convs with bias, (+ BN γ, β | WN g), Linear(512, 10)."""
    total, cin = 0, 3
    for item in nets.models.VGG_CONFIGS[depth]:
        if item == "M":
            continue
        c = max(1, int(round(item * width)))
        total += cin * c * 9 + c + {"bn": 2 * c, "none": 0, "wn": c}[norm]
        cin = c
    return total + cin * 10 + 10 + (10 if norm == "wn" else 0)


def test_parameter_counts():
    assert nets.MLP((784, 100, 10)).num_parameters() == 784 * 100 + 100 + 100 * 10 + 10
    assert nets.MLP((784, 64, 32, 10), activation="tanh").num_parameters() == 784 * 64 + 64 + 64 * 32 + 32 + 330
    assert nets.SmallCNN().num_parameters() == 52_202 == (3 * 25 * 6 + 6) + (6 * 25 * 16 + 16) + (400 * 120 + 120) + (120 * 10 + 10)
    assert nets.SmallCNN(in_channels=1, image_size=28).num_parameters() == 6 * 25 + 6 + 2416 + 256 * 120 + 120 + 1210
    assert nets.ResNet18(in_channels=1, num_classes=10, stem="imagenet").num_parameters() == 11_175_370
    assert nets.ResNet18(in_channels=3, num_classes=1000).num_parameters() == 11_689_512  # torchvision's resnet18
    assert nets.ResNet18(3, 10, stem="cifar").num_parameters() == 11_173_962
    for depth in (11, 19):
        for norm in ("bn", "none", "wn"):
            assert nets.VGG(depth, norm).num_parameters() == _vgg_count(depth, norm), (depth, norm)
    assert nets.VGG(11, "bn").num_parameters() == 9_231_114  # pytorch-cifar's VGG11 / VGG19 counts
    assert nets.VGG(19, "bn").num_parameters() == 20_040_522


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_small_models_run_forward_and_backward():
    rng = np.random.default_rng(8)
    cases = [
        (nets.MLP((12, 5, 3), activation="gelu"), (4, 3, 2, 2)),
        (nets.SmallCNN(), (2, 3, 32, 32)),
        (nets.SmallCNN(in_channels=1, image_size=28, activation="tanh"), (2, 1, 28, 28)),
        (nets.ResNet18(1, 10, stem="imagenet", width=0.125), (2, 1, 28, 28)),
        (nets.ResNet18(3, 10, stem="cifar", width=0.125), (2, 3, 16, 16)),
    ] + [(nets.VGG(d, n, width=0.125), (2, 3, 32, 32)) for d in (11, 19) for n in ("bn", "none", "wn")]
    for model, shape in cases:
        theta = model.init_theta(0)
        X = rng.random(shape, dtype=np.float32)
        y = rng.integers(0, 3 if isinstance(model, nets.MLP) else 10, shape[0])
        out = model.apply(theta, X)
        assert out.shape == (shape[0], 3 if isinstance(model, nets.MLP) else 10) and out.dtype == np.float32
        loss, g = model.objective("cross_entropy", X, y).loss_and_grad(theta)
        assert np.isfinite(loss) and np.all(np.isfinite(g)) and np.any(g != 0), repr(model)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_resnet18_gradient_matches_finite_differences(float64):
    model = nets.ResNet18(1, 3, stem="imagenet", width=1 / 32)  # 2..16 channels
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((3, 1, 12, 12)), rng.integers(0, 3, 3)
    obj = model.objective("cross_entropy", X, y)
    theta = model.init_theta(0, dtype=np.float64)
    report = tg.check.check_grad(lambda t: obj._scalar(t), theta, max_directions=6)
    assert report.rel_error < 1e-7, report
    report = tg.check.check_hvp(lambda t: obj._scalar(t), theta, max_directions=3)
    assert report.rel_error < 1e-6, report


# ================================================================ losses


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_named_and_nets_losses_agree(name, float64):
    rng = np.random.default_rng(10)
    model = nets.MLP((4, 5, 3), activation="tanh")
    X = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7) if name == "cross_entropy" else rng.standard_normal((7, 3))
    theta = model.init_theta(0, dtype=np.float64)
    V = rng.standard_normal((2, theta.shape[0]))
    named = model.objective(name, X, y)
    ours = model.objective(nets.losses.get(name), X, y)
    assert named.loss(theta) == ours.loss(theta)
    np.testing.assert_array_equal(named.grad(theta), ours.grad(theta))
    np.testing.assert_allclose(named.hvp(theta, V), ours.hvp(theta, V), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(named.ggn_vp(theta, V), ours.ggn_vp(theta, V), rtol=1e-12, atol=1e-15)
    z = model.apply(theta, X).data
    expect = (np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(7), y]) if name == "cross_entropy"
              else np.mean((z - y) ** 2))
    assert ours.loss(theta) == pytest.approx(expect, rel=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_loss_errors():
    with pytest.raises(ValueError, match=r"mse: outputs have shape \(2, 3\) but targets have shape \(2,\)"):
        nets.losses.mse(Tensor(np.zeros((2, 3))), np.zeros(2))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        nets.losses.get("hinge")


# ================================================================ errors


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_bad_inputs_name_the_layer_and_the_shapes():
    conv = nets.Conv2d(3, 6, 5)
    th = conv.init_theta()
    with pytest.raises(ValueError, match=r"^Conv2d\(3->6, k5\): input of shape \(2, 4, 32, 32\) has 4 channels, expected 3$"):
        conv.apply(th, np.zeros((2, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"^Conv2d\(3->6, k5\): input of shape \(3, 32, 32\) has 3 dims, expected 4: \(N, C, H, W\)$"):
        conv.apply(th, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d\(3->6, k5\): input of shape \(1, 3, 4, 4\) is smaller than the kernel"):
        conv.apply(th, np.zeros((1, 3, 4, 4), np.float32))
    model = nets.SmallCNN()
    th = model.init_theta()
    with pytest.raises(ValueError, match=r"^Conv2d\(3->6, k5\) at 'features\.0': input of shape \(2, 1, 32, 32\) has 1 channels, expected 3$"):
        model.apply(th, np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"^Linear\(400->120\) at 'classifier\.0': input of shape \(2, 256\) has 256 features, expected 400$"):
        model.apply(th, np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"SmallCNN\.apply: theta has shape \(10,\), expected \(52202,\)"):
        model.apply(np.zeros(10, np.float32), np.zeros((2, 3, 32, 32), np.float32))
    bn = nets.BatchNorm2d(4)
    with pytest.raises(ValueError, match=r"^BatchNorm2d\(4\): input of shape \(2, 3, 5, 5\) has 3 channels, expected 4$"):
        bn.apply(bn.init_theta(), np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\): input of shape \(1, 4\) has 1 value per channel"):
        nets.BatchNorm1d(4).apply(np.ones(8, np.float32), np.zeros((1, 4), np.float32))
    res = nets.ResNet18(1, 10, width=0.125)
    with pytest.raises(ValueError, match=r"^Conv2d\(1->8, k7, s2, p3, no bias\) at 'conv1': input of shape \(2, 3, 28, 28\) has 3 channels, expected 1$"):
        res.apply(res.init_theta(), np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"^MaxPool2d\(k3\): input of shape \(1, 1, 2, 2\) is smaller than the window \(3, 3\)"):
        nets.MaxPool2d(3).apply(np.zeros(0), np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"^Linear\(12->5\) at '1': input of shape \(4, 10\) has 10 features, expected 12$"):
        nets.MLP((12, 5, 3)).apply(nets.MLP((12, 5, 3)).init_theta(), np.zeros((4, 10), np.float32))
    with pytest.raises(ValueError, match="padding .* at most half the kernel"):
        nets.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="ResNet18: stem must be"):
        nets.ResNet18(stem="tiny")
    with pytest.raises(ValueError, match="VGG: norm must be"):
        nets.VGG(11, norm="ln")
    with pytest.raises(TypeError, match="WeightNorm: wraps a Linear or Conv2d"):
        nets.WeightNorm(nets.ReLU())
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nets.MLP((3, 2, 1), activation="swish")


# ================================================================ save / load


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_save_load_round_trip(tmp_path, float64):
    model = nets.Sequential(nets.Conv2d(1, 2, 3), nets.BatchNorm2d(2), nets.Flatten(), nets.Linear(8, 3))
    theta = model.init_theta(4, dtype=np.float64)
    with model.updating_running_stats():
        model.apply(theta, np.random.default_rng(0).standard_normal((3, 1, 4, 4)))
    path = tmp_path / "model.h5"
    model.save(path, theta)
    fresh = nets.Sequential(nets.Conv2d(1, 2, 3), nets.BatchNorm2d(2), nets.Flatten(), nets.Linear(8, 3))
    loaded = fresh.load(path)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, theta)
    for (k, a), (k2, b) in zip(model.named_buffers().items(), fresh.named_buffers().items()):
        assert k == k2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(fresh[1].running_mean, 0)
    with h5py.File(path) as f:
        assert f.attrs["format"] == nets.module.FORMAT and f["theta"].shape == theta.shape
    other = nets.Sequential(nets.Conv2d(1, 3, 3), nets.BatchNorm2d(3), nets.Flatten(), nets.Linear(12, 3))
    with pytest.raises(ValueError, match=r"different layout .* first difference: file \('0\.weight', \(2, 1, 3, 3\)"):
        other.load(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = nets.Linear(3, 2)
    path = tmp_path / "ckpt.h5"
    model.save(path, model.init_theta(0))
    original = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path, model.init_theta(1))
    assert path.read_bytes() == original  # the old file is intact
    assert os.listdir(tmp_path) == ["ckpt.h5"]  # and no temporary file is left


# ================================================================ house rules


def test_nets_does_math_through_the_backend_only():
    """numpy may be imported only by nets/module.py (host-side: seeded init
    draws and HDF5 I/O); every layer's math goes through tinygrad2.backend.xp."""
    offenders = {}
    for path in sorted(NETS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "numpy" or n.startswith("numpy.") for n in names):
                offenders.setdefault(path.name, []).append(node.lineno)
            if any(n.split(".")[0] in ("optimizers", "experiments") for n in names):
                offenders.setdefault(path.name, []).append(f"imports {names} at {node.lineno}")
    assert list(offenders) == ["module.py"], offenders
