"""Shared fixtures: the devices every op test runs on, PyTorch as an optional reference,
and the hypothesis profiles."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minidl as mdl

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    derandomize=True,  # CI must be reproducible; use the "explore" profile to hunt for new cases
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("MINIDL_HYPOTHESIS_PROFILE", "default"))

DEVICES = ["cpu", "cuda:0"]


@pytest.fixture(params=DEVICES)
def device(request):
    """Each test using it runs once per device; CUDA cases skip where there is no GPU."""
    if request.param.startswith("cuda") and not mdl.cuda_available():
        pytest.skip("no usable CUDA GPU with CuPy on this machine")
    return request.param


@pytest.fixture
def cuda():
    """"cuda:0" for tests that compare a GPU kernel with its NumPy reference; they skip where there is no GPU."""
    if not mdl.cuda_available():
        pytest.skip("no usable CUDA GPU with CuPy on this machine")
    return "cuda:0"


@pytest.fixture(scope="session")
def torch():
    """PyTorch (CPU build) as a reference implementation; tests using it skip without it."""
    return pytest.importorskip(
        "torch", reason="PyTorch is the parity reference: pip install torch==2.13.0 (CPU build)"
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
