"""The forward pass of every model against references that share no code with
nets: each reference reads the same flat θ through the model's layout (name
-> array) and recomputes the outputs in float64 with plain NumPy
(``sliding_window_view`` + ``tensordot`` for convolutions, -inf padding and
a window max for max-pooling, batch statistics by ``mean``/``var``), written
from the models' published definitions (torchvision's BasicBlock/ResNet-18,
pytorch-cifar's VGG, the PyTorch tutorial's LeNet), not from nets' code.
Agreement is required to ~1e-12.

Where torch is importable, the same θ is also loaded, by parameter name, into
a torch twin built from torch.nn modules (``load_state_dict``: the names must
match PyTorch's), and its outputs are compared too; without torch those tests
are skipped.

The other model tests check derivatives against the forward pass; these
check the forward pass itself (a block computing relu(out) + shortcut instead
of relu(out + shortcut) passes the former and fails here).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import nets
from nets.models import VGG_CONFIGS

pytestmark = [pytest.mark.usefixtures("float64"), pytest.mark.cpu_only]  # cpu_only: PyTorch forward references

EPS = 1e-5  # BatchNorm's ε (PyTorch's default)


# ================================================================ NumPy reference primitives


def conv(x, w, b=None, stride=1, padding=0):
    """Cross-correlation of x (N, C, H, W) with w (O, C, kh, kw), zero padding."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]  # (N, C, OH, OW, kh, kw)
    y = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)  # (N, O, OH, OW)
    return y if b is None else y + b[None, :, None, None]


def max_pool(x, k, stride=None, padding=0):
    """Window max, windows k x k every ``stride`` (default k), padded with -inf."""
    stride = k if stride is None else stride
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(4, 5))


