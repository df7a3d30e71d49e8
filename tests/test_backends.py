"""The engine, the nets, every optimizer and the run loop on each backend
(``device_backend``: numpy, the CPU emulation of a device in tests/_device.py,
and CuPy where a GPU is present), in float64, against NumPy's results.

Data enters through ``backend.to_device`` and results leave through
``backend.to_host``; the emulator refuses anything else, as CuPy does. On the
emulator arithmetic is NumPy's, so deterministic results are bit-identical;
on CuPy they agree to rounding. Random draws (``xp.random``) come from another
stream on a device, so methods that draw are compared only for shape and
finiteness there. A checkpoint written under one backend resumes under another
and ends bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import contextlib

import h5py
import numpy as np
import pytest

import optimizers
from _helpers import ROWS
from experiments.results import load_final, load_run
from experiments.runner import RunSpec, train
from nets.models import MLP, ResNet18, SmallCNN
from optimizers import load_state, save_state, states_equal
from tinygrad2 import backend

RANDOM_ROWS = {"AdaHessian", "Hybrid", "Sophia"}  # draw Rademacher vectors from xp.random


@contextlib.contextmanager
def on(name):
    """Run the block on the numpy backend (the reference) or the emulated one."""
    from _device import install

    saved = backend.xp, backend.name
    if name == "numpy":
        backend.xp, backend.name = np, "numpy"
    else:
        install()
    try:
        yield
    finally:
        backend.xp, backend.name = saved


def host(tree):
    """Every array of a result (or a tuple/list/dict of them) moved to the host."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(host(x) for x in tree)
    if isinstance(tree, dict):
        return {k: host(v) for k, v in tree.items()}
    return backend.to_host(tree) if hasattr(tree, "shape") else tree


def close(actual, expected, name, exact):
    """Bit-identical on the emulator (NumPy arithmetic), to rounding on CuPy."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if exact:
        assert actual.tobytes() == expected.tobytes(), f"{name}: not bit-identical to NumPy"
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=1e-11, err_msg=name)


MODELS = {
    "MLP": (lambda: MLP((5, 4, 3), activation="tanh"), (6, 5), 3),
    "SmallCNN": (lambda: SmallCNN(widths=(2, 3), hidden=4, in_channels=2, num_classes=3, image_size=16),
                 (3, 2, 16, 16), 3),
    "ResNet18": (lambda: ResNet18(in_channels=2, num_classes=3, stem="cifar", width=1 / 32).train(),
                 (2, 2, 8, 8), 3),
}


def _curvature(model_name, seed=0):
    """Host results of the engine's products on one model under the current backend."""
    make, x_shape, classes = MODELS[model_name]
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal(x_shape), rng.integers(0, classes, x_shape[0])
    model = make()
    theta = model.init_theta(0, "float64")
    obj = model.objective("cross_entropy", backend.to_device(X), backend.to_device(y))
    V = backend.to_device(rng.standard_normal((2, theta.shape[0])))
    out = {
        "forward": model.apply(theta, backend.to_device(X)).data,
        "loss": obj.loss(theta), "grad": obj.grad(theta), "hvp": obj.hvp(theta, V), "ggn_vp": obj.ggn_vp(theta, V),
    }
    cap = obj.capture(theta, factor="exact")
    out["capture_grad"] = cap.grad
    out["capture_inputs"] = [layer.inputs for layer in cap.layers]
    if model_name == "MLP":  # dense products: n = 35
        out["hessian"], out["ggn"] = obj.hessian(theta), obj.ggn(theta)
        out["hessian_diag"] = obj.hessian_diag(theta, method="exact")
        out["hutchinson_shape"] = obj.hessian_diag(theta, method="hutchinson", samples=2, seed=0).shape
    return host(out)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_engine_products_match_numpy(device_backend, model_name):
    with backend.precision("float64"):
        got = _curvature(model_name)
        with on("numpy"):
            want = _curvature(model_name)
    for key in want:
        if key == "capture_inputs":
            assert len(got[key]) == len(want[key]) > 0
            for i, (a, b) in enumerate(zip(got[key], want[key])):
                close(a, b, f"{key}[{i}]", device_backend != "cupy")
        elif key == "hutchinson_shape":
            assert got[key] == want[key]
        else:
            assert type(got[key]) is type(want[key]) or np.ndim(got[key]) == 0, key
            close(got[key], want[key], key, device_backend != "cupy")


