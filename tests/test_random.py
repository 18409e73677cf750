"""minidl.random's counter-based stream (Philox-4x32-10): known answers, sharding, and the GPU kernel."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl import random


@pytest.fixture(autouse=True)
def _keep_global_rng():
    with random.fork_rng():
        yield


# Random123's known-answer vectors for Philox-4x32-10: (counter, key, output)
KNOWN = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN)
def test_philox_known_answers(counter, key, expected):
    words = random.philox4x32([np.array([c]) for c in counter], key)
    assert [int(w[0]) for w in words] == list(expected)


def test_philox_uniform_is_a_function_of_the_counter():
    u = random.philox_uniform(5, 0, 10_000)
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() < 1.0
    np.testing.assert_array_equal(random.philox_uniform(5, 1234, 10), u[1234:1244])
    assert abs(u.mean() - 0.5) < 0.02 and not np.array_equal(random.philox_uniform(6, 0, 100), u[:100])


def test_counter_stream_advances_and_shards_like_the_whole_batch():
    random.manual_seed(3)
    assert random.counter_stream((4, 5), "cpu") == (3, 0)
    assert random.counter_stream((2,), "cpu") == (3, 20)
    random.manual_seed(3)
    whole_key, whole_first = random.counter_stream((6, 5), "cpu")
    following = random.counter_stream((1,), "cpu")
    random.manual_seed(3)
    with random.batch_shard(2, 4, 6):  # rows 2:4 of a batch of 6 take the numbers those rows would
        assert random.counter_stream((2, 5), "cpu") == (whole_key, whole_first + 2 * 5)
    assert random.counter_stream((1,), "cpu") == following  # and the stream moved past the whole batch


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_dropout_cuda_kernel_draws_the_numpy_stream_and_stores_no_mask(dtype, cuda, rng):
    x = rng.standard_normal((37, 29)).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    random.manual_seed(9)
    t = mdl.tensor(x, device=cuda, requires_grad=True)
    y = F.dropout(t, 0.3)
    assert y.creator.mask is None
    key, first, shift = y.creator.stream
    assert shift is random.counter_shift(cuda) and int(shift[0]) == 0  # eager: no shift
    y.backward(mdl.tensor(gy, device=cuda))
    keep = random.philox_uniform(key, first, x.size).reshape(x.shape) >= np.float32(0.3)
    scale = 1.0 / 0.7
    np.testing.assert_array_equal(y.numpy() != 0, keep & (x != 0))
    tol = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(y.numpy().astype(np.float64), np.where(keep, x * scale, 0), rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad.numpy().astype(np.float64), np.where(keep, gy * scale, 0), rtol=tol,
                               atol=tol)
    assert F.dropout(t, 0.3).creator.stream[:2] == (key, first + x.size)  # the next draw takes fresh numbers


def test_dropout_cuda_kernel_adds_the_device_shift(cuda, rng):
    # a captured graph's kernels keep their counters; the shift array moves them on between replays
    cupy = mdl.Device(cuda).xp
    x = rng.standard_normal((16, 33)).astype("float32")
    random.manual_seed(4)
    shift = cupy.zeros(1, dtype=cupy.uint64)
    with random.shifted_counters(cuda, shift):
        y = F.dropout(mdl.tensor(x, device=cuda), 0.5)
    key, first, used = y.creator.stream
    assert used is shift
    shift.fill(1000)
    again = y.creator.forward(cupy.asarray(x))  # the same op after the stream moved 1,000 numbers on
    keep = random.philox_uniform(key, first + 1000, x.size).reshape(x.shape) >= np.float32(0.5)
    np.testing.assert_array_equal(cupy.asnumpy(again) != 0, keep & (x != 0))


def test_counter_position_and_skip():
    random.manual_seed(0)
    random.counter_stream((3, 4), "cpu")
    assert random.counter_position("cpu") == 12
    random.skip_counters("cpu", 100)
    assert random.counter_position("cpu") == 112 and random.counter_stream((1,), "cpu")[1] == 112
