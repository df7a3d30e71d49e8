"""nets layers: derivatives (adjoint identity, JVP and dense Hessian against
finite differences, float64) and forward passes against direct loops."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

import nets
import tinygrad2 as tg
from tinygrad2 import Tensor
from tinygrad2.check import check_hessian, check_jvp


def _bn_eval(cls, c):
    layer = cls(c).eval()
    rng = np.random.default_rng(7)
    layer._buffers["running_mean"] = rng.standard_normal(c)
    layer._buffers["running_var"] = rng.uniform(0.5, 2.0, c)
    return layer


# name -> (layer factory, input shape); each small enough for a dense Hessian
LAYERS = {
    "linear": (lambda: nets.Linear(4, 3), (5, 4)),
    "linear_nobias": (lambda: nets.Linear(3, 2, bias=False), (4, 3)),
    "conv_s2_p1_nonsquare": (lambda: nets.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1), (2, 2, 5, 4)),
    "conv_im2col_route": (lambda: nets.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1, patches="im2col"), (2, 2, 5, 4)),
    "conv_1x1_s2": (lambda: nets.Conv2d(3, 2, 1, stride=2, bias=False), (2, 3, 5, 5)),
    "weightnorm_linear": (lambda: nets.WeightNorm(nets.Linear(4, 3)), (5, 4)),
    "weightnorm_conv": (lambda: nets.WeightNorm(nets.Conv2d(2, 2, 3, padding=1)), (2, 2, 4, 4)),
    "batchnorm1d_train": (lambda: nets.BatchNorm1d(3), (6, 3)),
    "batchnorm1d_train_3d": (lambda: nets.BatchNorm1d(2), (3, 2, 4)),
    "batchnorm2d_train": (lambda: nets.BatchNorm2d(2), (3, 2, 3, 3)),
    "batchnorm2d_eval": (lambda: _bn_eval(nets.BatchNorm2d, 2), (3, 2, 3, 3)),
    "maxpool_2": (lambda: nets.MaxPool2d(2), (2, 2, 4, 5)),
    "maxpool_3_s2_p1": (lambda: nets.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "avgpool_3_s2_p1": (lambda: nets.AvgPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "global_avgpool": (lambda: nets.GlobalAvgPool(), (2, 3, 3, 3)),
    "flatten": (lambda: nets.Flatten(), (2, 3, 2, 2)),
    "relu": (lambda: nets.ReLU(), (4, 5)),
    "tanh": (lambda: nets.Tanh(), (4, 5)),
    "softplus": (lambda: nets.Softplus(), (4, 5)),
    "gelu": (lambda: nets.GELU(), (4, 5)),
    "basic_block_downsample": (lambda: nets.BasicBlock(2, 3, stride=2), (2, 2, 4, 4)),
    "basic_block_identity": (lambda: nets.BasicBlock(2, 2), (2, 2, 3, 3)),
}


def _joint(name):
    """f(z), z = [theta, x.ravel()]: the layer's output as a function of
    parameters and input together, and a random point z0."""
    factory, shape = LAYERS[name]
    layer = factory()
    n = layer.num_parameters()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    theta = np.asarray(layer.init_theta(seed=3, dtype=np.float64))
    if n:  # move off the init (BN's gamma = 1, beta = 0) to a generic point
        theta = theta + 0.3 * rng.standard_normal(n)
    x = rng.standard_normal(shape)

    def f(z):
        return layer.apply(z[:n], z[n:].reshape(shape))

    return f, np.concatenate([theta, x.ravel()]), rng


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", LAYERS)
def test_vjp_is_the_adjoint_of_jvp(name, float64):
    """<u, J v> == <Jᵀ u, v> on random directions (parameters and input)."""
    f, z, rng = _joint(name)
    V = rng.standard_normal((3, z.size))
    out, JV = tg.jvp(f, z, V)
    _, pullback = tg.vjp(f, z)
    for v, jv in zip(V, JV):
        u = rng.standard_normal(out.shape)
        lhs, rhs = float(np.sum(u * jv)), float(pullback(u) @ v)
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (name, lhs, rhs)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", LAYERS)
def test_jvp_matches_finite_differences(name, float64):
    f, z, _ = _joint(name)
    report = check_jvp(f, z, max_directions=8)
    assert report.rel_error < 1e-8, report


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", LAYERS)
def test_dense_hessian_matches_finite_differences(name, float64):
    """The Hessian of s(z) = Σ c ⊙ tanh(layer(z)) (c random) over parameters
    and input, assembled from batched HVPs, against differences of the
    gradient (kink-safe steps for ReLU and max-pool)."""
    f, z, rng = _joint(name)
    c = Tensor(rng.standard_normal(np.shape(f(Tensor(z)).data)))

    def s(w):
        return (f(w).tanh() * c).sum()

    report = check_hessian(s, z)
    assert report.rel_error < 1e-6, report
    assert report.symmetry < 1e-12, report


# ---------------------------------------------------------------- forward against direct loops


def conv_reference(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for i, f, p, q in itertools.product(range(n), range(o), range(oh), range(ow)):
        y[i, f, p, q] = np.sum(xp[i, :, p * sh: p * sh + kh, q * sw: q * sw + kw] * w[f]) + (b[f] if b is not None else 0)
    return y


CONV_CASES = [  # (C, O, kernel, stride, padding, H, W)
    (3, 4, 3, 1, 0, 6, 6),
    (2, 3, 3, 2, 0, 7, 6),
    (2, 3, 3, 2, 1, 7, 7),
    (1, 2, 5, 1, 2, 5, 6),
    (2, 2, (3, 1), (1, 2), (0, 1), 5, 5),
    (2, 2, (2, 4), 2, (1, 2), 6, 5),
    (3, 2, (4, 5), 1, 0, 4, 5),  # kernel = input size: a 1x1 output
    (2, 3, 3, 3, 2, 4, 4),       # stride > kernel overlap, padding 2
]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("patches", ["blocked", "slices", "im2col"])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_equals_direct_loops(case, patches, float64):
    c, o, k, s, p, h, w = case
    conv = nets.Conv2d(c, o, k, stride=s, padding=p, patches=patches)
    theta = conv.init_theta(seed=1, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, c, h, w))
    params = conv.layout().unflatten(theta)
    ref = conv_reference(x, params["weight"], params["bias"], conv.stride, conv.padding)
    out = conv.apply(theta, x).data
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def pool_reference(x, kernel, stride, padding, reduce):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for i, j, p, q in itertools.product(range(n), range(c), range(oh), range(ow)):
        window = xp[i, j, p * sh: p * sh + kh, q * sw: q * sw + kw]
        y[i, j, p, q] = window.max() if reduce == "max" else window.sum() / (kh * kw)
    return y


POOL_CASES = [  # (kernel, stride, padding, H, W)
    (2, None, 0, 4, 4),
    (2, None, 0, 5, 7),       # sizes not divisible: the last row/column is dropped
    (3, 2, 1, 5, 5),          # ResNet's stem pool, overlapping, padded
    (3, 2, 1, 6, 7),
    (3, 1, 1, 4, 4),
    ((2, 3), (1, 2), (1, 1), 5, 6),
    ((4, 5), None, 0, 4, 5),  # kernel = input size
    (2, 3, 1, 5, 5),          # stride > kernel
]


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pooling_forward_equals_direct_loops(case, reduce, float64):
    k, s, p, h, w = case
    layer = (nets.MaxPool2d if reduce == "max" else nets.AvgPool2d)(k, stride=s, padding=p)
    x = np.random.default_rng(1).standard_normal((2, 3, h, w))
    ref = pool_reference(x, layer.kernel, layer.stride, layer.padding, reduce)
    out = layer.apply(np.zeros(0), x).data
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_max_pool_padding_is_minus_infinity_not_zero(float64):
    """All-negative inputs: zero padding would win every border window."""
    x = -1.0 - np.random.default_rng(2).random((1, 1, 4, 4))
    out = nets.MaxPool2d(3, stride=2, padding=1).apply(np.zeros(0), x).data
    assert np.all(out < -1.0)
    np.testing.assert_array_equal(out, pool_reference(x, (3, 3), (2, 2), (1, 1), "max"))


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_max_pool_gradient_goes_to_the_first_maximal_entry(float64):
    """Ties: the first maximal entry of a window in row-major order gets the
    whole derivative (PyTorch's choice), never a padded entry."""
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, :] = 1.0  # the window's maximum appears twice, in row 1
    g = tg.grad(lambda z: nets.MaxPool2d(2).apply(np.zeros(0), z.reshape(1, 1, 2, 2)).sum())(x.ravel())
    np.testing.assert_array_equal(g, [0, 0, 1, 0])
    x = -np.ones((1, 1, 3, 3))
    g = tg.grad(lambda z: nets.MaxPool2d(3, stride=2, padding=1).apply(np.zeros(0), z.reshape(1, 1, 3, 3)).sum())(x.ravel())
    assert g.sum() == 4 and np.all(g >= 0)  # 4 windows, each routes 1 to a real entry


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_gelu_is_the_tanh_approximation(float64):
    x = np.linspace(-5, 5, 41)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(nets.GELU().apply(np.zeros(0), x[None]).data[0], ref, rtol=1e-14, atol=1e-15)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_weight_norm_equals_the_plain_layer_at_init_and_scales_with_g(float64):
    for plain, x in ((nets.Linear(4, 3), np.ones((2, 4))), (nets.Conv2d(2, 3, 3), np.ones((1, 2, 4, 4)))):
        wn = nets.WeightNorm(plain)
        assert [p.kind for p in wn.layout()] == ["scale", "weight", "bias"]
        th = wn.init_theta(5, dtype=np.float64)
        p = wn.layout().unflatten(th)
        v = p["weight_v"].reshape(p["weight_v"].shape[0], -1)
        np.testing.assert_allclose(p["weight_g"], np.linalg.norm(v, axis=1), rtol=1e-14)
        plain_theta = plain.layout().flatten({"weight": p["weight_v"], "bias": p["bias"]})
        np.testing.assert_allclose(wn.apply(th, x).data, plain.apply(plain_theta, x).data, rtol=1e-12)
        th2 = np.array(th)
        th2[wn.layout()["weight_v"].slice] *= 3.0  # w depends on v's direction only
        np.testing.assert_allclose(wn.apply(th2, x).data, wn.apply(th, x).data, rtol=1e-12)


