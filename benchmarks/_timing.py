"""Shared timing helpers for the benchmarks (not tests: nothing here asserts a time)."""
from __future__ import annotations

import platform
import statistics
import time


def best_of(fn, number: int, repeat: int = 7, warmup: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` runs of ``number`` calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number)
    return statistics.median(runs)


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def try_import_torch():
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: pip install torch==2.13.0 for the comparison columns")
        return None
    return torch
