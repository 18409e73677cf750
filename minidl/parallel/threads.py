"""One worker thread per device, so the shares of a split layer run at the same time.

NumPy releases the GIL inside BLAS calls, copies and ufunc loops, so two
logical CPU devices (``cpu:0``, ``cpu:1``) really run on two cores. OpenBLAS's
own threads would fight the device threads for those cores, so while a model
is split over ``k`` CPU devices the BLAS thread count is lowered to
``cores // k`` (threadpoolctl) and restored when the placement is closed.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ..backend import enable_peer_access

__all__ = ["DeviceThreads", "cpu_cores"]


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
        self._blas_limit = None
        self.peer_pairs = enable_peer_access(self.devices)  # direct GPU-to-GPU copies where possible
        cpu_devices = sum(1 for d in self.devices if d.type == "cpu")
        if blas_threads is None and cpu_devices > 1:
            blas_threads = max(1, cpu_cores() // cpu_devices)
        if blas_threads is not None:
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=int(blas_threads), user_api="blas")
        self.blas_threads = blas_threads

    def run(self, jobs, in_order: bool = False) -> list:
        """Run every ``(device, job)``; return the results in order (the first error is raised)."""
        if in_order or len(jobs) == 1:
            return [_call(device, job) for device, job in jobs]
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
        """Stop the threads and restore the BLAS thread count."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None


def _call(device, job):
    try:
        with device.context():
            return job()
    except Exception as e:
        if str(e).startswith("on "):  # already says where (a nested split)
            raise
        try:
            located = type(e)(f"on {device}: {e}")
        except Exception:  # an exception type that takes other arguments: keep it as it is
            raise e from None
        raise located.with_traceback(e.__traceback__) from e