@pytest.mark.cpu_only  # host-bound reference (SciPy/PyTorch)
def test_layers_agree_with_torch_when_importable(float64):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    conv = nets.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0))
    th = conv.init_theta(0, dtype=np.float64)
    p = conv.layout().unflatten(th)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(p["weight"]), torch.from_numpy(p["bias"]),
                   stride=(2, 1), padding=(1, 0)).numpy()
    np.testing.assert_allclose(conv.apply(th, x).data, ref, rtol=1e-12, atol=1e-12)
    ref = F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(nets.MaxPool2d(3, 2, 1).apply(np.zeros(0), x).data, ref)
    ref = F.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    np.testing.assert_allclose(nets.GELU().apply(np.zeros(0), x).data, ref, rtol=1e-12, atol=1e-14)


# ---- memory order of the convolutions (a speed property, checked structurally, not timed)


def _stored_batch_last(a):
    """Whether the (N, C, H, W) array a is stored in (C, H, W, N) order."""
    return a.transpose(1, 2, 3, 0).flags.c_contiguous


@pytest.mark.cpu_only  # inspects the memory order of host NumPy arrays
@pytest.mark.parametrize("patches", ["blocked", "slices"])
def test_conv_output_is_stored_batch_last_and_the_next_conv_reads_it_without_a_copy(patches, float64):
    """A conv (blocked or slices route) returns the (N, C, H, W) view of (C, H, W, N)
    memory; ReLU and BatchNorm keep that order, and batch_last of it is a
    view, so a conv stack copies no activation between layers."""
    from nets.layers import batch_last

    x = Tensor(np.random.default_rng(0).standard_normal((3, 2, 6, 5)))
    conv, bn = nets.Conv2d(2, 4, 3, padding=1, patches=patches), nets.BatchNorm2d(4)
    y = conv.apply(conv.init_theta(0, dtype=np.float64), x)
    z = bn.apply(bn.init_theta(0, dtype=np.float64), y).relu()
    for a in (y, z):
        assert a.shape == (3, 4, 6, 5) and not a.data.flags.c_contiguous and _stored_batch_last(a.data)
        assert np.shares_memory(batch_last(a).data, a.data)
    assert not np.shares_memory(batch_last(x).data, x.data)  # a C-ordered input is copied once


