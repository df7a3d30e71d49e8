"""The backend owns the array namespace and the dtype policy; nothing else in
the engine imports NumPy. CuPy tests run only where CuPy imports (and skip
cleanly elsewhere)."""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tinygrad2 as tg
from tinygrad2 import Tensor, backend

PACKAGE = pathlib.Path(tg.__file__).resolve().parent
HAVE_CUPY = importlib.util.find_spec("cupy") is not None


def numpy_imports(source: str):
    """Line numbers of ``import numpy...`` / ``from numpy... import`` statements
    (at any depth, including inside functions)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(a.name == "numpy" or a.name.startswith("numpy.") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and (node.module == "numpy" or node.module.startswith("numpy.")):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] == "numpy":
                lines.append(node.lineno)
    return lines


def test_the_scanner_finds_numpy_imports():
    assert numpy_imports("import numpy") == [1]
    assert numpy_imports("import os\nimport numpy as np") == [2]
    assert numpy_imports("from numpy import linalg") == [1]
    assert numpy_imports("from numpy.linalg import norm") == [1]
    assert numpy_imports("def f():\n    import numpy.random\n") == [2]
    assert numpy_imports("import importlib\nnp = importlib.import_module('numpy')") == [2]
    assert numpy_imports("import numpyro\nfrom . import numpy_helpers\nx = 'import numpy'") == []


def test_engine_modules_do_not_import_numpy():
    files = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "backend.py")
    assert len(files) >= 4, f"expected the engine's modules under {PACKAGE}, found {files}"
    offenders = {
        str(p.relative_to(PACKAGE)): lines
        for p in files
        if (lines := numpy_imports(p.read_text(encoding="utf-8")))
    }
    assert not offenders, f"array math must go through backend.xp; numpy imported at {offenders}"


@pytest.mark.cpu_only  # host-bound: asserts the NumPy default backend is left in place
def test_use_an_unknown_backend():
    with pytest.raises(ValueError, match="bogus"):
        backend.use("bogus")
    assert backend.name == "numpy" and backend.xp is np


@pytest.mark.cpu_only  # host-bound: asserts the NumPy default backend is left in place
@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here")
def test_use_cupy_without_cupy_explains_how_to_install():
    with pytest.raises(ImportError, match=r"cupy[\s\S]*pip install"):
        backend.use("cupy")
    assert backend.name == "numpy" and backend.xp is np


def test_environment_variable_selects_the_backend():
    code = "import tinygrad2"
    env = {"TINYGRAD2_BACKEND": "bogus", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "bogus" in result.stderr


def test_default_dtype_is_float32_for_python_data():
    assert backend.default_dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(3).dtype == np.float32
    assert Tensor(2.5).dtype == np.float32
    # arrays keep their dtype
    assert Tensor(backend.to_device(np.ones(2))).dtype == np.float64
    assert Tensor(backend.to_device(np.ones(2, dtype=np.float32))).dtype == np.float32
    # a Python scalar in an expression takes the tensor's dtype
    assert (Tensor(backend.to_device(np.ones(2))) * 0.5).dtype == np.float64
    assert (Tensor(backend.to_device(np.ones(2, dtype=np.float32))) * 0.5).dtype == np.float32


def test_precision_restores_the_dtype():
    with backend.precision("float64"):
        assert backend.default_dtype == np.float64
        assert Tensor([1.0]).dtype == np.float64
        with backend.precision(np.float32):
            assert Tensor([1.0]).dtype == np.float32
        assert backend.default_dtype == np.float64
    assert backend.default_dtype == np.float32
    with pytest.raises(RuntimeError, match="boom"):
        with backend.precision("float64"):
            raise RuntimeError("boom")
    assert backend.default_dtype == np.float32


def test_float64_fixture_restores_the_default(float64):
    assert backend.default_dtype == np.float64
    assert Tensor([1.0]).dtype == np.float64


def test_default_dtype_must_be_floating():
    with pytest.raises(ValueError, match="int32"):
        backend.set_default_dtype("int32")
    assert backend.default_dtype == np.float32


def test_to_host_returns_numpy_arrays():
    a = backend.xp.arange(3.0)
    for value in (a, Tensor(a), [1.0, 2.0], 3.0):
        host = backend.to_host(value)
        assert type(host) is np.ndarray
    np.testing.assert_array_equal(backend.to_host(Tensor(a)), [0.0, 1.0, 2.0])
    assert type(Tensor(a).numpy()) is np.ndarray
    assert type(tg.to_host(a)) is np.ndarray


def test_asarray_keeps_arrays_and_converts_python_data():
    a = backend.to_device(np.ones(3))
    assert backend.asarray(a) is a  # no copy
    assert backend.asarray(a, np.float32).dtype == np.float32
    assert backend.asarray([1, 2]).dtype == np.float32
    i = backend.to_device(np.arange(3))
    assert backend.asarray(i).dtype == np.int64 or backend.asarray(i).dtype.kind == "i"


# ---------------------------------------------------------------- the GPU backend


def _problem():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    theta, V = rng.standard_normal(12) * 0.5, rng.standard_normal((3, 12))
    return X, y, theta, V


def _loss(xp_X, xp_y):
    return lambda theta: (Tensor(xp_X) @ theta.reshape(4, 3)).tanh().log_softmax(axis=1)[
        backend.xp.arange(xp_X.shape[0]), xp_y
    ].mean() * -1.0


@pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed (pip install tinygrad2[gpu])")
class TestCuPy:
    @pytest.fixture(autouse=True)
    def _cupy(self):
        cupy = pytest.importorskip("cupy")
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # installed but no usable GPU
            pytest.skip(f"CuPy has no GPU here: {err}")
        backend.use("cupy")
        try:
            yield cupy
        finally:
            backend.use("numpy")

    def test_grad_and_hvp_match_numpy(self, _cupy):
        X, y, theta, V = _problem()
        on_gpu = _loss(backend.to_device(X), backend.to_device(y))
        g_gpu = tg.grad(on_gpu)(backend.to_device(theta))
        hv_gpu = tg.hvp(on_gpu, backend.to_device(theta), backend.to_device(V))
        assert isinstance(g_gpu, _cupy.ndarray) and isinstance(hv_gpu, _cupy.ndarray)
        g_gpu, hv_gpu = backend.to_host(g_gpu), backend.to_host(hv_gpu)
        backend.use("numpy")
        on_cpu = _loss(X, y)
        np.testing.assert_allclose(g_gpu, tg.grad(on_cpu)(theta), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(hv_gpu, tg.hvp(on_cpu, theta, V), rtol=1e-10, atol=1e-14)

    def test_host_arrays_are_refused_not_silently_copied(self, _cupy):
        with pytest.raises(TypeError, match="to_device"):
            Tensor(np.ones(3))
        assert type(backend.to_host(Tensor(backend.xp.ones(3)))) is np.ndarray


@pytest.mark.cpu_only  # a host allocator setting
def test_keep_freed_host_memory_takes_effect_on_glibc_and_is_idempotent():
    """On glibc both mallopt calls succeed (and again); elsewhere it says False
    instead of raising. A subprocess, so the suite's own allocator is untouched."""
    import platform
    import subprocess
    import sys

    code = ("from tinygrad2 import memory as M; import numpy as np; "
            "print(M.keep_freed_host_memory(), M.keep_freed_host_memory()); "
            "a = np.ones(10_000_000, np.float32); del a; print(float(np.ones(3).sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out[0] == ("True True" if on_glibc else "False False")
    assert out[1] == "3.0"
