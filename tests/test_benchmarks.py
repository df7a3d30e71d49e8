"""Smoke tests of the benchmarks (``benchmarks/``, not installed): each one's
``--quick`` mode runs from the repository root as ``python -m benchmarks.X``
on GENERATED data in the original formats (MNIST IDX .gz, CIFAR-10 binary
batches) found through ``$TINYGRAD2_DATA``, prints the shared header and its
tables, and shows torch columns exactly when torch is importable. Plus: a
missing data folder ends a benchmark with one line naming TINYGRAD2_DATA,
and the benchmarks stay out of the wheel."""
from __future__ import annotations

import ast
import gzip
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
MNIST_TRAIN, CIFAR_BATCH_1 = 1000, 128  # the most any benchmark reads (engine and curvature; nets)


def _idx(array):
    """An unsigned-byte IDX file: magic 0x0000 0x08 ndim, big-endian uint32 dims, the bytes."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny MNIST (1,000 training images) and CIFAR-10 (128 records in
    data_batch_1.bin, 2 in each other batch) with random pixels."""
    root = tmp_path_factory.mktemp("bench-data")
    rng = np.random.default_rng(0)
    mnist = root / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", MNIST_TRAIN), ("t10k", 10)):
        y = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (mnist / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images), compresslevel=1))
        (mnist / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y), compresslevel=1))
    cifar = root / "cifar10"
    cifar.mkdir()
    batches = [("data_batch_1", CIFAR_BATCH_1)] + [(f"data_batch_{i}", 2) for i in range(2, 6)] + [("test_batch", 2)]
    for name, n in batches:
        y = (np.arange(n) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (cifar / f"{name}.bin").write_bytes(np.concatenate([y[:, None], pixels], axis=1).tobytes())
    return root


def run_benchmark(module, data_dir, *args, timeout=180):
    # one OpenMP thread: benchmarks.engine leaves torch's thread pool at its
    # default, whose spinning threads make every torch call many times slower
    # when the machine is busy (as it is while the rest of the suite runs)
    env = dict(os.environ, TINYGRAD2_DATA=str(data_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{module} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def check_header(text, name):
    lines = text.splitlines()
    assert lines[0].startswith(f"== {name} (quick run) -- ")
    assert re.search(r"^machine: \d+ CPUs, .*python 3\.\d+\.\d+, numpy \d", text, re.M)
    blas = next(line for line in lines if line.startswith("BLAS: "))
    assert "kernel" in blas or "unknown" in blas
    assert re.search(r"^threads: --threads \d", text, re.M)
    env = next(line for line in lines if line.startswith("environment: "))
    assert "OPENBLAS_CORETYPE" in env and "OPENBLAS_L2_SIZE" in env
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        assert (f"{var}={os.environ[var]!r}" in env) if var in os.environ else f"{var} not set" in env


def test_engine_quick(data_dir):
    text = run_benchmark("benchmarks.engine", data_dir, "--quick", "--no-verify")
    check_header(text, "benchmarks.engine")
    assert f"data: MNIST ({data_dir / 'mnist'}, first 1000 training images and labels)" in text
    head = next(line for line in text.splitlines() if line.startswith("| batch |"))
    assert ("grad torch" in head) == HAS_TORCH
    rows = [line for line in text.splitlines() if re.match(r"\| (64|1000) +\| (module|flat)", line)]
    assert len(rows) == 4
    assert "paired ratios, median [min-max]" in text and "ABORT" not in text


def test_curvature_quick(data_dir):
    text = run_benchmark("benchmarks.curvature", data_dir, "--quick", "--no-verify", "--cases", "mnist")
    check_header(text, "benchmarks.curvature")
    assert "mnist: MLP 784-16-10 (tanh), MNIST (" in text and "rows 0..31" in text
    assert re.search(r"^\| mnist \(float32\) \| 12,730 \| 32 \| .* \| (PASS|FAIL) ", text, re.M)
    assert re.search(r"^\| mnist \| .* MiB \|", text, re.M)  # the memory table (subprocesses)
    assert ("| torch | torch / NumPy |" in text) == HAS_TORCH
    assert "per-chunk ratios to the NumPy R-op" in text


def test_nets_quick(data_dir):
    text = run_benchmark("benchmarks.nets", data_dir, "--quick", "--no-verify")
    check_header(text, "benchmarks.nets")
    assert f"SmallCNN data: CIFAR-10 ({data_dir / 'cifar10'}, first 128 training records)" in text
    assert "| SmallCNN b128 HVP | tinygrad2 |" in text and "| ResNet18 b10 1x28x28 step | tinygrad2 |" in text
    assert ("| SmallCNN b128 grad | torch eager |" in text) == HAS_TORCH
    if not HAS_TORCH:
        assert "torch columns skipped" in text


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (the compare extra)")
def test_crosscheck_torch_quick(tmp_path):
    text = run_benchmark("benchmarks.crosscheck_torch", tmp_path, "--quick")
    check_header(text, "benchmarks.crosscheck_torch")
    assert re.search(r"^torch \d+\.\d+", text, re.M)
    for net in ("mlp-tanh", "mlp-relu", "smallcnn", "vgg11-bn-train", "vgg11-wn"):
        for quantity in ("loss", "gradient", "HVP"):
            assert re.search(rf"^\| {net} \| {quantity} \| ", text, re.M), (net, quantity)
    assert re.search(r"^\| mlp-relu \| Hessian \| .* \| all agree \|$", text, re.M)
    assert re.search(r"^\| vgg11-bn-train \| running stats \| \d\.\de-\d+ \|", text, re.M)
    # PyTorch's fused weight norm: whatever its routes do, FD referees them in the verdict
    assert re.search(r"^\| vgg11-wn \| HVP \| .* \| (all agree|FD: tinygrad2 ok, .*) \|$", text, re.M)
    assert "worst tinygrad2 error against FD: " in text
    assert text.rstrip().endswith("and with every FD-confirmed PyTorch route")  # the PASS line, exit 0


def test_crosscheck_torch_without_torch_is_one_line():
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            "runpy.run_module('benchmarks.crosscheck_torch', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[compare]"' in lines[0], out.stdout


def test_crosscheck_verdicts_are_decided_by_finite_differences():
    """The verdict logic without torch: a PyTorch route that FD refutes is a
    PyTorch case and does not fail the run; tinygrad2 off FD does."""
    from benchmarks.crosscheck_torch import Row

    fd, good, bad = np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]), np.array([1.0, 2.5])
    row = Row("net", "HVP", {"tinygrad2": good, "autograd": good, "torch.func": bad}, fd).compare()
    assert row.passed() and row.verdict() == "FD: tinygrad2 ok, autograd ok, torch.func WRONG"
    assert [route for route, _ in row.torch_cases()] == ["torch.func"]
    row = Row("net", "HVP", {"tinygrad2": bad, "autograd": good, "torch.func": "NotImplementedError: x"}, fd).compare()
    assert not row.passed() and row.verdict() == "FD: tinygrad2 WRONG, autograd ok, torch.func fails"
    row = Row("net", "HVP", {"tinygrad2": good, "autograd": good, "torch.func": good}, fd).compare()
    assert row.passed() and row.verdict() == "all agree" and not row.torch_cases()
    loss = Row("net", "loss", {"tinygrad2": np.float64(1.0), "autograd": np.float64(1.5)}).compare()
    assert not loss.passed()


def test_missing_data_is_one_line_naming_the_variable(tmp_path):
    env = dict(os.environ, TINYGRAD2_DATA=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"benchmarks.engine: no MNIST data in {tmp_path}; set TINYGRAD2_DATA")


def test_benchmarks_are_not_packaged():
    from setuptools import find_packages

    # the include list of [tool.setuptools.packages.find] (no tomllib: Python 3.10 is supported)
    found = re.search(r"^\[tool\.setuptools\.packages\.find\]\s*\ninclude\s*=\s*(\[.*?\])",
                      (ROOT / "pyproject.toml").read_text(), flags=re.M | re.S)
    include = ast.literal_eval(found.group(1))
    packages = find_packages(str(ROOT), include=include)
    assert "experiments" in packages and not any(p.split(".")[0] == "benchmarks" for p in packages)
    assert not list((ROOT / "experiments").glob("bench_*.py"))
    assert not list((ROOT / "experiments").glob("reference_*.py"))