@pytest.mark.cpu_only  # inspects the memory order of host NumPy arrays
def test_flatten_and_gradient_buffers_keep_the_cotangents_in_the_forward_memory_order(float64):
    """The cotangent reaching a pooled conv output through flatten is stored
    in the forward (C, H, W, N) order (not NCHW), and so is the in-place
    gradient buffer that the pooling's slices sum into: the elementwise
    rules between never combine two memory orders."""
    rng = np.random.default_rng(1)
    conv, pool = nets.Conv2d(2, 3, 3), nets.MaxPool2d(2)
    y = conv.apply(conv.init_theta(0, dtype=np.float64), rng.standard_normal((4, 2, 7, 7))).data
    w = rng.standard_normal((4, 3 * 2 * 2))

    def cotangent_of(leaf_data, head):
        leaf = Tensor(leaf_data, requires_grad=True)
        (head(leaf) * Tensor(w)).sum().backward()
        return leaf.grad.data

    pooled = pool.apply(np.zeros(0), Tensor(y).relu()).data
    flat = nets.layers.flatten(Tensor(pooled))
    np.testing.assert_array_equal(flat.data, pooled.reshape(4, -1))  # row-major over (C, H, W): as PyTorch
    for g in (cotangent_of(pooled, nets.layers.flatten),
              cotangent_of(y, lambda t: nets.layers.flatten(pool.apply(np.zeros(0), t.relu())))):
        assert _stored_batch_last(g) and not g.flags.c_contiguous


