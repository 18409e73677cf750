"""minidl/cpu.py: the scratch pool is bounded and emptied, cache blocks cover the rows, and the heap is tuned only
when asked (in a fresh process, so the check sees what importing and using minidl does)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from minidl import cpu


@pytest.mark.parametrize("rows, elements, block, expected", [
    (32, 32 * 290_400, 1 << 18, [(i, i + 1) for i in range(32)]),  # AlexNet's LRN1: an image per block
    (32, 32 * 1000, 1 << 18, [(0, 32)]),  # small: one block
    (10, 10 * 300, 900, [(0, 3), (3, 6), (6, 9), (9, 10)]),
    (0, 0, 1 << 18, []),
])
def test_host_blocks_cover_the_rows_in_order(rows, elements, block, expected):
    assert cpu.host_blocks(np, rows, elements, block) == expected


def test_scratch_pool_reuses_released_buffers_up_to_its_bound():
    pool = cpu.ScratchPool()
    pool.max_cached_bytes = 3 * pool.min_bytes
    a = pool.empty((pool.min_bytes // 4,), np.float32)
    pool.release(a)
    assert pool.cached_bytes == pool.min_bytes
    b = pool.empty((pool.min_bytes // 8,), np.float64)  # same size in bytes: the same memory back
    assert np.shares_memory(a, b) and pool.cached_bytes == 0
    buffers = [pool.empty((pool.min_bytes,), np.uint8) for _ in range(5)]
    for buffer in buffers:
        pool.release(buffer)
    assert pool.cached_bytes == 3 * pool.min_bytes  # the other two went back to the allocator
    small = pool.empty((10,), np.float32)
    pool.release(small)  # below min_bytes: never pooled
    assert pool.cached_bytes == 3 * pool.min_bytes
    pool.clear()
    assert pool.cached_bytes == 0


_PROBE = """
import ctypes, numpy as np
import minidl as mdl, minidl.functions as F
x = mdl.tensor(np.random.default_rng(0).standard_normal((16, 64, 32, 32)).astype(np.float32), requires_grad=True)
W = mdl.tensor(np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32), requires_grad=True)
F.max_pool2d(F.conv2d(x, W, padding=1), 3, 2).sum().backward()
print(mdl.cpu._heap_tuned, mdl.cpu.tune_heap(), mdl.cpu._heap_tuned)
"""


def test_heap_is_tuned_only_on_request():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout.split()
    tunable = sys.platform.startswith("linux")  # glibc's mallopt
    assert out == ["False", str(tunable), str(tunable)]