def batch_norm(x, gamma, beta, stats=None):
    """Per-channel normalization: batch statistics (biased variance) when
    ``stats`` is None, else the given (running_mean, running_var)."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean, var = (x.mean(axis=axes), x.var(axis=axes)) if stats is None else stats
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * gamma.reshape(shape) + beta.reshape(shape)


def linear(x, w, b):
    return x @ w.T + b


def relu(x):
    return np.maximum(x, 0.0)


ACT = {
    "relu": relu,
    "tanh": np.tanh,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
}


def normalized(g, v):
    """Weight normalization: row/filter o of v scaled to length g[o]."""
    norms = np.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(axis=1))
    return v * (g / norms).reshape((-1,) + (1,) * (v.ndim - 1))


class Params:
    """θ read through the model's layout: ``P["layer1.0.conv1.weight"]``, and
    BatchNorm by prefix (train: batch statistics; eval: the model's buffers)."""

    def __init__(self, model, theta, train):
        self.arrays = model.layout().unflatten(np.asarray(theta))
        self.buffers = {k: np.asarray(v, dtype=np.float64) for k, v in model.named_buffers().items()}
        self.train = train

    def __getitem__(self, name):
        return self.arrays[name]

    def bn(self, prefix, x):
        stats = None if self.train else (self.buffers[f"{prefix}.running_mean"], self.buffers[f"{prefix}.running_var"])
        return batch_norm(x, self[f"{prefix}.weight"], self[f"{prefix}.bias"], stats)


# ================================================================ NumPy reference models


def mlp_reference(P, X, n_layers, activation):
    """Flatten ("0"), then Linear at "1", "3", "5", ... with the activation between."""
    h = X.reshape(X.shape[0], -1)
    for i in range(n_layers):
        h = linear(h, P[f"{2 * i + 1}.weight"], P[f"{2 * i + 1}.bias"])
        if i < n_layers - 1:
            h = ACT[activation](h)
    return h


def small_cnn_reference(P, X, activation="relu"):
    act = ACT[activation]
    h = max_pool(act(conv(X, P["features.0.weight"], P["features.0.bias"])), 2)
    h = max_pool(act(conv(h, P["features.3.weight"], P["features.3.bias"])), 2)
    h = act(linear(h.reshape(h.shape[0], -1), P["classifier.0.weight"], P["classifier.0.bias"]))
    return linear(h, P["classifier.2.weight"], P["classifier.2.bias"])


def block_reference(P, prefix, x, stride):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    p = f"{prefix}." if prefix else ""
    out = relu(P.bn(f"{p}bn1", conv(x, P[f"{p}conv1.weight"], stride=stride, padding=1)))
    out = P.bn(f"{p}bn2", conv(out, P[f"{p}conv2.weight"], padding=1))
    if f"{p}downsample.0.weight" in P.arrays:
        shortcut = P.bn(f"{p}downsample.1", conv(x, P[f"{p}downsample.0.weight"], stride=stride))
    else:
        shortcut = x
    return relu(out + shortcut)


def resnet_reference(P, X, stem):
    if stem == "imagenet":
        h = relu(P.bn("bn1", conv(X, P["conv1.weight"], stride=2, padding=3)))
        h = max_pool(h, 3, stride=2, padding=1)
    else:
        h = relu(P.bn("bn1", conv(X, P["conv1.weight"], padding=1)))
    for stage, stride in zip((1, 2, 3, 4), (1, 2, 2, 2)):
        h = block_reference(P, f"layer{stage}.0", h, stride)
        h = block_reference(P, f"layer{stage}.1", h, 1)
    return linear(h.mean(axis=(2, 3)), P["fc.weight"], P["fc.bias"])


def vgg_reference(P, X, depth, norm):
    h, i = X, 0  # i: index in the features Sequential
    for item in VGG_CONFIGS[depth]:
        if item == "M":
            h, i = max_pool(h, 2), i + 1
            continue
        if norm == "wn":
            w = normalized(P[f"features.{i}.weight_g"], P[f"features.{i}.weight_v"])
        else:
            w = P[f"features.{i}.weight"]
        h = conv(h, w, P[f"features.{i}.bias"], padding=1)
        if norm == "bn":
            h, i = P.bn(f"features.{i + 1}", h), i + 1
        h, i = relu(h), i + 2
    h = h.reshape(h.shape[0], -1)
    if norm == "wn":
        return linear(h, normalized(P["classifier.weight_g"], P["classifier.weight_v"]), P["classifier.bias"])
    return linear(h, P["classifier.weight"], P["classifier.bias"])


# ================================================================ the cases


def perturbed_theta(model, seed):
    """PyTorch's init, then every entry scaled by U(0.5, 1.5) and shifted by
    N(0, 0.05²): BatchNorm's γ and β and WeightNorm's g leave their defaults."""
    rng = np.random.default_rng(seed)
    theta = np.asarray(model.init_theta(seed, dtype=np.float64))
    return theta * rng.uniform(0.5, 1.5, theta.shape) + 0.05 * rng.standard_normal(theta.shape)


def random_running_stats(model, seed):
    """Non-trivial running statistics, so eval mode differs from train mode."""
    rng = np.random.default_rng(seed)
    buffers = {}
    for name, array in model.named_buffers().items():
        shape = np.shape(array)
        buffers[name] = rng.uniform(0.5, 2.0, shape) if name.endswith("running_var") else 0.3 * rng.standard_normal(shape)
    model.load_buffers(buffers)


def case_mlp(activation, sizes=(12, 7, 5, 3)):
    model = nets.MLP(sizes, activation=activation)
    return model, (4, 3, 4) if sizes[0] == 12 else (4, sizes[0]), \
        lambda P, X: mlp_reference(P, X, len(sizes) - 1, activation)


CASES = {
    **{f"mlp-{a}": (lambda a=a: case_mlp(a)) for a in sorted(nets.ACTIVATIONS)},
    "mlp-one-layer": lambda: case_mlp("relu", sizes=(6, 2)),
    "smallcnn-cifar": lambda: (nets.SmallCNN(), (2, 3, 32, 32), small_cnn_reference),
    "smallcnn-mnist-tanh": lambda: (nets.SmallCNN(widths=(4, 6), hidden=9, in_channels=1, num_classes=5,
                                                  image_size=28, activation="tanh"), (3, 1, 28, 28),
                                    lambda P, X: small_cnn_reference(P, X, "tanh")),
    "smallcnn-odd-size": lambda: (nets.SmallCNN(widths=(2, 3), hidden=5, in_channels=1, image_size=30),
                                  (2, 1, 30, 30), small_cnn_reference),
    "block-identity": lambda: (nets.BasicBlock(4, 4), (3, 4, 6, 6), lambda P, X: block_reference(P, "", X, 1)),
    "block-projection-stride2": lambda: (nets.BasicBlock(4, 6, stride=2), (3, 4, 7, 7),
                                         lambda P, X: block_reference(P, "", X, 2)),
    "block-projection-channels": lambda: (nets.BasicBlock(3, 5), (2, 3, 5, 5),
                                          lambda P, X: block_reference(P, "", X, 1)),
    "resnet18-imagenet": lambda: (nets.ResNet18(1, 10, stem="imagenet", width=0.125), (3, 1, 32, 32),
                                  lambda P, X: resnet_reference(P, X, "imagenet")),
    "resnet18-cifar": lambda: (nets.ResNet18(3, 7, stem="cifar", width=0.125), (2, 3, 16, 16),
                               lambda P, X: resnet_reference(P, X, "cifar")),
    **{f"vgg11-{norm}": (lambda norm=norm: (nets.VGG(11, norm, width=0.125), (2, 3, 32, 32),
                                            lambda P, X: vgg_reference(P, X, 11, norm)))
       for norm in ("bn", "wn", "none")},
    "vgg13-bn": lambda: (nets.VGG(13, "bn", num_classes=4, width=0.0625), (2, 3, 32, 32),
                         lambda P, X: vgg_reference(P, X, 13, "bn")),
}
HAS_BN = {name for name in CASES if name.startswith(("block", "resnet", "vgg")) and not name.endswith(("wn", "none"))}
MODES = [(name, "train") for name in sorted(CASES)] + [(name, "eval") for name in sorted(HAS_BN)]


def prepared(name, mode, seed=0):
    """(model in that mode, θ, X, reference outputs, model outputs)."""
    model, shape, reference = CASES[name]()
    theta = perturbed_theta(model, seed)
    X = np.random.default_rng(seed + 1).standard_normal(shape)
    if mode == "eval":
        random_running_stats(model, seed + 2)
        model.eval()
    expected = reference(Params(model, theta, train=mode == "train"), X)
    got = np.asarray(model.apply(theta, X).data)
    return model, theta, X, expected, got


def assert_matches(got, expected, what):
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != reference {expected.shape}"
    assert got.dtype == np.float64
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(got - expected).max())
    assert err <= 1e-12 * scale, f"{what}: max |model - reference| = {err:.3e} (scale {scale:.3e})"


