"""Devices, array modules and differentiable transfers."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl import backend


def test_device_parsing_and_equality():
    assert mdl.Device("cpu") == mdl.Device("cpu:0") == "cpu"
    assert mdl.Device("CPU:1") == "cpu:1"
    assert mdl.Device("cpu:1") != mdl.Device("cpu:0")
    assert str(mdl.Device("cpu")) == "cpu:0"
    assert hash(mdl.Device("cpu")) == hash(mdl.Device("cpu:0"))


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu:0", "cpu:-1", ""])
def test_unknown_device_names_the_spec(spec):
    with pytest.raises(mdl.DeviceError, match="unknown device"):
        mdl.Device(spec)


def test_cuda_without_gpu_says_what_is_missing():
    if mdl.cuda_available():
        pytest.skip("a CUDA GPU is present; this checks the message on CPU-only machines")
    with pytest.raises(mdl.DeviceError, match=r"cuda:0.*(CuPy|CUDA|GPU)") as info:
        mdl.tensor([1.0], device="cuda:0")
    message = str(info.value)
    assert "pip install" in message or "nvidia-smi" in message or "no CUDA GPU" in message


@pytest.mark.skipif(not mdl.cuda_available(), reason="needs a CUDA GPU with CuPy")
def test_missing_cuda_index_is_reported():
    count = mdl.cuda_device_count()
    with pytest.raises(mdl.DeviceError, match="not present"):
        mdl.Device(f"cuda:{count}")


def test_get_array_module_is_numpy_for_host_arrays():
    assert backend.get_array_module(np.zeros(1)) is np


def test_transfer_between_logical_cpus_is_differentiable():
    x = mdl.tensor([1.0, 2.0], requires_grad=True, device="cpu:0")
    y = x.to("cpu:1")
    assert y.device == "cpu:1"
    with pytest.raises(mdl.DeviceError, match="different devices"):
        x + y
    (y * y).sum().backward()
    assert x.grad.device == "cpu:0"
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


def test_transfer_to_gpu_and_back_is_differentiable(device):
    x = mdl.tensor([1.0, -2.0], requires_grad=True)
    y = x.to(device) * 3
    assert y.device == device
    z = y.to("cpu").sum()
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])
    assert isinstance(x.grad.data, np.ndarray)


def test_to_with_dtype():
    x = mdl.tensor([1.0], requires_grad=True)
    y = x.to(dtype="float64")
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("rows, elements, block, expected", [
    (32, 32 * 290_400, 1 << 18, [(i, i + 1) for i in range(32)]),  # AlexNet's LRN1: an image per block
    (32, 32 * 1000, 1 << 18, [(0, 32)]),  # small: one block
    (10, 10 * 300, 900, [(0, 3), (3, 6), (6, 9), (9, 10)]),
    (0, 0, 1 << 18, []),
])
def test_host_blocks_cover_the_rows_in_order(rows, elements, block, expected):
    assert backend.host_blocks(np, rows, elements, block) == expected
