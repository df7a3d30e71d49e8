"""Shared test configuration: hypothesis profiles and float64 fixtures.

Profiles: ``ci`` (the default; few, derandomized examples so the suite is fast
and reproducible) and ``dev`` (many random examples, for hunting). Pick one with
``HYPOTHESIS_PROFILE=dev python -m pytest``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tinygrad2 import backend

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def float64():
    """Make float64 the default dtype for the test, and restore it afterwards."""
    with backend.precision("float64"):
        yield np.float64


def _run_on_device() -> bool:
    """The suite runs on a device: TINYGRAD2_BACKEND is not numpy (e.g. cupy)."""
    return os.environ.get("TINYGRAD2_BACKEND", "numpy") != "numpy"


def pytest_collection_modifyitems(config, items):
    """Under a device backend, skip the tests marked ``cpu_only`` (host-bound)."""
    if _run_on_device():
        skip = pytest.mark.skip(reason="cpu_only: host-bound test, skipped when TINYGRAD2_BACKEND is not numpy")
        for item in items:
            if "cpu_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _backend_state_is_restored(request):
    """Every test leaves the backend (array module and default dtype) as it found it.

    With TINYGRAD2_TEST_EMULATED=1 every test not marked ``cpu_only`` runs with
    the emulated device backend (tests/_device.py) installed."""
    install = os.environ.get("TINYGRAD2_TEST_EMULATED") == "1" and "cpu_only" not in request.keywords
    if install:
        from _device import install as install_emulated

        outer = install_emulated()
    xp, name, dtype = backend.xp, backend.name, backend.default_dtype
    yield
    restored = (backend.xp, backend.name, backend.default_dtype) == (xp, name, dtype)
    backend.xp, backend.name, backend.default_dtype = xp, name, dtype
    if install:
        backend.xp, backend.name = outer
    assert restored, "the test changed the backend state without restoring it"


@pytest.fixture(params=["numpy", "emulated", "cupy"])
def device_backend(request):
    """Run the test once per backend (ids contain the name: ``-k cupy`` selects
    the CuPy cases); yields the backend's name, restores the backend after."""
    saved = backend.xp, backend.name
    if request.param == "cupy":
        from _helpers import require_cupy

        require_cupy()
        backend.use("cupy")
    elif request.param == "emulated":
        from _device import install

        install()
    else:
        backend.xp, backend.name = np, "numpy"
    try:
        yield request.param
    finally:
        backend.xp, backend.name = saved


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