@pytest.mark.parametrize("name, mode", MODES, ids=[f"{n}-{m}" for n, m in MODES])
def test_forward_matches_the_numpy_reference(name, mode):
    _, _, _, expected, got = prepared(name, mode)
    assert np.all(np.isfinite(expected)) and float(np.abs(expected).std()) > 1e-3  # a non-degenerate check
    assert_matches(got, expected, f"{name} ({mode})")


def test_the_references_see_a_shortcut_inside_the_relu():
    """The check has teeth: moving the shortcut outside the final ReLU
    (relu(out) + shortcut) changes the block's outputs far beyond 1e-12."""
    model, theta, X, expected, _ = prepared("block-identity", "train")
    P = Params(model, theta, train=True)
    out = relu(P.bn("bn1", conv(X, P["conv1.weight"], padding=1)))
    out = P.bn("bn2", conv(out, P["conv2.weight"], padding=1))
    assert float(np.abs(relu(out) + X - expected).max()) > 0.1


def test_reference_primitives_on_hand_computed_values():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[p, q] - x[p + 1, q + 1] = -5 everywhere
    np.testing.assert_array_equal(conv(x, w), np.full((1, 1, 3, 3), -5.0))
    np.testing.assert_array_equal(conv(x, w, stride=2), np.full((1, 1, 2, 2), -5.0))
    padded = conv(x, w, padding=1)  # corners see one real entry
    assert padded.shape == (1, 1, 5, 5) and padded[0, 0, 0, 0] == -0.0 and padded[0, 0, 4, 4] == 15.0
    np.testing.assert_array_equal(max_pool(x, 2), [[[[5.0, 7.0], [13.0, 15.0]]]])
    np.testing.assert_array_equal(max_pool(-x, 3, stride=2, padding=1), [[[[0.0, -1.0], [-4.0, -5.0]]]])
    y = batch_norm(np.array([[1.0], [3.0]]), np.array([2.0]), np.array([0.5]))
    np.testing.assert_allclose(y, [[0.5 - 2 / math.sqrt(1 + EPS)], [0.5 + 2 / math.sqrt(1 + EPS)]], rtol=1e-15)
    np.testing.assert_allclose(normalized(np.array([2.0]), np.array([[3.0, 4.0]])), [[1.2, 1.6]], rtol=1e-15)


