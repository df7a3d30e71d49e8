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


@pytest.fixture(autouse=True)
def _backend_state_is_restored():
    """Every test leaves the backend (array module and default dtype) as it found it."""
    xp, name, dtype = backend.xp, backend.name, backend.default_dtype
    yield
    restored = (backend.xp, backend.name, backend.default_dtype) == (xp, name, dtype)
    backend.xp, backend.name, backend.default_dtype = xp, name, dtype
    assert restored, "the test changed the backend state without restoring it"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
