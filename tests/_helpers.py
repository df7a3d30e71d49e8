"""Test helpers that do not go through ``tinygrad2.check``: an independent
finite-difference stencil, the three derivative routes on functions of several
Tensors, one comparison with an explicit tolerance, a small MLP loss of a flat
theta, the HDF5 round trip of an optimizer state, and the optimizer contract
table (rows, problems and the run loop's protocol)."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from optimizers import (
    BB, LBFGS, SGD, SGDPH, AdaHessian, Adam, AdamW, DampedNewton, GaussNewton, HessianFree, Hybrid, KFAC, Newton, Shampoo, Sophia,
    load_state, save_state, states_equal,
)
from tinygrad2 import Quadratic, Rosenbrock, Tensor, no_grad
from tinygrad2 import backend
from tinygrad2.backend import to_device, to_host

def D(x):
    """The explicit host-to-device transfer (identity for arrays already on the device)."""
    return to_device(x)


def host(x):
    """Device arrays and Tensors -> NumPy arrays, recursively in lists/tuples/dicts;
    anything else (host arrays, scalars, strings) unchanged."""
    if isinstance(x, Tensor):
        return to_host(x)
    if backend.xp is not np and isinstance(x, backend.xp.ndarray):
        return backend.xp.asnumpy(x)
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(host(v) for v in x)
    if isinstance(x, dict):
        return {k: host(v) for k, v in x.items()}
    return x


class _HostTesting:
    """``npt.assert_allclose(...)`` etc.: ``numpy.testing`` with every argument
    moved to the host first (explicitly), so device results can be compared."""

    def __getattr__(self, name):
        fn = getattr(np.testing, name)
        if not callable(fn):
            return fn

        def wrapped(*args, **kwargs):
            return fn(*host(list(args)), **host(kwargs))

        wrapped.__name__ = name
        return wrapped


npt = _HostTesting()


# Fourth-order central stencil: truncation error O(h^4), rounding ~ eps |F| / h.
_STENCIL = ((-2, 1.0), (-1, -8.0), (1, 8.0), (2, -1.0))


def central_difference(F, arrays, Vs, step=1e-3):
    """(K, *F.shape): d/de F(arrays + e Vs[k]) for every direction k.

    ``arrays`` is a list of inputs and ``Vs`` a matching list whose entries are
    ``None`` (the input is held fixed) or (K, *shape) directions. The step is
    ``step / max|v_k|`` so that no input moves by more than 2 * step."""
    K = next(v.shape[0] for v in Vs if v is not None)
    rows = []
    for k in range(K):
        scale = max(float(np.abs(to_host(v[k])).max(initial=0.0)) for v in Vs if v is not None)
        h = step / scale if scale > 0 else step
        acc = 0.0
        for c, w in _STENCIL:
            moved = [a if v is None else a + (c * h) * v[k] for a, v in zip(arrays, Vs)]
            acc = acc + w * np.asarray(to_host(F(moved)), dtype=np.float64)
        rows.append(acc / (12 * h))
    return np.stack(rows)


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    """||actual - expected|| <= rtol * max(||actual||, ||expected||) + atol (Frobenius)."""
    actual, expected = np.asarray(host(actual)), np.asarray(host(expected))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    err = float(np.linalg.norm((actual - expected).ravel()))
    scale = max(float(np.linalg.norm(actual.ravel())), float(np.linalg.norm(expected.ravel())))
    assert err <= rtol * scale + atol, (
        f"{what}: error {err:.3e} > rtol {rtol:.0e} * scale {scale:.3e} + atol {atol:.0e}"
    )


def values(fn, params=None):
    """F(list of arrays) -> array, no graph, no tangents."""
    params = params or {}

    def F(arrays):
        with no_grad():
            return fn(*[Tensor(a) for a in arrays], **params).data

    return F


def gradients(fn, arrays, params=None):
    """Reverse mode: d fn / d arrays[i] for a scalar fn, as arrays."""
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts, **(params or {}))
    out.backward()
    return [np.zeros_like(a) if t.grad is None else t.grad.data for a, t in zip(arrays, ts)]


def forward_over_reverse(fn, arrays, Vs, params=None):
    """H V by seeding tangents Vs on every input and running backward once."""
    K = Vs[0].shape[0]
    ts = [Tensor(a, requires_grad=True, tangent=v) for a, v in zip(arrays, Vs)]
    out = fn(*ts, **(params or {}))
    out.backward()
    result = []
    for a, t in zip(arrays, ts):
        if t.grad is None or t.grad.tangent is None:
            result.append(backend.xp.zeros((K,) + a.shape))
        else:
            assert t.grad.tangent.shape == (K,) + a.shape
            result.append(t.grad.tangent)
    return result


def reverse_over_reverse(fn, arrays, Vs, params=None):
    """H V by recording the backward pass and differentiating <grad, v_k> again."""
    K = Vs[0].shape[0]
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts, **(params or {}))
    out.backward(create_graph=True)
    gs = [t.grad for t in ts]
    rows = [[] for _ in arrays]
    for k in range(K):
        for t in ts:
            t.grad = None
        terms = [(g * Tensor(v[k])).sum() for g, v in zip(gs, Vs) if g is not None and g.requires_grad]
        if terms:
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            total.backward(retain_graph=True)
        for i, (a, t) in enumerate(zip(arrays, ts)):
            rows[i].append(np.zeros_like(a) if t.grad is None else t.grad.data)
    return [np.stack(r) for r in rows]


def flat(parts):
    """Concatenate a list of (K, *shape_i) arrays into (K, n)."""
    return np.concatenate([p.reshape(p.shape[0], p[0].size if p.shape[0] else -1) for p in parts], axis=1)


def split(V, arrays):
    """Split (K, n) directions into a list of (K, *shape_i), the inverse of ``flat``."""
    out, start = [], 0
    for a in arrays:
        out.append(V[:, start : start + a.size].reshape((V.shape[0],) + a.shape))
        start += a.size
    return out


def mlp_loss(activation, X, y, hidden=4, C=3):
    """(f, n): the mean cross-entropy of a d-hidden-C network as a function of
    one flat theta of length n (slices, and an integer-array gather)."""
    n, d = X.shape
    cuts = np.cumsum([0, d * hidden, hidden, hidden * C, C])
    rows, y = to_device(np.arange(n)), to_device(y)  # device index arrays (a scatter-add takes no host ones)

    def f(theta):
        W1 = theta[cuts[0] : cuts[1]].reshape(d, hidden)
        b1 = theta[cuts[1] : cuts[2]]
        W2 = theta[cuts[2] : cuts[3]].reshape(hidden, C)
        b2 = theta[cuts[3] : cuts[4]]
        h = getattr(Tensor(to_device(X)) @ W1 + b1, activation)()
        return -(h @ W2 + b2).log_softmax(axis=1)[rows, y].mean()

    return f, int(cuts[-1])


def hdf5_round_trip(state, path):
    """Save an optimizer state to HDF5 at ``path``, load it back, assert the
    copy equals the original bit for bit, and return the copy."""
    with h5py.File(path, "w") as f:
        save_state(f.create_group("opt"), state)
    with h5py.File(path, "r") as f:
        loaded = load_state(f["opt"])
    assert states_equal(state, loaded)
    return loaded


# ---------------------------------------------------------------- the optimizer contract table
# One row per optimizer, with hyper-parameters that suit both problems, run with
# the run loop's protocol (tests/optimizers/test_contract.py and
# test_interface_only.py use them).

EPOCHS, STEPS_PER_EPOCH = 4, 3
STEPS = EPOCHS * STEPS_PER_EPOCH

ROWS = {
    "SGD": lambda: SGD(lr=1e-3),
    "SGD-momentum": lambda: SGD(lr=3e-4, momentum=0.9),
    "Adam": lambda: Adam(lr=0.02),
    "AdamW": lambda: AdamW(lr=0.02, weight_decay=1e-3),
    "BB": lambda: BB(lr=1e-3, beta=0.5),
    "LBFGS": lambda: LBFGS(history_size=5, line_search="strong_wolfe"),
    "Newton": lambda: Newton(),
    "DampedNewton": lambda: DampedNewton(damping=1.0),
    "HessianFree": lambda: HessianFree(damping=1.0),
    "GaussNewton": lambda: GaussNewton(damping=1.0),
    "AdaHessian": lambda: AdaHessian(lr=0.05, seed=3),
    "SGDPH": lambda: SGDPH(lr=0.1, second_order_lr=0.1, diag="exact", official_last_1d_sgd=False),
    "Hybrid": lambda: Hybrid(threshold=math.inf, sgd_lr=3e-4, ada_lr=0.05, seed=3),  # switches after epoch 1
    "KFAC": lambda: KFAC(damping=1.0),
    "Sophia": lambda: Sophia(lr=0.1, gamma=0.1, update_each=2, seed=3),
    "Shampoo": lambda: Shampoo(lr=0.02),
}
PROBLEMS = ("quadratic", "rosenbrock")


def problem(name):
    """(objective, theta0, f*) of a named problem."""
    if name == "quadratic":
        rng = np.random.default_rng(42)
        n = 6
        basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
        A = basis @ np.diag(np.geomspace(100.0, 1000.0, n)) @ basis.T
        b = rng.normal(size=n)
        objective = Quadratic(to_device((A + A.T) / 2), to_device(b))
        x_star = np.linalg.solve((A + A.T) / 2, b)
        return objective, to_device(rng.normal(size=n)), objective.loss(to_device(x_star))
    objective = Rosenbrock(2)
    return objective, to_device(to_host(objective.x0).astype(np.float64)), 0.0


def train(opt, objective, theta):
    """The run loop's protocol: (thetas, states, infos) of every step, states[0] from init."""
    states, thetas, infos = [opt.init(theta)], [theta], []
    state = states[0]
    for _ in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            theta, state, info = opt.step(objective, theta, state)
            thetas.append(theta)
            states.append(state)
            infos.append(info)
        state = opt.end_epoch(theta, state, {"val_loss": objective.loss(theta)})
        states[-1] = state
    return thetas, states, infos