def test_constructor_defaults_and_size_limits():
    """What the default arguments build, and where the size checks draw the line."""
    assert nets.SmallCNN().num_parameters() == 52_202
    assert nets.SmallCNN(image_size=16).num_parameters() == 456 + 2_416 + 16 * 120 + 120 + 1_210
    with pytest.raises(ValueError, match="image_size 15 is too small"):
        nets.SmallCNN(image_size=15)
    shapes = {p.name: p.shape for p in nets.ResNet18(width=0.125).layout()}
    assert shapes["conv1.weight"] == (8, 3, 7, 7) and shapes["fc.weight"] == (10, 64)
    assert not any(name.endswith("bias") and "conv" in name for name in shapes)  # convs without bias
    shapes = {p.name: p.shape for p in nets.ResNet18(width=0.001).layout()}
    assert shapes["conv1.weight"] == (1, 3, 7, 7) and shapes["fc.weight"] == (10, 1)  # at least one channel
    vgg = nets.VGG(width=0.125)
    assert (vgg.depth, vgg.norm) == (11, "bn") and vgg.layout()["classifier.weight"].shape == (10, 64)
    assert nets.VGG(width=0.001).layout()["features.0.weight"].shape == (1, 3, 3, 3)
    with pytest.raises(ValueError, match=r"depth must be one of \[11, 13, 16, 19\], got 12"):
        nets.VGG(12)


# ================================================================ torch twins (skipped without torch)


