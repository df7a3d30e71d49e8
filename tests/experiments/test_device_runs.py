"""The experiments layer on a device, in-process: ``python -m experiments run NAME --quick --device gpu`` of every
experiment of the catalog (a subset of its methods, to stay fast), their analyses, the plots, ``report``, the
probes through the run loop and ``curvature_error``, on the CPU emulation of a device (tests/_device.py: device
arrays refuse implicit conversion to NumPy and mixing with host arrays, as CuPy's do) and on CuPy where a GPU is
present.

``--device gpu`` calls ``backend.use("cupy")``; on the emulator that call installs the emulated device instead
(and the GPU check is skipped). Each run is compared with the same run on NumPy: on the emulator arithmetic is
NumPy's, so the results files (every step and epoch series but the wall times, the final parameters) and the
analyses' JSON are bit-identical, except for the methods and probes that draw from ``xp.random`` (another
stream on a device), which are checked for the same columns and finiteness. On CuPy the runs are only checked
to complete with finite results.

The data are generated files in the real formats (MNIST IDX .gz, CIFAR-10 binary batches), as in
test_papers.py; digits is embedded. ``sweep`` is not covered: its workers are separate processes, where the
emulator is not installed, and it has no ``--device`` option.
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import experiments.__main__ as cli
from experiments import catalog, curvature_error
from experiments.results import load_final, load_run
from experiments.runner import RunSpec, train
from tinygrad2 import backend

from _helpers import require_cupy, write_generated_data

MNIST_TRAIN, MNIST_TEST = 2200, 200  # curvature-study's quick subset draws 2,000 + 50 from the training set
CIFAR_PER_BATCH, CIFAR_TEST = 20, 40
RANDOM_OPTIMIZERS = {"AdaHessian", "Hybrid", "Sophia"}  # draw from xp.random: another stream on a device
# probes that draw from xp.random (Lanczos start vectors, Hutch++ and SLQ probes)
RANDOM_PROBES = ("lambda_max", "lambda_min", "ggn_lambda_max", "sharpness_ratio", "trace", "density")
TIMES = ("step_time", "wall_time", "epoch_time", "seconds_per_epoch")
# sgdph-cifar10's epoch hook measures dense blocks by batched HVPs over large tensors: there the engine takes a
# per-direction path on NumPy only (tinygrad2.kernels.products), whose outputs have another memory layout,
# so the BLAS sums that follow round differently in float32. Those columns agree to rounding, not bit for bit.
ROUNDING_COLUMNS = ("offdiag", "rowsum_err", "rowsum_ratio")


# ---------------------------------------------------------------- data and backends


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_generated_data(tmp_path_factory.mktemp("data"), mnist=(MNIST_TRAIN, MNIST_TEST),
                                cifar=(CIFAR_PER_BATCH, CIFAR_TEST))


@pytest.fixture(params=["emulated", "cupy"])
def device(request, monkeypatch):
    """The device of ``--device gpu``: the emulator (installed by the CLI's ``backend.use("cupy")``) or CuPy."""
    if request.param == "cupy":
        require_cupy()
    else:
        from _device import install

        def use(name):
            assert name == "cupy", name
            install()

        monkeypatch.setattr(cli, "_check_gpu", lambda: None)
        monkeypatch.setattr(backend, "use", use)
    return request.param


@contextlib.contextmanager
def on_device(device):
    """The block on the device (the backend is restored after it, as the CLI leaves it switched)."""
    saved = backend.xp, backend.name
    try:
        backend.use("cupy")  # on the emulator, the fixture's stand-in installs it
        yield
    finally:
        backend.xp, backend.name = saved


# ---------------------------------------------------------------- comparison with NumPy


def _same(a, b, what, exact):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    if exact == "rounding":
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=what)
    elif exact:
        assert a.tobytes() == b.tobytes(), f"{what}: not bit-identical to NumPy"
    else:
        assert np.isfinite(a).all() == np.isfinite(b).all(), what


def _draws(optimizer):
    """The optimizer draws from xp.random: AdaHessian, Hybrid, Sophia, and K-FAC with the sampled factor."""
    return optimizer["name"] in RANDOM_OPTIMIZERS or optimizer.get("kwargs", {}).get("factor") == "sample"


def _random_columns(run):
    if _draws(run.config["optimizer"]):
        return lambda key: True
    return lambda key: key.partition(":")[0] in RANDOM_PROBES


