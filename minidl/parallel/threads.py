"""One worker thread per device, so the shares of a split layer run at the same time.

NumPy releases the GIL inside BLAS calls, copies and ufunc loops, so two
logical CPU devices (``cpu:0``, ``cpu:1``) really run on two cores. OpenBLAS's
own threads would fight the device threads for those cores, so while the
shares of a layer split over ``k`` CPU devices run, the BLAS thread count is
lowered to ``cores // k`` (threadpoolctl) and then put back: the limit never
outlives a run, and code outside the split model keeps the process's setting.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ..backend import enable_peer_access
from ..errors import prefix_message

__all__ = ["DeviceThreads", "blas_threads_limited", "cpu_cores"]


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DeviceThreads:
    """Runs ``(device, job)`` pairs: each device's jobs on that device's own thread.

    A device always uses the same thread (a CUDA device stays current there).
    Jobs given with ``in_order=True`` run one after another in the calling
    thread instead: layers that draw random numbers (dropout) must draw them
    in a fixed order to stay reproducible.
    """

    def __init__(self, devices, blas_threads: int | None = None):
        self.devices = list(devices)
        self._pools = {d: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"minidl-{d}") for d in self.devices}
        self.peer_pairs = enable_peer_access(self.devices)  # direct GPU-to-GPU copies where possible
        cpu_devices = sum(1 for d in self.devices if d.type == "cpu")
        if blas_threads is None and cpu_devices > 1:
            blas_threads = max(1, cpu_cores() // cpu_devices)
        self.blas_threads = None if blas_threads is None else int(blas_threads)  # applied only while jobs run

    def run(self, jobs, in_order: bool = False) -> list:
        """Run every ``(device, job)``; return the results in order (the first error is raised)."""
        if in_order or len(jobs) == 1:
            return [_call(device, job) for device, job in jobs]
        with blas_threads_limited(self.blas_threads):
            futures = [(device, self._pools[device].submit(_call, device, job)) for device, job in jobs]
            results, error = [], None
            for device, future in futures:  # wait for all of them, even after an error
                try:
                    results.append(future.result())
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    error = error or e
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Stop the threads."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()


class _BlasLimit:
    """The process's BLAS thread limit while split layers run; overlapping runs share one limit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.controller = None  # threadpoolctl's view of the loaded BLAS libraries, found once
        self.limiter = None


_blas = _BlasLimit()


@contextlib.contextmanager
def blas_threads_limited(threads: int | None):
    """BLAS runs on at most ``threads`` threads inside the block (None: no change); restored on leaving."""
    if threads is None:
        yield
        return
    with _blas.lock:
        if _blas.active == 0:
            if _blas.controller is None:
                from threadpoolctl import ThreadpoolController

                _blas.controller = ThreadpoolController()
            _blas.limiter = _blas.controller.limit(limits=threads, user_api="blas")
        _blas.active += 1
    try:
        yield
    finally:
        with _blas.lock:
            _blas.active -= 1
            if _blas.active == 0:
                _blas.limiter.restore_original_limits()
                _blas.limiter = None


def _call(device, job):
    try:
        with device.context():
            return job()
    except Exception as e:
        if getattr(e, "device", None) is None:  # the innermost device says where (a nested split)
            with contextlib.suppress(AttributeError):  # (a read-only `device` of the exception's own)
                e.device = device  # the exception itself travels back: its type and fields stay
            prefix_message(e, f"on {device}: ")
        raise