def _optimizer_run(row, path):
    """Three steps, an epoch end, the state through HDF5, one more step: host results."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    model = MLP((5, 4, 3), activation="tanh")
    obj = model.objective("cross_entropy", backend.to_device(X), backend.to_device(y))
    opt = ROWS[row]()
    theta = model.init_theta(0, "float64")
    state = opt.init(theta)
    for _ in range(3):
        theta, state, info = opt.step(obj, theta, state)
    state = opt.end_epoch(theta, state, {"val_loss": obj.loss(theta)})
    with h5py.File(path, "w") as f:
        save_state(f.create_group("opt"), state)
    with h5py.File(path, "r") as f:
        loaded = load_state(f["opt"])
    assert states_equal(state, loaded)
    theta, state, info = opt.step(obj, theta, loaded)
    return backend.to_host(theta), float(info["loss"])


@pytest.mark.parametrize("row", list(ROWS))
def test_optimizers_step_and_round_trip_their_state(device_backend, row, tmp_path):
    with backend.precision("float64"):
        theta, loss = _optimizer_run(row, tmp_path / "a.h5")
        with on("numpy"):
            want_theta, want_loss = _optimizer_run(row, tmp_path / "b.h5")
    assert type(theta) is np.ndarray and np.isfinite(theta).all() and np.isfinite(loss)
    if row in RANDOM_ROWS and device_backend != "numpy":
        assert theta.shape == want_theta.shape  # another random stream: other numbers
    else:
        close(theta, want_theta, row, device_backend != "cupy")
        close(loss, want_loss, row, device_backend != "cupy")


def small_spec(name="SGD", kwargs=None, epochs=2, **overrides):
    return RunSpec(
        experiment="test", method=name, model={"name": "MLP", "kwargs": {"sizes": [64, 8, 10]}},
        optimizer={"name": name, "kwargs": kwargs or {"lr": 0.1, "momentum": 0.9}},
        data={"name": "digits", "reshape": [-1], "limit_batches": 3}, epochs=epochs, batch_size=32,
        dtype="float64", **overrides,
    )


def _series(path):
    run = load_run(path)
    return {f"steps.{k}": v for k, v in run.steps.items() if "time" not in k} | {
        f"epochs.{k}": v for k, v in run.epochs.items() if "time" not in k} | {"theta": backend.to_host(load_final(path)[0])}


def test_the_run_loop_end_to_end(device_backend, tmp_path):
    spec = small_spec(probes={"names": ["lambda_max", "dead_units", "newton_cosine"], "every": 2, "batch": 64})
    run = train(spec, tmp_path / "dev.h5", progress=False, log=lambda *a: None)
    with on("numpy"):
        train(spec, tmp_path / "ref.h5", progress=False, log=lambda *a: None)
    assert run.status == "finished"
    got, want = _series(tmp_path / "dev.h5"), _series(tmp_path / "ref.h5")
    assert got.keys() == want.keys()
    for key in want:
        close(got[key], want[key], key, device_backend != "cupy")
    with h5py.File(tmp_path / "dev.h5", "r") as f:
        assert "probes" in f


# ---------------------------------------------------------------- checkpoints across backends

class Interrupted(optimizers.SGD):
    """SGD that raises KeyboardInterrupt (as Ctrl-C does) before step ``stop_at``."""

    stop_at = None

    def step(self, objective, theta, state):
        if Interrupted.stop_at is not None and state["step"] + 1 == Interrupted.stop_at:
            raise KeyboardInterrupt
        return super().step(objective, theta, state)


@pytest.fixture
def interruptible(monkeypatch):
    monkeypatch.setattr(optimizers, "Interrupted", Interrupted, raising=False)
    monkeypatch.setattr(Interrupted, "stop_at", None)
    return Interrupted


@pytest.mark.parametrize("first, then", [("numpy", "emulated"), ("emulated", "numpy")], ids=["numpy-to-emulated",
                                                                                            "emulated-to-numpy"])
@pytest.mark.parametrize("where", ["epoch", "mid-epoch"])
def test_a_checkpoint_resumes_on_the_other_backend_bit_identical(first, then, where, interruptible, tmp_path):
    spec = small_spec("Interrupted", epochs=3)
    with on("numpy"):
        train(spec, tmp_path / "whole.h5", progress=False, log=lambda *a: None)
    path, seconds = tmp_path / "moved.h5", (0.0 if where == "mid-epoch" else None)
    interruptible.stop_at = 5 if where == "mid-epoch" else 4  # epoch 2, batch 2 / 1 (3 batches per epoch)
    with on(first), pytest.raises(KeyboardInterrupt):
        train(spec, path, progress=False, log=lambda *a: None, checkpoint_seconds=seconds)
    info = load_run(path).checkpoint_info
    assert load_run(path).status == "interrupted" and info["epoch"] == 1 and info["step"] == (4 if seconds == 0 else 3)
    interruptible.stop_at = None
    with on(then):
        train(spec, path, resume=True, progress=False, log=lambda *a: None)
    got, want = _series(path), _series(tmp_path / "whole.h5")
    assert got.keys() == want.keys()
    for key in want:
        close(got[key], want[key], key, exact=True)


def test_a_host_index_array_is_moved_to_the_device_and_backpropagates(device_backend):
    # CuPy indexes with host arrays but its scatter (add.at) refuses them: the
    # index goes to the device once, in Tensor.__getitem__
    from tinygrad2 import Tensor

    x = Tensor(backend.to_device(np.arange(5.0)), requires_grad=True)
    picked = x[np.array([0, 3, 3])]
    picked.sum().backward()
    np.testing.assert_array_equal(backend.to_host(x.grad.data), [1.0, 0.0, 0.0, 2.0, 0.0])