def compare_runs(ref_dir, dev_dir, name, exact):
    """Every results file of ``name`` in ``dev_dir`` against the NumPy one in ``ref_dir``."""
    ref_files = sorted(ref_dir.glob(f"{name}__*.h5"))
    assert ref_files and [f.name for f in ref_files] == [f.name for f in sorted(dev_dir.glob(f"{name}__*.h5"))]
    for ref_path in ref_files:
        ref, dev = load_run(ref_path), load_run(dev_dir / ref_path.name)
        assert dev.status == ref.status == "finished", (ref_path.name, dev.message)
        assert dev.config == ref.config
        random = _random_columns(ref)
        for group in ("steps", "epochs", "probes"):
            a, b = getattr(ref, group), getattr(dev, group)
            assert set(a) == set(b), (ref_path.name, group)
            for key in a:
                if key in TIMES or key.startswith("time:"):
                    continue
                rounding = exact and key.partition(":")[0].startswith(ROUNDING_COLUMNS)
                _same(b[key], a[key], f"{ref_path.name} {group}/{key}",
                      "rounding" if rounding else exact and not random(key))
        theta_ref, theta_dev = (backend.to_host(load_final(p)[0]) for p in (ref_path, dev_dir / ref_path.name))
        assert np.isfinite(theta_dev).all()
        _same(theta_dev, theta_ref, f"{ref_path.name} final theta",
              exact and not _draws(ref.config["optimizer"]))


def _without_times(tree):
    if isinstance(tree, dict):
        return {k: _without_times(v) for k, v in tree.items() if not any(t in k for t in ("time", "seconds"))}
    if isinstance(tree, list):
        return [_without_times(v) for v in tree]
    return tree


