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


def test_scatter_add_sums_repeats_in_float32_and_keeps_the_dtype():
    values = np.full(3000, 0.1, dtype=np.float16)
    out = backend.scatter_add((4,), np.zeros(3000, dtype=np.int64), values)
    assert out.dtype == np.float16 and abs(float(out[0]) - 300.0) < 0.2 and (out[1:] == 0).all()
    # in float16 the running sum would stall at 256 (the next 0.1 rounds away): the float32 sums do not
    stalled = np.zeros(4, dtype=np.float16)
    np.add.at(stalled, np.zeros(3000, dtype=np.int64), values)
    assert float(stalled[0]) < 260


def test_as_dtype_names():
    assert backend.as_dtype("float32") == np.float32 and backend.as_dtype(np.float64) == np.float64
    pytest.importorskip("ml_dtypes", reason="bfloat16 comes from ml_dtypes")
    assert backend.as_dtype("bf16") == backend.bfloat16()




def test_stream_bound_handles_one_per_thread_and_device_rebound_only_on_a_new_stream():
    import threading

    made, bound = [], []
    handles = backend.StreamBoundHandles(lambda: made.append(len(made)) or f"h{len(made) - 1}",
                                         lambda handle, stream: bound.append((handle, stream)))
    assert handles.get(0, 11) == "h0" and handles.get(0, 11) == "h0" and handles.get(0) == "h0"
    assert handles.get(0, 12) == "h0" and handles.get(1, 11) == "h1"
    assert bound == [("h0", 11), ("h0", 12), ("h1", 11)]  # a bind only when the stream changed
    other = []
    thread = threading.Thread(target=lambda: other.append(handles.get(0, 12)))
    thread.start()
    thread.join()
    assert other == ["h2"] and bound[-1] == ("h2", 12)  # another thread gets a handle of its own