def torch_twin(model, name):
    """A torch.nn model with PyTorch's parameter names for ``model``."""
    import torch
    from torch import nn

    def block(m):
        twin = nn.Module()
        twin.conv1 = nn.Conv2d(m.in_channels, m.out_channels, 3, m.stride, 1, bias=False)
        twin.bn1 = nn.BatchNorm2d(m.out_channels)
        twin.conv2 = nn.Conv2d(m.out_channels, m.out_channels, 3, 1, 1, bias=False)
        twin.bn2 = nn.BatchNorm2d(m.out_channels)
        if m.downsample is not None:
            twin.downsample = nn.Sequential(nn.Conv2d(m.in_channels, m.out_channels, 1, m.stride, bias=False),
                                            nn.BatchNorm2d(m.out_channels))

        def forward(x):
            out = twin.bn2(twin.conv2(torch.relu(twin.bn1(twin.conv1(x)))))
            shortcut = twin.downsample(x) if hasattr(twin, "downsample") else x
            return torch.relu(out + shortcut)

        twin.forward = forward
        return twin

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": lambda: nn.GELU(approximate="tanh")}
    if isinstance(model, nets.MLP):
        layers = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(model.sizes[:-1], model.sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(model.sizes) - 2:
                layers.append(acts[model.activation]())
        return nn.Sequential(*layers)
    if isinstance(model, nets.SmallCNN):
        convs = [m for _, m in model.named_modules() if isinstance(m, nets.Conv2d)]
        lins = [m for _, m in model.named_modules() if isinstance(m, nets.Linear)]
        act = acts["tanh" if name.endswith("tanh") else "relu"]
        twin = nn.Module()
        twin.features = nn.Sequential(nn.Conv2d(convs[0].in_channels, convs[0].out_channels, 5), act(),
                                      nn.MaxPool2d(2), nn.Conv2d(convs[1].in_channels, convs[1].out_channels, 5),
                                      act(), nn.MaxPool2d(2))
        twin.classifier = nn.Sequential(nn.Linear(lins[0].in_features, lins[0].out_features), act(),
                                        nn.Linear(lins[1].in_features, lins[1].out_features))
        twin.forward = lambda x: twin.classifier(torch.flatten(twin.features(x), 1))
        return twin
    if isinstance(model, nets.BasicBlock):
        return block(model)
    if isinstance(model, nets.ResNet18):
        twin = nn.Module()
        twin.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel,
                               model.conv1.stride, model.conv1.padding, bias=False)
        twin.bn1 = nn.BatchNorm2d(model.conv1.out_channels)
        for i in range(1, 5):
            setattr(twin, f"layer{i}", nn.Sequential(*[block(b) for b in getattr(model, f"layer{i}")]))
        twin.fc = nn.Linear(model.fc.in_features, model.fc.out_features)

        def forward(x):
            x = torch.relu(twin.bn1(twin.conv1(x)))
            if model.stem == "imagenet":
                x = nn.functional.max_pool2d(x, 3, 2, 1)
            for i in range(1, 5):
                for b in getattr(twin, f"layer{i}"):
                    x = b.forward(x)
            return twin.fc(x.mean(dim=(2, 3)))

        twin.forward = forward
        return twin
    if isinstance(model, nets.VGG):
        def wn(layer):
            if model.norm != "wn":
                return layer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return nn.utils.weight_norm(layer)

        layers = []
        for m in model.features:
            if isinstance(m, nets.MaxPool2d):
                layers.append(nn.MaxPool2d(2))
            elif isinstance(m, (nets.Conv2d, nets.WeightNorm)):
                c = m if isinstance(m, nets.Conv2d) else m._layer
                layers.append(wn(nn.Conv2d(c.in_channels, c.out_channels, 3, padding=1)))
            elif isinstance(m, nets.BatchNorm2d):
                layers.append(nn.BatchNorm2d(m.num_features))
            else:
                layers.append(nn.ReLU())
        lin = model.classifier if isinstance(model.classifier, nets.Linear) else model.classifier._layer
        twin = nn.Module()
        twin.features = nn.Sequential(*layers)
        twin.classifier = wn(nn.Linear(lin.in_features, lin.out_features))
        twin.forward = lambda x: twin.classifier(torch.flatten(twin.features(x), 1))
        return twin
    raise AssertionError(f"no torch twin for {type(model).__name__}")


@pytest.mark.parametrize("name, mode", MODES, ids=[f"{n}-{m}" for n, m in MODES])
def test_forward_matches_a_torch_twin(name, mode):
    torch = pytest.importorskip("torch")
    model, theta, X, expected, got = prepared(name, mode)
    twin = torch_twin(model, name).double()
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.layout().unflatten(np.asarray(theta)).items()}
    state.update({k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in model.named_buffers().items()})
    mine = twin.state_dict()
    for k, v in state.items():  # torch keeps WeightNorm's g as (out, 1, ...)
        assert k in mine, f"{name}: parameter {k!r} has no counterpart of that name in PyTorch's model"
        state[k] = v.reshape(mine[k].shape)
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    twin.train(mode == "train")
    with torch.no_grad():
        out = twin.forward(torch.from_numpy(X)).numpy()
    assert_matches(got, out, f"{name} ({mode}) vs torch")
    assert_matches(expected, out, f"{name} ({mode}) NumPy reference vs torch")