def _close_trees(a, b, where="analysis"):
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), where
        for k in b:
            _close_trees(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close_trees(x, y, f"{where}[{i}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7), where
    else:
        assert a == b, where


def compare_analysis(ref_dir, dev_dir, name, exact):
    path = f"{name}_analysis.json"
    if not (ref_dir / path).exists():
        assert not (dev_dir / path).exists()
        return
    ref, dev = (json.loads((d / path).read_text()) for d in (ref_dir, dev_dir))
    if exact and name == "sgdph-cifar10":  # the dense blocks of its analysis: to rounding (ROUNDING_COLUMNS)
        _close_trees(_without_times(dev), _without_times(ref))
    elif exact:
        assert _without_times(dev) == _without_times(ref)
    else:
        assert set(dev) == set(ref)


def run_both(name, data_dir, tmp_path, capsys, device, *extra):
    """``run NAME --quick`` on NumPy and with ``--device gpu``; the device run's printed text."""
    args = ["run", name, "--quick", "--no-verify", "--data-dir", str(data_dir), *extra]
    assert cli.main([*args, "--out", str(tmp_path / "numpy")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    saved = backend.xp, backend.name
    try:
        code = cli.main([*args, "--out", str(tmp_path / "device"), "--device", "gpu"])
        assert backend.name != "numpy"  # --device gpu switched the backend
    finally:
        backend.xp, backend.name = saved
    text = capsys.readouterr()
    assert code == 0, text.err
    exact = device == "emulated"
    compare_runs(tmp_path / "numpy", tmp_path / "device", name, exact)
    compare_analysis(tmp_path / "numpy", tmp_path / "device", name, exact)
    assert (tmp_path / "device" / f"{name}.png").stat().st_size > 10_000
    return text.out


# ---------------------------------------------------------------- every experiment at --quick


# the methods run of each experiment: the analyses' subjects and one of each kind of optimizer, not every row
# (the dense Newton methods of digits are O(n^3) at n = 2,410: mlp-mnist-newton runs them at n = 250)
QUICK_METHODS = {
    "digits": ["SGD", "HF-GaussNewton", "L-BFGS", "K-FAC", "Shampoo", "Sophia-G"],
    "mlp-mnist-newton": None,  # all six
    "cnn-cifar10-quasi-newton": ["SGD-0.1", "L-BFGS", "L-BFGS-naive", "K-FAC"],
    "resnet18-mnist-hybrid": ["Hybrid"],  # SGD: test_report_and_plot_of_device_runs
    "sgdph-cifar10": ["BN/SGD-PH"],
    "curvature-study": ["SGD-lr2", "AdaHessian"],
}


def test_every_experiment_of_the_catalog_is_covered():
    assert set(QUICK_METHODS) == set(catalog.EXPERIMENTS)


@pytest.mark.parametrize("name", list(QUICK_METHODS))
def test_quick_run_on_the_device_equals_numpy(name, data_dir, tmp_path, capsys, device):
    methods = QUICK_METHODS[name]
    out = run_both(name, data_dir, tmp_path, capsys, device, *(["--optimizers", *methods] if methods else []))
    assert "learning curves:" in out
    if name == "mlp-mnist-newton":  # its analysis measures load_final's parameters (device arrays)
        assert "dead ReLUs" in out and "end of training" in out and "H at initialization" in out
    if name == "curvature-study":
        assert "SGD-lr2: λ_max" in out and "diag error" in out and "probe curves:" in out
    if name == "resnet18-mnist-hybrid":
        assert "Figure 7" in out and "probe curves:" in out
    if name == "sgdph-cifar10":
        assert "Off-diagonal mass" in out


def test_report_and_plot_of_device_runs(data_dir, tmp_path, capsys, device):
    """report and plot of results files written on the device, run with the device installed."""
    args = ["run", "resnet18-mnist-hybrid", "--quick", "--no-verify", "--data-dir", str(data_dir),
            "--optimizers", "SGD", "--out", str(tmp_path), "--device", "gpu"]
    files = [str(tmp_path / f"resnet18-mnist-hybrid__SGD-{r}.h5") for r in (1, 2)]
    with on_device(device):
        assert cli.main(args) == 0
        capsys.readouterr()
        assert cli.main(["report", *files]) == 0
        out = capsys.readouterr().out
        assert "SGD (x2)" in out and "statistics of test_acc over seeds" in out
        assert cli.main(["plot", *files, "--png", str(tmp_path / "again.png")]) == 0
        out = capsys.readouterr().out
    assert (tmp_path / "again.png").stat().st_size > 10_000
    assert "probe curves:" in out and (tmp_path / "again-probes.png").exists()


# ---------------------------------------------------------------- probes, curvature_error


def _probe_spec():
    names = ["lambda_max", "lambda_min", "ggn_lambda_max", "trace", "density", "sharpness_ratio", "grad_noise",
             "diag_error", "newton_cosine", "grad_spectral_norm", "dead_units", "offdiag_mass"]
    from experiments.probes import PROBES

    assert sorted(names) == sorted(PROBES)  # every probe
    return RunSpec(experiment="probes", method="SGD-PH", model={"name": "MLP", "kwargs": {"sizes": [64, 4, 10]}},
                   optimizer={"name": "SGDPH", "kwargs": {"lr": 0.05}},
                   data={"name": "digits", "reshape": [-1], "limit_batches": 3}, epochs=1, batch_size=32,
                   probes={"names": names, "every": 1, "batch": 24})


def test_every_probe_through_the_run_loop_on_the_device(tmp_path, device):
    """The probes (every one, each step) of a tiny MLP trained by SGD-PH (a Hessian-diagonal estimate for
    diag_error; no random draws), on NumPy and on the device, and their plots."""
    from experiments.probe_plots import plot_probes

    spec = _probe_spec()
    logs = []
    ref = train(spec, tmp_path / "numpy.h5", progress=False, log=logs.append)
    with on_device(device):
        dev = train(spec, tmp_path / "device.h5", progress=False, log=logs.append)
        png = plot_probes([dev], tmp_path / "probes.png", labels=["device"])
    assert not logs, logs  # no probe skipped
    assert dev.status == "finished" and list(dev.probes["step"]) == [0, 1, 2, 3]
    assert {k.partition(":")[0] for k in dev.probes if k != "step" and not k.startswith("time:")} == set(
        spec.probes["names"])
    compare_runs_of(ref, dev, exact=device == "emulated")
    assert png is not None and png.stat().st_size > 10_000


def compare_runs_of(ref, dev, exact):
    random = _random_columns(ref)
    for key in ref.probes:
        if not key.startswith("time:"):
            _same(dev.probes[key], ref.probes[key], f"probes/{key}", exact and not random(key))
    for key in ref.steps:
        if key not in TIMES:
            _same(dev.steps[key], ref.steps[key], f"steps/{key}", exact)


def test_curvature_error_on_the_device(monkeypatch, device):
    """python -m experiments.curvature_error at a tiny size (MLP 64-4-10, n = 300; one step): K-FAC and Shampoo
    equal NumPy's, Sophia-G (random draws) is finite."""
    monkeypatch.setitem(catalog.DIGITS_MODEL, "kwargs", {"sizes": [64, 4, 10], "activation": "relu"})
    ref = curvature_error.run(steps=(1,), probe_size=16, out=io.StringIO())
    text = io.StringIO()
    with on_device(device):
        dev = curvature_error.run(steps=(1,), probe_size=16, out=text)
    assert "| 1 | K-FAC |" in text.getvalue()
    assert [r[:4] for r in dev] == [r[:4] for r in ref]
    for a, b in zip(dev, ref):
        assert all(math.isfinite(v) for v in a[4:])
        if device == "emulated" and a[1] != "Sophia-G":
            assert a == b