@pytest.mark.cpu_only  # inspects the memory order of host NumPy arrays
@pytest.mark.parametrize("tangents_only", [False, True])
def test_gradient_tangents_through_pooling_keep_the_forward_memory_order(tangents_only, float64):
    """In an HVP pass the pooling's slices sum their cotangents' tangents in
    place too: that buffer is stored (K, C, H, W, N), as the tangents summed
    into it (a C-ordered one made NumPy add element by element: 4 ms of a
    38 ms SmallCNN HVP)."""
    rng = np.random.default_rng(2)
    conv, pool = nets.Conv2d(2, 3, 3), nets.MaxPool2d(2)
    y = conv.apply(conv.init_theta(0, dtype=np.float64), rng.standard_normal((4, 2, 7, 7))).data
    leaf = Tensor(y, requires_grad=True, tangent=rng.standard_normal((2,) + y.shape).transpose(0, 2, 3, 4, 1).copy()
                  .transpose(0, 4, 1, 2, 3))
    out = nets.layers.flatten(pool.apply(np.zeros(0), leaf.relu()))
    (out * out).sum().backward(tangents_only=tangents_only)
    assert leaf.grad.tangent.shape == (2,) + y.shape
    assert leaf.grad.tangent.transpose(0, 2, 3, 4, 1).flags.c_contiguous


@pytest.mark.cpu_only  # inspects the memory order of host NumPy arrays
def test_flatten_of_a_c_ordered_input_is_one_reshape():
    x = Tensor(np.arange(24.0).reshape(2, 3, 2, 2))
    out = nets.layers.flatten(x)
    assert np.shares_memory(out.data, x.data)
    np.testing.assert_array_equal(out.data, x.data.reshape(2, 12))
