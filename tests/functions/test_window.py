"""Window geometry and storage order (minidl/functions/window.py): channels-last storage flows through
convolution, pooling and LRN without changing values."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.functions.window import (
    Window, as_pair, conv_output_size, crop_hw, from_storage, is_channels_last, pad_hw, storage_view,
)

from ._conv_reference import channels_last_copy, out_size
from ._opcheck import spread_apart


@pytest.mark.parametrize("name", ["conv", "conv_groups", "conv_stride", "max_pool", "max_pool_padded", "lrn"])
def test_channels_last_storage_gives_the_same_values(name, device, rng):
    # convolutions return channels-last storage and the next ops keep it: values and gradients
    # must not depend on the storage order of the input or of the incoming gradient
    W = rng.standard_normal((6, 4, 3, 3))
    ops = {
        "conv": lambda x: F.conv2d(x, mdl.tensor(W, device=device), padding=1),
        "conv_groups": lambda x: F.conv2d(x, mdl.tensor(W[:, :2], device=device), padding=1, groups=2),
        "conv_stride": lambda x: F.conv2d(x, mdl.tensor(W, device=device), stride=2, padding=1),
        "max_pool": lambda x: F.max_pool2d(x, 3, 2),
        "max_pool_padded": lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
        "lrn": lambda x: F.local_response_norm(x, 3),
    }
    x = spread_apart(rng.standard_normal((2, 4, 9, 9)))
    results = []
    for store in (np.ascontiguousarray, channels_last_copy):
        xt = mdl.tensor(store(x), device=device, requires_grad=True)
        y = ops[name](xt)
        gy = store(rng.standard_normal(y.shape)) if not results else results[0][2]
        (gx,) = mdl.grad([y], [xt], [mdl.tensor(store(gy), device=device)])
        results.append((y.numpy(), gx.numpy(), gy))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, k, s, p, d", [(13, 3, 2, 0, 1), (14, 3, 2, 0, 1), (227, 11, 4, 0, 1), (7, 3, 1, 2, 2),
                                              (5, 2, 3, 1, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_conv_output_size_is_pytorchs(size, k, s, p, d, ceil_mode):
    assert conv_output_size(size, k, s, p, d, ceil_mode) == out_size(size, k, s, p, d, ceil_mode)


def test_window_make_takes_ints_and_pairs():
    win = Window.make(3, stride=(2, 1), padding=1)
    assert (win.kh, win.kw, win.stride, win.padding, win.dilation) == (3, 3, (2, 1), (1, 1), (1, 1))
    assert as_pair(np.int64(4), "kernel_size") == (4, 4)
    for bad in (True, 1.5, (1, 2, 3), None, (1, True)):
        with pytest.raises(ValueError, match="kernel_size"):
            as_pair(bad, "kernel_size")


@pytest.mark.parametrize("store", ["contiguous", "channels_last"])
def test_storage_view_round_trips_and_pad_keeps_the_order(store, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    stored = channels_last_copy(x) if store == "channels_last" else x
    last = is_channels_last(stored)
    assert last == (store == "channels_last")
    view = storage_view(stored, last)
    assert view.shape == ((2, 20, 3) if last else (2, 3, 20)) and np.shares_memory(view, stored)
    np.testing.assert_array_equal(from_storage(view.reshape(-1), x.shape, last), x)
    win = Window.make(3, 2, 1)
    padded = pad_hw(stored, win, 2, 3, value=-7.0)
    assert is_channels_last(padded) == last and padded.shape == (2, 3, 6, 7)
    np.testing.assert_array_equal(crop_hw(padded, win, 4, 5), x)
    assert (padded[:, :, 0] == -7.0).all() and (padded[:, :, :, -1] == -7.0).all()