# ---------------------------------------------------------------- generated data files and CuPy


def _idx(array):
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def _images(rng, labels, shape):
    """Class-dependent images (a bright block whose position is the label) plus noise."""
    X = rng.integers(0, 64, (len(labels), *shape), dtype=np.uint8)
    for i, c in enumerate(labels):
        X[i, ..., 2 * c:2 * c + 6, 4:20] = 230
    return X


def write_generated_data(root, mnist=(1400, 200), cifar=(20, 40)):
    """MNIST (train, test images) and CIFAR-10 (per training batch, test) files in their original
    formats under ``root``, with learnable generated images; returns ``root``."""
    import gzip

    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    for prefix, n in zip(("train", "t10k"), mnist):
        y = (np.arange(n) % 10).astype(np.uint8)
        images = gzip.compress(_idx(_images(rng, y, (28, 28))), mtime=0)
        (root / "mnist" / f"{prefix}-images-idx3-ubyte.gz").write_bytes(images)
        (root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y), mtime=0))
    (root / "cifar10").mkdir()
    per_batch, test = cifar
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        y = (np.arange(n) % 10).astype(np.uint8)
        X = _images(rng, y, (3, 32, 32)).reshape(n, -1)
        (root / "cifar10" / f"{name}.bin").write_bytes(np.concatenate([y[:, None], X], axis=1).tobytes())
    return root


def require_cupy():
    """Skip unless CuPy imports and sees at least one GPU."""
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed (pip install tinygrad2[gpu])")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # installed but no usable driver/GPU
        pytest.skip(f"CuPy has no GPU here: {err}")
    if count <= 0:
        pytest.skip("CuPy sees no GPU")
